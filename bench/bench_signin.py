"""Benchmark a refused sign-in: a wrong password against an unknown address.

    .venv/bin/python bench/bench_signin.py [--rounds 20]

Runs `smtpy.accounts.signin.login` in process on a fresh SQLite store with
argon2-cffi's default parameters, alternating a wrong password for an existing
account and any password for an address that has no account, and prints the
median wall time and process CPU time of each. The two should match (within
the noise of the machine): the answer and its cost say nothing about which
addresses have accounts. Failures are cleared between rounds so that the
throttle never answers instead.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

from smtpy.accounts import signin, users
from smtpy.config import Settings
from smtpy.errors import Unauthorized
from smtpy.store.db import Database


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'smtpy.db'}"
        settings = Settings(state_dir=Path(tmp), database_url=url, hostname="mx.bench.test")
        with Database(url) as db:
            users.create_user(db=db, email="ann@example.test", password="correct horse battery")

            def once(email: str) -> tuple[float, float]:
                db.execute("DELETE FROM login_failures")
                wall, cpu = time.perf_counter(), time.process_time()
                with contextlib.suppress(Unauthorized):
                    signin.login(
                        db=db,
                        settings=settings,
                        email=email,
                        password="a wrong password",
                        client_ip="192.0.2.1",
                        user_agent=None,
                    )
                return time.perf_counter() - wall, time.process_time() - cpu

            once("ann@example.test")  # warm up: the dummy hash, the connection
            once("nobody@example.test")
            wrong, unknown = [], []
            for _ in range(args.rounds):
                wrong.append(once("ann@example.test"))
                unknown.append(once("nobody@example.test"))
    for label, runs in (("wrong password", wrong), ("unknown address", unknown)):
        print(
            f"{label:16} median {statistics.median(r[0] for r in runs) * 1000:7.1f} ms wall,"
            f" {statistics.median(r[1] for r in runs) * 1000:7.1f} ms CPU ({len(runs)} sign-ins)"
        )


if __name__ == "__main__":
    main()
