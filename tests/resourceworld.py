"""What the tests of the API's mail resources share: the real `smtpy api` with an
organization, its API key and a signed-in member; domains, log rows and queued mail
seeded through the core, as `smtpy serve` and the CLI would leave them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from apiserver import ApiServer, seed_org
from smtpy.admin.domains import DomainCreate, add_domain
from smtpy.queue.message_log import LogEvent, write_events
from smtpy.queue.queries import NewDelivery, NewMessage, enqueue
from smtpy.store.db import Database

API = "/api/v1"


@dataclass
class World:
    api: ApiServer
    store_url: str
    org: int  # acme's id
    admin: httpx.Client  # acme's API key (acts as admin)
    other_org: int  # globex's id
    other: httpx.Client  # globex's API key

    def db(self) -> Database:
        return Database(self.store_url)

    def member(self) -> httpx.Client:
        """A browser signed in as a `member` of acme, sending its CSRF token."""
        seeded = seed_org(self.store_url, org="acme", role="member")
        browser = self.api.browser()
        answer = browser.post(
            f"{API}/auth/login", json={"email": seeded["email"], "password": seeded["password"]}
        )
        assert answer.status_code == 200, answer.text
        browser.headers["X-CSRF-Token"] = answer.json()["csrf_token"]
        return browser


@contextlib.contextmanager
def world(cli_env: dict[str, str], store_url: str) -> Iterator[World]:
    acme = seed_org(store_url, org="acme", role="owner")
    globex = seed_org(store_url, org="globex", role="owner")
    with ApiServer(cli_env) as api:
        yield World(
            api=api,
            store_url=store_url,
            org=acme["org"],
            admin=api.as_key(acme["key"]),
            other_org=globex["org"],
            other=api.as_key(globex["key"]),
        )


def served_domain(store_url: str, org: int, name: str) -> None:
    """A domain that serves at once (as `smtpy domain add` makes it)."""
    with Database(store_url) as db:
        add_domain(db=db, org=org, domain=DomainCreate(name=name, key_algorithm="ed25519"))


def log(store_url: str, events: Sequence[LogEvent]) -> None:
    with Database(store_url) as db:
        write_events(db, events)


def queued(
    store_url: str,
    queue_id: str,
    *,
    to: str,
    dest: str = "box@mailbox.test",
    received_at: float,
    auth_results: str | None = None,
) -> None:
    """A message waiting in the queue, with its `received` log row, as smtpy serve leaves it."""
    domain = to.rpartition("@")[2]
    with Database(store_url) as db:
        enqueue(
            db,
            NewMessage(
                queue_id=queue_id,
                sender="sender@origin.test",
                data=b"From: sender@origin.test\r\nSubject: hello\r\n\r\nbody\r\n",
                deliveries=[NewDelivery(to, dest, dest.rpartition("@")[2], "srs@fwd.test")],
                client_ip="192.0.2.7",
                received_at=received_at,
                auth_results=auth_results,
                log=[
                    LogEvent(
                        at=received_at,
                        event="received",
                        queue_id=queue_id,
                        client_ip="192.0.2.7",
                        sender="sender@origin.test",
                        alias=to,
                        recipient=dest,
                        domain=domain,
                        size=50,
                    )
                ],
            ),
        )


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """The RFC 9457 body of an error answer with `status`."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body
