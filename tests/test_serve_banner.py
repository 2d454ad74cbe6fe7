"""`smtpy serve` says who it is in its first lines, and warns about a hostname no MX can use
(issue 19, point 5). The rule is pure; the rest runs the real daemon against the loopback
DNS server."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest

from dnsserver import DNSServer
from mailpeers import Serve
from smtpy.runtime.banner import hostname_problems, needs_lookup

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("name", ["localhost", "localhost.localdomain", "mx.localhost"])
def test_a_localhost_name_is_unfit_without_a_lookup(name: str) -> None:
    assert not needs_lookup(name)
    [problem] = hostname_problems(name, None)
    assert problem.startswith(f"{name} names this machine only")
    assert "SMTPY_HOSTNAME" in problem


def test_a_name_without_a_dot_is_unfit_without_a_lookup() -> None:
    assert not needs_lookup("mailbox")
    [problem] = hostname_problems("mailbox", None)
    assert problem.startswith("mailbox has no dot")


def test_a_name_with_no_address_is_unfit() -> None:
    [problem] = hostname_problems("mx.example.org", [])
    assert problem.startswith("mx.example.org has no A or AAAA record")


def test_a_name_with_only_loopback_addresses_is_unfit() -> None:
    [problem] = hostname_problems("mx.example.org", ["127.0.1.1", "::1"])
    assert "resolves only to loopback (127.0.1.1, ::1)" in problem


def test_a_name_with_a_public_address_is_fine() -> None:
    assert needs_lookup("mx.example.org")
    assert hostname_problems("mx.example.org", ["192.0.2.25", "127.0.0.1"]) == []


def test_a_failed_lookup_is_said() -> None:
    [problem] = hostname_problems("mx.example.org", None, "no answer from the resolver within 2s")
    assert problem == (
        "could not check the address of mx.example.org: no answer from the resolver within 2s"
    )


def serve(tmp_path: Path, nameserver: str, **settings: str) -> Serve:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMTPY_")}
    env.update(
        {
            "SMTPY_DATABASE_URL": f"sqlite:///{tmp_path / 'smtpy.db'}",
            "SMTPY_DNS_NAMESERVERS": nameserver,
            "SMTPY_PROCESSES": "1",
            "HOME": str(tmp_path),
            **{f"SMTPY_{name.upper()}": value for name, value in settings.items()},
        }
    )
    daemon = Serve(env, tmp_path / "serve.log")
    daemon.start()
    assert daemon.stop() == 0
    return daemon


def first_events(daemon: Serve) -> list[dict[str, Any]]:
    events = daemon.events()
    names = [e["event"] for e in events]
    return events[: names.index("started")]


def test_serve_names_hostname_store_listeners_and_processes_first(
    tmp_path: Path, dns_server: DNSServer
) -> None:
    dns_server.add("mx.forwarder.test", "A", "192.0.2.25")
    daemon = serve(tmp_path, dns_server.nameserver, hostname="mx.forwarder.test")
    [starting] = first_events(daemon)  # no warning: the name has a public address
    assert starting["event"] == "starting"
    assert starting["hostname"] == "mx.forwarder.test"
    assert starting["store"] == f"sqlite:///{tmp_path / 'smtpy.db'}"
    assert starting["listen"] == f"127.0.0.1:{daemon.port}"
    assert starting["processes"] == 1


@pytest.mark.parametrize(
    ("hostname", "expected"),
    [
        ("localhost", "localhost names this machine only"),
        ("mailbox", "mailbox has no dot"),
        ("mx.forwarder.test", "mx.forwarder.test has no A or AAAA record"),
    ],
)
def test_serve_warns_about_a_hostname_no_mx_can_use(
    tmp_path: Path, dns_server: DNSServer, hostname: str, expected: str
) -> None:
    daemon = serve(tmp_path, dns_server.nameserver, hostname=hostname)
    starting, warning = first_events(daemon)
    assert starting["event"] == "starting"
    assert warning["event"] == "hostname_unfit"
    assert warning["level"] == "warning"
    assert warning["problem"].startswith(expected)


def test_a_silent_resolver_is_said_and_start_goes_on(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # takes queries, never answers
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        daemon = serve(tmp_path, f"127.0.0.1:{port}", hostname="mx.forwarder.test")
    _starting, warning = first_events(daemon)
    assert warning["problem"] == (
        "could not check the address of mx.forwarder.test: no answer from the resolver within 2s"
    )
    assert daemon.events("started")
