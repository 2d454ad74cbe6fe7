"""Forwarding throughput with billing and a message quota on, against the same run off.

    .venv/bin/python bench/bench_quota.py [--rounds N] [--count N] [--size BYTES] [--processes N]

Reuses bench_forward.py's parts: the smtpy stack (SRS, DKIM RSA-2048, durable
SQLite queue, SMTPY_RELAY_HOST at a loopback `smtp-sink`), Postfix's
`smtp-source` (10 sessions, one message per connection) and the end-to-end
timing (first connection to the last message at the sink). Two smtpy stacks
run in turn, alternating which goes first each round:

- off: no plans, no Stripe key (smtpy as a self-hosted forwarder);
- on:  two plans, the default one with a monthly quota the run stays under
  (so every message is checked at RCPT and counted), a Stripe key set, the
  counts synced through the store every SMTPY_QUOTA_SYNC_INTERVAL (default 5 s).

It prints the median msg/s of each and on/off (the target: on/off >= 0.97,
at most 3 % slower), and the median CPU time a message, which a busy machine
disturbs less. Exit 1 if mail was lost or the target missed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import bench_forward as bf

PLANS = {
    "free": {"name": "Free", "default": True, "limits": {"messages_per_month": 10_000_000}},
    "pro": {"name": "Pro", "stripe_price": "smtpy_pro", "limits": {"domains": 100}},
}
TARGET = 0.97


class QuotaStack(bf.SmtpyStack):
    name = "smtpy billing on"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.dir = self.dir.with_name("smtpy-quota")
        self.db = self.dir / "smtpy.db"
        self.env.update(
            SMTPY_CONFIG=str(self.dir / "smtpy.toml"),
            SMTPY_STATE_DIR=str(self.dir),
            SMTPY_DATABASE_URL=f"sqlite:///{self.db}",
            SMTPY_PLANS=json.dumps(PLANS),
            SMTPY_STRIPE_SECRET_KEY="sk_test_bench",
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds (median reported)")
    parser.add_argument("--count", type=int, default=1000, help="messages a run")
    parser.add_argument("--size", type=int, default=2048, help="message size in bytes")
    parser.add_argument("--processes", type=int, default=1, help="SMTPY_PROCESSES")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per run at most")
    args = parser.parse_args()
    smtpy = str(Path(sys.executable).parent / "smtpy")
    bf.ensure_packages()
    work = Path(tempfile.mkdtemp(prefix="smtpy-bench-quota-"))
    work.chmod(0o755)
    rates: dict[str, list[float]] = {"smtpy": [], QuotaStack.name: []}
    cpu: dict[str, list[float]] = {"smtpy": [], QuotaStack.name: []}  # ms of CPU a message
    failed = False
    try:
        kinds = [bf.SmtpyStack, QuotaStack]
        for round_no in range(max(1, min(args.rounds, 10))):
            for kind in kinds if round_no % 2 == 0 else kinds[::-1]:
                sink_port = bf.free_port()
                stack = kind(work, sink_port, smtpy, args.processes)
                sink = bf.Sink(sink_port)
                try:
                    stack.start()
                    sink.start()
                    bf.warm_up(stack, sink)
                    result = bf.measure(stack, sink, args.size, args.count, args.timeout, None)
                    bf.log(
                        f"round {round_no + 1} {stack.name}: {result.received}/{result.accepted}"
                        f" in {result.seconds:.2f}s = {result.rate:.1f} msg/s"
                        + (f" ERROR {result.error}" if result.error else "")
                    )
                    failed |= bool(result.lost or result.error)
                    rates[stack.name].append(result.rate)
                    cpu[stack.name].append(1000 * result.cpu / max(1, result.received))
                finally:
                    sink.stop()
                    stack.stop()
                    time.sleep(1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    off = statistics.median(rates["smtpy"])
    on = statistics.median(rates[QuotaStack.name])
    ratio = on / off if off else 0.0
    print(
        f"{args.count} x {args.size} B, {args.processes} process(es), {len(rates['smtpy'])} rounds"
    )
    print(f"billing off: {off:.1f} msg/s  (runs: {', '.join(f'{r:.1f}' for r in rates['smtpy'])})")
    print(
        f"billing on:  {on:.1f} msg/s  (runs: "
        f"{', '.join(f'{r:.1f}' for r in rates[QuotaStack.name])})"
    )
    print(f"on/off: {ratio:.3f} (target >= {TARGET})")
    # CPU time a message (smtpy's processes, user+system) varies less than wall time on
    # a shared machine: the same comparison, as the cost of each message.
    cpu_off = statistics.median(cpu["smtpy"])
    cpu_on = statistics.median(cpu[QuotaStack.name])
    print(
        f"CPU a message: off {cpu_off:.2f} ms, on {cpu_on:.2f} ms; "
        f"off/on {cpu_off / cpu_on if cpu_on else 0:.3f}"
    )
    return 1 if failed or ratio < TARGET else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
