"""Settings: built once at the entry point and passed down explicitly.

Sources, lowest precedence first: the built-in defaults, a TOML file, then the
`SMTPY_*` environment variables. The file is the one named by `--config` or
`SMTPY_CONFIG`, else `/etc/smtpy/smtpy.toml` when it exists; its keys are the
setting names in lower case without the prefix (`hostname = "mx.example.org"`).

Values are validated by a pydantic model. The loader is our own rather than
pydantic-settings: it records where each value came from (`smtpy config show`
prints it) and keeps `smtpy alias list` inside its start-up budget, since
pydantic-settings alone costs two thirds of it to import.
"""

from __future__ import annotations

import os
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from smtpy.errors import ConfigError

ENV_PREFIX = "SMTPY_"
SYSTEM_CONFIG = Path("/etc/smtpy/smtpy.toml")
SYSTEM_STATE_DIR = Path("/var/lib/smtpy")

HostPort = tuple[str, int]


def parse_host_port(text: str, *, default_port: int | None = None) -> HostPort:
    """Parse `host:port`, `[v6]:port` or (with a default port) a bare host."""
    text = text.strip()
    if not text:
        raise ValueError("empty address")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError(f"{text!r}: missing ']' after the IPv6 address")
        port_text = rest[1:] if rest.startswith(":") else None
        if rest and not rest.startswith(":"):
            raise ValueError(f"{text!r}: expected ':PORT' after ']'")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        # A bare IPv6 address or a bare host name.
        host, port_text = text, None
    if port_text is None or port_text == "":
        if default_port is None:
            raise ValueError(f"{text!r}: expected HOST:PORT")
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    return host, int(port_text)


def _nameserver(text: str) -> HostPort:
    """A resolver as `ip`, `ip:port` or `[v6]:port`: an address, since no resolver finds it."""
    import ipaddress

    host, port = parse_host_port(text, default_port=53)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: a nameserver is an IP address, not a host name") from None
    return host, port


def _split(value: Any) -> list[str]:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list | tuple):
        return [str(part).strip() for part in value if str(part).strip()]
    raise ValueError("expected a comma-separated string or a list")


def default_state_dir(environ: Mapping[str, str]) -> Path:
    """`/var/lib/smtpy` when it is writable, else the XDG data directory."""
    if SYSTEM_STATE_DIR.is_dir() and os.access(SYSTEM_STATE_DIR, os.W_OK):
        return SYSTEM_STATE_DIR
    xdg = environ.get("XDG_DATA_HOME") or str(
        Path(environ.get("HOME", "~")).expanduser() / ".local/share"
    )
    return Path(xdg) / "smtpy"


class Settings(BaseModel):
    """Every setting smtpy reads. The field name in upper case with `SMTPY_` is its variable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    secret_fields: ClassVar[frozenset[str]] = frozenset({"srs_secret", "relay_password"})

    state_dir: Path = Field(description="Directory for the default SQLite store and runtime files.")
    database_url: str = Field(
        description="sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DB.",
        repr=False,  # it may hold the database password
    )
    hostname: str = Field(
        description="This forwarder's FQDN: HELO, Received, SRS domain, MAILER-DAEMON, MX target."
    )
    listen: list[HostPort] = Field(
        default=[("0.0.0.0", 25), ("::", 25)],  # noqa: S104 - an MX listens on every address
        description="Inbound SMTP addresses, host:port, comma-separated ([::]:25 for IPv6).",
    )
    dns_nameservers: list[HostPort] | None = Field(
        default=None,
        description="Resolvers as ip or ip:port, comma-separated (default: the system's).",
    )
    dns_timeout: float = Field(default=5.0, gt=0, description="Seconds to wait for a DNS answer.")
    srs_secret: SecretStr | None = Field(
        default=None,
        description="SRS secret; generated and kept in the store on first use if unset.",
    )
    retry_schedule: list[int] = Field(
        default=[60, 300, 900, 1800, 3600],
        description="Seconds between delivery attempts, comma-separated; the last repeats.",
    )
    queue_lifetime: int = Field(
        default=5 * 86400, gt=0, description="Seconds a message may stay queued before it bounces."
    )
    max_message_size: int = Field(
        default=35 * 1024 * 1024, gt=0, description="Bytes; advertised with SIZE and enforced."
    )
    max_recipients: int = Field(
        default=100, gt=0, description="Recipients per message (RFC 5321: 100)."
    )
    plus_separator: str = Field(
        default="+", description="Separator of plus-addressing tags; empty turns tags off."
    )
    relay_host: HostPort | None = Field(
        default=None, description="Optional smarthost host:port instead of direct MX delivery."
    )
    relay_username: str | None = Field(default=None, description="Smarthost AUTH user name.")
    relay_password: SecretStr | None = Field(default=None, description="Smarthost AUTH password.")
    relay_tls: bool = Field(default=False, description="Use implicit TLS to the smarthost.")
    delivery_port: int = Field(
        default=25, gt=0, lt=65536, description="Port used on destination MX hosts."
    )
    delivery_concurrency: int = Field(
        default=100, gt=0, description="Deliveries in flight at once on this node."
    )
    destination_concurrency: int = Field(
        default=10, gt=0, description="Connections at once to one destination domain."
    )
    tls_cert: Path | None = Field(
        default=None, description="Certificate (PEM) for inbound STARTTLS."
    )
    tls_key: Path | None = Field(
        default=None, description="Private key (PEM) for inbound STARTTLS."
    )
    metrics_listen: HostPort | None = Field(
        default=None, description="Optional host:port for the Prometheus /metrics endpoint."
    )
    log_level: str = Field(default="info", description="debug, info, warning or error.")
    node_name: str = Field(
        default_factory=socket.gethostname,
        min_length=1,
        max_length=100,
        description="Name of this node in the shared queue's leases (default: the host name).",
    )

    @field_validator("listen", mode="before")
    @classmethod
    def _listen(cls, value: Any) -> Any:
        if isinstance(value, str | list) and value and not isinstance(value[0], tuple):
            return [parse_host_port(part) for part in _split(value)]
        return value

    @field_validator("dns_nameservers", mode="before")
    @classmethod
    def _nameservers(cls, value: Any) -> Any:
        if isinstance(value, str | list) and (not value or not isinstance(value[0], tuple)):
            return [_nameserver(part) for part in _split(value)] or None
        return value

    @field_validator("relay_host", "metrics_listen", mode="before")
    @classmethod
    def _host_port(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_host_port(value, default_port=25) if value.strip() else None
        return value

    @field_validator(
        "srs_secret", "relay_username", "relay_password", "tls_cert", "tls_key", mode="before"
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # `SMTPY_SRS_SECRET=` in an environment file means "not set", never an empty secret.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("retry_schedule", mode="before")
    @classmethod
    def _schedule(cls, value: Any) -> Any:
        if isinstance(value, str | list):
            parts = _split(value)
            if not parts:
                raise ValueError("needs at least one delay")
            if not all(part.isdigit() and int(part) > 0 for part in parts):
                raise ValueError("delays are whole seconds greater than 0")
            return [int(part) for part in parts]
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        if not value.startswith(
            ("sqlite:///", "postgresql://", "postgres://", "postgresql+psycopg://")
        ):
            raise ValueError("expected sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DB")
        return value

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, value: str) -> str:
        from smtpy.addresses import normalize_domain
        from smtpy.errors import InvalidInput

        name = value.strip().rstrip(".").lower()
        if name and "." not in name and name.isascii() and name.replace("-", "").isalnum():
            return name  # a bare host name such as "localhost": usable, `config check` warns
        try:
            return normalize_domain(value)
        except InvalidInput as exc:
            raise ValueError(str(exc)) from None

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        if value.lower() not in {"debug", "info", "warning", "error"}:
            raise ValueError("expected debug, info, warning or error")
        return value.lower()

    def display(self, name: str) -> str:
        """The value of a setting as `config show` prints it, secrets masked."""
        value = getattr(self, name)
        if value is None:
            return ""
        if isinstance(value, SecretStr):
            return "********"
        if name == "database_url":
            return mask_url(value)
        if isinstance(value, tuple):
            return _format_host_port(value)
        if isinstance(value, list):
            return ",".join(
                _format_host_port(item) if isinstance(item, tuple) else str(item) for item in value
            )
        return str(value)


def _format_host_port(value: tuple[str, int]) -> str:
    host, port = value
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def mask_url(url: str) -> str:
    """Hide the password of a database URL."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, hostpart = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:********@{hostpart}"


class LoadedSettings:
    """Settings plus where each value came from: 'default', 'file PATH' or 'env NAME'."""

    def __init__(
        self, settings: Settings, sources: dict[str, str], config_file: Path | None
    ) -> None:
        self.settings = settings
        self.sources = sources
        self.config_file = config_file


def load(
    config_path: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> LoadedSettings:
    """Read defaults, the TOML file and the environment; raise ConfigError on bad values."""
    env = os.environ if environ is None else environ
    names = set(Settings.model_fields)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    path_text = str(config_path) if config_path else env.get("SMTPY_CONFIG")
    config_file: Path | None = Path(path_text) if path_text else None
    if config_file is None and SYSTEM_CONFIG.is_file():
        config_file = SYSTEM_CONFIG
    if config_file is not None:
        for key, value in _read_toml(config_file).items():
            if key not in names:
                raise ConfigError(f"{config_file}: unknown setting {key!r}; see `man smtpy.toml`")
            values[key] = value
            sources[key] = f"file {config_file}"

    for name in names:
        var = ENV_PREFIX + name.upper()
        if var in env:
            values[name] = env[var]
            sources[name] = f"env {var}"

    if "state_dir" not in values:
        values["state_dir"] = default_state_dir(env)
    if "database_url" not in values:
        values["database_url"] = f"sqlite:///{Path(values['state_dir']) / 'smtpy.db'}"
    if "hostname" not in values:
        values["hostname"] = socket.getfqdn()
    for name in names:
        sources.setdefault(name, "default")

    try:
        settings = Settings.model_validate(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        name = str(error["loc"][0]) if error["loc"] else "settings"
        where = sources.get(name, "default")
        reason = str(error["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"setting {name} ({where}): {reason}") from None
    return LoadedSettings(settings, sources, config_file)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except PermissionError:
        raise ConfigError(f"config file {path} is not readable by this user") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    # Accept both a flat file and one with an [smtpy] table.
    section = data.get("smtpy", data)
    if not isinstance(section, dict):
        raise ConfigError(f"config file {path}: [smtpy] must be a table")
    return section
