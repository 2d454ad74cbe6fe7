"""The real `smtpy api` process on loopback, for tests that drive the HTTP API as users do.

    with ApiServer(cli_env) as api:
        api.client.get("/healthz")                      # httpx.Client on the base URL
        api.as_key(key).get("/api/v1/domains")          # with Authorization: Bearer

Seeding helpers make an organization, a user and an API key through the core
services, as `smtpy org|user|apikey` do.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from typing import Any

import httpx

from forkserver import ForkedProcess, popen
from mailpeers import free_port


def at_head(url: str) -> bool:
    """Whether the store at `url` has this smtpy's schema (`smtpy api` refuses any other)."""
    from smtpy.store.db import SCHEMA_REVISION, Database

    try:
        db = Database(url, check_schema=False, create=False)
    except Exception:  # no store yet: `smtpy db upgrade` makes it
        return False
    try:
        return db.schema_revision() == SCHEMA_REVISION
    finally:
        db.close()


class ApiServer:
    """`smtpy api` started with `env` (a `cli_env`), stopped with SIGTERM."""

    def __init__(self, env: Mapping[str, str], **settings: str) -> None:
        self.port = free_port()
        self.env = {**env, "SMTPY_API_LISTEN": f"127.0.0.1:{self.port}", **settings}
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.proc: ForkedProcess | None = None
        self.client = httpx.Client(base_url=self.base_url, timeout=30)
        self.returncode: int | None = None
        self.stderr = ""  # the server's log, read when it stops
        self._clients: list[httpx.Client] = [self.client]

    def __enter__(self) -> ApiServer:
        if not at_head(self.env["SMTPY_DATABASE_URL"]):  # the test stores are migrated already
            upgrade = subprocess.run(
                [sys.executable, "-m", "smtpy", "db", "upgrade"],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            if upgrade.returncode != 0:
                raise RuntimeError(
                    f"smtpy db upgrade exited {upgrade.returncode}: {upgrade.stderr}"
                )
        # Its log goes to a file: a pipe nobody reads would stop the server once full.
        self._log = tempfile.TemporaryFile()
        with open(os.devnull, "wb") as devnull:
            self.proc = popen(["api"], env=self.env, stdout=devnull, stderr=self._log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"smtpy api exited {self.proc.returncode}: {self._read_log()}")
            with contextlib.suppress(httpx.TransportError):
                if self.client.get("/healthz", timeout=2).status_code == 200:
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("smtpy api did not answer /healthz within 60 s")

    def stop(self) -> int | None:
        """SIGTERM, then wait (bounded); the exit code."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc is not None:
            self.returncode = self.proc.returncode
            if not self._log.closed:  # stop() may come twice
                self.stderr = self._read_log()
                self._log.close()
        return self.returncode

    def _read_log(self) -> str:
        """What the server wrote to stderr so far."""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def __exit__(self, *exc: object) -> None:
        self.stop()
        for client in self._clients:
            client.close()

    def as_key(self, key: str) -> httpx.Client:
        """A client sending `key` as its bearer token (closed with the server)."""
        client = httpx.Client(
            base_url=self.base_url, timeout=30, headers={"Authorization": f"Bearer {key}"}
        )
        self._clients.append(client)
        return client

    def browser(self) -> httpx.Client:
        """A client with its own cookie jar, like a browser (closed with the server)."""
        client = httpx.Client(base_url=self.base_url, timeout=30)
        self._clients.append(client)
        return client


def seed_org(
    store_url: str,
    *,
    org: str = "acme",
    email: str | None = None,
    password: str = "correct horse battery",
    role: str = "owner",
) -> dict[str, Any]:
    """An organization (created if new), a user in it with `role` and an API key of it:
    {"org": id, "user": id, "email", "password", "key"}."""
    from smtpy.accounts import api_keys, members, users
    from smtpy.store.db import Database

    email = email or f"{role}@{org}.test"
    with Database(store_url) as db:
        org_id = db.scalar("SELECT id FROM organizations WHERE name = :n", {"n": org})
        if org_id is None:
            org_id = db.insert(
                "INSERT INTO organizations (name, created_at) VALUES (:n, :now) RETURNING id",
                {"n": org, "now": time.time()},
            )
        user = users.create_user(db=db, email=email, password=password)
        members.add_member(db=db, org=int(org_id), user_id=user.id, role=role)  # type: ignore[arg-type]
        key = api_keys.create_key(db=db, org=int(org_id), name=f"{role} key")
    return {
        "org": int(org_id),
        "user": user.id,
        "email": email,
        "password": password,
        "key": key.key,
    }
