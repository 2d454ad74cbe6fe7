"""End-to-end: the message log, stats and status filled by the real `smtpy serve`.

One known traffic mix goes through the daemon (forwarded, deferred then
delivered, bounced, discarded, rejected at RCPT for two reasons); `smtpy log`,
`smtpy stats` and `smtpy status` must then tell exactly that story. Every test
runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Cli
from dnsserver import DNSServer
from mailpeers import DOMAIN, SENDER, Forwarder, forwarding_world, make_message, send, smtp_client
from smtpy.admin.messages import LogFilter, recent
from smtpy.admin.organizations import resolve_organization
from smtpy.store.db import Database

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture
def forwarder(
    cli: Cli, cli_env: dict[str, str], dns_server: DNSServer, tmp_path: Path
) -> Iterator[Forwarder]:
    with forwarding_world(cli, cli_env, dns_server, tmp_path) as world:
        yield world


def new_id() -> str:
    return f"<{uuid.uuid4().hex}@sender.test>"


def wait_for_log(
    url: str, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 30.0
) -> list[dict[str, Any]]:
    """Poll the store's message log until `predicate(rows)` holds; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    with Database(url) as db:
        org = resolve_organization(db=db).id
        while True:
            rows = recent(db=db, org=org, flt=LogFilter(), limit=10_000)
            if predicate(rows):
                return rows
            if time.monotonic() > deadline:
                summary = [(r["event"], r["alias"], r["recipient"], r["reason"]) for r in rows]
                raise AssertionError(f"the log never got there: {summary}")
            time.sleep(0.2)


def log_json(forwarder: Forwarder, *args: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in forwarder.run("log", "--json", *args).splitlines()]


def events(rows: list[dict[str, Any]]) -> Counter[tuple[str, str | None]]:
    return Counter((r["event"], r["alias"]) for r in rows)


def send_traffic_mix(forwarder: Forwarder, port: int) -> None:
    """4 messages received, 1 discarded, 2 RCPT rejections; 1 deferral then delivery, 1 bounce."""
    for recipient in (f"team@{DOMAIN}", f"info@{DOMAIN}", f"slow@{DOMAIN}", f"bad@{DOMAIN}"):
        assert (
            send(port, SENDER, [recipient], make_message(message_id=new_id(), to=recipient)) == {}
        )
    assert send(port, SENDER, [f"spam@{DOMAIN}"], make_message(message_id=new_id())) == {}
    with smtp_client(port) as client:
        client.ehlo()
        assert client.mail(SENDER)[0] == 250
        assert client.rcpt(f"nobody@{DOMAIN}")[0] == 550
        assert client.rcpt("someone@elsewhere.test")[0] == 550


def set_up_aliases(forwarder: Forwarder) -> None:
    forwarder.alias(f"team@{DOMAIN}", "bob@dest1.test", "carol@dest2.test")
    forwarder.alias(f"info@{DOMAIN}", "dave@dest1.test")
    forwarder.alias(f"slow@{DOMAIN}", "erin@dest2.test")
    forwarder.alias(f"bad@{DOMAIN}", "gone@dest2.test")
    forwarder.alias(f"spam@{DOMAIN}", mode="discard")
    forwarder.peers.script("erin@dest2.test", "451 4.2.0 Mailbox busy, try later")
    forwarder.peers.script("gone@dest2.test", "550 5.1.1 No such mailbox", repeat=True)


def story_complete(rows: list[dict[str, Any]]) -> bool:
    seen = Counter(r["event"] for r in rows)
    # bob, carol, dave, erin, and the bounce's DSN to alice
    return seen["delivered"] >= 5 and seen["bounced"] >= 1 and seen["rejected"] >= 2


def test_log_stats_and_status_tell_what_the_daemon_did(forwarder: Forwarder) -> None:
    set_up_aliases(forwarder)
    down = forwarder.cli("status")
    assert down.code == 1, "no daemon has ever run: status must fail"
    assert "DOWN" in down.stdout

    daemon = forwarder.start()
    send_traffic_mix(forwarder, daemon.port)
    rows = wait_for_log(forwarder.database_url, story_complete)

    # -- smtpy log: every decision, with its details, never the body --------------------
    logged = log_json(forwarder)
    assert [r["id"] for r in logged] == sorted(r["id"] for r in rows)
    assert events(logged) == Counter(
        {
            ("received", f"team@{DOMAIN}"): 1,
            ("received", f"info@{DOMAIN}"): 1,
            ("received", f"slow@{DOMAIN}"): 1,
            ("received", f"bad@{DOMAIN}"): 1,
            ("discarded", f"spam@{DOMAIN}"): 1,
            ("rejected", f"nobody@{DOMAIN}"): 1,
            ("rejected", "someone@elsewhere.test"): 1,
            ("delivered", f"team@{DOMAIN}"): 2,
            ("delivered", f"info@{DOMAIN}"): 1,
            ("deferred", f"slow@{DOMAIN}"): 1,
            ("delivered", f"slow@{DOMAIN}"): 1,
            ("bounced", f"bad@{DOMAIN}"): 1,
            ("delivered", SENDER): 1,  # the DSN the bounce sent back
        }
    )
    by_key = {(r["event"], r["alias"], r["recipient"]): r for r in logged}
    team = by_key[("received", f"team@{DOMAIN}", "bob@dest1.test, carol@dest2.test")]
    assert team["client_ip"] == "127.0.0.1"
    assert team["sender"] == SENDER
    assert team["domain"] == DOMAIN
    assert team["size"] > 100
    assert team["queue_id"]
    carol = by_key[("delivered", f"team@{DOMAIN}", "carol@dest2.test")]
    assert carol["queue_id"] == team["queue_id"]
    assert carol["remote_host"] and carol["code"] == 250
    assert carol["delay"] is not None and 0 <= carol["delay"] < 60
    deferred = by_key[("deferred", f"slow@{DOMAIN}", "erin@dest2.test")]
    assert (deferred["code"], deferred["reply"]) == (451, "4.2.0 Mailbox busy, try later")
    bounced = by_key[("bounced", f"bad@{DOMAIN}", "gone@dest2.test")]
    assert bounced["code"] == 550 and "No such mailbox" in bounced["reply"]
    unknown = by_key[("rejected", f"nobody@{DOMAIN}", None)]
    assert (unknown["reason"], unknown["code"], unknown["sender"]) == ("unknown_user", 550, SENDER)
    relay = by_key[("rejected", "someone@elsewhere.test", None)]
    assert (relay["reason"], relay["domain"]) == ("relay", "elsewhere.test")
    assert by_key[("discarded", f"spam@{DOMAIN}", None)]["reason"] == "alias_discard"
    assert not any("Hello there" in json.dumps(r) for r in logged), "a body reached the log"

    text = forwarder.run("log", "--queue-id", team["queue_id"])
    assert len(text.splitlines()) == 3  # received, delivered to bob, delivered to carol
    assert "to=<team@example.test>" in text and "via=<carol@dest2.test>" in text

    # -- filters ---------------------------------------------------------------------
    info = log_json(forwarder, "--alias", f"info@{DOMAIN}")
    assert [r["event"] for r in info] == ["received", "delivered"]
    assert {r["event"] for r in log_json(forwarder, "--domain", "elsewhere.test")} == {"rejected"}
    assert len(log_json(forwarder, "--domain", DOMAIN)) == len(logged) - 2  # relay and DSN
    assert log_json(forwarder, "--since", "1h") == logged
    assert log_json(forwarder, "--event", "bounced") == [bounced]
    assert log_json(forwarder, "--limit", "2") == logged[-2:]
    refused = forwarder.cli("log", "--since", "yesterday")
    assert refused.code == 2 and "is not an age" in refused.stderr

    # -- smtpy stats: the same story in numbers ----------------------------------------
    stats = json.loads(forwarder.run("stats", "--json"))
    total = stats["total"]
    assert {k: v for k, v in total.items() if k != "median_delay"} == {
        "received": 4,
        "forwarded": 5,
        "deferred": 1,
        "bounced": 1,
        "discarded": 1,
        "rejected": 2,
        "rejected_by_reason": {"relay": 1, "unknown_user": 1},
    }
    delays = sorted(r["delay"] for r in logged if r["event"] == "delivered")
    assert total["median_delay"] == pytest.approx(delays[2], abs=0.001)  # the 3rd of 5
    by_domain = {
        g["key"]: g
        for g in json.loads(forwarder.run("stats", "--by", "domain", "--json"))["groups"]
    }
    assert by_domain[DOMAIN]["received"] == 4 and by_domain[DOMAIN]["forwarded"] == 4
    assert by_domain["sender.test"]["forwarded"] == 1
    assert by_domain["elsewhere.test"]["rejected_by_reason"] == {"relay": 1}
    by_alias = {
        g["key"]: g for g in json.loads(forwarder.run("stats", "--by", "alias", "--json"))["groups"]
    }
    assert by_alias[f"team@{DOMAIN}"]["forwarded"] == 2
    assert by_alias[f"slow@{DOMAIN}"]["deferred"] == 1
    [today] = json.loads(forwarder.run("stats", "--by", "day", "--json"))["groups"]
    assert today["key"] == time.strftime("%Y-%m-%d", time.gmtime())
    assert today["forwarded"] == 5
    table = forwarder.run("stats")
    assert "unknown_user" in table and "forwarded" in table

    # -- smtpy status: up, with what it did ------------------------------------------------
    up = forwarder.cli("status", "--json")
    assert up.code == 0, up.stderr
    status = json.loads(up.stdout)
    assert status["up"] is True
    assert [(n["name"], n["up"]) for n in status["nodes"]] == [("node-0", True)]
    assert status["queue"] == {"active": 0, "deferred": 0, "held": 0}
    assert status["oldest"] is None
    assert status["last_delivery"]["code"] == 250
    recent_figures = status["recent"]
    assert (recent_figures["delivered"], recent_figures["deferred"], recent_figures["bounced"]) == (
        5,
        1,
        1,
    )
    assert recent_figures["error_rate"] == pytest.approx(2 / 7, abs=0.001)
    assert "up (1 node)" in forwarder.run("status")

    assert daemon.stop() == 0
    stopped = forwarder.cli("status", "--json")
    assert stopped.code == 1
    [node] = json.loads(stopped.stdout)["nodes"]
    assert node["up"] is False and node["stopped_at"] is not None


def test_log_follow_prints_new_events_until_interrupted(forwarder: Forwarder) -> None:
    import signal
    import subprocess
    import sys

    forwarder.alias(f"info@{DOMAIN}", "dave@dest1.test")
    daemon = forwarder.start()
    follow = subprocess.Popen(
        [sys.executable, "-m", "smtpy", "log", "--follow", "--json", "--alias", f"info@{DOMAIN}"],
        env=forwarder.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.0)  # let it start following an empty log
        assert (
            send(daemon.port, SENDER, [f"info@{DOMAIN}"], make_message(message_id=new_id())) == {}
        )
        assert follow.stdout is not None
        lines = [json.loads(follow.stdout.readline()) for _ in range(2)]
        assert [r["event"] for r in lines] == ["received", "delivered"]
        assert {r["alias"] for r in lines} == {f"info@{DOMAIN}"}
    finally:
        follow.send_signal(signal.SIGINT)
        try:
            _out, err = follow.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            follow.kill()
            follow.communicate()
            raise
    assert follow.returncode == 0, err
    assert "Traceback" not in err
