"""Settings: defaults, TOML file, environment, where each value came from, and checks."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import smtpy.config
from smtpy.admin.config_check import check_settings
from smtpy.config import (
    LoadedSettings,
    Settings,
    default_state_dir,
    load,
    mask_url,
    parse_host_port,
)
from smtpy.errors import ConfigError


@pytest.fixture(autouse=True)
def no_system_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep a /etc/smtpy/smtpy.toml on the test machine out of these tests."""
    monkeypatch.setattr(smtpy.config, "SYSTEM_CONFIG", tmp_path / "absent" / "smtpy.toml")


def env(tmp_path: Path, **values: str) -> dict[str, str]:
    base = {"SMTPY_HOSTNAME": "mx.example.org", "SMTPY_STATE_DIR": str(tmp_path / "state")}
    base.update({f"SMTPY_{name.upper()}": value for name, value in values.items()})
    return base


def load_env(tmp_path: Path, **values: str) -> LoadedSettings:
    return load(environ=env(tmp_path, **values))


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# -- sources and precedence ---------------------------------------------------


def test_defaults_and_their_sources(tmp_path: Path) -> None:
    loaded = load_env(tmp_path)
    settings = loaded.settings
    assert settings.database_url == f"sqlite:///{tmp_path / 'state' / 'smtpy.db'}"
    assert settings.listen == [("0.0.0.0", 25), ("::", 25)]
    assert settings.retry_schedule == [60, 300, 900, 1800, 3600]
    assert settings.delivery_port == 25
    assert settings.plus_separator == "+"
    assert settings.dns_nameservers is None
    assert settings.srs_secret is None
    assert loaded.config_file is None
    assert loaded.sources["hostname"] == "env SMTPY_HOSTNAME"
    assert loaded.sources["database_url"] == "default"
    assert loaded.sources["listen"] == "default"
    assert set(loaded.sources) == set(Settings.model_fields)


def test_toml_file_then_environment_win_over_defaults(tmp_path: Path) -> None:
    config = write(
        tmp_path / "smtpy.toml",
        """
hostname = "mx.from-file.example"
listen = ["127.0.0.1:2525", "[::1]:2525"]
retry_schedule = [30, 90]
delivery_port = 2526
relay_tls = true
log_level = "DEBUG"
""",
    )
    loaded = load(config, environ=env(tmp_path, delivery_port="2600"))
    settings = loaded.settings
    assert loaded.config_file == config
    # The environment overrides the file...
    assert settings.hostname == "mx.example.org"
    assert loaded.sources["hostname"] == "env SMTPY_HOSTNAME"
    assert settings.delivery_port == 2600
    # ...and the file overrides the defaults.
    assert settings.listen == [("127.0.0.1", 2525), ("::1", 2525)]
    assert loaded.sources["listen"] == f"file {config}"
    assert settings.retry_schedule == [30, 90]
    assert settings.relay_tls is True
    assert settings.log_level == "debug"
    assert loaded.sources["max_message_size"] == "default"


def test_config_file_with_an_smtpy_table_named_by_smtpy_config(tmp_path: Path) -> None:
    config = write(tmp_path / "other.toml", '[smtpy]\nmax_recipients = 7\nplus_separator = "-"\n')
    loaded = load(environ=env(tmp_path, config=str(config)))
    assert loaded.config_file == config
    assert loaded.settings.max_recipients == 7
    assert loaded.settings.plus_separator == "-"


def test_explicit_config_path_wins_over_smtpy_config(tmp_path: Path) -> None:
    chosen = write(tmp_path / "chosen.toml", "max_recipients = 3\n")
    other = write(tmp_path / "other.toml", "max_recipients = 9\n")
    loaded = load(chosen, environ=env(tmp_path, config=str(other)))
    assert loaded.settings.max_recipients == 3


def test_system_config_is_read_when_present(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    system = write(tmp_path / "system.toml", "max_message_size = 1000\n")
    monkeypatch.setattr(smtpy.config, "SYSTEM_CONFIG", system)
    loaded = load_env(tmp_path)
    assert loaded.settings.max_message_size == 1000
    assert loaded.sources["max_message_size"] == f"file {system}"


def test_empty_plus_separator_turns_tags_off(tmp_path: Path) -> None:
    assert load_env(tmp_path, plus_separator="").settings.plus_separator == ""


@pytest.mark.parametrize("name", ["srs_secret", "relay_password", "relay_username", "tls_cert"])
def test_an_empty_variable_leaves_an_optional_setting_unset(tmp_path: Path, name: str) -> None:
    # `SMTPY_SRS_SECRET=` in an environment file must not become an empty HMAC key.
    assert getattr(load_env(tmp_path, **{name: ""}).settings, name) is None


def test_lists_and_addresses_are_parsed(tmp_path: Path) -> None:
    settings = load_env(
        tmp_path,
        listen="0.0.0.0:25, [::]:2525",
        dns_nameservers="127.0.0.1, 127.0.0.2:5353, [::1]:53, ::1",
        retry_schedule="60,120, 600",
        relay_host="smtp.example.net",
        metrics_listen="127.0.0.1:9100",
    ).settings
    assert settings.listen == [("0.0.0.0", 25), ("::", 2525)]
    assert settings.dns_nameservers == [
        ("127.0.0.1", 53),
        ("127.0.0.2", 5353),
        ("::1", 53),
        ("::1", 53),
    ]
    assert settings.retry_schedule == [60, 120, 600]
    assert settings.relay_host == ("smtp.example.net", 25)
    assert settings.metrics_listen == ("127.0.0.1", 9100)


def test_idn_hostname_is_stored_as_a_label(tmp_path: Path) -> None:
    assert load_env(tmp_path, hostname="MX.Bücher.Example.").settings.hostname == (
        "mx.xn--bcher-kva.example"
    )


# -- errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("delivery_port", "0", ""),
        ("delivery_port", "smtp", ""),
        ("retry_schedule", "60,soon", "whole seconds"),
        ("retry_schedule", "", "at least one"),
        ("listen", "0.0.0.0", "HOST:PORT"),
        ("listen", "0.0.0.0:99999", "1 to 65535"),
        ("dns_nameservers", "ns.example.org", "IP address"),
        ("dns_nameservers", "127.0.0.1:0", "1 to 65535"),
        ("database_url", "mysql://u:p@h/db", "sqlite:///PATH"),
        ("hostname", "not a host!", "not a valid domain name"),
        ("log_level", "loud", "debug, info"),
        ("dns_timeout", "-1", ""),
        ("max_message_size", "0", ""),
    ],
)
def test_bad_environment_value_names_the_setting_and_its_source(
    tmp_path: Path, name: str, value: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_env(tmp_path, **{name: value})
    message = str(info.value)
    assert message.startswith(f"setting {name} (env SMTPY_{name.upper()}): ")
    assert reason in message
    assert "\n" not in message


def test_bad_file_value_names_the_file(tmp_path: Path) -> None:
    config = write(tmp_path / "smtpy.toml", "delivery_port = 70000\n")
    with pytest.raises(ConfigError, match=rf"setting delivery_port \(file {config}\)"):
        load(config, environ=env(tmp_path))


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("hostnme = 'typo.example'\n", "unknown setting 'hostnme'"),
        ("hostname = \n", "not valid TOML"),
        ("smtpy = 1\n", "must be a table"),
        # Only settings go in the file; the prefix is not part of a key.
        ("SMTPY_HOSTNAME = 'x.example'\n", "unknown setting"),
    ],
)
def test_bad_config_file_is_refused(tmp_path: Path, content: str, reason: str) -> None:
    config = write(tmp_path / "smtpy.toml", content)
    with pytest.raises(ConfigError, match=reason):
        load(config, environ=env(tmp_path))


def test_missing_config_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "nope.toml", environ=env(tmp_path))


def test_unknown_environment_variables_are_ignored(tmp_path: Path) -> None:
    environ = env(tmp_path)
    environ["SMTPY_NOT_A_SETTING"] = "x"
    environ["SMTPY_TEST_POSTGRES_URL"] = "postgresql://x@y/z"
    loaded = load(environ=environ)
    assert loaded.settings.hostname == "mx.example.org"
    # Ignored, but not silently: the test suite's own variables are no mistake.
    assert loaded.warnings == [
        "SMTPY_NOT_A_SETTING is not a setting and is ignored; see `smtpy config show`"
    ]


# -- display ----------------------------------------------------------------------


def test_display_masks_secrets_and_database_passwords(tmp_path: Path) -> None:
    settings = load_env(
        tmp_path,
        srs_secret="very-secret-srs",
        relay_host="smtp.example.net:587",
        relay_username="user",
        relay_password="hunter2-relay",
        database_url="postgresql://smtpy:db-pass-word@127.0.0.1:5432/smtpy",
    ).settings
    shown = {name: settings.display(name) for name in Settings.model_fields}
    assert shown["srs_secret"] == "********"
    assert shown["relay_password"] == "********"
    assert shown["database_url"] == "postgresql://smtpy:********@127.0.0.1:5432/smtpy"
    assert shown["relay_host"] == "smtp.example.net:587"
    assert shown["listen"] == "0.0.0.0:25,[::]:25"
    assert shown["tls_cert"] == ""
    everything = " ".join(shown.values()) + repr(settings) + str(settings)
    for secret in ("very-secret-srs", "hunter2-relay", "db-pass-word"):
        assert secret not in everything
    # The real values are still there for the code that needs them.
    assert settings.srs_secret is not None
    assert settings.srs_secret.get_secret_value() == "very-secret-srs"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:p@h:5432/db", "postgresql://u:********@h:5432/db"),
        ("postgresql://u:p@ss@h/db", "postgresql://u:********@h/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql://h/db", "postgresql://h/db"),
        ("sqlite:////var/lib/smtpy/smtpy.db", "sqlite:////var/lib/smtpy/smtpy.db"),
    ],
)
def test_mask_url(url: str, shown: str) -> None:
    assert mask_url(url) == shown


@pytest.mark.parametrize(
    ("text", "default", "expected"),
    [
        ("127.0.0.1:25", None, ("127.0.0.1", 25)),
        (" mx.example.org:2525 ", None, ("mx.example.org", 2525)),
        ("[::1]:25", None, ("::1", 25)),
        ("[::]:25", None, ("::", 25)),
        ("mx.example.org", 25, ("mx.example.org", 25)),
        ("::1", 53, ("::1", 53)),
        ("[2001:db8::1]", 53, ("2001:db8::1", 53)),
    ],
)
def test_parse_host_port(text: str, default: int | None, expected: tuple[str, int]) -> None:
    assert parse_host_port(text, default_port=default) == expected


@pytest.mark.parametrize(
    "text", ["", "mx.example.org", "[::1", "[::1]x25", "h:0", "h:65536", "h:port", "h:-1"]
)
def test_parse_host_port_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_host_port(text)


def test_default_state_dir_prefers_a_writable_system_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    system = tmp_path / "var-lib-smtpy"
    monkeypatch.setattr(smtpy.config, "SYSTEM_STATE_DIR", system)
    environ = {"HOME": str(tmp_path / "home")}
    assert default_state_dir(environ) == tmp_path / "home" / ".local/share" / "smtpy"
    assert default_state_dir({**environ, "XDG_DATA_HOME": str(tmp_path / "xdg")}) == (
        tmp_path / "xdg" / "smtpy"
    )
    system.mkdir()
    assert default_state_dir(environ) == system


# -- config check --------------------------------------------------------------------


def make_tls_pair(directory: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mx.example.org")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / f"{name}.crt"
    key_path = directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_check_passes_on_sound_settings(tmp_path: Path) -> None:
    cert, key = make_tls_pair(tmp_path, "mx")
    settings = load_env(
        tmp_path,
        tls_cert=str(cert),
        tls_key=str(key),
        relay_host="smtp.example.net:587",
        relay_username="u",
        relay_password="p",
    ).settings
    assert check_settings(settings) == []


def test_check_finds_each_problem(tmp_path: Path) -> None:
    cert, _ = make_tls_pair(tmp_path, "a")
    _, other_key = make_tls_pair(tmp_path, "b")

    def problems(**values: str) -> list[str]:
        return check_settings(load_env(tmp_path, **values).settings)

    assert problems(tls_cert=str(cert)) == ["SMTPY_TLS_CERT and SMTPY_TLS_KEY must be set together"]
    [missing] = problems(tls_cert=str(cert), tls_key=str(tmp_path / "nope.key"))
    assert "SMTPY_TLS_KEY" in missing and "nope.key" in missing
    [mismatch] = problems(tls_cert=str(cert), tls_key=str(other_key))
    assert mismatch.startswith("SMTPY_TLS_CERT/SMTPY_TLS_KEY cannot be loaded")
    assert problems(relay_host="smtp.example.net", relay_username="u") == [
        "SMTPY_RELAY_USERNAME and SMTPY_RELAY_PASSWORD must be set together"
    ]
    assert problems(relay_username="u", relay_password="p") == [
        "SMTPY_RELAY_USERNAME is set but SMTPY_RELAY_HOST is not"
    ]
    [host] = problems(hostname="localhost")
    assert "SMTPY_HOSTNAME" in host and "FQDN" in host
    for problem in problems(hostname="localhost", tls_key=str(other_key), relay_password="p"):
        assert "\n" not in problem
