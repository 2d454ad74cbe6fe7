"""`smtpy doctor`: check that this machine can run smtpy well, and say what to fix.

Each check returns findings (`ok`, `warn` or `fail`), each with what to do
about it; `smtpy doctor` exits 1 when one of them failed:

    config     the settings and the files they name (`config_check`)
    store      reachable, schema current
    dns        every resolver answers
    listen     SMTPY_LISTEN and SMTPY_METRICS_LISTEN ports are free, or held by smtpy
    tls        the inbound certificate is readable, names SMTPY_HOSTNAME, not about to expire
    hostname   SMTPY_HOSTNAME resolves (A/AAAA) and each address points back (PTR)

Checks only read: nothing is created or changed, not even a missing SQLite store.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from smtpy.config import Settings

__all__ = ["CERT_WARN_DAYS", "Finding", "run_checks"]

Status = Literal["ok", "warn", "fail"]
CERT_WARN_DAYS = 14
PROBE_TIMEOUT = 3.0


@dataclass(frozen=True)
class Finding:
    check: str
    status: Status
    message: str
    fix: str | None = None

    def public(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "status": self.status,
            "message": self.message,
            "fix": self.fix,
        }


def run_checks(settings: Settings, *, now: datetime | None = None) -> list[Finding]:
    """Every finding about this setup, in the order above."""
    findings = check_config(settings)
    findings += check_store(settings.database_url)
    findings += check_resolvers(settings)
    findings += check_listen(settings)
    findings += check_certificate(settings, now=now or datetime.now(UTC))
    findings += check_hostname(settings)
    return findings


# -- config and store ---------------------------------------------------------------


def check_config(settings: Settings) -> list[Finding]:
    from smtpy.admin.config_check import check_settings

    problems = check_settings(settings)
    if not problems:
        return [Finding("config", "ok", "the settings are valid")]
    fix = "correct the setting in the TOML file or the environment; see `smtpy config show`"
    return [Finding("config", "fail", problem, fix) for problem in problems]


def check_store(url: str) -> list[Finding]:
    from smtpy.config import mask_url
    from smtpy.errors import StoreError
    from smtpy.store.db import SCHEMA_REVISION, Database, sqlite_path

    shown = mask_url(url)
    if url.startswith("sqlite:") and not sqlite_path(url).exists():
        return [
            Finding(
                "store",
                "warn",
                f"the SQLite store {sqlite_path(url)} does not exist yet",
                "`smtpy serve` or `smtpy db upgrade` creates it",
            )
        ]
    try:
        with Database(url, check_schema=False) as db:
            revision = db.schema_revision()
            dialect = db.dialect
    except StoreError as exc:
        return [
            Finding(
                "store",
                "fail",
                f"cannot open the store {shown}: {exc}",
                "check SMTPY_DATABASE_URL, and that the database server runs and lets this user in",
            )
        ]
    if revision == SCHEMA_REVISION:
        return [Finding("store", "ok", f"{shown} is reachable, schema {revision} is current")]
    found = "no smtpy schema" if revision is None else f"schema {revision}"
    message = f"{shown} has {found}; this smtpy needs {SCHEMA_REVISION}"
    if dialect == "sqlite" and (revision is None or revision < SCHEMA_REVISION):
        return [Finding("store", "warn", message, "`smtpy serve` upgrades it at start")]
    return [Finding("store", "fail", message, "run `smtpy db upgrade`")]


# -- DNS ---------------------------------------------------------------------------


def _resolver(settings: Settings, nameservers: Sequence[tuple[str, int]] | None = None) -> Any:
    from smtpy.dns import make_sync_resolver

    return make_sync_resolver(
        nameservers if nameservers is not None else settings.dns_nameservers,
        timeout=settings.dns_timeout,
    )


def check_resolvers(settings: Settings) -> list[Finding]:
    from smtpy.dns import lookup
    from smtpy.errors import ConfigError

    try:
        servers: list[tuple[str, int]] = list(settings.dns_nameservers or [])
        if not servers:
            system = _resolver(settings)
            servers = [(str(ns), int(system.port)) for ns in system.nameservers]
    except ConfigError as exc:
        return [Finding("dns", "fail", str(exc), "set SMTPY_DNS_NAMESERVERS")]
    findings = []
    for address, port in servers:
        where = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        result = lookup(_resolver(settings, [(address, port)]), settings.hostname, "A")
        if result.status == "timeout":
            findings.append(
                Finding(
                    "dns",
                    "fail",
                    f"resolver {where} does not answer ({result.detail})",
                    "start that resolver or fix SMTPY_DNS_NAMESERVERS; without DNS no mail moves",
                )
            )
        elif result.status in ("servfail", "error"):
            findings.append(
                Finding(
                    "dns",
                    "warn",
                    f"resolver {where} answers with an error: {result.detail}",
                    "check that it resolves public names (recursion allowed for this host)",
                )
            )
        else:
            findings.append(Finding("dns", "ok", f"resolver {where} answers"))
    return findings


def check_hostname(settings: Settings) -> list[Finding]:
    """Forward-confirmed reverse DNS of SMTPY_HOSTNAME: A/AAAA, then PTR of each address."""
    import dns.reversename

    from smtpy.dns import lookup

    name = settings.hostname
    if "." not in name:
        return []  # `config` already failed it
    resolver = _resolver(settings)
    addresses: list[str] = []
    for rtype in ("A", "AAAA"):
        result = lookup(resolver, name, rtype)
        if result.status == "found":
            addresses.extend(result.values)
        elif result.status != "missing":
            return [
                Finding(
                    "hostname",
                    "fail",
                    f"cannot look up {rtype} of SMTPY_HOSTNAME {name}: {result.detail}",
                    "fix DNS first (see the dns findings)",
                )
            ]
    if not addresses:
        return [
            Finding(
                "hostname",
                "fail",
                f"SMTPY_HOSTNAME {name} has no A or AAAA record",
                f"publish an A (and AAAA) record for {name} with this server's public address",
            )
        ]
    findings = []
    for address in addresses:
        reverse = dns.reversename.from_address(address).to_text(omit_final_dot=True)
        result = lookup(resolver, reverse, "PTR")
        names = [value.rstrip(".").lower() for value in result.values]
        if result.status == "found" and name in names:
            findings.append(Finding("hostname", "ok", f"{name} → {address} → {name}"))
        elif result.status in ("found", "missing"):
            found = ", ".join(names) if names else "no PTR record"
            findings.append(
                Finding(
                    "hostname",
                    "fail",
                    f"{name} resolves to {address}, whose reverse DNS is {found}, not {name}",
                    f"ask whoever runs {address} (hosting provider) to set its PTR to {name}; "
                    "receivers distrust mail from addresses without matching reverse DNS",
                )
            )
        else:
            findings.append(
                Finding(
                    "hostname",
                    "warn",
                    f"cannot look up the reverse DNS of {address}: {result.detail}",
                    "check the resolvers",
                )
            )
    return findings


# -- ports ---------------------------------------------------------------------------


def _probe_address(host: str) -> str:
    """Where to connect to reach a listener bound on `host` (a wildcard means loopback)."""
    if host in ("", "0.0.0.0"):  # noqa: S104 - recognising the wildcard, not binding it
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def _bind_state(host: str, port: int) -> int:
    """0 when the port could be bound now, else the errno."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno or errno.EADDRINUSE
    return 0


def _smtp_banner(host: str, port: int) -> bytes:
    with socket.create_connection((_probe_address(host), port), timeout=PROBE_TIMEOUT) as sock:
        banner = sock.recv(512)
        with contextlib.suppress(OSError):
            sock.sendall(b"QUIT\r\n")
        return banner


def _http_metrics(host: str, port: int) -> bytes:
    with socket.create_connection((_probe_address(host), port), timeout=PROBE_TIMEOUT) as sock:
        sock.sendall(b"GET /metrics HTTP/1.0\r\nHost: smtpy\r\n\r\n")
        data = b""
        while len(data) < 1 << 20:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def _is_smtpy_smtp(banner: bytes) -> bool:
    return banner.startswith(b"220 ") and b" smtpy" in banner.split(b"\r\n")[0]


def _is_smtpy_metrics(response: bytes) -> bool:
    return b"smtpy_smtp_sessions_total" in response


def _check_port(
    what: str,
    host: str,
    port: int,
    probe: Callable[[str, int], bytes],
    ours: Callable[[bytes], bool],
) -> Finding:
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    error = _bind_state(host, port)
    if error == 0:
        return Finding("listen", "ok", f"{what} {where} is free")
    if error == errno.EACCES:
        return Finding(
            "listen",
            "warn",
            f"{what} {where}: this user may not bind ports below 1024",
            "run `smtpy serve` under systemd with CAP_NET_BIND_SERVICE (the shipped unit does), or as root",
        )
    if error == errno.EADDRNOTAVAIL:
        return Finding(
            "listen",
            "fail",
            f"{what} {where}: no such address on this machine",
            "use an address of this machine, or 0.0.0.0 / [::] for all of them",
        )
    if error != errno.EADDRINUSE:
        return Finding("listen", "fail", f"{what} {where}: {errno.errorcode.get(error, error)}")
    try:
        answer = probe(host, port)
    except OSError:
        answer = b""
    if ours(answer):
        return Finding("listen", "ok", f"{what} {where} is held by a running smtpy")
    return Finding(
        "listen",
        "fail",
        f"{what} {where} is in use by another program",
        f"stop it (see `ss -ltnp 'sport = :{port}'`) or choose another address",
    )


def check_listen(settings: Settings) -> list[Finding]:
    findings = [
        _check_port("SMTPY_LISTEN", host, port, _smtp_banner, _is_smtpy_smtp)
        for host, port in settings.listen
    ]
    if settings.metrics_listen is not None:
        host, port = settings.metrics_listen
        findings.append(
            _check_port("SMTPY_METRICS_LISTEN", host, port, _http_metrics, _is_smtpy_metrics)
        )
    return findings


# -- TLS certificate ----------------------------------------------------------------


def _names(cert: Any) -> list[str]:
    from cryptography import x509

    try:
        extension = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [str(name).lower() for name in extension.value.get_values_for_type(x509.DNSName)]


def check_certificate(settings: Settings, *, now: datetime) -> list[Finding]:
    from cryptography import x509

    from smtpy.outbound.tls_policy import mx_matches

    path: Path | None = settings.tls_cert
    if path is None:
        return [
            Finding(
                "tls",
                "warn",
                "no certificate: inbound STARTTLS is off, senders deliver in clear text",
                "set SMTPY_TLS_CERT and SMTPY_TLS_KEY (e.g. a Let's Encrypt certificate for "
                f"{settings.hostname})",
            )
        ]
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        return [
            Finding(
                "tls",
                "fail",
                f"SMTPY_TLS_CERT {path} cannot be read as a PEM certificate: {exc}",
                "point SMTPY_TLS_CERT at the full-chain PEM file",
            )
        ]
    findings = []
    expires = cert.not_valid_after_utc
    days = (expires - now).total_seconds() / 86400
    until = expires.strftime("%Y-%m-%d %H:%M UTC")
    renew = "renew it (certbot renew), then `systemctl reload smtpy` (SIGHUP reloads it)"
    if cert.not_valid_before_utc > now:
        findings.append(
            Finding(
                "tls",
                "fail",
                f"the certificate {path} is not valid before {cert.not_valid_before_utc:%Y-%m-%d}",
                "check the clock and the certificate",
            )
        )
    elif days < 0:
        findings.append(Finding("tls", "fail", f"the certificate {path} expired on {until}", renew))
    elif days < CERT_WARN_DAYS:
        findings.append(
            Finding(
                "tls", "warn", f"the certificate {path} expires in {days:.0f} days ({until})", renew
            )
        )
    else:
        findings.append(
            Finding("tls", "ok", f"the certificate is valid until {until} ({days:.0f} days)")
        )
    names = _names(cert)
    if not mx_matches(settings.hostname, names):  # the same wildcard rule as RFC 8461
        findings.append(
            Finding(
                "tls",
                "warn",
                f"the certificate does not name SMTPY_HOSTNAME {settings.hostname} "
                f"(it names {', '.join(names) or 'nothing in subjectAltName'})",
                f"get a certificate for {settings.hostname}; MTA-STS senders check it",
            )
        )
    return findings
