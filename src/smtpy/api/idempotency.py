"""`Idempotency-Key` on the API's creates (POST), as ASGI middleware: routes do nothing.

The same key with the same request (method, path, query and body) from the same
caller within 24 hours gets the first answer again (its status and body, with
`Idempotent-Replayed: true`) without the request being done again; the same key
with another request is refused (422, `idempotency_key_reused`); a key whose first
request is still running answers 409 (`idempotency_key_in_use`).

The caller is the digest of its `Authorization` header or of its session cookie: a
request without credentials is passed on as it is (it gets its 401 anyway). Only
successful (2xx) JSON answers are kept, never with the secrets they show once (a
new API key's `key` is null in a replay); after a failure the request can be sent
again with the same key. Keys live in the store's `idempotency_keys` table, so
every `smtpy api` process of a deployment shares them; rows older than 24 hours
are pruned.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Literal

import anyio.to_thread
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from smtpy import log
from smtpy.accounts.sessions import COOKIE, SECURE_COOKIE
from smtpy.accounts.tokens import digest
from smtpy.api import problems
from smtpy.errors import Conflict, StoreError
from smtpy.store.db import Database

logger = log.get("smtpy.api")

HEADER = b"idempotency-key"
KEEP = 24 * 3600.0  # seconds a key is remembered
STALE = 300.0  # a first request that has not finished after this long is taken to be dead
PRUNE_EVERY = 600.0  # seconds between prunes, per process
MAX_KEY = 200
# Paths that are no creates: signing in, out and up sets cookies a replay would not.
EXEMPT = ("/api/v1/auth/",)
# Secrets an answer shows once (a new API key, a webhook's secret, recovery codes): the store
# never keeps them, so a replay answers the object with these fields null.
SHOWN_ONCE = frozenset({"key", "secret", "recovery_codes"})


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: Literal["new", "replay", "reused", "busy"]
    status: int = 0
    body: str = ""


def caller(headers: dict[bytes, bytes]) -> str | None:
    """Who sent the request, as a digest: its Authorization header, else its session cookie."""
    authorization = headers.get(b"authorization")
    if authorization:
        return digest("authorization " + authorization.decode("latin-1"))
    from http.cookies import CookieError, SimpleCookie

    cookie = SimpleCookie()
    try:
        cookie.load(headers.get(b"cookie", b"").decode("latin-1"))
    except CookieError:
        return None
    for name in (SECURE_COOKIE, COOKIE):
        if name in cookie and cookie[name].value:
            return digest("session " + cookie[name].value)
    return None


def request_hash(scope: Scope, body: bytes) -> str:
    h = hashlib.sha256()
    for part in (scope["method"].encode(), scope["path"].encode(), scope.get("query_string", b"")):
        h.update(part + b"\0")
    h.update(body)
    return h.hexdigest()


def reserve(db: Database, principal: str, key: str, hashed: str, now: float) -> Outcome:
    """Claim `key` for this request, or say what the first request with it got."""
    params = {"p": principal, "k": key, "h": hashed, "now": now}
    for _ in range(3):  # a row that expires or vanishes meanwhile: look again (bounded)
        try:
            db.execute(
                "INSERT INTO idempotency_keys (principal, key, request_hash, status, body,"
                " created_at) VALUES (:p, :k, :h, 0, '', :now)",
                params,
            )
            return Outcome("new")
        except Conflict:
            pass
        row = db.one(
            "SELECT request_hash, status, body, created_at FROM idempotency_keys"
            " WHERE principal = :p AND key = :k",
            params,
        )
        if row is None:
            continue
        expired = row["created_at"] <= now - KEEP
        stale = row["status"] == 0 and row["created_at"] <= now - STALE
        if expired or stale:
            db.execute(
                "DELETE FROM idempotency_keys WHERE principal = :p AND key = :k"
                " AND created_at = :at",
                {**params, "at": row["created_at"]},
            )
            continue
        if row["request_hash"] != hashed:
            return Outcome("reused")
        if row["status"] == 0:
            return Outcome("busy")
        return Outcome("replay", int(row["status"]), str(row["body"]))
    return Outcome("busy")


def without_secrets(body: str) -> str:
    """The answer as kept: the fields in `SHOWN_ONCE` emptied (top level of a JSON object)."""
    import json

    try:
        value = json.loads(body)
    except ValueError:
        return body
    if not isinstance(value, dict) or not SHOWN_ONCE & value.keys():
        return body
    return json.dumps({k: (None if k in SHOWN_ONCE else v) for k, v in value.items()})


def finish(db: Database, principal: str, key: str, status: int, body: str | None) -> None:
    """Keep the answer (`body` None: forget the key, the request may be sent again)."""
    params = {"p": principal, "k": key, "s": status, "b": body}
    if body is None:
        db.execute("DELETE FROM idempotency_keys WHERE principal = :p AND key = :k", params)
    else:
        db.execute(
            "UPDATE idempotency_keys SET status = :s, body = :b WHERE principal = :p AND key = :k",
            params,
        )


def prune(db: Database, now: float) -> int:
    """Forget the keys older than 24 hours."""
    return db.execute(
        "DELETE FROM idempotency_keys WHERE created_at < :before", {"before": now - KEEP}
    )


class Idempotency:
    """The middleware; the store is the application's pool (`app.state.pool`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._pruned_at = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or not scope["path"].startswith("/api/v1/")
            or scope["path"].startswith(EXEMPT)
        ):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        raw_key = headers.get(HEADER)
        principal = caller(headers) if raw_key is not None else None
        if raw_key is None or principal is None:
            await self.app(scope, receive, send)
            return
        key = raw_key.decode("latin-1").strip()
        if not key or len(key) > MAX_KEY or not key.isprintable() or not key.isascii():
            message = (
                f"the Idempotency-Key header must be 1 to {MAX_KEY} printable ASCII characters"
            )
            answer = problems.problem(
                422,
                "invalid_input",
                message,
                field_errors=[{"field": "Idempotency-Key", "message": message}],
            )
            await answer(scope, receive, send)
            return

        body, messages = await _read_body(receive)
        if body is None:  # the client went away while sending
            await self.app(scope, _replay(messages, receive), send)
            return
        hashed = request_hash(scope, body)
        pool = scope["app"].state.pool
        now = time.time()

        def claim() -> Outcome:
            with pool.connection() as db:
                if now - self._pruned_at >= PRUNE_EVERY:
                    self._pruned_at = now
                    prune(db, now)
                outcome: Outcome = reserve(db, principal, key, hashed, now)
                return outcome

        outcome = await anyio.to_thread.run_sync(claim)
        if outcome.kind == "reused":
            answer = problems.problem(
                422,
                "idempotency_key_reused",
                "this Idempotency-Key was used with another request: use a new key "
                "for a new request",
                field_errors=[{"field": "Idempotency-Key", "message": "used with another request"}],
            )
            await answer(scope, receive, send)
            return
        if outcome.kind == "busy":
            answer = problems.problem(
                409,
                "idempotency_key_in_use",
                "a request with this Idempotency-Key is still running: retry in a moment",
            )
            await answer(scope, receive, send)
            return
        if outcome.kind == "replay":
            await _send_replay(send, outcome.status, outcome.body)
            return

        status = 0
        json_answer = False
        chunks: list[bytes] = []
        settled = False  # the key's row holds the answer, or is gone

        async def settle(body: bytes | None) -> None:
            nonlocal settled
            settled = True
            kept: str | None = None
            if body is not None and 200 <= status < 300 and json_answer:
                try:
                    kept = without_secrets(body.decode("utf-8"))
                except UnicodeDecodeError:
                    kept = None

            def store() -> None:
                with pool.connection() as db:
                    finish(db, principal, key, status, kept)

            try:
                await anyio.to_thread.run_sync(store)
            except StoreError as exc:  # the answer still goes out; a retry may say "busy"
                logger.warning("idempotency key not kept", path=scope["path"], detail=str(exc))

        async def capturing_send(message: Message) -> None:
            nonlocal status, json_answer
            if message["type"] == "http.response.start":
                status = int(message["status"])
                content_type = dict(message.get("headers", [])).get(b"content-type", b"")
                json_answer = content_type.split(b";")[0].strip() == b"application/json"
            elif message["type"] == "http.response.body" and not settled:
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    # Kept before the client has the whole answer: a retry sent the moment
                    # it arrives finds it (and never "still running").
                    await settle(b"".join(chunks))
            await send(message)

        try:
            await self.app(scope, _replay(messages, receive), capturing_send)
        finally:
            if not settled:  # no complete answer: forget the key
                await settle(None)


async def _read_body(receive: Receive) -> tuple[bytes | None, list[Message]]:
    """The whole request body (None if the client disconnected) and the messages read."""
    messages: list[Message] = []
    parts: list[bytes] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] == "http.disconnect":
            return None, messages
        if message["type"] == "http.request":
            parts.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(parts), messages


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A `receive` that gives the messages already read, then the real ones."""
    pending = list(messages)

    async def replaying_receive() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replaying_receive


async def _send_replay(send: Send, status: int, body: str) -> None:
    data = body.encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                (b"idempotent-replayed", b"true"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})
