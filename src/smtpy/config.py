"""Settings: built once at the entry point and passed down explicitly.

`Settings` is a pydantic-settings `BaseSettings`. Its sources, highest
precedence first (`Settings.settings_customise_sources`):

    the environment    `SMTPY_*` variables: the setting's name in upper case
    the TOML file      `--config PATH`, else `SMTPY_CONFIG`, else /etc/smtpy/smtpy.toml
                       when it exists; keys are the names in lower case, flat or
                       inside an `[smtpy]` table (`hostname = "mx.example.org"`)
    machine defaults   the state directory, the store inside it and the host name,
                       which depend on the machine or on another setting
    the field defaults

Lists keep their comma-separated syntax in the environment
(`SMTPY_LISTEN=127.0.0.1:2525,[::1]:2525`): the validators parse them, so
pydantic-settings' JSON decoding is off (`enable_decoding=False`).

`load()` is what the entry points call: it also records where each value came
from (`smtpy config show` prints it), warns about `SMTPY_*` variables that are
no setting (naming the closest one), and turns validation errors into one
`ConfigError` line naming the settings involved and their sources.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from smtpy import location
from smtpy.errors import ConfigError

if TYPE_CHECKING:
    from ipaddress import IPv4Network, IPv6Network

ENV_PREFIX = "SMTPY_"
SYSTEM_CONFIG = Path("/etc/smtpy/smtpy.toml")
SYSTEM_STATE_DIR = Path("/var/lib/smtpy")

# `SMTPY_*` variables that are no setting: the CLI's --config, what a restarted
# serving process is told, and the test suite's and benchmarks' own.
NOT_SETTINGS = frozenset({"SMTPY_CONFIG", "SMTPY_SERVING_PROCESS", "SMTPY_SERVING_NODE"})
NOT_SETTINGS_PREFIX = "SMTPY_TEST_"

# SMTPY_RETRY_SCHEDULE: a delay from a second to a week, at most 100 steps (the
# last step repeats until queue_lifetime, so a longer list is a mistake).
RETRY_MAX_DELAY = 7 * 86400
RETRY_MAX_STEPS = 100

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


def parse_networks(items: Iterable[str]) -> tuple[IPv4Network | IPv6Network, ...]:
    """`127.0.0.0/8`, `::1`, … as networks; ValueError names the bad entry."""
    import ipaddress

    networks = []
    for item in items:
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or network") from None
    return tuple(networks)


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


def machine_defaults(
    given: Mapping[str, Any], environ: Mapping[str, str], sources: dict[str, str]
) -> dict[str, Any]:
    """The defaults that depend on the machine or on another setting, for those not `given`.

    `sources` may say more of a default than "default" (how it was chosen).
    """
    values: dict[str, Any] = {}
    if "state_dir" not in given:
        chosen = location.default_state_dir(
            environ, system=SYSTEM_STATE_DIR, strict="database_url" not in given
        )
        values["state_dir"], sources["state_dir"] = chosen.path, f"default: {chosen.reason}"
    if "database_url" not in given:
        values["database_url"] = "sqlite:///smtpy.db"  # relative: in state_dir, once validated
    if "hostname" not in given:
        values["hostname"] = socket.getfqdn()
    return values


class SettingsConflict(ValueError):
    """A rule between settings is broken: it names them all, for the one-line error."""

    def __init__(self, names: tuple[str, ...], reason: str) -> None:
        super().__init__(reason)
        self.names = names


class Settings(BaseSettings):
    """Every setting smtpy reads. The field name in upper case with `SMTPY_` is its variable."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        enable_decoding=False,  # lists are comma-separated, parsed by the validators below
        extra="forbid",
        frozen=True,
    )

    secret_fields: ClassVar[frozenset[str]] = frozenset({"srs_secret", "relay_password"})

    state_dir: Path = Field(
        description="Directory for the default SQLite store and runtime files; an absolute path."
    )
    database_url: str = Field(
        description="sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DB; a relative "
        "SQLite PATH lies in state_dir, whatever the current directory.",
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
        description=(
            "Seconds between delivery attempts, comma-separated; the last repeats. Each delay "
            f"is 1 to {RETRY_MAX_DELAY} (a week), at most {RETRY_MAX_STEPS} of them."
        ),
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

    api_listen: HostPort = Field(
        default=("127.0.0.1", 8025),
        description=(
            "host:port where `smtpy api` serves the HTTP API and the dashboard (plain HTTP: "
            "put a TLS reverse proxy in front)."
        ),
    )
    public_url: str | None = Field(
        default=None,
        description=(
            "The URL users reach the API and dashboard at, e.g. https://mail.example.net: "
            "links in mail smtpy sends; https makes cookies Secure and __Host- prefixed."
        ),
    )
    mail_from: str | None = Field(
        default=None,
        description=(
            "The address of the mail smtpy sends itself (confirmations, password resets, "
            "invitations); default smtpy@<hostname>. Use a domain smtpy has a DKIM key for, "
            "so that this mail is signed."
        ),
    )
    signup: Literal["closed", "invite", "open"] = Field(
        default="closed",
        description=(
            "Who may create an account through the API: closed (the CLI and invitations "
            "only), invite (invitations), open (anyone, confirmed by e-mail)."
        ),
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description=(
            "Networks (CIDR) of reverse proxies whose X-Forwarded-For and X-Forwarded-Proto "
            "`smtpy api` believes; empty: none."
        ),
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description=(
            "Origins (scheme://host[:port]) allowed to call the API from a browser with "
            "API keys; empty: CORS off."
        ),
    )
    session_idle_timeout: int = Field(
        default=7200,
        ge=60,
        description="Seconds a dashboard session lasts without use.",
    )
    session_lifetime: int = Field(
        default=7 * 86400,
        ge=300,
        description="Seconds a dashboard session lasts at most, however much it is used.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments, the environment, the TOML file, then the machine's defaults."""
        origin = _loading.get() or Origin.of_process()
        sources: list[PydanticBaseSettingsSource] = [
            init_settings,
            Environment(settings_cls, origin),
        ]
        if origin.config_file is not None:
            sources.append(TomlFile(settings_cls, origin, origin.config_file))
        sources.append(MachineDefaults(settings_cls, origin))
        return tuple(sources)

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> Settings:
        if self.heartbeat_seconds * 3 > self.lease_seconds:
            raise SettingsConflict(
                ("heartbeat_seconds", "lease_seconds"),
                f"heartbeat_seconds ({self.heartbeat_seconds:g}) must be at most a third of "
                f"lease_seconds ({self.lease_seconds:g}), or a live node could lose its leases",
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

    @field_validator("api_listen", mode="before")
    @classmethod
    def _api_listen(cls, value: Any) -> Any:
        return parse_host_port(value, default_port=8025) if isinstance(value, str) else value

    @field_validator("public_url", mode="before")
    @classmethod
    def _public_url(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        text = str(value).strip().rstrip("/")
        if not re.fullmatch(r"https?://[^/\s?#]+(/[^\s?#]*)?", text):
            raise ValueError("expected an http:// or https:// URL, e.g. https://mail.example.net")
        return text

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins(cls, value: Any) -> Any:
        origins = [part.rstrip("/") for part in _split(value)]
        for origin in origins:
            if not re.fullmatch(r"https?://[^/\s?#]+", origin):
                raise ValueError(f"{origin!r} is not an origin (scheme://host[:port])")
        return origins

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

    @field_validator("mail_from", mode="before")
    @classmethod
    def _mail_from(cls, value: Any) -> Any:
        from smtpy.errors import InvalidInput
        from smtpy.mail.addresses import parse_address

        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        try:
            return str(parse_address(str(value)))
        except InvalidInput as exc:
            raise ValueError(str(exc)) from None

    @field_validator("limit_exempt_networks", "trusted_proxies", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> Any:
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
        if isinstance(value, str):
            parts = [part.strip() for part in value.split(",")]
            if parts == [""]:
                parts = []
        elif isinstance(value, list | tuple):
            parts = [str(part).strip() for part in value]
        else:
            return value  # pydantic names the wrong type
        if not parts:
            raise ValueError("needs at least one delay")
        if "" in parts:
            raise ValueError(
                f"delay {parts.index('') + 1} is empty; write whole seconds separated by "
                "commas, e.g. 60,300,900"
            )
        if len(parts) > RETRY_MAX_STEPS:
            raise ValueError(
                f"{len(parts)} delays, at most {RETRY_MAX_STEPS}: the last one repeats until "
                "queue_lifetime"
            )
        for part in parts:
            if not (part.isascii() and part.isdigit() and 1 <= int(part) <= RETRY_MAX_DELAY):
                raise ValueError(
                    f"delays are whole seconds from 1 to {RETRY_MAX_DELAY} (a week), not {part!r}"
                )
        return [int(part) for part in parts]

    @field_validator("state_dir")
    @classmethod
    def _state_dir(cls, value: Path) -> Path:
        path = value.expanduser()
        if not path.is_absolute():
            # Relative to the current directory, two commands run from two
            # directories would open two stores.
            raise ValueError(f"{str(value)!r} is relative: write an absolute path")
        return Path(os.path.normpath(path))

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str, info: ValidationInfo) -> str:
        if not value.startswith(
            ("sqlite:///", "postgresql://", "postgres://", "postgresql+psycopg://")
        ):
            raise ValueError("expected sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DB")
        path = value.removeprefix("sqlite:///")
        if value.startswith("sqlite:///") and not path.strip():
            raise ValueError("expected sqlite:///PATH: the path of the store is missing")
        state_dir = info.data.get("state_dir")  # absent if it was refused: that error is shown
        if value.startswith("sqlite:///") and not path.startswith("/") and state_dir is not None:
            # A relative path lies in the state directory, whatever the current one:
            # two commands run from different directories never open two stores.
            return f"sqlite:///{os.path.normpath(Path(state_dir) / path)}"
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


# -- the sources -------------------------------------------------------------------


@dataclass
class Origin:
    """What one load of the settings reads, and what it learns on the way."""

    environ: Mapping[str, str]
    config_file: Path | None
    sources: dict[str, str] = field(default_factory=dict)  # name -> "env NAME" / "file PATH"
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, config_path: str | Path | None, environ: Mapping[str, str]) -> Origin:
        """The file named by `config_path`, else SMTPY_CONFIG, else the system's if present."""
        path_text = str(config_path) if config_path else environ.get("SMTPY_CONFIG")
        config_file = Path(path_text) if path_text else None
        if config_file is None and SYSTEM_CONFIG.is_file():
            config_file = SYSTEM_CONFIG
        return cls(environ, config_file)

    @classmethod
    def of_process(cls) -> Origin:
        return cls.of(None, os.environ)


_loading: ContextVar[Origin | None] = ContextVar("smtpy_settings_origin", default=None)


def _closest(name: str, known: Iterable[str]) -> str | None:
    import difflib  # only for a name that is no setting

    matches = difflib.get_close_matches(name, list(known), n=1)
    return matches[0] if matches else None


class Environment(EnvSettingsSource):
    """`SMTPY_*` variables of `origin.environ`; notes their names and the unknown ones."""

    def __init__(self, settings_cls: type[BaseSettings], origin: Origin) -> None:
        super().__init__(settings_cls)
        self.origin = origin
        # The variables load() was given (os.environ unless its caller passes others),
        # matched in any case as pydantic-settings does with case_sensitive=False.
        self.env_vars = {var.lower(): value for var, value in origin.environ.items()}
        self.origin.warnings.extend(self._unknown())

    def _unknown(self) -> list[str]:
        names = self.settings_cls.model_fields
        found = []
        for var in sorted(self.origin.environ):
            upper = var.upper()
            if not upper.startswith(ENV_PREFIX) or upper in NOT_SETTINGS:
                continue
            if upper.startswith(NOT_SETTINGS_PREFIX) or upper[len(ENV_PREFIX) :].lower() in names:
                continue
            closest = _closest(upper[len(ENV_PREFIX) :].lower(), names)
            hint = (
                f"did you mean {ENV_PREFIX}{closest.upper()}?"
                if closest
                else "see `smtpy config show`"
            )
            found.append(f"{var} is not a setting and is ignored; {hint}")
        return found

    def __call__(self) -> dict[str, Any]:
        values = super().__call__()
        spelled = {var.upper(): var for var in self.origin.environ}
        for name in values:
            var = ENV_PREFIX + name.upper()
            self.origin.sources[name] = f"env {spelled.get(var, var)}"
        return values


class TomlFile(TomlConfigSettingsSource):
    """The TOML file: flat or inside an `[smtpy]` table; an unknown key is an error."""

    def __init__(self, settings_cls: type[BaseSettings], origin: Origin, path: Path) -> None:
        self.origin = origin
        self.path = path
        self.names = frozenset(settings_cls.model_fields)  # _read_file runs in super().__init__
        if not self.path.is_file():
            missing = "is not a file" if self.path.exists() else "does not exist"
            raise ConfigError(f"config file {self.path} {missing}")
        super().__init__(settings_cls, toml_file=self.path)

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        import tomllib  # only when there is a file

        path = self.path  # as the user wrote it, in the messages
        try:
            with Path(file_path).open("rb") as handle:
                data = tomllib.load(handle)
        except PermissionError:
            raise ConfigError(f"config file {path} is not readable by this user") from None
        except OSError as exc:
            raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        section = data.get("smtpy", data)
        if not isinstance(section, dict):
            raise ConfigError(f"config file {path}: [smtpy] must be a table")
        for key in section:
            if key not in self.names:
                closest = _closest(key.lower().removeprefix("smtpy_"), self.names)
                hint = f" (did you mean {closest!r}?)" if closest else ""
                raise ConfigError(f"{path}: unknown setting {key!r}{hint}; see `man smtpy.toml`")
        return section

    def __call__(self) -> dict[str, Any]:
        values = super().__call__()
        for name in values:
            self.origin.sources.setdefault(name, f"file {self.path}")  # the environment wins
        return values


class MachineDefaults(PydanticBaseSettingsSource):
    """The defaults that depend on the machine or on another setting (`machine_defaults`)."""

    def __init__(self, settings_cls: type[BaseSettings], origin: Origin) -> None:
        super().__init__(settings_cls)
        self.origin = origin

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ computes the values together

    def __call__(self) -> dict[str, Any]:
        return machine_defaults(self.current_state, self.origin.environ, self.origin.sources)


# -- loading -------------------------------------------------------------------------


class LoadedSettings:
    """Settings plus where each value came from ('default', 'file PATH' or 'env NAME')
    and the warnings about variables that are no setting."""

    def __init__(
        self,
        settings: Settings,
        sources: dict[str, str],
        config_file: Path | None,
        warnings: list[str] | None = None,
    ) -> None:
        self.settings = settings
        self.sources = sources
        self.config_file = config_file
        self.warnings = warnings or []


def load(
    config_path: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> LoadedSettings:
    """Read the environment and the TOML file over the defaults; ConfigError on bad values."""
    origin = Origin.of(config_path, os.environ if environ is None else environ)
    token = _loading.set(origin)
    try:
        settings = Settings()  # type: ignore[call-arg]  # the sources supply every field
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origin.sources)) from None
    finally:
        _loading.reset(token)
    sources = {name: origin.sources.get(name, "default") for name in Settings.model_fields}
    return LoadedSettings(settings, sources, origin.config_file, origin.warnings)


def _describe(exc: ValidationError, sources: Mapping[str, str]) -> str:
    """The first error as one line: `setting NAME (SOURCE): reason`, or `settings A (…) and B (…): …`."""
    error = exc.errors()[0]
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, SettingsConflict):
        names = cause.names
    else:
        names = (str(error["loc"][0]),) if error["loc"] else ()
    reason = str(error["msg"]).removeprefix("Value error, ")
    where = " and ".join(f"{name} ({sources.get(name, 'default')})" for name in names)
    if len(names) == 1:
        return f"setting {where}: {reason}"
    return f"settings {where}: {reason}" if names else f"settings: {reason}"
