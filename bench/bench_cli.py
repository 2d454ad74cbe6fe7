"""Benchmark the CLI's start-up: `smtpy --help` and `smtpy alias list`, wall-clock.

    .venv/bin/python bench/bench_cli.py [--runs 10]

Builds a temporary SQLite store with one domain and 100 aliases, then runs each
command `--runs` times as a subprocess (as a user's shell would) and prints the
median and the fastest run in seconds against the 0.7 s target. One warm-up run
per command comes first, so the figures include no first-run bytecode compiling.
Every run has a timeout, so the benchmark always ends.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from smtpy.admin.aliases import AliasCreate, add_alias
from smtpy.admin.domains import DomainCreate, add_domain
from smtpy.admin.organizations import resolve_organization
from smtpy.store.db import Database

TARGET = 0.7  # seconds (median): `smtpy alias list` and `--help` must feel instant
TIMEOUT = 30.0  # seconds per run
ALIASES = 100


def smtpy_command() -> list[str]:
    """The installed console script next to this interpreter, else `python -m smtpy`."""
    script = Path(sys.executable).with_name("smtpy")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    found = shutil.which("smtpy")
    return [found] if found else [sys.executable, "-m", "smtpy"]


def make_store(url: str) -> None:
    with Database(url) as db:
        org = resolve_organization(db=db).id
        add_domain(db=db, org=org, domain=DomainCreate(name="example.org", key_algorithm="ed25519"))
        for n in range(ALIASES):
            alias = AliasCreate(
                address=f"user{n:03d}@example.org",
                destinations=[f"user{n:03d}@mailbox.example.net"],
            )
            add_alias(db=db, org=org, alias=alias)


def time_runs(command: list[str], env: dict[str, str], runs: int) -> list[float]:
    times = []
    for attempt in range(runs + 1):
        start = time.perf_counter()
        proc = subprocess.run(command, env=env, capture_output=True, timeout=TIMEOUT, check=False)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(f"{' '.join(command)} failed ({proc.returncode}): {proc.stderr.decode()}")
        if attempt:  # the first run warms the caches
            times.append(elapsed)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="timed runs per command (1-100)")
    args = parser.parse_args()
    runs = max(1, min(args.runs, 100))

    with tempfile.TemporaryDirectory(prefix="smtpy-bench-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'smtpy.db'}"
        make_store(url)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SMTPY_")}
        env.update(
            {
                "SMTPY_DATABASE_URL": url,
                "SMTPY_HOSTNAME": "mx.example.org",
                "SMTPY_STATE_DIR": tmp,
                "COLUMNS": "120",
            }
        )
        smtpy = smtpy_command()
        print(f"{' '.join(smtpy)}: {runs} runs each, store with 1 domain and {ALIASES} aliases")
        print(f"{'command':<24} {'median':>8} {'min':>8}   target {TARGET:.2f} s")
        for label, extra in (("smtpy --help", ["--help"]), ("smtpy alias list", ["alias", "list"])):
            times = time_runs(smtpy + extra, env, runs)
            median = statistics.median(times)
            verdict = "ok" if median <= TARGET else "SLOW"
            print(f"{label:<24} {median:>7.3f}s {min(times):>7.3f}s   {verdict}")


if __name__ == "__main__":
    main()
