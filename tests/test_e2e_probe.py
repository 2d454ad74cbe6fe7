"""`smtpy test ADDRESS` against the real daemon and real MX hosts (issue 19, point 6).

The probe goes through a running `smtpy serve` to a sink MX on loopback
(tests/mailpeers.py); the command must say each step and the remote reply,
exit 0 only when the MX took the message, and say where and why it is stuck
otherwise. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Cli
from dnsserver import DNSServer
from mailpeers import DEST1, DOMAIN, Forwarder, Serve, forwarding_world

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture
def forwarder(
    cli: Cli, cli_env: dict[str, str], dns_server: DNSServer, tmp_path: Path
) -> Iterator[Forwarder]:
    with forwarding_world(cli, cli_env, dns_server, tmp_path) as world:
        yield world


def unstarted(forwarder: Forwarder) -> Serve:
    """A daemon's settings, with no daemon started."""
    daemon = forwarder.serve()
    forwarder.daemons.remove(daemon)  # nothing to stop at the end
    return daemon


def probe_cli(daemon: Serve) -> Cli:
    """The CLI with the daemon's own settings (its listener among them)."""
    return Cli(dict(daemon.env))


def test_a_delivered_probe_shows_every_step_and_the_remote_reply(forwarder: Forwarder) -> None:
    forwarder.alias(f"team@{DOMAIN}", "bob@dest1.test")
    forwarder.peers.data_reply = "250 2.0.0 Ok: queued as SINK42"
    daemon = forwarder.start()
    result = probe_cli(daemon)("test", f"team@{DOMAIN}")
    assert result.code == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    steps = [line.split()[1] for line in lines if line.startswith(("ok ", "FAIL"))]
    assert steps == ["daemon:", "accepted:", "route:", "srs:", "signed:", "sealed:", "delivered:"]
    assert f"team@{DOMAIN} → bob@dest1.test" in result.stdout
    assert f"envelope sender smtpy-test@{DOMAIN} → SRS0=" in result.stdout
    assert f"DKIM d={DOMAIN} s=" in result.stdout
    [delivered] = [line for line in lines if line.startswith("ok   delivered:")]
    assert f"bob@dest1.test via mx.dest1.test[{DEST1}]" in delivered
    assert delivered.endswith("250 2.0.0 Ok: queued as SINK42")
    assert "forwarding works" in result.stdout
    [message] = forwarder.peers.wait_for(lambda got: got)
    assert message.rcpt_tos == ("bob@dest1.test",)
    assert message.mail_from.startswith("SRS0=")
    assert message.message["Subject"].startswith("smtpy test ")
    assert forwarder.dkim_ok(message.data)


def test_a_domain_with_dmarc_reject_and_strict_spf_still_passes_the_probe(
    forwarder: Forwarder,
) -> None:
    # The probe comes from loopback, which SPF does not allow: only its DKIM signature
    # (the domain's own key) lets it through the daemon's DMARC check.
    forwarder.dns.remove(DOMAIN, "TXT")
    forwarder.dns.add(DOMAIN, "TXT", "v=spf1 -all")
    forwarder.dns.remove(f"_dmarc.{DOMAIN}", "TXT")
    forwarder.dns.add(f"_dmarc.{DOMAIN}", "TXT", "v=DMARC1; p=reject")
    forwarder.alias(f"team@{DOMAIN}", "bob@dest1.test")
    daemon = forwarder.start()
    result = probe_cli(daemon)("test", f"team@{DOMAIN}", "--json")
    assert result.code == 0, result.stdout + result.stderr
    [message] = forwarder.peers.wait_for(lambda got: got)
    assert "dmarc=pass" in message.message["Authentication-Results"]


def test_the_json_report_holds_the_queue_id_and_each_step(forwarder: Forwarder) -> None:
    forwarder.alias(f"team@{DOMAIN}", "bob@dest1.test")
    daemon = forwarder.start()
    result = probe_cli(daemon)("test", f"team@{DOMAIN}", "--json")
    assert result.code == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["delivered"] is True
    assert report["advice"] == []
    [message] = forwarder.peers.wait_for(lambda got: got)
    queue_ids = [s for s in report["steps"] if s["step"] == "accepted"]
    assert queue_ids[0]["reply"] == f"250 2.0.0 Ok: queued as {report['queue_id']}"
    [delivered] = [s for s in report["steps"] if s["step"] == "delivered"]
    assert delivered["recipient"] == "bob@dest1.test"
    assert delivered["code"] == 250
    [srs] = [s for s in report["steps"] if s["step"] == "srs"]
    assert srs["envelope_sender"] == message.mail_from


def test_a_utf8_alias_is_probed_with_smtputf8(forwarder: Forwarder) -> None:
    forwarder.alias(f"josé@{DOMAIN}", "bob@dest1.test")
    daemon = forwarder.start()
    result = probe_cli(daemon)("test", f"josé@{DOMAIN}")
    assert result.code == 0, result.stdout + result.stderr
    assert f"josé@{DOMAIN} → bob@dest1.test" in result.stdout
    [message] = forwarder.peers.wait_for(lambda got: got)
    assert "SMTPUTF8" in message.mail_options


def test_an_mx_that_refuses_is_named_with_its_reply_and_exit_1(forwarder: Forwarder) -> None:
    forwarder.alias(f"team@{DOMAIN}", "eve@dest1.test")
    forwarder.peers.script("eve@dest1.test", "550 5.1.1 No such user here", repeat=True)
    daemon = forwarder.start()
    result = probe_cli(daemon)("test", f"team@{DOMAIN}")
    assert result.code == 1, result.stdout + result.stderr
    [bounced] = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert bounced.startswith("FAIL bounced:")
    assert f"eve@dest1.test via mx.dest1.test[{DEST1}]" in bounced
    assert "550" in bounced
    assert "No such user here" in bounced
    assert "forwarding works" not in result.stdout


def test_a_deferral_is_named_with_its_reason_and_exit_1(forwarder: Forwarder) -> None:
    forwarder.alias(f"team@{DOMAIN}", "bob@dest1.test")
    forwarder.peers.script("bob@dest1.test", "451 4.3.0 Greylisted, come back later", repeat=True)
    daemon = forwarder.start()
    result = probe_cli(daemon)("test", f"team@{DOMAIN}", "--json")
    assert result.code == 1, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["delivered"] is False
    last = report["steps"][-1]
    assert last["step"] == "deferred"
    assert "Greylisted, come back later" in last["reply"]
    assert f"smtpy queue show {report['queue_id']}" in report["advice"][-1]


def test_an_unknown_recipient_is_refused_by_the_daemon_and_exit_1(forwarder: Forwarder) -> None:
    forwarder.alias(f"team@{DOMAIN}", "bob@dest1.test")
    daemon = forwarder.start()
    result = probe_cli(daemon)("test", f"nobody@{DOMAIN}")
    assert result.code == 1, result.stdout + result.stderr
    assert f"FAIL accepted:  recipient nobody@{DOMAIN} refused: 550" in result.stdout
    assert "smtpy route explain" in result.stdout
    assert forwarder.peers.received == []


def test_a_daemon_on_another_store_is_named(forwarder: Forwarder, tmp_path: Path) -> None:
    """The silent second store: the daemon takes the probe, this store never hears of it."""
    forwarder.alias(f"team@{DOMAIN}", "bob@dest1.test")
    daemon = forwarder.start()
    other = Cli({**daemon.env, "SMTPY_DATABASE_URL": f"sqlite:///{tmp_path / 'other.db'}"})
    assert other("domain", "add", DOMAIN).code == 0
    result = other("test", f"team@{DOMAIN}", "--json")
    assert result.code == 1, result.stdout + result.stderr
    report = json.loads(result.stdout)
    last = report["steps"][-1]
    assert last["step"] == "route"
    assert last["detail"] == (
        f"the daemon accepted {report['queue_id']}, but this store has no record of it: "
        "the daemon uses another store"
    )
    assert "SMTPY_DATABASE_URL" in report["advice"][-1]


def test_no_daemon_running_is_said_and_exit_1(forwarder: Forwarder) -> None:
    forwarder.alias(f"team@{DOMAIN}", "bob@dest1.test")
    daemon = unstarted(forwarder)
    result = probe_cli(daemon)("test", f"team@{DOMAIN}")
    assert result.code == 1, result.stdout + result.stderr
    [line] = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert line.startswith(f"FAIL daemon:    no smtpy serve answers on 127.0.0.1:{daemon.port}")
    assert "start the daemon" in result.stdout


@pytest.mark.parametrize(
    "args", [("not an address",), (f"team@{DOMAIN}", "--timeout", "0")], ids=["address", "timeout"]
)
def test_bad_input_exits_2(forwarder: Forwarder, args: tuple[str, ...]) -> None:
    result = probe_cli(unstarted(forwarder))("test", *args)
    assert result.code == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
