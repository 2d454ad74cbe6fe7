"""Benchmark one webhook POST: the CPU smtpy's sender spends per post, against httpx.

    .venv/bin/python bench/bench_webhook_post.py [--posts N] [--concurrency N]

Why `smtpy.events.sender` speaks HTTP/1.1 through h11 on asyncio streams instead of
through httpx: both post the same signed 700-byte event to the same local HTTPS
receiver (bench_webhooks.py's: a test CA, keep-alive, answers 200 at once), with
the same number of posts in flight, over kept connections; the figure is this
process's CPU time per post (the receiver runs in its own process). Loopback only;
the load is bounded by --posts.

A third line is the floor under any sender in Python: the same request as fixed
bytes, written on 8 kept TLS connections (asyncio streams, as the sender uses) and
its answer read up to its end, no HTTP library, no signing, no checks. What is left
is asyncio, TLS and the kernel's loopback: what each event posted costs at least.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import ssl
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from bench_webhooks import Receiver  # noqa: E402

from smtpy.events.sender import Sender  # noqa: E402

BODY = json.dumps({"type": "message.received", "data": {"padding": "x" * 640}})
HEADERS = {"webhook-id": "evt_bench", "webhook-timestamp": "0", "webhook-signature": "v1,bench"}

Post = Callable[[], Awaitable[int]]


async def measure(post: Post, posts: int, concurrency: int) -> dict[str, float]:
    """CPU microseconds per post and posts per second, after a warm-up of 100 posts."""
    slots = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with slots:
            status = await post()
            if status != 200:
                raise RuntimeError(f"the receiver answered {status}")

    await asyncio.gather(*(one() for _ in range(100)))
    cpu, wall = time.process_time(), time.monotonic()
    await asyncio.gather(*(one() for _ in range(posts)))
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    return {"cpu_us_per_post": round(cpu / posts * 1e6), "posts_per_second": round(posts / wall)}


async def run(receiver: Receiver, posts: int, concurrency: int) -> dict[str, Any]:
    import httpx

    sender = Sender(allow_private=True, timeout=10.0, ca_file=receiver.ca.ca_file)

    async def smtpy_post() -> int:
        answer = await sender.post(receiver.url, body=BODY, headers=HEADERS)
        return answer.status_code or 0

    context = ssl.create_default_context(cafile=str(receiver.ca.ca_file))
    limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
    async with httpx.AsyncClient(verify=context, limits=limits, timeout=10.0) as client:

        async def httpx_post() -> int:
            data = BODY.encode()
            answer = await client.post(receiver.url, content=data, headers=HEADERS)
            return answer.status_code

        report = {
            "posts": posts,
            "concurrency": concurrency,
            "smtpy_sender_h11": await measure(smtpy_post, posts, concurrency),
            "httpx": await measure(httpx_post, posts, concurrency),
            "floor_raw_bytes_on_asyncio_tls": await floor(receiver, context, posts, concurrency),
        }
    await sender.close()
    return report


async def floor(
    receiver: Receiver, context: ssl.SSLContext, posts: int, concurrency: int
) -> dict[str, float]:
    """The request as fixed bytes on 8 kept TLS streams; the answer read to its end."""
    url = urlsplit(receiver.url)
    host, port = url.hostname or "127.0.0.1", url.port or 443
    data = BODY.encode()
    head = [f"POST {url.path} HTTP/1.1", f"Host: {host}:{port}"]
    head += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
    head += [f"{name}: {value}" for name, value in HEADERS.items()]
    request = ("\r\n".join(head) + "\r\n\r\n").encode() + data
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    for _ in range(8):
        idle.append(await asyncio.open_connection(host, port, ssl=context))
    free = asyncio.Semaphore(len(idle))

    async def post() -> int:
        async with free:
            reader, writer = idle.pop()
            try:
                writer.write(request)
                answer = await reader.readuntil(b"\r\n\r\n")
                length = answer.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0]
                await reader.readexactly(int(length))
            finally:
                idle.append((reader, writer))
        return int(answer[9:12])

    try:
        return await measure(post, posts, concurrency)
    finally:
        for _, writer in idle:
            writer.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="smtpy-bench-post-"))
    receiver = Receiver(work)
    receiver.start()
    try:
        report = asyncio.run(run(receiver, max(1, args.posts), max(1, args.concurrency)))
    finally:
        receiver.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
