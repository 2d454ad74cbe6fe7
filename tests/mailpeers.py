"""The peers of an end-to-end test: destination MX hosts, and `smtpy serve` itself.

`MailPeers` plays the destination MX hosts: one aiosmtpd server per loopback
address (127.0.0.2, 127.0.0.3, ...), all on one port (smtpy uses one delivery
port for every MX), served by a background thread with its own event loop. It
records every message it takes and can answer from a script:

    with MailPeers(["127.0.0.2", "127.0.0.3"]) as peers:
        peers.script("bob@dest.test", "451 4.3.0 Try again", "451 4.3.0 Try again")
        peers.script("eve@dest.test", "550 5.1.1 No such user", repeat=True)
        ...  # SMTPY_DELIVERY_PORT=peers.port
        [message] = peers.wait_for(lambda got: got, timeout=20)

`Serve` runs the real `smtpy serve` as a subprocess, waits until it listens,
stops it with SIGTERM (exit 0 expected) and reads its JSON log lines.

`forwarding_world` puts it together for one test: the served domain
example.test added with the real CLI and its records (DKIM key included)
published on the loopback DNS server; dest1.test, dest2.test and sender.test
with MX hosts on 127.0.0.2, 127.0.0.3 and 127.0.0.4; daemons started with
`world.start()` after the test added its aliases, and stopped with SIGTERM
at the end, where each must exit 0.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import json
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TypeVar

import dkim
import dns.resolver
from aiosmtpd.smtp import SMTP, Envelope, Session

from dnsserver import DNSServer
from forkserver import ForkedProcess, popen

T = TypeVar("T")

DOMAIN = "example.test"
HOSTNAME = "mx.forwarder.test"
SENDER = "alice@sender.test"
DEST1, DEST2, SENDER_MX = "127.0.0.2", "127.0.0.3", "127.0.0.4"

_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(<[^>\r\n]*>)", re.IGNORECASE | re.MULTILINE)

OK_RCPT = "250 2.1.5 Ok"
OK_DATA = "250 2.0.0 Ok: queued"


# -- destination MX hosts ------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """One message an MX host took (after DATA was answered 2xx)."""

    host: str  # the loopback address it arrived on
    mail_from: str  # "" for the null sender
    rcpt_tos: tuple[str, ...]
    data: bytes
    mail_options: tuple[str, ...]
    helo: str | None

    @property
    def message(self) -> EmailMessage:
        parsed = message_from_bytes(self.data, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed

    @property
    def message_id(self) -> str | None:
        return message_id_of(self.data)


@dataclass(frozen=True)
class Reply:
    """One reply a host gave at RCPT or DATA, for tests about retries."""

    host: str
    stage: str  # "RCPT" or "DATA"
    address: str | None
    reply: str


@dataclass
class _Script:
    replies: collections.deque[str]
    repeat: bool


class _Handler:
    def __init__(self, peers: MailPeers) -> None:
        self.peers = peers

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        reply = self.peers._next_reply(address)
        self.peers._log(Reply(_local_host(server), "RCPT", address, reply))
        if reply.startswith("2"):
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        return reply

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        host = _local_host(server)
        delay = self.peers.delays.get(host, self.peers.data_delay)
        in_data = self.peers.in_data
        in_data[host] += 1
        self.peers.most_in_data[host] = max(self.peers.most_in_data[host], in_data[host])
        try:
            if delay:
                await asyncio.sleep(delay)
        finally:
            in_data[host] -= 1
        reply = self.peers.data_reply
        self.peers._log(Reply(host, "DATA", None, reply))
        if reply.startswith("2"):
            content = envelope.content
            assert isinstance(content, bytes)
            mail_from = envelope.mail_from or ""
            self.peers._record(
                Received(
                    host=host,
                    mail_from="" if mail_from == "<>" else mail_from,
                    rcpt_tos=tuple(envelope.rcpt_tos),
                    data=content,
                    mail_options=tuple(envelope.mail_options),
                    helo=session.host_name,
                )
            )
        return reply


def _local_host(server: SMTP) -> str:
    transport = server.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    return str(sockname[0]) if sockname else "?"


class MailPeers:
    """SMTP servers on several loopback addresses and one port, in a thread of their own."""

    def __init__(self, hosts: Sequence[str] = ("127.0.0.2", "127.0.0.3", "127.0.0.4")) -> None:
        self.hosts = list(hosts)
        self.port = 0
        self.data_reply = OK_DATA
        self.data_delay = 0.0  # seconds each DATA takes, to keep deliveries in flight
        self.delays: dict[str, float] = {}  # the same for one host
        self.in_data: collections.Counter[str] = collections.Counter()  # DATA phases now, per host
        self.most_in_data: collections.Counter[str] = collections.Counter()  # the most at once
        self._lock = threading.Condition()
        self._received: list[Received] = []
        self._replies: list[Reply] = []
        self._scripts: dict[str, _Script] = {}
        self._servers: dict[str, asyncio.Server] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        ready = threading.Event()
        loop = asyncio.new_event_loop()
        self._loop = loop

        def main() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=main, name="mailpeers", daemon=True)
        self._thread.start()
        ready.wait(10)
        self._call(self._bind_all())

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        with contextlib.suppress(Exception):
            self._call(self._close(list(self._servers)))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = self._thread = None

    def __enter__(self) -> MailPeers:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def down(self, host: str) -> None:
        """Stop answering on `host`: connections to it are refused."""
        self._call(self._close([host]))

    def up(self, host: str) -> None:
        """Answer on `host` again, on the same port."""
        self._call(self._bind(host, self.port))

    # -- scripting ---------------------------------------------------------

    def script(self, address: str, *replies: str, repeat: bool = False) -> None:
        """Answer RCPT TO:<address> with `replies` in turn (then 250), or forever with `repeat`."""
        with self._lock:
            self._scripts[address.lower()] = _Script(collections.deque(replies), repeat)

    def _next_reply(self, address: str) -> str:
        with self._lock:
            script = self._scripts.get(address.lower())
            if script is None or not script.replies:
                return OK_RCPT
            if script.repeat:
                return script.replies[0]
            return script.replies.popleft()

    # -- what arrived --------------------------------------------------------

    @property
    def received(self) -> list[Received]:
        with self._lock:
            return list(self._received)

    @property
    def replies(self) -> list[Reply]:
        with self._lock:
            return list(self._replies)

    def wait_for(self, predicate: Callable[[list[Received]], T], timeout: float = 20.0) -> T:
        """Wait until `predicate(received)` is truthy and return its value; fail after `timeout`."""
        deadline = time.monotonic() + timeout
        seen = -1
        while True:
            with self._lock:
                if len(self._received) == seen:
                    self._lock.wait(min(max(deadline - time.monotonic(), 0), 0.5))
                got = list(self._received)
            seen = len(got)
            value = predicate(got)  # outside the lock: the MX hosts must not wait for it
            if value:
                return value
            if time.monotonic() > deadline:
                summary = [(r.host, r.mail_from, r.rcpt_tos, r.message_id) for r in got[:20]]
                raise AssertionError(
                    f"timed out after {timeout}s waiting for mail; received {len(got)}: {summary}"
                )

    def wait_for_ids(self, ids: Iterable[str], timeout: float = 30.0) -> dict[str, int]:
        """Wait until every Message-ID in `ids` arrived; return how often each id arrived."""
        wanted = set(ids)

        def arrived(got: list[Received]) -> dict[str, int] | None:
            counts = message_id_counts(got)
            return counts if wanted <= counts.keys() else None

        try:
            return self.wait_for(arrived, timeout)
        except AssertionError:
            missing = wanted - message_id_counts(self.received).keys()
            raise AssertionError(
                f"{len(missing)} of {len(wanted)} messages never arrived: {sorted(missing)[:10]}"
            ) from None

    def _record(self, received: Received) -> None:
        with self._lock:
            self._received.append(received)
            self._lock.notify_all()

    def _log(self, reply: Reply) -> None:
        with self._lock:
            self._replies.append(reply)

    # -- the loop thread -------------------------------------------------------

    def _call(self, coro: Any, timeout: float = 10.0) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _factory(self) -> SMTP:
        return SMTP(
            _Handler(self),
            hostname="mx.peer.test",
            enable_SMTPUTF8=True,
            decode_data=False,
            timeout=30,
        )

    async def _bind(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(self._factory, host, port, reuse_address=True)
        self._servers[host] = server
        return int(server.sockets[0].getsockname()[1])

    async def _bind_all(self) -> None:
        for _attempt in range(50):
            port = 0
            try:
                for host in self.hosts:
                    port = await self._bind(host, port)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                await self._close(list(self._servers))
                continue
            self.port = port
            return
        raise OSError(errno.EADDRINUSE, "no port free on every MX address")

    async def _close(self, hosts: list[str]) -> None:
        servers = [self._servers.pop(host) for host in hosts if host in self._servers]
        for server in servers:
            server.close()
        for server in servers:
            await server.wait_closed()


def message_id_of(data: bytes) -> str | None:
    """The Message-ID of a message, found without parsing the whole of it."""
    match = _MESSAGE_ID.search(data.split(b"\r\n\r\n", 1)[0])
    return match.group(1).decode("utf-8", "replace") if match else None


def message_id_counts(received: Iterable[Received]) -> dict[str, int]:
    """How many times each Message-ID arrived (a transaction counts once)."""
    counts: dict[str, int] = collections.Counter()
    for item in received:
        if item.message_id:
            counts[item.message_id] += 1
    return dict(counts)


# -- the daemon under test -----------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def greets(port: int, host: str = "127.0.0.1", *, timeout: float = 1.0) -> bool:
    """Whether an SMTP server serves on `port`: it sends its 220 greeting.

    A bound socket alone accepts connections (the kernel queues them) but says
    nothing: `smtpy serve` listens before it has taken its node name.
    """
    with contextlib.suppress(OSError), socket.create_connection((host, port), 1) as sock:
        sock.settimeout(timeout)
        if sock.recv(4) == b"220 ":
            sock.sendall(b"QUIT\r\n")
            return True
    return False


@dataclass
class Serve:
    """`python -m smtpy serve` in a process of its own (`forkserver`), logging JSON lines
    to `log_path`."""

    env: dict[str, str]
    log_path: Path
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    proc: ForkedProcess | subprocess.Popen[bytes] | None = None
    exit_codes: list[int] = field(default_factory=list)
    killed: bool = False  # by kill() and not started again
    # A new interpreter instead of a fork of the warm one: for what a process
    # loads (its imports, its memory maps), which a fork inherits.
    fresh: bool = False

    def __post_init__(self) -> None:
        self.env = {**self.env, "SMTPY_LISTEN": f"{self.host}:{self.port}"}

    def start(self, timeout: float = 30.0) -> None:
        """Start the daemon and return once it serves: a client gets its 220 greeting.

        The sockets listen before the daemon has taken its node name and started
        serving (a start that fails changes nothing), so a connection alone does
        not say it is ready; the greeting does.
        """
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.killed = False
        with self.log_path.open("ab") as log:
            if self.fresh:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "smtpy", "serve"],
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                )
            else:
                self.proc = popen(["serve"], env=self.env, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"smtpy serve exited with {self.proc.returncode} at start-up:\n{self.log_tail()}"
                )
            if greets(self.port, self.host, timeout=max(0.1, deadline - time.monotonic())):
                return
            time.sleep(0.05)
        raise AssertionError(f"smtpy serve did not serve within {timeout}s:\n{self.log_tail()}")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, wait (SIGKILL after `timeout`); return the exit code (-9 when killed)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        code = self.proc.returncode
        self.exit_codes.append(code)
        return code

    def kill(self) -> None:
        """kill -9: no chance to clean up."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.killed = True
        self.exit_codes.append(self.proc.returncode)

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The daemon's structured log lines so far, optionally only one event."""
        events = []
        with contextlib.suppress(FileNotFoundError):
            for line in self.log_path.read_text(errors="replace").splitlines():
                if not line.startswith("{"):
                    continue
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    if name is None or event.get("event") == name:
                        events.append(event)
        return events

    def wait_event(
        self,
        name: str,
        predicate: Callable[[dict[str, Any]], bool] = lambda _e: True,
        *,
        timeout: float = 20.0,
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events(name):
                if predicate(event):
                    return event
            time.sleep(0.1)
        raise AssertionError(f"no {name!r} event within {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(FileNotFoundError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"


# -- the sending side ----------------------------------------------------------------


def make_message(
    *,
    message_id: str,
    sender: str = "alice@sender.test",
    to: str = "team@example.test",
    subject: str = "Hello",
    body: str = "Hello there.\r\n.A line that starts with a dot.\r\n",
    extra_headers: Sequence[str] = (),
) -> bytes:
    headers = [
        f"From: Alice <{sender}>",
        f"To: <{to}>",
        f"Subject: {subject}",
        "Date: Thu, 26 Nov 2026 10:00:00 +0000",
        f"Message-ID: {message_id}",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        *extra_headers,
    ]
    return ("\r\n".join(headers) + "\r\n\r\n" + body).encode("utf-8")


@contextlib.contextmanager
def smtp_client(
    port: int, host: str = "127.0.0.1", timeout: float = 30.0
) -> Iterator[smtplib.SMTP]:
    client = smtplib.SMTP(host, port, local_hostname="client.sender.test", timeout=timeout)
    try:
        yield client
    finally:
        with contextlib.suppress(smtplib.SMTPException, OSError):
            client.quit()
        client.close()


def send(
    port: int,
    sender: str,
    recipients: Sequence[str],
    data: bytes,
    *,
    mail_options: Sequence[str] = (),
) -> dict[str, tuple[int, bytes]]:
    """Send one message with smtplib (EHLO); return the refused recipients."""
    with smtp_client(port) as client:
        return client.sendmail(sender, list(recipients), data, mail_options=list(mail_options))


# -- one test's world ------------------------------------------------------------------


@dataclass
class Forwarder:
    """Store, CLI, DNS, destination MX hosts and the daemons of one test."""

    cli: Callable[..., Any]  # conftest.Cli: runs `python -m smtpy ARGS`
    env: dict[str, str]
    dns: DNSServer
    peers: MailPeers
    tmp_path: Path
    settings: dict[str, str] = field(default_factory=dict)
    daemons: list[Serve] = field(default_factory=list)

    @property
    def database_url(self) -> str:
        return self.env["SMTPY_DATABASE_URL"]

    def run(self, *args: str) -> str:
        result = self.cli(*args)
        assert result.code == 0, f"smtpy {' '.join(args)}: {result.stderr}"
        return str(result.stdout)

    def alias(self, address: str, *destinations: str, **options: str) -> None:
        flags = [part for name, value in options.items() for part in (f"--{name}", value)]
        self.run("alias", "add", address, *destinations, *flags)

    def start(self, *, fresh: bool = False, **settings: str) -> Serve:
        """Start one more daemon (node-0, node-1, ...); `settings` as lower-case names."""
        daemon = self.serve(**settings)
        daemon.fresh = fresh
        daemon.start()
        return daemon

    def serve(self, **settings: str) -> Serve:
        """One more daemon, not started yet."""
        index = len(self.daemons)
        env = {
            **self.env,
            "SMTPY_DELIVERY_PORT": str(self.peers.port),
            "SMTPY_RETRY_SCHEDULE": "1",
            "SMTPY_NODE_NAME": f"node-{index}",
            **{f"SMTPY_{name.upper()}": value for name, value in self.settings.items()},
            **{f"SMTPY_{name.upper()}": value for name, value in settings.items()},
        }
        daemon = Serve(env, self.tmp_path / f"serve-{index}.log")
        self.daemons.append(daemon)
        return daemon

    def wait_settled(self, timeout: float = 30.0) -> None:
        """Wait until the store holds no message: each accepted one was delivered or dropped.

        A message leaves the queue only after its last delivery was settled, so
        once the queue is empty nothing more can be sent: what the MX hosts got
        by then is all they will ever get. Absence proved by the store, not by
        sleeping and hoping.
        """
        deadline = time.monotonic() + timeout
        while json.loads(self.run("queue", "list", "--json")):
            assert time.monotonic() < deadline, f"the queue did not empty within {timeout}s:\n" + (
                "\n".join(d.log_tail(10) for d in self.daemons)
            )
            time.sleep(0.2)

    def dkim_ok(self, data: bytes) -> bool:
        """Whether dkimpy verifies every signature of `data` against the published keys."""
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [self.dns.host]
        resolver.port = self.dns.port

        def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
            try:
                answer = resolver.resolve(name.decode(), "TXT", lifetime=timeout)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                return None
            return b"".join(answer[0].strings)  # type: ignore[attr-defined]

        return bool(dkim.verify(data, dnsfunc=dnsfunc))


@contextlib.contextmanager
def forwarding_world(
    cli: Callable[..., Any],
    cli_env: Mapping[str, str],
    dns_server: DNSServer,
    tmp_path: Path,
    *,
    peers_class: type[MailPeers] = MailPeers,
    **settings: Any,
) -> Iterator[Forwarder]:
    for domain, host, address in (
        ("dest1.test", "mx.dest1.test", DEST1),
        ("dest2.test", "mx.dest2.test", DEST2),
        ("sender.test", "mx.sender.test", SENDER_MX),
    ):
        dns_server.add(domain, "MX", f"10 {host}.")
        dns_server.add(host, "A", address)
    dns_server.add(HOSTNAME, "A", "127.0.0.1")
    with peers_class([DEST1, DEST2, SENDER_MX]) as peers:
        world = Forwarder(
            cli,
            dict(cli_env),
            dns_server,
            peers,
            tmp_path,
            settings={name: str(value) for name, value in settings.items()},
        )
        world.run("domain", "add", DOMAIN)
        for record in json.loads(world.run("domain", "records", DOMAIN, "--json")):
            dns_server.add(record["name"], record["type"], record["value"])
        try:
            yield world
        finally:
            codes = {d.log_path.name: d.stop() for d in world.daemons if not d.killed}
            failed = {name: code for name, code in codes.items() if code != 0}
            assert not failed, f"smtpy serve did not exit 0 on SIGTERM: {failed}\n" + "\n".join(
                d.log_tail() for d in world.daemons
            )
