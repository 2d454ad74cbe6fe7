"""Benchmark: 1,000 idle connections held open against the real `smtpy serve`.

    .venv/bin/python bench/bench_idle.py [--connections N]

Starts `smtpy serve` on loopback with a private SQLite store, an alias and an
in-process SMTP sink as its relay host. Then N clients connect from many
127.x.y.z source addresses (at most 20 per address, under the per-IP limit),
read the banner, say EHLO and stay silent. With all of them open, a normal
sender sends one message: it must get its 250 and the message must reach the
sink. Printed: the daemon's RSS and PSS (from /proc/PID/smaps_rollup) before
and with the idle connections, per connection, the normal sender's time to
250 and to delivery, and whether a connection over max_connections got 421.
Target: under 200 MB RSS with 1,000 idle connections.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from aiosmtpd.smtp import SMTP, Envelope, Session

ALIAS_DOMAIN = "example.test"
HOSTNAME = "mx.forwarder.test"
PER_SOURCE = 20


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def memory_kb(pid: int) -> dict[str, int]:
    """Rss and Pss of a process, in KB."""
    values = {}
    with open(f"/proc/{pid}/smaps_rollup") as handle:
        for line in handle:
            name, _, rest = line.partition(":")
            if name in ("Rss", "Pss"):
                values[name] = int(rest.split()[0])
    return values


class Sink:
    """An SMTP sink on loopback, in a thread: counts the messages it takes."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[bytes] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        self.received.append(envelope.content)
        return "250 2.0.0 Ok"

    def start(self) -> None:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(
            self._loop.create_server(
                lambda: SMTP(self, hostname="sink.test", decode_data=False),
                "127.0.0.1",
                self.port,
            ),
            self._loop,
        )
        future.result(10)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def smtpy(env: dict[str, str], *args: str) -> None:
    subprocess.run([sys.executable, "-m", "smtpy", *args], env=env, check=True, capture_output=True)


def start_daemon(
    work: Path, port: int, sink_port: int, connections: int
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMTPY_")}
    (work / "smtpy.toml").write_text("")
    env.update(
        SMTPY_CONFIG=str(work / "smtpy.toml"),
        SMTPY_STATE_DIR=str(work),
        SMTPY_DATABASE_URL=f"sqlite:///{work / 'smtpy.db'}",
        SMTPY_HOSTNAME=HOSTNAME,
        SMTPY_LISTEN=f"127.0.0.1:{port}",
        SMTPY_RELAY_HOST=f"127.0.0.1:{sink_port}",
        SMTPY_DNS_NAMESERVERS=f"127.0.0.1:{free_port()}",  # nothing there: fails fast, stays local
        SMTPY_DNS_TIMEOUT="0.2",  # SPF and DMARC lookups of the sender time out this fast
        SMTPY_MAX_CONNECTIONS=str(connections + 10),
        SMTPY_MAX_CONNECTIONS_PER_IP=str(PER_SOURCE),
        SMTPY_LIMIT_EXEMPT_NETWORKS="",  # count every source address, as for internet clients
        SMTPY_PREGREET_DELAY="0",
        SMTPY_LOG_LEVEL="warning",
    )
    smtpy(env, "domain", "add", ALIAS_DOMAIN)
    smtpy(env, "alias", "add", f"team@{ALIAS_DOMAIN}", "team@dest.test")
    proc = subprocess.Popen(
        [sys.executable, "-m", "smtpy", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(work / "serve.log", "wb"),  # noqa: SIM115 - the daemon keeps it open
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
            if s.recv(100).startswith(b"220 "):
                return proc
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"smtpy serve did not start:\n{(work / 'serve.log').read_text()[-2000:]}")


def source_address(n: int) -> str:
    index = n // PER_SOURCE
    return f"127.1.{index // 250}.{index % 250 + 1}"


async def idle_client(port: int, n: int) -> asyncio.StreamWriter:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, local_addr=(source_address(n), 0)
    )
    banner = await reader.readline()
    assert banner.startswith(b"220 "), banner
    writer.write(b"EHLO idle.client.test\r\n")
    while True:
        line = await reader.readline()
        assert line.startswith(b"250"), line
        if line[3:4] == b" ":
            break
    return writer


async def open_idle(port: int, count: int) -> list[asyncio.StreamWriter]:
    writers: list[asyncio.StreamWriter] = []
    for start in range(0, count, 100):  # in batches: no SYN flood against the listen backlog
        batch = range(start, min(start + 100, count))
        writers += await asyncio.gather(*(idle_client(port, n) for n in batch))
    return writers


def normal_sender(port: int, sink: Sink) -> tuple[float, float]:
    """Seconds to the 250 after DATA, and until the message reached the sink."""
    before = len(sink.received)
    started = time.monotonic()
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.sender.test", timeout=30) as smtp:
        smtp.sendmail(
            "alice@sender.test",
            [f"team@{ALIAS_DOMAIN}"],
            b"From: alice@sender.test\r\nSubject: still here\r\n\r\nHello.\r\n",
        )
    accepted = time.monotonic() - started
    deadline = time.monotonic() + 30
    while len(sink.received) == before and time.monotonic() < deadline:
        time.sleep(0.01)
    if len(sink.received) == before:
        raise SystemExit("the normal sender's message never reached the sink")
    return accepted, time.monotonic() - started


def over_the_limit(port: int) -> str:
    """The reply of one connection more than max_connections allows."""
    with socket.create_connection(("127.0.0.1", port), 10, source_address=("127.2.0.1", 0)) as s:
        return s.recv(200).decode(errors="replace").strip()


async def run(port: int, connections: int, pid: int, sink: Sink) -> None:
    alone, _ = await asyncio.to_thread(normal_sender, port, sink)
    base = memory_kb(pid)
    started = time.monotonic()
    writers = await open_idle(port, connections)
    opened = time.monotonic() - started
    await asyncio.sleep(1.0)  # let the daemon settle
    loaded = memory_kb(pid)
    accepted, delivered = await asyncio.to_thread(normal_sender, port, sink)
    # Fill the remaining slots, then one more must be refused.
    await asyncio.sleep(0.5)  # the sender's connection is closed on both sides
    extra = await open_idle_from(port, 10, offset=connections)
    refused = await asyncio.to_thread(over_the_limit, port)
    for writer in writers + extra:
        writer.close()
    per_conn = (loaded["Rss"] - base["Rss"]) / connections
    print(f"idle connections:          {connections} (opened in {opened:.1f}s)")
    print(f"daemon RSS before / with:  {base['Rss'] / 1024:.1f} MB / {loaded['Rss'] / 1024:.1f} MB")
    print(f"daemon PSS before / with:  {base['Pss'] / 1024:.1f} MB / {loaded['Pss'] / 1024:.1f} MB")
    print(f"per idle connection:       {per_conn:.1f} KB RSS")
    print(
        f"normal sender, 250 after:  {accepted * 1000:.0f} ms with them, {alone * 1000:.0f} ms"
        f" without (delivered after {delivered * 1000:.0f} ms)"
    )
    print(f"one connection too many:   {refused}")
    verdict = "OK" if loaded["Rss"] < 200 * 1024 else "OVER TARGET"
    print(f"target < 200 MB RSS:       {verdict}")


async def open_idle_from(port: int, count: int, *, offset: int) -> list[asyncio.StreamWriter]:
    return list(await asyncio.gather(*(idle_client(port, offset + n) for n in range(count))))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=1000, help="idle connections to hold")
    args = parser.parse_args()
    connections = max(1, min(args.connections, 20_000))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections * 2 + 200
    if soft < wanted:  # inherited by the daemon
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    sink = Sink()
    sink.start()
    with tempfile.TemporaryDirectory(prefix="smtpy-bench-idle-") as tmp:
        port = free_port()
        proc = start_daemon(Path(tmp), port, sink.port, connections)
        try:
            asyncio.run(run(port, connections, proc.pid, sink))
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            sink.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
