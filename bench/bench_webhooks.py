"""Benchmark webhooks: the outbox's delivery rate, and what webhooks cost forwarding.

    .venv/bin/python bench/bench_webhooks.py [--events N] [--count N] [--rounds N]

Run as root, like bench/bench_forward.py, whose parts it reuses (smtp-source,
smtp-sink, the smtpy stack with SPF/DMARC-publishing sender DNS). Loopback only.

1. Outbox drain: `smtpy serve` with one webhook endpoint; N events are committed
   into the outbox in one transaction, and the time runs until the store says
   every delivery is `delivered`. The receiver is a small asyncio HTTPS server in
   its own process (a test CA's certificate, keep-alive, answers 200 at once); it
   checks the first request's signature with the `standardwebhooks` library.
   Prints events per second.
2. Forwarding with and without webhooks: the same smtpy stack forwards COUNT
   2 KB messages from smtp-source to smtp-sink (end to end, as bench_forward.py
   measures), once with no webhook and once with one endpoint subscribed to
   every event type (each message then makes message.received and
   message.forwarded, delivered during the run). Each round runs both, in
   alternating order, and gives one ratio (with / without); the median of those
   ratios is compared against the target: at most 5 % slower. Pairing the runs
   of a round keeps a machine whose load changes from skewing the comparison.
   Every event must reach the receiver.

   What it costs is printed too: smtpy's CPU per message (its processes, during
   the run) with and without, and so per event; the whole machine's CPU per
   message and how busy its cores were (a saturated machine forwards at a rate
   inverse to the CPU a message costs it, whoever spends it); what smtpy wrote
   to storage per message (the store's WAL and checkpoints: the mail's commits,
   and the feed's, which makes the message log's rows into events after them);
   the receiver's CPU per event (on a 2-core machine the far end shares the
   cores: its work slows smtpy's mail as much as smtpy's own), and what it alone
   costs against the machine's CPU per message without webhooks; the share of
   the run's events delivered before its last message was, and how long after
   that the last event was.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import sqlite3
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import bench_forward as bf  # noqa: E402

from testca import TestCA  # noqa: E402

TARGET = 0.05  # forwarding with webhooks at most this much slower
CORES = os.cpu_count() or 1


# -- the receiver: a minimal keep-alive HTTPS server in its own process ----------------


def _receiver_main(port: int, cert: str, key: str, secret: Any, count: Any, verified: Any) -> None:
    from standardwebhooks.webhooks import Webhook

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                headers = {}
                for line in head.decode("latin-1").split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    if name:
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                if verified.value == 0 and secret.value:
                    try:
                        Webhook(secret.value.decode()).verify(body, headers)
                        verified.value = 1
                    except Exception:
                        verified.value = -1
                with count.get_lock():
                    count.value += 1
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, ssl=context, backlog=256)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


class Receiver:
    def __init__(self, work: Path) -> None:
        self.ca = TestCA(work / "ca")
        self.cert, self.key = self.ca.issue(["127.0.0.1"])
        self.port = bf.free_port()
        self.count = multiprocessing.Value("q", 0)
        self.verified = multiprocessing.Value("i", 0)
        self.secret = multiprocessing.Array("c", 200)
        self.proc = multiprocessing.Process(
            target=_receiver_main,
            args=(self.port, str(self.cert), str(self.key), self.secret, self.count, self.verified),
            daemon=True,
        )

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/hook"

    def start(self) -> None:
        self.proc.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                import socket

                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise bf.BenchError("the webhook receiver did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.join(5)


# -- the smtpy stack with a webhook ------------------------------------------------------


class HookedStack(bf.SmtpyStack):
    name = "smtpy+webhook"

    def __init__(self, work: Path, sink_port: int, smtpy: str, receiver: Receiver | None) -> None:
        super().__init__(work / ("hooked" if receiver else "plain"), sink_port, smtpy, None)
        self.receiver = receiver
        self.name = "smtpy+webhook" if receiver else "smtpy"
        self.env.update(
            SMTPY_WEBHOOK_ALLOW_PRIVATE="true",
            SMTPY_TLS_CA_FILE=str(receiver.ca.ca_file) if receiver else "",
        )
        self.hook_id: str | None = None

    def start(self) -> None:
        fresh = not self.db.exists()
        super().start()
        if fresh and self.receiver is not None:
            created = json.loads(
                bf.run([self.smtpy, "webhook", "add", self.receiver.url, "--json"], env=self.env)
            )
            self.hook_id = created["id"]
            self.receiver.secret.value = created["secret"].encode()
            time.sleep(3)  # a running daemon reads subscriptions at most every 2 s

    def log_read(self) -> bool:
        """Whether the webhook feed has read the message log to its end."""
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10) as conn:
            (done,) = conn.execute(
                "SELECT (SELECT log_id FROM webhook_feed)"
                " >= (SELECT coalesce(max(id), 0) FROM message_log)"
            ).fetchone()
        return bool(done)

    def outbox(self) -> tuple[int, int]:
        """(deliveries, delivered) in the store."""
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10) as conn:
            total, done = conn.execute(
                "SELECT count(*), coalesce(sum(status = 'delivered'), 0) FROM webhook_deliveries"
            ).fetchone()
        return int(total), int(done)


def wait_delivered(stack: HookedStack, want: int, timeout: float) -> float | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        total, done = stack.outbox()
        if total >= want and done >= want:
            return time.monotonic()
        time.sleep(0.02)
    return None


def drain(work: Path, smtpy: str, events: int) -> dict[str, Any]:
    """Part 1: N events committed at once; seconds until all are delivered."""
    from smtpy.admin.organizations import resolve_organization
    from smtpy.events import outbox
    from smtpy.store.db import Database

    receiver = Receiver(work / "drain")
    receiver.start()
    sink_port = bf.free_port()
    sink = bf.Sink(sink_port)
    sink.start()
    stack = HookedStack(work / "drain", sink_port, smtpy, receiver)
    try:
        stack.start()
        with Database(f"sqlite:///{stack.db}") as db:
            org = resolve_organization(db=db).id
            outbox.invalidate()
            with db.transaction():
                outbox.write(
                    db,
                    [
                        outbox.Pending(
                            org, "domain.verified", {"domain": f"d{i}.example"}, time.time()
                        )
                        for i in range(events)
                    ],
                )
        started = time.monotonic()
        ended = wait_delivered(stack, events, 600)
        if ended is None:
            raise bf.BenchError(f"the outbox did not drain: {stack.outbox()}")
        seconds = ended - started
        return {
            "events": events,
            "seconds": round(seconds, 2),
            "events_per_second": round(events / seconds, 1),
            "received": receiver.count.value,
            "signature_verified": receiver.verified.value == 1,
        }
    finally:
        stack.stop()
        sink.stop()
        receiver.stop()


def forwarding(work: Path, smtpy: str, count: int, rounds: int) -> dict[str, Any]:
    """Part 2: forwarding rate without and with one webhook subscribed to everything."""
    receiver = Receiver(work / "fwd")
    receiver.start()
    rates: dict[str, list[float]] = {"smtpy": [], "smtpy+webhook": []}
    cpu: dict[str, list[float]] = {"smtpy": [], "smtpy+webhook": []}  # ms per message
    disk: dict[str, list[float]] = {"smtpy": [], "smtpy+webhook": []}  # KB written per message
    machine: dict[str, list[float]] = {"smtpy": [], "smtpy+webhook": []}  # ms per message
    busy: dict[str, list[float]] = {"smtpy": [], "smtpy+webhook": []}  # share of all cores
    receiver_cpu: list[float] = []  # ms per event, during the measured runs
    in_run: list[float] = []  # share of the run's events delivered before its mail was all out
    after: list[float] = []  # seconds from the last message out to the last event delivered
    events_ok = True
    try:
        stacks = []
        for hooked in (False, True):
            sink_port = bf.free_port()
            sink = bf.Sink(sink_port)
            stack = HookedStack(work, sink_port, smtpy, receiver if hooked else None)
            stacks.append((stack, sink))
        for round_no in range(rounds):
            order = stacks if round_no % 2 == 0 else stacks[::-1]
            for stack, sink in order:
                sink.start()
                stack.start()
                try:
                    bf.warm_up(stack, sink)
                    deadline = time.monotonic() + 60
                    while stack.receiver and not stack.log_read() and time.monotonic() < deadline:
                        time.sleep(0.05)  # the warm-up's events are made
                    before = stack.outbox()[0] if stack.receiver else 0
                    wait_delivered(stack, before, 60)  # the warm-up's events are out
                    heard = receiver.count.value
                    receiver_before = bf.cpu_seconds([receiver.proc.pid])
                    result = bf.measure(stack, sink, 2048, count, 600)
                    mail_out = time.monotonic()
                    if result.error or result.lost:
                        raise bf.BenchError(f"{stack.name}: {result.error or 'lost mail'}")
                    rates[stack.name].append(result.rate)
                    cpu[stack.name].append(result.cpu / count * 1000)
                    disk[stack.name].append(result.written / count / 1024)
                    machine[stack.name].append(result.machine_cpu / count * 1000)
                    busy[stack.name].append(result.machine_cpu / (result.seconds * CORES))
                    line = f"round {round_no + 1}: {stack.name} {result.rate:.1f} msg/s, "
                    line += f"smtpy CPU {cpu[stack.name][-1]:.2f} ms/msg, "
                    line += f"writes {disk[stack.name][-1]:.1f} KB/msg, "
                    line += f"machine busy {busy[stack.name][-1] * 100:.0f} %"
                    if stack.receiver:
                        want = 2 * count  # received + forwarded per message
                        in_run.append((receiver.count.value - heard) / want)
                        receiver_cpu.append(
                            (bf.cpu_seconds([receiver.proc.pid]) - receiver_before) / want * 1000
                        )
                        done = wait_delivered(stack, before + want, 300)
                        if done is None:
                            events_ok = False
                            bf.log(f"  events not all delivered: {stack.outbox()} of {want}")
                        else:
                            after.append(max(0.0, done - mail_out))
                        line += f", events during the run {in_run[-1] * 100:.0f} %"
                    bf.log(line)
                finally:
                    stack.stop()
                    sink.stop()
    finally:
        receiver.stop()
    plain = statistics.median(rates["smtpy"])
    hooked = statistics.median(rates["smtpy+webhook"])
    ratios = [h / p for p, h in zip(rates["smtpy"], rates["smtpy+webhook"], strict=True)]
    slower = 1 - statistics.median(ratios)
    cpu_plain = statistics.median(cpu["smtpy"])
    cpu_hooked = statistics.median(cpu["smtpy+webhook"])
    receiver_ms = statistics.median(receiver_cpu)
    machine_plain = statistics.median(machine["smtpy"])
    return {
        "messages": count,
        "rounds": rounds,
        "without_webhook_msg_per_s": round(plain, 1),
        "with_webhook_msg_per_s": round(hooked, 1),
        "ratio_per_round": [round(r, 3) for r in ratios],
        "slower": f"{slower * 100:.1f} % (median of the rounds' ratios)",
        "target": f"at most {TARGET * 100:.0f} % slower",
        "met": slower <= TARGET,
        "smtpy_cpu_ms_per_message": {"without": round(cpu_plain, 2), "with": round(cpu_hooked, 2)},
        "smtpy_cpu_ms_per_event": round((cpu_hooked - cpu_plain) / 2, 3),
        "smtpy_disk_kb_per_message": {
            "without": round(statistics.median(disk["smtpy"]), 1),
            "with": round(statistics.median(disk["smtpy+webhook"]), 1),
        },
        "receiver_cpu_ms_per_event": round(receiver_ms, 3),
        "machine_cpu_ms_per_message": {
            "without": round(machine_plain, 2),
            "with": round(statistics.median(machine["smtpy+webhook"]), 2),
        },
        "machine_busy": {
            name: f"{statistics.median(shares) * 100:.0f} % of {CORES} cores"
            for name, shares in busy.items()
        },
        "the_receiver_alone": (
            f"{2 * receiver_ms / machine_plain * 100:.1f} % of the machine's CPU per message"
            " without webhooks"
        ),
        "events_delivered_during_the_run": f"{statistics.median(in_run) * 100:.0f} %",
        "last_event_after_last_message_s": round(statistics.median(after), 2) if after else None,
        "every_event_delivered": events_ok,
        "receiver_requests": receiver.count.value,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=3000, help="events in the outbox (part 1)")
    parser.add_argument("--count", type=int, default=1000, help="2 KB messages per run (part 2)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each stack (part 2)")
    parser.add_argument("--only", choices=("drain", "forward"))
    parser.add_argument("--smtpy", help="the smtpy command (default: next to this Python)")
    args = parser.parse_args()
    smtpy = args.smtpy or str(Path(sys.executable).parent / "smtpy")
    bf.ensure_packages()
    work = Path(tempfile.mkdtemp(prefix="smtpy-bench-webhooks-"))
    work.chmod(0o755)
    report: dict[str, Any] = {}
    try:
        if args.only != "forward":
            report["outbox_drain"] = drain(work, smtpy, max(1, args.events))
            bf.log(f"outbox drain: {report['outbox_drain']}")
        if args.only != "drain":
            report["forwarding"] = forwarding(work, smtpy, max(1, args.count), max(1, args.rounds))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=2))
    forwarding_ok = report.get("forwarding", {}).get("every_event_delivered", True)
    drain_ok = report.get("outbox_drain", {}).get("signature_verified", True)
    return 0 if forwarding_ok and drain_ok else 1


if __name__ == "__main__":
    sys.exit(main())
