"""Benchmark the inbound authentication check (smtpy.authcheck): messages per second.

    .venv/bin/python bench/bench_auth.py [--seconds 1.0]

Runs `InboundChecker.check` (SPF, DKIM, DMARC, ARC, Authentication-Results
and the From-rewrite decision) in process, against the test suite's DNS
server on loopback publishing the sender's SPF, DMARC and DKIM records (with
an SOA, so that negative answers are cached too, as on the internet). DNS
answers are cached after the first message, as in the daemon: the figures are
the CPU cost per message (process CPU time, so other load on the machine
does not count), printed as messages per CPU second. Messages of 2 KB and 100 KB, unsigned, DKIM-signed
(RSA-2048, relaxed/relaxed) and DKIM-signed with one ARC set; then dkimpy's
own `dkim.verify` on the signed ones for comparison. Each figure runs for a
bounded time.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import dkim

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from bench_sign import make_message  # noqa: E402

from authworld import make_key  # noqa: E402
from dnsserver import DNSServer  # noqa: E402
from smtpy.checks.authentication import AuthPolicy, InboundChecker  # noqa: E402
from smtpy.dns import Lookups, make_resolver, parse_nameservers  # noqa: E402

HOST = "mx.bench.example"


async def rate(fn: Callable[[], Awaitable[object]], seconds: float) -> float:
    await fn()  # warm up (fills the DNS cache)
    count = 0
    start = time.process_time()
    while True:
        for _ in range(10):
            await fn()
        count += 10
        now = time.process_time()
        if now - start >= seconds:
            return count / (now - start)


async def main_async(seconds: float) -> None:
    with DNSServer() as server:
        server.add("example.org", "SOA", "ns.example.org. host.example.org. 1 3600 600 86400 300")
        server.add("example.org", "TXT", "v=spf1 ip4:192.0.2.0/24 -all", ttl=300)
        server.add("_dmarc.example.org", "TXT", "v=DMARC1; p=reject", ttl=300)
        key = make_key("example.org", "bench")
        server.add("bench._domainkey.example.org", "TXT", key.generated.public_record, ttl=300)
        lists = make_key("lists.example.org", "arc")
        server.add("arc._domainkey.lists.example.org", "TXT", lists.generated.public_record, 300)
        lookups = Lookups(make_resolver(parse_nameservers(server.nameserver), timeout=2))
        checker = InboundChecker(lookups, AuthPolicy(hostname=HOST))

        print(f"{'check':<40} {'message':>8} {'msgs/CPU-s':>12}")
        for size_name, size in (("2 KB", 2 * 1024), ("100 KB", 100 * 1024)):
            plain = make_message(size)
            signed = key.sign(plain)
            arc = lists.arc_sign(
                b"Authentication-Results: lists.example.org; dkim=pass\r\n" + signed,
                "lists.example.org",
            )
            for label, data in (
                ("unsigned", plain),
                ("DKIM RSA-2048", signed),
                ("DKIM + ARC", arc),
            ):

                async def one(data: bytes = data) -> object:
                    verdict = await checker.check(
                        data,
                        spf=None,
                        client_ip="192.0.2.1",
                        helo="mail.example.org",
                        sender="alice@example.org",
                        queue_id="BENCH",
                    )
                    assert verdict.reply is None, verdict.reply
                    return verdict

                per_s = await rate(one, seconds)
                print(f"{'smtpy check, ' + label:<40} {size_name:>8} {per_s:>12,.0f}")

            def dnsfunc(name: bytes, timeout: float = 5) -> bytes:
                return key.generated.public_record.encode()

            async def with_dkimpy(data: bytes = signed) -> object:
                assert dkim.verify(data, dnsfunc=dnsfunc)
                return None

            per_s = await rate(with_dkimpy, seconds)
            print(f"{'dkimpy dkim.verify alone (comparison)':<40} {size_name:>8} {per_s:>12,.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per figure")
    args = parser.parse_args()
    from smtpy import log

    log.configure("error")  # no info lines
    asyncio.run(main_async(max(0.1, min(args.seconds, 5.0))))


if __name__ == "__main__":
    main()
