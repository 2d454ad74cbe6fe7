"""A forwarder made of the prescribed libraries and nothing else: the floor under smtpy.

    python bench/relay_floor.py --port P --sink-port S --destination ADDR [--processes N]

`bench_forward.py` runs it beside smtpy and the Postfix stack (the row
"libraries-only"). It does what the libraries smtpy is built on must do for
every forwarded message, as their documentation uses them, and skips all
that smtpy adds:

- aiosmtpd receives the message (its own DATA reader, a no-op RCPT policy);
- three RSA-2048 signatures over a SHA-256 digest, the count that DKIM plus
  an ARC set (ARC-Message-Signature, ARC-Seal) take, through `cryptography`;
- aiosmtplib hands it to the sink over connections kept open, ten per process.

No queue (the 250 comes before anything is on disk), no SRS, no alias
lookup, no SPF/DKIM/DMARC checks, no Received header, no logs. Whatever
smtpy spends beyond this row is its own work; what this row cannot reach,
smtpy cannot reach with these libraries on this machine.

One process per `--processes`, sharing one listening socket (forked after
bind, as `smtpy serve` does). SIGTERM stops them all.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import os
import signal
import socket
import sys
from typing import Any

import aiosmtplib
from aiosmtpd.smtp import SMTP, Envelope, Session
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

SIGNATURES = ("DKIM-Signature", "ARC-Message-Signature", "ARC-Seal")
CONNECTIONS = 10  # per process, to the sink


class Relay:
    """aiosmtpd's handler: 250 at once, then sign and send in the background."""

    def __init__(self, sink_port: int, destination: str) -> None:
        self.sink_port = sink_port
        self.destination = destination
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.idle: list[aiosmtplib.SMTP] = []
        self.slots = asyncio.Semaphore(CONNECTIONS)
        self.tasks: set[asyncio.Task[None]] = set()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content
        assert isinstance(data, bytes) and isinstance(envelope.mail_from, str)
        task = asyncio.create_task(self.forward(envelope.mail_from, data))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return "250 2.0.0 OK"

    def sign(self, data: bytes) -> bytes:
        digest = hashlib.sha256(data).digest()
        signature = self.key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
        return base64.b64encode(signature)

    async def forward(self, sender: str, data: bytes) -> None:
        headers = b""
        for name in SIGNATURES:  # each signs what the previous one produced, as ARC chains
            headers += name.encode() + b": b=" + self.sign(headers + data) + b"\r\n"
        async with self.slots:
            while True:
                kept = self.idle.pop() if self.idle else None
                client = kept or aiosmtplib.SMTP(
                    hostname="127.0.0.1", port=self.sink_port, start_tls=False
                )
                try:
                    if kept is None:
                        await client.connect()
                    await client.sendmail(sender, [self.destination], headers + data)
                except (aiosmtplib.SMTPException, OSError):
                    client.close()
                    if kept is None:
                        raise
                    continue  # the sink closed a kept connection: the next one, or a new one
                self.idle.append(client)
                return


async def serve(sock: socket.socket, sink_port: int, destination: str) -> None:
    loop = asyncio.get_running_loop()
    relay = Relay(sink_port, destination)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    def factory() -> Any:
        return SMTP(relay, hostname="floor.bench.example")

    server = await loop.create_server(factory, sock=sock)
    await stop.wait()
    server.close()
    if relay.tasks:
        await asyncio.wait(relay.tasks, timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="listen on 127.0.0.1:PORT")
    parser.add_argument("--sink-port", type=int, required=True, help="the sink on 127.0.0.1")
    parser.add_argument("--destination", required=True, help="every message's recipient")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(1024)
    sock.setblocking(False)
    children = []
    for _ in range(max(1, args.processes)):
        pid = os.fork()
        if pid == 0:
            try:
                asyncio.run(serve(sock, args.sink_port, args.destination))
            finally:
                os._exit(0)
        children.append(pid)
    sock.close()

    def stop(signo: int, frame: object) -> None:
        for pid in children:
            os.kill(pid, signo)

    signal.signal(signal.SIGTERM, stop)
    for pid in children:
        while True:
            try:
                os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
    return 0


if __name__ == "__main__":
    sys.exit(main())
