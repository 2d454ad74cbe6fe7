"""Limits that hold under abuse (smtpy.checks.limits): the bookkeeping as pure functions, then
the real SMTP server in process with a real store, driven by raw clients on loopback."""

from __future__ import annotations

import asyncio
import smtplib
from pathlib import Path
from typing import Any

import pytest

from inbound import BANNER, Client, Running, scenario, serve_example
from smtpy.checks.limits import (
    ConnectionGuard,
    ConnectionLimits,
    RateLimiter,
    TokenBucket,
    in_networks,
    parse_networks,
)
from smtpy.queue.writer import StoreThread
from smtpy.smtp.replies import EARLY_TALKER, RATE_IP, TOO_MANY_CONNECTIONS, TOO_MANY_FROM_IP


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- token buckets ------------------------------------------------------------------


def test_bucket_gives_a_minutes_worth_at_once_then_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter({"ip": 600}, clock=clock)  # 600 a minute: 10 a second
    assert all(limiter.allow("ip", "192.0.2.1") for _ in range(600))
    assert not limiter.allow("ip", "192.0.2.1")
    assert limiter.allow("ip", "192.0.2.2"), "another client has its own bucket"
    clock.now += 1.0
    assert sum(limiter.allow("ip", "192.0.2.1") for _ in range(50)) == 10
    clock.now += 3600
    assert limiter.tokens("ip", "192.0.2.1") == 600, "refills up to the capacity, no further"


def test_a_legitimate_burst_of_hundreds_a_minute_passes_the_defaults() -> None:
    from smtpy.config import Settings

    defaults = Settings(state_dir=Path("/tmp"), database_url="sqlite:///x", hostname="mx.test")
    clock = Clock()
    limiter = RateLimiter(
        {
            "ip": defaults.ip_rate_limit,
            "sender_domain": defaults.sender_domain_rate_limit,
            "recipient_domain": defaults.recipient_domain_rate_limit,
        },
        clock=clock,
    )
    for n in range(900):  # 900 messages within a minute from one IP, one sender domain
        clock.now += 60 / 900
        assert limiter.allow("ip", "192.0.2.1"), n
        assert limiter.allow("sender_domain", "big.example"), n
        assert limiter.allow("recipient_domain", "example.test"), n


def test_a_kind_with_rate_zero_is_off() -> None:
    limiter = RateLimiter({"ip": 0, "sender_domain": 1})
    assert all(limiter.allow("ip", "192.0.2.1") for _ in range(10_000))
    assert limiter.allow("sender_domain", "a.example")
    assert not limiter.allow("sender_domain", "a.example")
    assert limiter.allow("recipient_domain", "unconfigured.example")


def test_limiter_memory_stays_bounded_under_a_flood_of_clients() -> None:
    clock = Clock()
    limiter = RateLimiter({"ip": 60}, clock=clock, max_keys=1000)
    for n in range(50_000):
        limiter.allow("ip", f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}")
    assert len(limiter) <= 1000


def test_bucket_never_goes_back_in_time() -> None:
    bucket = TokenBucket(capacity=2, per_second=1, tokens=0, updated=10)
    assert not bucket.take(5)  # a clock that went backwards refills nothing
    assert bucket.take(12)


# -- connections --------------------------------------------------------------------


def test_connection_limits_total_and_per_ip() -> None:
    limits = ConnectionLimits(total=3, per_ip=2)
    assert limits.open("192.0.2.1") is None
    assert limits.open("192.0.2.1") is None
    assert limits.open("192.0.2.1") == TOO_MANY_FROM_IP
    assert limits.open("192.0.2.2") is None
    assert limits.open("192.0.2.3") == TOO_MANY_CONNECTIONS
    limits.close("192.0.2.1")
    assert limits.from_ip("192.0.2.1") == 1
    assert limits.open("192.0.2.3") is None
    assert limits.open_total == 3


def test_exempt_networks() -> None:
    networks = parse_networks(["127.0.0.0/8", "::1", "2001:db8::/32"])
    assert in_networks("127.0.0.5", networks)
    assert in_networks("::1", networks)
    assert in_networks("::ffff:127.0.0.1", networks), "IPv4-mapped loopback"
    assert in_networks("2001:db8::25", networks)
    assert not in_networks("192.0.2.1", networks)
    assert not in_networks(None, networks)
    with pytest.raises(ValueError, match="'nonsense' is not an IP address"):
        parse_networks(["nonsense"])


# -- the real server ----------------------------------------------------------------


def make_guard(**options: Any) -> ConnectionGuard:
    rates = options.pop("rates", {})
    return ConnectionGuard(
        connections=ConnectionLimits(
            total=options.pop("total", 100), per_ip=options.pop("per_ip", 10)
        ),
        rates=RateLimiter(rates),
        **options,
    )


@pytest.fixture
def served(store_url: str) -> str:
    return serve_example(store_url)


def test_connections_over_the_limit_get_421_and_are_closed(served: str) -> None:
    guard = make_guard(total=4, per_ip=2)

    async def body(server: Running) -> None:
        first = [await Client.connect(server.port, "127.0.0.2") for _ in range(2)]
        for client in first:
            assert await client.line() == BANNER
        third = await Client.connect(server.port, "127.0.0.2")
        assert await third.line() == TOO_MANY_FROM_IP
        assert await third.closed()
        others = [
            await Client.connect(server.port, source) for source in ("127.0.0.3", "127.0.0.4")
        ]
        for client in others:
            assert await client.line() == BANNER
        fifth = await Client.connect(server.port, "127.0.0.5")
        assert await fifth.line() == TOO_MANY_CONNECTIONS
        assert await fifth.closed()
        # Those that got in work normally, and a slot freed by QUIT is free again.
        assert (await first[0].command(b"EHLO client.test")).startswith("250 ")
        assert await first[0].command(b"QUIT") == "221 2.0.0 Bye"
        assert await first[0].closed()
        await asyncio.sleep(0.2)
        again = await Client.connect(server.port, "127.0.0.2")
        assert await again.line() == BANNER
        assert guard.connections.open_total == 4
        for client in [*first, third, *others, fifth, again]:
            client.close()

    scenario(served, body, guard=guard)
    assert guard.connections.open_total == 0, "every closed connection was released"


def test_exempt_clients_are_not_limited_per_ip(served: str) -> None:
    guard = make_guard(total=10, per_ip=1, exempt=parse_networks(["127.0.0.0/8"]))

    async def body(server: Running) -> None:
        clients = [await Client.connect(server.port) for _ in range(3)]
        assert [await c.line() for c in clients] == [BANNER] * 3
        for client in clients:
            client.close()

    scenario(served, body, guard=guard)


def test_early_talker_is_rejected_and_a_patient_client_is_not(served: str) -> None:
    guard = make_guard(pregreet_delay=0.5)

    async def body(server: Running) -> None:
        rude = await Client.connect(server.port)
        rude.writer.write(b"EHLO spammer.test\r\nMAIL FROM:<a@spammer.test>\r\n")
        assert await rude.line() == EARLY_TALKER
        assert await rude.closed()
        rude.close()
        polite = await Client.connect(server.port)
        assert await polite.line() == BANNER
        assert (await polite.command(b"EHLO client.test")).startswith("250 ")
        polite.close()

    scenario(served, body, guard=guard)


def test_command_line_too_long_gets_500_5_5_6_and_the_session_goes_on(served: str) -> None:
    guard = make_guard()

    async def body(server: Running) -> list[str]:
        client = await Client.connect(server.port)
        assert await client.line() == BANNER
        replies = [
            await client.command(b"EHLO client.test"),
            await client.command(b"MAIL FROM:<" + b"a" * 600 + b"@sender.test>"),  # > 512
            await client.command(b"NOOP " + b"x" * 10_240),  # 10 KB: over the read limit too
            await client.command(b"MAIL FROM:<carol@sender.test>"),
            await client.command(b"RCPT TO:<alice@example.test>"),
        ]
        client.close()
        return replies

    replies = scenario(served, body, guard=guard)
    assert replies[1:] == [
        "500 5.5.6 Command line too long",
        "500 5.5.6 Command line too long",
        "250 2.1.0 Sender OK",
        "250 2.1.5 Recipient OK",
    ]


def test_silent_client_is_dropped_after_the_first_command_timeout(served: str) -> None:
    guard = make_guard(first_command_timeout=0.5, command_timeout=30)

    async def body(server: Running) -> tuple[bool, str]:
        silent = await Client.connect(server.port)
        assert await silent.line() == BANNER
        dropped = await silent.closed()
        silent.close()
        talker = await Client.connect(server.port)
        assert await talker.line() == BANNER
        assert (await talker.command(b"EHLO client.test")).startswith("250 ")
        await asyncio.sleep(1.0)  # twice the first timeout: after EHLO the long one applies
        noop = await talker.command(b"NOOP")
        talker.close()
        return dropped, noop

    assert scenario(served, body, guard=guard) == (True, "250 2.0.0 OK")


def test_message_rate_per_ip_refuses_at_mail_with_450(served: str) -> None:
    guard = make_guard(rates={"ip": 3})

    def client(port: int) -> list[tuple[int, bytes]]:
        replies = []
        with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10) as smtp:
            smtp.ehlo()
            for _ in range(4):
                replies.append(smtp.mail("carol@sender.test"))
                smtp.rset()
        return replies

    async def body(server: Running) -> list[tuple[int, bytes]]:
        return await asyncio.to_thread(client, server.port)

    replies = scenario(served, body, guard=guard)
    assert [code for code, _ in replies] == [250, 250, 250, 450]
    assert replies[-1][1].decode() == RATE_IP[4:]


def test_recipient_domain_rate_counts_each_transaction_once(served: str) -> None:
    guard = make_guard(rates={"recipient_domain": 2})

    def client(port: int) -> list[int]:
        codes = []
        with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10) as smtp:
            smtp.ehlo()
            for _ in range(3):
                smtp.mail("carol@sender.test")
                codes += [smtp.rcpt("alice@example.test")[0], smtp.rcpt("alice+x@example.test")[0]]
                smtp.rset()
        return codes

    async def body(server: Running) -> list[int]:
        return await asyncio.to_thread(client, server.port)

    assert scenario(served, body, guard=guard) == [250, 250, 250, 250, 450, 450]


# -- rate buckets shared by several nodes through the store -------------------------------


def test_nodes_share_rate_buckets_through_the_store(store_url: str) -> None:
    from smtpy.checks.limits import RateSync

    wall = Clock()
    store = StoreThread(store_url, name="rates")
    store.start()
    node_a = RateLimiter({"ip": 60}, clock=Clock())
    node_b = RateLimiter({"ip": 60}, clock=Clock())
    sync_a = RateSync(node_a, store.call, interval=1, clock=wall)
    sync_b = RateSync(node_b, store.call, interval=1, clock=wall)

    async def scenario() -> None:
        assert all(node_a.allow("ip", "192.0.2.1") for _ in range(40))
        assert await sync_a.sync() == 1, "one key written"
        # Node B has not heard of it yet: it lets 30 through, then learns the total.
        assert all(node_b.allow("ip", "192.0.2.1") for _ in range(30))
        await sync_b.sync()
        assert not node_b.allow("ip", "192.0.2.1"), "70 spent of 60 across the nodes"
        # Node A learns it at its next sync (one interval's worth may slip through).
        assert node_a.allow("ip", "192.0.2.1")
        await sync_a.sync()
        assert not node_a.allow("ip", "192.0.2.1")
        assert await sync_a.sync() == 0, "nothing spent: no transaction"
        # A minute later the shared bucket has drained by a minute's worth.
        wall.now += 60
        node_a.clock.now += 60  # type: ignore[attr-defined]
        assert node_a.allow("ip", "192.0.2.1")
        await sync_a.sync()
        assert 10 <= node_a.tokens("ip", "192.0.2.1") <= 60 - 12 + 1

    try:
        asyncio.run(scenario())
        rows = asyncio.run(_rows(store))
    finally:
        store.stop()
    assert rows == [("ip:192.0.2.1", 12.0)]


async def _rows(store: StoreThread) -> list[tuple[str, float]]:
    rows = await store.call(lambda db: db.all("SELECT key, used FROM rate_limits ORDER BY key"))
    return [(row["key"], float(row["used"])) for row in rows]


def test_rate_sync_failure_keeps_the_count_and_old_rows_are_pruned(store_url: str) -> None:
    from smtpy.checks.limits import RateSync

    wall = Clock()
    store = StoreThread(store_url, name="rates")
    store.start()
    limiter = RateLimiter({"sender_domain": 600}, clock=Clock())
    failing = True

    async def call(fn: Any) -> Any:
        if failing:
            raise OSError("the store is away")
        return await store.call(fn)

    sync = RateSync(limiter, call, interval=1, clock=wall)

    async def scenario() -> None:
        nonlocal failing
        for _ in range(5):
            limiter.allow("sender_domain", "old.example")
        assert await sync.sync() == 0
        failing = False
        assert await sync.sync() == 1  # the 5 from before the failure
        wall.now += 600
        limiter.allow("sender_domain", "new.example")
        await sync.sync()

    try:
        asyncio.run(scenario())
        rows = asyncio.run(_rows(store))
    finally:
        store.stop()
    assert rows == [("sender_domain:new.example", 1.0)], "old.example drained and was pruned"


def test_ehlo_in_one_session_does_not_change_the_line_limit_of_another(served: str) -> None:
    """aiosmtpd shares its per-command limits between sessions; smtpy's sessions do not."""
    long_mail = b"MAIL FROM:<" + b"a" * 480 + b"@sender.test> SIZE=1000 SMTPUTF8"  # > 512

    async def body(server: Running) -> list[str]:
        first = await Client.connect(server.port)
        await first.line()
        await first.command(b"EHLO client.test")  # allows MAIL lines of 512 + 26 + 10
        second = await Client.connect(server.port)  # used to reset the shared limits
        await second.line()
        replies = [await first.command(long_mail), await second.command(long_mail)]
        first.close()
        second.close()
        return replies

    first, second = scenario(served, body, guard=make_guard())
    assert first.startswith("250 "), first
    assert second == "500 5.5.6 Command line too long", "no EHLO: RFC 5321's 512"


# -- the real daemon ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_daemon_applies_the_connection_settings(
    cli: Any, cli_env: dict[str, str], dns_server: Any, tmp_path: Path
) -> None:
    import socket

    from mailpeers import forwarding_world

    def connect(port: int, source: str) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port), 10, source_address=(source, 0))
        sock.settimeout(10)
        return sock

    def read_all(sock: socket.socket) -> bytes:
        data = b""
        while chunk := sock.recv(1000):
            data += chunk
        return data

    with forwarding_world(cli, cli_env, dns_server, tmp_path) as world:
        daemon = world.start(
            limit_exempt_networks="",
            max_connections_per_ip="1",
            pregreet_delay="0.5",
            first_command_timeout="1",
        )
        first = connect(daemon.port, "127.0.0.7")
        second = connect(daemon.port, "127.0.0.7")
        assert read_all(second) == (TOO_MANY_FROM_IP + "\r\n").encode()
        assert first.recv(100).startswith(b"220 "), "the banner, after the pregreet delay"
        assert read_all(first) == b"", "dropped after the first command timeout"
        rude = connect(daemon.port, "127.0.0.8")
        rude.sendall(b"EHLO rude.test\r\n")
        assert read_all(rude) == (EARLY_TALKER + "\r\n").encode()
        for sock in (first, second, rude):
            sock.close()


def test_slow_but_steady_data_is_not_cut_off_by_the_command_timeout(served: str) -> None:
    guard = make_guard(first_command_timeout=5, command_timeout=1.5)

    async def body(server: Running) -> str:
        client = await Client.connect(server.port)
        await client.line()
        await client.command(b"EHLO client.test")
        await client.command(b"MAIL FROM:<carol@sender.test>")
        await client.command(b"RCPT TO:<alice@example.test>")
        assert (await client.command(b"DATA")).startswith("354 ")
        client.writer.write(b"From: carol@sender.test\r\nSubject: slow\r\n\r\n")
        for n in range(8):  # 4 seconds of data, more than twice the command timeout
            await asyncio.sleep(0.5)
            client.writer.write(b"line %d\r\n" % n)
        reply = await client.command(b".")
        client.close()
        return reply

    assert scenario(served, body, guard=guard).startswith("250 2.0.0 Ok: queued as ")
