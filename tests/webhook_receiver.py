"""A real HTTPS webhook receiver on loopback, for tests: a test CA's certificate, and every
request's Standard Webhooks signature checked with the `standardwebhooks` library.

    receiver = WebhookReceiver(tmp_path)          # https://127.0.0.1:PORT, trusted via ca_file
    receiver.secrets = [created.secret]           # what it verifies against
    receiver.script(Reply(500), Reply(500))       # the next answers; then 200
    hits = receiver.wait_for(lambda hits: len(hits) >= 3)

`hits` holds every request: its path, headers, body, the answer it got, and which
of `secrets` verified its signature (`verified_by`).
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from testca import TestCA

T = TypeVar("T")


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: str = "ok"
    delay: float = 0.0  # seconds before answering (a slow endpoint)


@dataclass(frozen=True)
class Hit:
    at: float
    path: str
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered
    verified_by: tuple[int, ...]  # indexes into `secrets` whose signature matched

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def id(self) -> str:
        return self.headers.get("webhook-id", "")

    @property
    def type(self) -> str:
        return str(self.json.get("type"))


class WebhookReceiver:
    def __init__(self, tmp_path: Path, host: str = "127.0.0.1") -> None:
        self.ca = TestCA(tmp_path / "webhook-ca")
        self.ca_file = self.ca.ca_file
        self.host = host
        self.secrets: list[str] = []
        self.hits: list[Hit] = []
        self.started = 0  # requests read, answered or not yet
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out at once

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                reply = outer._next()
                with outer._lock:
                    outer.started += 1
                if reply.delay:
                    time.sleep(reply.delay)
                headers = {k.lower(): v for k, v in self.headers.items()}
                outer._record(
                    Hit(
                        time.time(),
                        self.path,
                        headers,
                        body,
                        reply.status,
                        outer._verify(body, headers),
                    )
                )
                data = reply.body.encode()
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (a timeout test)
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            request_queue_size = 128  # the default 5 drops connections opened at once
            daemon_threads = True

        self._server = Server((host, 0), Handler)
        cert, key = self.ca.issue(["localhost", host])
        # The handshake happens in each connection's thread, not in the accepting one.
        self._server.socket = TestCA.server_context(cert, key).wrap_socket(
            self._server.socket, server_side=True, do_handshake_on_connect=False
        )
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, path: str = "/hook") -> str:
        return f"https://{self.host}:{self.port}{path}"

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def script(self, *replies: Reply) -> None:
        """The next answers, in order; once they are used up, 200."""
        with self._lock:
            self._script.extend(replies)

    def _next(self) -> Reply:
        with self._lock:
            return self._script.popleft() if self._script else Reply()

    def _record(self, hit: Hit) -> None:
        with self._lock:
            self.hits.append(hit)

    def _verify(self, body: bytes, headers: dict[str, str]) -> tuple[int, ...]:
        matched = []
        for n, secret in enumerate(list(self.secrets)):
            try:
                Webhook(secret).verify(body, headers)
            except WebhookVerificationError:
                continue
            matched.append(n)
        return tuple(matched)

    def received(self) -> list[Hit]:
        with self._lock:
            return list(self.hits)

    def wait_for(self, predicate: Callable[[list[Hit]], T], timeout: float = 30.0) -> T:
        deadline = time.monotonic() + timeout
        while True:
            got = predicate(self.received())
            if got:
                return got
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"the receiver did not get what was expected within {timeout}s; it got:\n"
                    + "\n".join(f"{h.status} {h.id} {h.body[:200]!r}" for h in self.received())
                )
            time.sleep(0.05)
