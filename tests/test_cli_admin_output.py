"""What the admin commands print: --org, copyable ids and records, words and times,
empty listings, counts, `log --follow -n 0`, and `domain verify` against a silent resolver.

Everything runs the real `smtpy` program against a real store.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import dns.rdatatype
import dns.zonefile
import pytest

from conftest import Cli
from smtpy.queue.message_log import LogEvent, write_events
from smtpy.queue.queries import NewDelivery, NewMessage, enqueue
from smtpy.store.db import Database


def store(cli: Cli) -> Database:
    return Database(cli.env["SMTPY_DATABASE_URL"])


# -- organizations ---------------------------------------------------------------------


def test_commands_act_in_the_default_organization_unless_org_names_another(cli: Cli) -> None:
    assert cli("domain", "add", "mine.test", "--key-algorithm", "ed25519").code == 0
    with store(cli) as db:  # organizations other than the default come from the accounts layer
        db.execute("INSERT INTO organizations (name, created_at) VALUES ('acme', 0)")
    added = cli("domain", "add", "acme.test", "--key-algorithm", "ed25519", "--org", "acme")
    assert added.code == 0, added.stderr
    assert cli("alias", "add", "info@acme.test", "x@dest.test", "--org", "acme").code == 0

    def names(*args: str) -> list[str]:
        result = cli(*args, "--json")
        assert result.code == 0, result.stderr
        return [item.get("name") or item.get("address") for item in json.loads(result.stdout)]

    assert names("domain", "list") == ["mine.test"]
    assert names("domain", "list", "--org", "acme") == ["acme.test"]
    assert names("alias", "list", "--org", "acme") == ["info@acme.test"]
    assert names("alias", "list") == []
    shown = json.loads(cli("domain", "show", "acme.test", "--org", "acme", "--json").stdout)
    assert shown["organization"] == "acme"

    other = cli("alias", "add", "x@acme.test", "y@dest.test")  # acme.test is not the default's
    assert other.code == 2
    assert "acme.test is not served here" in other.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("domain", "list"),
        ("alias", "list"),
        ("key", "list"),
        ("queue", "list"),
        ("log",),
        ("stats",),
        ("domain", "add", "new.test"),
    ],
)
def test_an_unknown_organization_is_bad_input(cli: Cli, args: tuple[str, ...]) -> None:
    assert cli("db", "upgrade").code == 0  # a store exists: only the organization is unknown
    result = cli(*args, "--org", "nope")
    assert result.code == 2
    assert result.stderr.splitlines() == [
        "smtpy: error: there is no organization named 'nope'; "
        "leave out --org to act in the default organization"
    ]
    assert result.stdout == ""
    with store(cli) as db:
        assert db.scalar("SELECT count(*) FROM domains") == 0


# -- empty listings, words, counts -----------------------------------------------------


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (("domain", "list"), "no domains are served yet; add one with `smtpy domain add DOMAIN`"),
        (
            ("alias", "list"),
            "no aliases; add one with `smtpy alias add ADDRESS@DOMAIN DESTINATION`",
        ),
        (("key", "list"), "no DKIM keys; generate one with `smtpy key generate DOMAIN`"),
        (
            ("queue", "list"),
            "the queue is empty: every accepted message has been delivered or bounced",
        ),
    ],
)
def test_an_empty_listing_says_so_in_one_line_and_json_is_an_empty_list(
    cli: Cli, args: tuple[str, ...], line: str
) -> None:
    assert cli("db", "upgrade").code == 0  # an empty store, not a missing one
    table = cli(*args)
    assert (table.code, table.stdout) == (0, line + "\n")
    as_json = cli(*args, "--json")
    assert (as_json.code, json.loads(as_json.stdout)) == (0, [])


def test_domain_show_prints_words_and_rfc3339_times(cli: Cli) -> None:
    assert cli("domain", "add", "example.test", "--key-algorithm", "ed25519").code == 0
    shown = cli("domain", "show", "example.test")
    assert shown.code == 0, shown.stderr
    fields = {
        match[0]: match[1] for match in re.findall(r"│ (\w[\w ]*?) +│ (.*?) +│", shown.stdout)
    }
    assert fields["verified"] == "no"
    assert fields["verified at"] == "-"
    assert fields["keys"] == "1"
    assert fields["dmarc reject"] == "default (SMTPY_DMARC_REJECT)"
    added = datetime.strptime(fields["added"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs(added.timestamp() - time.time()) < 600
    assert "True" not in shown.stdout and "False" not in shown.stdout
    data = json.loads(cli("domain", "show", "example.test", "--json").stdout)
    assert data["verified"] is False and isinstance(data["created_at"], float)


def test_counts_are_singular_for_one(cli: Cli) -> None:
    assert cli("domain", "add", "example.test", "--key-algorithm", "ed25519").code == 0
    asked = cli("domain", "remove", "example.test")  # no terminal: it asks for --yes
    assert asked.code == 2
    assert "Remove example.test with its 0 aliases and 1 key: confirmation needed" in asked.stderr


# -- ids and records people copy -------------------------------------------------------


def test_queue_ids_appear_whole_in_an_80_column_table(cli: Cli) -> None:
    queue_ids = ["01JDX4N7Q8R2S3T4", "01JDX4N7Q8R2S3T5"]
    with store(cli) as db:
        for queue_id in queue_ids:
            enqueue(
                db,
                NewMessage(
                    queue_id=queue_id,
                    sender="a.rather.long.sender.address@newsletters.sender.example",
                    data=b"Subject: x\r\n\r\nbody\r\n",
                    deliveries=[
                        NewDelivery(
                            f"person{n}@example.test",
                            f"person{n}.with.a.long.mailbox@destination.example",
                            "destination.example",
                            "SRS0=abcd=XY=sender.example=sender@mx.forwarder.test",
                        )
                        for n in range(3)
                    ],
                ),
            )
        db.execute(
            "UPDATE deliveries SET attempts = 1, last_error = :e",
            {"e": "451 4.7.1 Greylisted, please try again in five minutes (mx.destination)"},
        )
    narrow = Cli({**cli.env, "COLUMNS": "80"})
    table = narrow("queue", "list")
    assert table.code == 0, table.stderr
    lines = table.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    for queue_id in queue_ids:
        assert any(queue_id in line for line in lines), table.stdout


def test_zone_lines_parse_to_the_records_of_the_json(cli: Cli) -> None:
    assert cli("domain", "add", "bücher.test").code == 0  # RSA 2048: a TXT over 255 bytes
    assert cli("key", "generate", "bücher.test", "--algorithm", "ed25519").code == 0
    zone = cli("domain", "records", "bücher.test", "--zone")
    assert zone.code == 0, zone.stderr
    as_json = json.loads(cli("domain", "records", "bücher.test", "--json").stdout)

    parsed = []
    for rrset in dns.zonefile.read_rrsets(zone.stdout, rdclass=None, relativize=False):
        for rdata in rrset:
            if rrset.rdtype == dns.rdatatype.TXT:
                value = b"".join(rdata.strings).decode()
                assert all(len(s) <= 255 for s in rdata.strings)
            else:
                value = rdata.to_text()
            parsed.append(
                {
                    "type": dns.rdatatype.to_text(rrset.rdtype),
                    "name": rrset.name.to_text().rstrip("."),
                    "value": value,
                }
            )

    def key(record: dict[str, str]) -> tuple[str, str, str]:
        return record["type"], record["name"], record["value"]

    assert sorted(parsed, key=key) == sorted(as_json, key=key)
    assert any(len(r["value"]) > 255 for r in as_json)
    assert cli("domain", "records", "bücher.test", "--zone", "--json").code == 2


# -- the message log, followed from now on ---------------------------------------------


def test_log_follow_with_limit_zero_prints_new_events_only(cli: Cli) -> None:
    with store(cli) as db:
        write_events(db, [LogEvent(at=time.time(), event="received", alias="old@example.test")])
    lines: list[str] = []
    with subprocess.Popen(
        [sys.executable, "-m", "smtpy", "log", "--follow", "-n", "0", "--json"],
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as proc:
        reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
        reader.start()
        try:
            # The follower starts at some instant: write new events until one shows (bounded).
            with store(cli) as db:
                for n in range(60):
                    event = LogEvent(at=time.time(), event="received", alias=f"new{n}@example.test")
                    write_events(db, [event])
                    time.sleep(0.5)
                    if lines:
                        break
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            reader.join(timeout=30)
    assert lines, "no new event was printed"
    assert json.loads(lines[0])["alias"].startswith("new")
    assert not any("old@example.test" in line for line in lines)
    once = cli("log", "-n", "0")
    assert once.code == 2
    assert "use it with --follow" in once.stderr


# -- verify against a resolver that never answers ----------------------------------------


@pytest.fixture
def silent_resolver() -> Iterator[str]:
    """A UDP socket on loopback that reads every query and answers none."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def swallow() -> None:
        while not stop.is_set():
            try:
                sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=swallow, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        sock.close()


def test_verify_names_the_silent_resolver_and_gives_up_after_one_timeout(
    cli: Cli, silent_resolver: str
) -> None:
    assert cli("domain", "add", "example.test", "--key-algorithm", "ed25519").code == 0
    timeout = 1.0
    silent = Cli(
        {**cli.env, "SMTPY_DNS_NAMESERVERS": silent_resolver, "SMTPY_DNS_TIMEOUT": str(timeout)}
    )
    started = time.monotonic()
    result = silent("domain", "verify", "example.test")
    elapsed = time.monotonic() - started
    assert result.code == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("smtpy: error: example.test not verified: the DNS resolver ")
    assert f"{silent_resolver} (SMTPY_DNS_NAMESERVERS) did not answer within 1 s" in line
    assert "name servers" not in result.stderr + result.stdout  # the domain is not blamed
    assert elapsed < 3 * timeout + 2, f"took {elapsed:.1f}s"  # a generous bound, not a timing

    report = json.loads(silent("domain", "verify", "example.test", "--json").stdout)
    assert report["verified"] is False
    assert silent_resolver in report["resolver_error"]
    assert {r["status"] for r in report["records"]} == {"timeout"}
    with store(cli) as db:
        assert db.scalar("SELECT verified_at FROM domains") is None


def test_verify_still_blames_the_domain_when_the_resolver_answers_other_names(
    cli: Cli,
) -> None:
    """A resolver that answers is alive: a lookup that times out is the domain's problem."""
    assert cli("domain", "add", "example.test", "--key-algorithm", "ed25519").code == 0
    result = cli("domain", "verify", "example.test", "--json")
    assert result.code == 1
    report = json.loads(result.stdout)
    assert report["resolver_error"] is None
    assert {r["status"] for r in report["records"]} == {"missing"}
