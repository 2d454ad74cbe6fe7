"""Settings through pydantic-settings, in process: the sources, the list syntax, the bounds."""

from __future__ import annotations

from pathlib import Path

import pytest

import smtpy.config
from smtpy.config import (
    RETRY_MAX_DELAY,
    RETRY_MAX_STEPS,
    Settings,
    load,
    parse_networks,
)
from smtpy.errors import ConfigError


@pytest.fixture(autouse=True)
def no_system_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep a /etc/smtpy/smtpy.toml of the test machine and the caller's SMTPY_* out."""
    monkeypatch.setattr(smtpy.config, "SYSTEM_CONFIG", tmp_path / "absent" / "smtpy.toml")
    monkeypatch.delenv("SMTPY_CONFIG", raising=False)


def env(tmp_path: Path, **values: str) -> dict[str, str]:
    base = {"SMTPY_HOSTNAME": "mx.example.org", "SMTPY_STATE_DIR": str(tmp_path / "state")}
    base.update({f"SMTPY_{name.upper()}": value for name, value in values.items()})
    return base


def test_settings_read_the_process_environment_with_comma_separated_lists(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SMTPY_LISTEN", "127.0.0.1:2525,[::1]:2525")
    monkeypatch.setenv("SMTPY_RETRY_SCHEDULE", "60,300")
    monkeypatch.setenv("SMTPY_TLS_REQUIRED_DOMAINS", "Example.ORG, bank.example")
    settings = Settings(hostname="mx.example.org", state_dir=tmp_path)  # type: ignore[call-arg]
    assert settings.listen == [("127.0.0.1", 2525), ("::1", 2525)]
    assert settings.retry_schedule == [60, 300]
    assert settings.tls_required_domains == ["example.org", "bank.example"]
    assert settings.database_url == f"sqlite:///{tmp_path / 'smtpy.db'}"


def test_load_lists_unknown_variables_with_the_closest_setting(tmp_path: Path) -> None:
    loaded = load(
        environ=env(tmp_path, listn="127.0.0.1:25", retry_shedule="60", qqqqqqqq="1", config="")
    )
    assert loaded.warnings == [
        "SMTPY_LISTN is not a setting and is ignored; did you mean SMTPY_LISTEN?",
        "SMTPY_QQQQQQQQ is not a setting and is ignored; see `smtpy config show`",
        "SMTPY_RETRY_SHEDULE is not a setting and is ignored; did you mean SMTPY_RETRY_SCHEDULE?",
    ]
    assert loaded.settings.listen == [("0.0.0.0", 25), ("::", 25)]
    assert load(environ=env(tmp_path)).warnings == []


def test_retry_schedule_bounds_are_inclusive(tmp_path: Path) -> None:
    schedule = " 1 ," + ",".join([str(RETRY_MAX_DELAY)] * (RETRY_MAX_STEPS - 1))
    settings = load(environ=env(tmp_path, retry_schedule=schedule)).settings
    assert settings.retry_schedule[0] == 1
    assert len(settings.retry_schedule) == RETRY_MAX_STEPS
    assert max(settings.retry_schedule) == RETRY_MAX_DELAY == 604800


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("retry_schedule = [60, 0]", "not '0'"),
        ("retry_schedule = []", "at least one delay"),
        ("retry_schedule = [60, true]", "not 'True'"),
        ("retry_schedule = [60, 1.5]", "not '1.5'"),
    ],
)
def test_a_bad_retry_schedule_in_the_file_names_the_file(
    tmp_path: Path, line: str, reason: str
) -> None:
    config = tmp_path / "smtpy.toml"
    config.write_text(line + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load(config, environ=env(tmp_path))
    assert str(info.value).startswith(f"setting retry_schedule (file {config}): ")
    assert reason in str(info.value)


def test_a_relative_sqlite_path_in_the_file_lies_in_the_state_directory(tmp_path: Path) -> None:
    config = tmp_path / "smtpy.toml"
    config.write_text(
        f'state_dir = "{tmp_path / "var"}"\ndatabase_url = "sqlite:///db/../smtpy.db"\n',
        encoding="utf-8",
    )
    environ = {"SMTPY_HOSTNAME": "mx.example.org"}
    loaded = load(config, environ=environ)
    assert loaded.settings.database_url == f"sqlite:///{tmp_path / 'var' / 'smtpy.db'}"
    assert loaded.sources["database_url"] == f"file {config}"


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:////var/lib/smtpy/smtpy.db",
        "postgresql://smtpy:secret@127.0.0.1:5432/smtpy",
    ],
)
def test_absolute_and_server_urls_are_kept(tmp_path: Path, url: str) -> None:
    assert load(environ=env(tmp_path, database_url=url)).settings.database_url == url


def test_an_sqlite_url_without_a_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"setting database_url \(env SMTPY_DATABASE_URL\): "):
        load(environ=env(tmp_path, database_url="sqlite:///"))


def test_a_state_directory_under_home_is_expanded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    settings = load(environ=env(tmp_path, state_dir="~/smtpy")).settings
    assert settings.state_dir == tmp_path / "home" / "smtpy"
    assert settings.database_url == f"sqlite:///{tmp_path / 'home' / 'smtpy' / 'smtpy.db'}"


def test_networks_are_parsed_by_config(tmp_path: Path) -> None:
    assert [str(n) for n in parse_networks(["127.0.0.1", "2001:db8::/32"])] == [
        "127.0.0.1/32",
        "2001:db8::/32",
    ]
    with pytest.raises(ConfigError, match=r"'10\.0\.0\.0/33' is not an IP address or network"):
        load(environ=env(tmp_path, limit_exempt_networks="127.0.0.0/8,10.0.0.0/33"))
