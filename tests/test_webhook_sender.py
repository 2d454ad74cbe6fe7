"""The webhook sender's connections (smtpy.events.sender): kept alive between posts,
replaced when the endpoint closed them while idle, at most MAX_CONNECTIONS at once.

The endpoint is a small HTTPS server on loopback (a test CA's certificate) that counts
the connections it accepts and can close each one after answering, as servers with a
short keep-alive do. Everything is real: TLS, sockets, HTTP/1.1 framing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smtpy.events.deliveries import Answer
from smtpy.events.sender import MAX_ANSWER, MAX_CONNECTIONS, Sender
from testca import TestCA


@dataclass
class Endpoint:
    """What the endpoint saw, and how it answers."""

    port: int = 0
    connections: int = 0
    bodies: list[bytes] = field(default_factory=list)
    open_now: int = 0
    most_open: int = 0
    close_after_answer: bool = False  # without saying so (no `Connection: close`)
    chunked: bytes | None = None  # answer with this body, chunked
    delay: float = 0.0

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/hook"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            for _ in range(1000):  # requests on this connection
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.decode("latin-1").split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                self.bodies.append(await reader.readexactly(length))
                if self.delay:
                    await asyncio.sleep(self.delay)
                if self.chunked is not None:
                    half = len(self.chunked) // 2
                    parts = (self.chunked[:half], self.chunked[half:])
                    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                    for part in parts:
                        writer.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                    writer.write(b"0\r\n\r\n")
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
                if self.close_after_answer:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open_now -= 1
            writer.close()


@contextlib.asynccontextmanager
async def serving(
    tmp_path: Path, host: str = "127.0.0.1", **options: object
) -> AsyncIterator[tuple[Endpoint, Sender]]:
    ca = TestCA(tmp_path / "ca")
    cert, key = ca.issue([host])
    endpoint = Endpoint(**options)  # type: ignore[arg-type]  # the test's own keywords
    server = await asyncio.start_server(
        endpoint.handle, host, 0, ssl=TestCA.server_context(cert, key)
    )
    endpoint.port = server.sockets[0].getsockname()[1]
    sender = Sender(allow_private=True, timeout=10.0, ca_file=ca.ca_file)
    try:
        yield endpoint, sender
    finally:
        await sender.close()
        server.close()
        await server.wait_closed()


def test_posts_to_an_endpoint_share_one_kept_connection(tmp_path: Path) -> None:
    async def main() -> tuple[Endpoint, list[Answer]]:
        async with serving(tmp_path) as (endpoint, sender):
            answers = [
                await sender.post(endpoint.url, body=f'{{"n":{n}}}', headers={"x-n": str(n)})
                for n in range(5)
            ]
            return endpoint, answers

    endpoint, answers = asyncio.run(main())
    assert [(a.status_code, a.body, a.error) for a in answers] == [(200, "ok", None)] * 5
    assert endpoint.bodies == [f'{{"n":{n}}}'.encode() for n in range(5)]
    assert endpoint.connections == 1


def test_a_kept_connection_the_endpoint_closed_is_replaced_without_an_error(
    tmp_path: Path,
) -> None:
    async def main() -> tuple[Endpoint, list[Answer]]:
        async with serving(tmp_path, close_after_answer=True) as (endpoint, sender):
            answers = []
            for n in range(3):
                answers.append(await sender.post(endpoint.url, body=str(n), headers={}))
                await asyncio.sleep(0.05)  # the endpoint's close arrives while idle
            return endpoint, answers

    endpoint, answers = asyncio.run(main())
    assert [(a.status_code, a.error) for a in answers] == [(200, None)] * 3
    assert endpoint.bodies == [b"0", b"1", b"2"]  # each posted once
    assert endpoint.connections == 3


def test_a_chunked_answer_is_read_and_cut_at_max_answer(tmp_path: Path) -> None:
    async def main(body: bytes) -> tuple[Endpoint, list[Answer]]:
        async with serving(tmp_path, chunked=body) as (endpoint, sender):
            answers = [await sender.post(endpoint.url, body="{}", headers={}) for _ in range(2)]
            return endpoint, answers

    endpoint, answers = asyncio.run(main(b"accepted, thanks"))
    assert [a.body for a in answers] == ["accepted, thanks"] * 2
    assert endpoint.connections == 1
    endpoint, answers = asyncio.run(main(b"x" * (MAX_ANSWER + 5000)))
    assert [len(a.body or "") for a in answers] == [MAX_ANSWER] * 2
    assert endpoint.connections == 2  # an answer not read to its end closes the connection


def test_posts_at_once_use_at_most_max_connections(tmp_path: Path) -> None:
    async def main() -> tuple[Endpoint, list[Answer]]:
        async with serving(tmp_path, delay=0.05) as (endpoint, sender):
            answers = await asyncio.gather(
                *(sender.post(endpoint.url, body=str(n), headers={}) for n in range(40))
            )
            return endpoint, list(answers)

    endpoint, answers = asyncio.run(main())
    assert all(a.status_code == 200 for a in answers)
    assert sorted(endpoint.bodies) == sorted(str(n).encode() for n in range(40))
    assert endpoint.connections == endpoint.most_open == MAX_CONNECTIONS


def test_a_path_http_cannot_carry_is_an_answer_with_an_error_not_a_crash(tmp_path: Path) -> None:
    async def main() -> tuple[Endpoint, Answer]:
        async with serving(tmp_path) as (endpoint, sender):
            return endpoint, await sender.post(endpoint.url + "/a b", body="{}", headers={})

    endpoint, answer = asyncio.run(main())
    assert answer.status_code is None
    assert "cannot send this request" in (answer.error or "")
    assert endpoint.connections == 0


def test_a_host_name_is_looked_up_once_for_many_posts(tmp_path: Path) -> None:
    async def main() -> tuple[list[str], list[Answer]]:
        async with serving(tmp_path, host="localhost") as (endpoint, sender):
            loop = asyncio.get_running_loop()
            real = loop.getaddrinfo
            looked_up: list[str] = []

            async def counted(host: str, *args: Any, **kwargs: Any) -> Any:
                looked_up.append(host)  # a spy: the real lookup still answers
                return await real(host, *args, **kwargs)

            loop.getaddrinfo = counted  # type: ignore[method-assign]
            url = f"https://localhost:{endpoint.port}/hook"
            answers = [await sender.post(url, body="{}", headers={}) for _ in range(3)]
            return looked_up, answers

    looked_up, answers = asyncio.run(main())
    assert [a.status_code for a in answers] == [200] * 3, [a.error for a in answers]
    assert looked_up == ["localhost"]
