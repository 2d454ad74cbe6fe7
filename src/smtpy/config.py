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

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from smtpy import location
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
    """Where a store already is, else `/var/lib/smtpy` when writable, else the XDG data
    directory (the rule: `smtpy.location`)."""
    return location.default_state_dir(environ, system=SYSTEM_STATE_DIR).path


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
    max_connections: int = Field(
        default=1000, ge=0, description="Inbound SMTP connections at once; 0 for no limit."
    )
    max_connections_per_ip: int = Field(
        default=50,
        ge=0,
        description="Inbound connections at once from one client IP; 0 for no limit.",
    )
    ip_rate_limit: int = Field(
        default=1200,
        ge=0,
        description="Messages per minute from one client IP (a token bucket); 0 turns it off.",
    )
    sender_domain_rate_limit: int = Field(
        default=1200,
        ge=0,
        description="Messages per minute from one MAIL FROM domain; 0 turns it off.",
    )
    recipient_domain_rate_limit: int = Field(
        default=3000,
        ge=0,
        description="Messages per minute for one recipient domain; 0 turns it off.",
    )
    rate_limit_sync_interval: float = Field(
        default=2.0,
        ge=0,
        description=(
            "Seconds between the syncs of rate-limit buckets through the store, which make "
            "the limits hold across nodes; 0 keeps them per node."
        ),
    )
    limit_exempt_networks: list[str] = Field(
        default=["127.0.0.0/8", "::1/128"],
        description=(
            "Client networks exempt from the per-IP and rate limits, the pregreet delay and "
            "DNSBL checks, comma-separated (no trust for relaying, SPF or DMARC)."
        ),
    )
    pregreet_delay: float = Field(
        default=1.0,
        ge=0,
        le=60,
        description="Seconds to wait before the 220 banner; clients that talk first get 554.",
    )
    first_command_timeout: float = Field(
        default=30.0, gt=0, description="Seconds a new client has to send its first command."
    )
    command_timeout: float = Field(
        default=300.0, gt=0, description="Seconds to wait for each later command (RFC 5321: 300)."
    )
    dnsbl_zones: list[str] = Field(
        default=[],
        description="DNS blocklists checked at connect, comma-separated; empty turns it off.",
    )
    clamd_socket: str | None = Field(
        default=None,
        description="ClamAV clamd socket (a path, or host:port) to scan every message; off when unset.",
    )
    spamd_socket: str | None = Field(
        default=None,
        description="SpamAssassin spamd socket (a path, or host:port) to score every message.",
    )
    spam_threshold: float = Field(
        default=5.0, description="spamd score from which a message counts as spam."
    )
    spam_action: str = Field(
        default="header",
        description="What to do with spam: reject (554) or header (add X-Spam-Status: Yes).",
    )
    scan_timeout: float = Field(
        default=30.0,
        gt=0,
        description="Seconds a scanner may take; after that the client gets 451.",
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
    processes: int = Field(
        default=0,
        ge=0,
        le=64,
        description="Serving processes of `smtpy serve`, sharing the listening sockets and "
        "the queue; Python runs one core per process. 0: one per CPU core.",
    )
    delivery_concurrency: int = Field(
        default=100, gt=0, description="Deliveries in flight at once on this node (per process)."
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
    mta_sts: bool = Field(
        default=True,
        description="Apply the MTA-STS policies destination domains publish (RFC 8461).",
    )
    mta_sts_port: int = Field(
        default=443,
        gt=0,
        lt=65536,
        description="HTTPS port MTA-STS policies are fetched from (443; tests and special setups).",
    )
    tls_required_domains: list[str] = Field(
        default=[],
        description=(
            "Destination domains whose mail is only sent over TLS with a certificate valid "
            "for the MX host, comma-separated; otherwise it waits in the queue."
        ),
    )
    tls_ca_file: Path | None = Field(
        default=None,
        description=(
            "CA bundle (PEM) that verifies remote certificates (MTA-STS, required TLS, "
            "relay_tls) instead of the system's."
        ),
    )
    auth_checks: bool = Field(
        default=True,
        description=(
            "Check SPF, DKIM, DMARC and ARC on incoming mail and add Authentication-Results."
        ),
    )
    dmarc_reject: bool = Field(
        default=True,
        description=(
            "Refuse (550 5.7.1) mail that fails DMARC when its domain publishes p=reject; "
            "off: mark it only."
        ),
    )
    arc_trusted_sealers: list[str] = Field(
        default=[],
        description=(
            "ARC sealer domains whose valid chain recording dmarc=pass overrides a DMARC "
            "p=reject failure (mailing lists, forwarders you trust), comma-separated."
        ),
    )
    arc_seal: bool = Field(
        default=True,
        description=(
            "ARC-seal every forwarded message (RFC 8617) with an RSA DKIM key; the seal "
            "copies the checks' Authentication-Results, so it needs auth_checks."
        ),
    )
    arc_seal_domain: str | None = Field(
        default=None,
        description=(
            "A served domain whose RSA DKIM key seals every message; unset: the alias "
            "domain's own key."
        ),
    )
    from_rewrite: bool = Field(
        default=True,
        description=(
            "Rewrite From to the alias address when the sender's domain publishes "
            "p=quarantine or p=reject and no aligned DKIM signature survives."
        ),
    )
    from_rewrite_name: str = Field(
        default="{name} via smtpy",
        min_length=1,
        max_length=100,
        description="Display name of a rewritten From; {name} is the original display name.",
    )
    log_level: str = Field(default="info", description="debug, info, warning or error.")
    log_retention: int = Field(
        default=30,
        ge=0,
        description=(
            "Days the message log (`smtpy log`, `smtpy stats`) keeps its rows; the daemon "
            "prunes older ones. 0 keeps them forever."
        ),
    )
    node_name: str = Field(
        default_factory=socket.gethostname,
        min_length=1,
        max_length=100,
        description="Name of this node in the shared queue's leases (default: the host name).",
    )
    lease_seconds: float = Field(
        default=90.0,
        ge=10,
        le=3600,
        description=(
            "Seconds a node holds the deliveries it claimed without renewing them; after a "
            "crash, another node takes them over once this has passed."
        ),
    )
    heartbeat_seconds: float = Field(
        default=10.0,
        ge=1,
        le=600,
        description=(
            "Seconds between a node's heartbeats and lease renewals; at most a third of "
            "lease_seconds, so a live node never loses its leases."
        ),
    )

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> Settings:
        if self.heartbeat_seconds * 3 > self.lease_seconds:
            raise ValueError(
                f"heartbeat_seconds ({self.heartbeat_seconds:g}) must be at most a third of "
                f"lease_seconds ({self.lease_seconds:g}), or a live node could lose its leases"
            )
        return self

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
        "srs_secret",
        "relay_username",
        "relay_password",
        "tls_cert",
        "tls_key",
        "tls_ca_file",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # `SMTPY_SRS_SECRET=` in an environment file means "not set", never an empty secret.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("tls_required_domains", "arc_trusted_sealers", mode="before")
    @classmethod
    def _domains(cls, value: Any) -> Any:
        from smtpy.errors import InvalidInput
        from smtpy.mail.addresses import normalize_domain

        try:
            return [normalize_domain(part) for part in _split(value)]
        except InvalidInput as exc:
            raise ValueError(str(exc)) from None

    @field_validator("arc_seal_domain", mode="before")
    @classmethod
    def _seal_domain(cls, value: Any) -> Any:
        from smtpy.errors import InvalidInput
        from smtpy.mail.addresses import normalize_domain

        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        try:
            return normalize_domain(str(value))
        except InvalidInput as exc:
            raise ValueError(str(exc)) from None

    @field_validator("limit_exempt_networks", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> Any:
        from smtpy.checks.limits import parse_networks

        parts = _split(value)
        parse_networks(parts)
        return parts

    @field_validator("dnsbl_zones", mode="before")
    @classmethod
    def _zones(cls, value: Any) -> Any:
        return [part.rstrip(".").lower() for part in _split(value)]

    @field_validator("clamd_socket", "spamd_socket", mode="before")
    @classmethod
    def _socket(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip() and not value.strip().startswith("/"):
            parse_host_port(value)  # a UNIX socket path, or host:port
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("spam_action")
    @classmethod
    def _spam_action(cls, value: str) -> str:
        if value.lower() not in {"reject", "header"}:
            raise ValueError("expected reject or header")
        return value.lower()

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
        from smtpy.errors import InvalidInput
        from smtpy.mail.addresses import normalize_domain

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

    def process_count(self) -> int:
        """Serving processes: SMTPY_PROCESSES, or the CPU cores this process may use for 0."""
        if self.processes:
            return self.processes
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except (AttributeError, OSError):
            return os.cpu_count() or 1

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
        chosen = location.default_state_dir(
            env, system=SYSTEM_STATE_DIR, strict="database_url" not in values
        )
        values["state_dir"], sources["state_dir"] = chosen.path, f"default: {chosen.reason}"
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
