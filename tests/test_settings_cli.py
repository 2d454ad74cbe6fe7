"""Settings as a user meets them through the real `smtpy` program: where each value came
from, warnings about variables that are no setting, one-line errors, one store."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dnsserver import DNSServer


def smtpy(
    env: dict[str, str], *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smtpy", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """No SMTPY_* variable of the calling shell; an empty TOML file, so no system one is read."""
    config = tmp_path / "empty.toml"
    config.write_text("", encoding="utf-8")
    base = {k: v for k, v in os.environ.items() if not k.startswith("SMTPY_")}
    base.update(
        {
            "HOME": str(tmp_path),
            "COLUMNS": "200",
            "SMTPY_CONFIG": str(config),
            "SMTPY_HOSTNAME": "mx.example.org",
            "SMTPY_STATE_DIR": str(tmp_path / "state"),
        }
    )
    return base


def shown(env: dict[str, str], cwd: Path | None = None) -> dict[str, dict[str, str]]:
    result = smtpy(env, "config", "show", "--json", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return {row["name"]: row for row in json.loads(result.stdout)}


# -- where each value came from -------------------------------------------------------


def test_config_show_names_the_environment_the_file_or_the_default(
    env: dict[str, str], tmp_path: Path
) -> None:
    config = tmp_path / "smtpy.toml"
    config.write_text(
        'listen = "127.0.0.1:2525,[::1]:2525"\ndelivery_port = 2526\nretry_schedule = [30, 90]\n',
        encoding="utf-8",
    )
    env.update(
        SMTPY_CONFIG=str(config),
        SMTPY_DELIVERY_PORT="2600",
        SMTPY_DNS_NAMESERVERS="127.0.0.1:5353,[::1]:53",
    )
    rows = shown(env)
    assert (rows["listen"]["value"], rows["listen"]["source"]) == (
        "127.0.0.1:2525,[::1]:2525",
        f"file {config}",
    )
    assert (rows["retry_schedule"]["value"], rows["retry_schedule"]["source"]) == (
        "30,90",
        f"file {config}",
    )
    # The environment wins over the file, and keeps its comma-separated lists.
    assert (rows["delivery_port"]["value"], rows["delivery_port"]["source"]) == (
        "2600",
        "env SMTPY_DELIVERY_PORT",
    )
    assert (rows["dns_nameservers"]["value"], rows["dns_nameservers"]["source"]) == (
        "127.0.0.1:5353,[::1]:53",
        "env SMTPY_DNS_NAMESERVERS",
    )
    assert (rows["max_recipients"]["value"], rows["max_recipients"]["source"]) == ("100", "default")
    state = tmp_path / "state"
    assert (rows["database_url"]["value"], rows["database_url"]["source"]) == (
        f"sqlite:///{state / 'smtpy.db'}",
        "default",
    )


# -- names that are no setting ----------------------------------------------------------


def test_an_unknown_variable_is_warned_about_once_with_the_closest_setting(
    env: dict[str, str],
) -> None:
    env["SMTPY_LISTN"] = "127.0.0.1:2525"
    result = smtpy(env, "config", "show", "--json")
    assert result.returncode == 0
    assert result.stderr.splitlines() == [
        "smtpy: warning: SMTPY_LISTN is not a setting and is ignored; did you mean SMTPY_LISTEN?"
    ]
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["listen"]["source"] == "default"  # the misspelt value was not used


def test_config_check_lists_unknown_variables_and_fails(env: dict[str, str]) -> None:
    env["SMTPY_LISTN"] = "127.0.0.1:2525"
    env["SMTPY_ZZZZZZZZ"] = "1"
    result = smtpy(env, "config", "check")
    assert result.returncode == 1
    [line] = result.stderr.splitlines()  # listed once, not warned about as well
    assert "SMTPY_LISTN is not a setting and is ignored; did you mean SMTPY_LISTEN?" in line
    assert "SMTPY_ZZZZZZZZ is not a setting and is ignored; see `smtpy config show`" in line
    del env["SMTPY_LISTN"], env["SMTPY_ZZZZZZZZ"]
    ok = smtpy(env, "config", "check")
    assert (ok.returncode, ok.stderr) == (0, "")


def test_variables_of_smtpy_itself_are_no_unknown_settings(
    env: dict[str, str], tmp_path: Path
) -> None:
    # SMTPY_CONFIG is the --config option's; the test suite's variables start SMTPY_TEST_.
    env["SMTPY_TEST_POSTGRES_URL"] = "postgresql://smtpy@127.0.0.1/smtpy"
    result = smtpy(env, "config", "check")
    assert (result.returncode, result.stderr) == (0, "")


def test_an_unknown_key_in_the_file_is_refused_with_the_closest_setting(
    env: dict[str, str], tmp_path: Path
) -> None:
    config = tmp_path / "smtpy.toml"
    config.write_text('hostnme = "mx.example.org"\n', encoding="utf-8")
    result = smtpy(env, "--config", str(config), "config", "show")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"smtpy: error: {config}: unknown setting 'hostnme' (did you mean 'hostname'?); "
        "see `man smtpy.toml`"
    ]


def test_serve_logs_an_unknown_variable_once_as_a_json_line(
    env: dict[str, str], tmp_path: Path
) -> None:
    with socket.socket() as taken:  # the daemon cannot listen: it stops after its start-up
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env.update(
            SMTPY_LISTEN=f"127.0.0.1:{port}",
            SMTPY_LISTN=f"127.0.0.1:{port}",
            SMTPY_PROCESSES="1",
            SMTPY_DNS_NAMESERVERS="127.0.0.1:9",
        )
        result = smtpy(env, "serve")
    assert result.returncode != 0  # it could not listen; what matters here is what it logged
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    ignored = [event for event in events if event["event"] == "setting_ignored"]
    assert len(ignored) == 1
    assert ignored[0]["level"] == "warning"
    assert "SMTPY_LISTN" in ignored[0]["reason"] and "SMTPY_LISTEN" in ignored[0]["reason"]
    assert "smtpy: warning" not in result.stderr


# -- one-line errors -------------------------------------------------------------------


def test_a_rule_between_settings_names_each_setting_and_its_source(
    env: dict[str, str], tmp_path: Path
) -> None:
    config = tmp_path / "smtpy.toml"
    config.write_text("lease_seconds = 60\n", encoding="utf-8")
    env.update(SMTPY_CONFIG=str(config), SMTPY_HEARTBEAT_SECONDS="40")
    expected = (
        "smtpy: error: settings heartbeat_seconds (env SMTPY_HEARTBEAT_SECONDS) and "
        f"lease_seconds (file {config}): heartbeat_seconds (40) must be at most a third of "
        "lease_seconds (60), or a live node could lose its leases"
    )
    checked = smtpy(env, "config", "check")
    assert (checked.returncode, checked.stderr.splitlines()) == (1, [expected])
    used = smtpy(env, "alias", "list")
    assert (used.returncode, used.stderr.splitlines()) == (2, [expected])


@pytest.mark.parametrize(
    ("schedule", "reason"),
    [
        ("60,,300", "delay 2 is empty"),
        ("60,300,", "delay 3 is empty"),
        ("0", "whole seconds from 1 to 604800 (a week), not '0'"),
        ("60,-300", "not '-300'"),
        ("60,604801", "not '604801'"),
        (",".join(["60"] * 101), "101 delays, at most 100"),
    ],
)
def test_a_bad_retry_schedule_is_refused(env: dict[str, str], schedule: str, reason: str) -> None:
    env["SMTPY_RETRY_SCHEDULE"] = schedule
    result = smtpy(env, "config", "check")
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("smtpy: error: setting retry_schedule (env SMTPY_RETRY_SCHEDULE): ")
    assert reason in line


# -- one store, whatever the current directory ----------------------------------------------


def test_a_relative_sqlite_path_lies_in_the_state_directory(
    env: dict[str, str], tmp_path: Path
) -> None:
    here = tmp_path / "somewhere"
    here.mkdir()
    env["SMTPY_DATABASE_URL"] = "sqlite:///stores/main.db"
    store = tmp_path / "state" / "stores" / "main.db"
    rows = shown(env, cwd=here)
    assert rows["database_url"]["value"] == f"sqlite:///{store}"
    checked = smtpy(env, "config", "check", cwd=here)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.strip() == f"configuration OK; store sqlite:///{store}"


def test_commands_run_from_two_directories_use_one_store(
    env: dict[str, str], tmp_path: Path, dns_server: DNSServer
) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    env.update(SMTPY_DATABASE_URL="sqlite:///smtpy.db", SMTPY_DNS_NAMESERVERS=dns_server.nameserver)
    added = smtpy(env, "domain", "add", "example.org", "--key-algorithm", "ed25519", cwd=one)
    assert added.returncode == 0, added.stderr
    listed = smtpy(env, "domain", "list", "--json", cwd=two)
    assert listed.returncode == 0, listed.stderr
    assert [domain["name"] for domain in json.loads(listed.stdout)] == ["example.org"]
    assert (tmp_path / "state" / "smtpy.db").is_file()
    assert list(one.iterdir()) == [] and list(two.iterdir()) == []


def test_a_relative_state_directory_is_refused(env: dict[str, str], tmp_path: Path) -> None:
    env["SMTPY_STATE_DIR"] = "state"
    result = smtpy(env, "domain", "list", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "smtpy: error: setting state_dir (env SMTPY_STATE_DIR): 'state' is relative: "
        "write an absolute path"
    ]


# -- start-up -----------------------------------------------------------------------


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["alias", "--help"]])
def test_help_builds_no_settings(env: dict[str, str], args: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "smtpy", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    assert "smtpy.cli" in imported  # the listing is of this program's imports
    assert "smtpy.config" not in imported
    assert "pydantic_settings" not in imported
