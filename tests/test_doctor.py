"""`smtpy doctor` through the real CLI: real DNS on loopback, real certificates, real sockets."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Cli
from dnsserver import DNSServer
from mailpeers import HOSTNAME, free_port
from testca import TestCA


def doctor(cli: Cli, **settings: str) -> tuple[int, dict[str, Any]]:
    env = {**cli.env, **{f"SMTPY_{k.upper()}": v for k, v in settings.items()}}
    result = Cli(env)("doctor", "--json")
    assert result.code in (0, 1), result.stderr
    data = json.loads(result.stdout)
    assert data["ok"] == (result.code == 0)
    return result.code, data


def by_check(data: dict[str, Any], check: str) -> list[dict[str, Any]]:
    return [f for f in data["findings"] if f["check"] == check]


def statuses(data: dict[str, Any]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for finding in data["findings"]:
        found.setdefault(finding["check"], set()).add(finding["status"])
    return found


@pytest.fixture
def good(cli: Cli, dns_server: DNSServer, tmp_path: Path) -> dict[str, str]:
    """Settings under which every check passes: FCrDNS, a valid certificate, free ports."""
    dns_server.add(HOSTNAME, "A", "127.0.0.1")
    dns_server.add("1.0.0.127.in-addr.arpa", "PTR", f"{HOSTNAME}.")
    cert, key = TestCA(tmp_path / "ca").issue([HOSTNAME], days=90)
    assert cli("db", "upgrade").code == 0
    return {
        "listen": f"127.0.0.1:{free_port()}",
        "metrics_listen": f"127.0.0.1:{free_port()}",
        "tls_cert": str(cert),
        "tls_key": str(key),
    }


def test_a_good_setup_passes(cli: Cli, good: dict[str, str]) -> None:
    code, data = doctor(cli, **good)
    assert code == 0, data
    assert statuses(data) == {
        "config": {"ok"},
        "store": {"ok"},
        "dns": {"ok"},
        "listen": {"ok"},
        "tls": {"ok"},
        "hostname": {"ok"},
    }
    [hostname] = by_check(data, "hostname")
    assert hostname["message"] == f"{HOSTNAME} → 127.0.0.1 → {HOSTNAME}"
    text = Cli({**cli.env, **{f"SMTPY_{k.upper()}": v for k, v in good.items()}})("doctor")
    assert text.code == 0
    assert "schema" in text.stdout and "is current" in text.stdout


def test_reverse_dns_mismatch_and_missing_fail(
    cli: Cli, good: dict[str, str], dns_server: DNSServer
) -> None:
    dns_server.remove("1.0.0.127.in-addr.arpa")
    dns_server.add("1.0.0.127.in-addr.arpa", "PTR", "somebody-else.test.")
    code, data = doctor(cli, **good)
    assert code == 1
    [finding] = by_check(data, "hostname")
    assert finding["status"] == "fail"
    assert "somebody-else.test" in finding["message"]
    assert "PTR" in finding["fix"]

    dns_server.remove("1.0.0.127.in-addr.arpa")
    code, data = doctor(cli, **good)
    assert code == 1
    assert "no PTR record" in by_check(data, "hostname")[0]["message"]

    dns_server.remove(HOSTNAME)
    code, data = doctor(cli, **good)
    assert code == 1
    assert "has no A or AAAA record" in by_check(data, "hostname")[0]["message"]


def test_certificate_expiry(cli: Cli, good: dict[str, str], tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "ca2")
    soon, soon_key = ca.issue([HOSTNAME], days=5)
    code, data = doctor(cli, **{**good, "tls_cert": str(soon), "tls_key": str(soon_key)})
    assert code == 0  # a warning, not a failure
    [finding] = by_check(data, "tls")
    assert finding["status"] == "warn"
    assert "expires in" in finding["message"] and "renew" in finding["fix"]

    other, other_key = ca.issue(["other.test"], days=90)
    code, data = doctor(cli, **{**good, "tls_cert": str(other), "tls_key": str(other_key)})
    assert [f["status"] for f in by_check(data, "tls")] == ["ok", "warn"]
    assert "does not name SMTPY_HOSTNAME" in by_check(data, "tls")[1]["message"]


def test_expired_certificate_fails(cli: Cli, good: dict[str, str], tmp_path: Path) -> None:
    expired, key = TestCA(tmp_path / "ca3").issue([HOSTNAME], days=-0.5)
    code, data = doctor(cli, **{**good, "tls_cert": str(expired), "tls_key": str(key)})
    assert code == 1
    assert any(f["status"] == "fail" and "expired" in f["message"] for f in by_check(data, "tls"))


@pytest.fixture
def busy_port() -> Iterator[tuple[int, list[bytes]]]:
    """A listener on 127.0.0.1 that greets like `banner[0]` (set by the test)."""
    banner = [b"220 other.test ESMTP Postfix\r\n"]
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(banner[0])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], banner
    finally:
        stop.set()
        thread.join(5)
        server.close()


def test_busy_port_is_ours_or_not(
    cli: Cli, good: dict[str, str], busy_port: tuple[int, list[bytes]]
) -> None:
    port, banner = busy_port
    code, data = doctor(cli, **{**good, "listen": f"127.0.0.1:{port}"})
    assert code == 1
    [finding] = [f for f in by_check(data, "listen") if "SMTPY_LISTEN" in f["message"]]
    assert finding["status"] == "fail"
    assert "in use by another program" in finding["message"]

    banner[0] = f"220 {HOSTNAME} smtpy\r\n".encode()  # what `smtpy serve` says
    code, data = doctor(cli, **{**good, "listen": f"127.0.0.1:{port}"})
    assert code == 0
    [finding] = [f for f in by_check(data, "listen") if "SMTPY_LISTEN" in f["message"]]
    assert finding["message"].endswith("is held by a running smtpy")


def test_unreachable_resolver_and_store(cli: Cli, good: dict[str, str]) -> None:
    code, data = doctor(
        cli,
        **good,
        dns_nameservers=f"127.0.0.1:{free_port()}",
        dns_timeout="1",
        database_url="postgresql://smtpy:wrong@127.0.0.1:1/nothing",
    )
    assert code == 1
    [dns] = by_check(data, "dns")
    assert dns["status"] == "fail" and "does not answer" in dns["message"]
    [store] = by_check(data, "store")
    assert store["status"] == "fail" and "SMTPY_DATABASE_URL" in store["fix"]
    assert "wrong" not in store["message"]  # the password is masked


def test_bad_settings_are_one_finding(cli: Cli) -> None:
    code, data = doctor(cli, listen="nonsense")
    assert code == 1
    [finding] = data["findings"]
    assert finding["check"] == "config" and "listen" in finding["message"]
