"""The POST of one webhook: to a checked address, capped both ways, within a timeout.

Server-side request forgery is refused: a URL must be `https` (plain `http`
only with SMTPY_WEBHOOK_ALLOW_PRIVATE), and its host must resolve only to
public addresses: loopback, private, link-local (cloud metadata at
169.254.169.254 among them), shared, reserved and multicast addresses are
refused unless that setting is on. The name is resolved (then at most once
every `RESOLVED_FOR` seconds) and the connection goes to the address that
was checked (the URL's host stays the
`Host` header and the TLS server name, so the certificate is verified
against it): a second answer from DNS cannot move the request elsewhere.
Redirects are not followed; the answer's body is read up to `MAX_ANSWER`
bytes. The whole exchange (connecting, sending, reading the answer) has
`timeout` seconds. Connections are HTTP/1.1 (h11) and kept alive between
posts to the same endpoint.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import ssl
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import urlsplit

import h11

from smtpy import __version__
from smtpy.errors import InvalidInput
from smtpy.events.deliveries import Answer, Claimed

MAX_URL = 2000
MAX_BODY = 1024 * 1024  # bytes of an event body at most
MAX_ANSWER = 64 * 1024  # bytes of an answer read at most
MAX_CONNECTIONS = 8  # connections at once to one endpoint address
MAX_ENDPOINTS = 256  # endpoint addresses with kept connections; beyond, they are closed
KEEP_ALIVE = 15.0  # seconds an idle connection is kept for the next post
RESOLVED_FOR = 60.0  # seconds a checked address stands for its host name (no lookup per post)
READ_SIZE = 65536
USER_AGENT = f"smtpy/{__version__} (webhooks)"
ALLOW_HINT = "set SMTPY_WEBHOOK_ALLOW_PRIVATE=true to allow it (tests, intranets)"


@dataclass(frozen=True, slots=True)
class Target:
    """A webhook URL taken apart: where to connect and what to ask for."""

    scheme: str
    host: str  # ASCII (IDNA) host name or address literal, without brackets
    port: int
    target: str  # path and query
    url: str  # as given

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def forbidden(address: str) -> str | None:
    """Why a webhook may not reach `address` (loopback, private, …), or None if it may."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address (cloud metadata lives there)"
    if ip.is_private:
        return "a private address"
    if ip.is_multicast or ip.is_unspecified or ip.is_reserved or not ip.is_global:
        return "not a public address"
    return None


def _literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def parse_url(url: str, *, allow_private: bool) -> Target:
    """Check a webhook URL's form (and an address literal's kind); InvalidInput if wrong."""
    url = url.strip()
    if not url or len(url) > MAX_URL:
        raise InvalidInput(f"a webhook URL has 1 to {MAX_URL} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidInput(f"not a usable URL: {exc}") from None
    scheme = parts.scheme.lower()
    allowed = ("https", "http") if allow_private else ("https",)
    if scheme not in allowed:
        raise InvalidInput(
            f"a webhook URL must start with https:// (got {url[:60]!r}); plain http only with"
            " SMTPY_WEBHOOK_ALLOW_PRIVATE=true"
        )
    if parts.username is not None or parts.password is not None:
        raise InvalidInput("a webhook URL cannot carry a user name or password")
    if not parts.hostname:
        raise InvalidInput("a webhook URL needs a host name")
    host = parts.hostname.rstrip(".")
    literal = _literal(host)
    if literal is None:
        try:
            host = host.encode("idna").decode("ascii").lower()
        except UnicodeError:
            raise InvalidInput(f"not a valid host name: {parts.hostname!r}") from None
    if not allow_private:
        if literal is not None and (why := forbidden(literal)):
            raise InvalidInput(f"the webhook URL points to {why} ({literal}); {ALLOW_HINT}")
        if host == "localhost" or host.endswith(".localhost"):
            raise InvalidInput(f"the webhook URL points to a loopback name ({host}); {ALLOW_HINT}")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(
        scheme=scheme,
        host=literal or host,
        port=port or (443 if scheme == "https" else 80),
        target=target,
        url=url,
    )


@functools.lru_cache(maxsize=1024)
def _parsed(url: str, allow_private: bool) -> Target:
    """`parse_url`, remembered: the daemon posts to the same few URLs again and again."""
    return parse_url(url, allow_private=allow_private)


class Refused(Exception):
    """The URL resolves where a webhook may not go, or does not resolve."""


async def resolve(target: Target, *, allow_private: bool, within: float = 10.0) -> str:
    """The one address to connect to, after checking every address the name has."""
    literal = _literal(target.host)
    if literal is not None:
        addresses = [literal]
    else:
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM), within
            )
        except (OSError, TimeoutError) as exc:
            raise Refused(f"cannot resolve {target.host}: {exc or 'timed out'}") from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not addresses:
            raise Refused(f"{target.host} has no address")
    if not allow_private:
        for address in addresses:
            why = forbidden(address)
            if why is not None:
                raise Refused(f"{target.host} resolves to {why} ({address}): refused; {ALLOW_HINT}")
    return addresses[0]


def tls_context(ca_file: Path | None = None) -> ssl.SSLContext:
    """Certificates verified against the system's CAs, or SMTPY_TLS_CA_FILE's."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _retry_after(value: str | None, now: float) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError):
        return None


@dataclass(slots=True)
class _Connection:
    """One HTTP/1.1 connection to an endpoint, kept open between posts (keep-alive)."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    http: h11.Connection
    idle_since: float = 0.0

    def close(self) -> None:
        """Close at once: no TLS close_notify to wait for (HTTP frames each answer itself)."""
        self.writer.transport.abort()


class _Dropped(Exception):
    """A kept-alive connection was closed by the endpoint before it answered."""


class Sender:
    """Posts webhooks over HTTP/1.1 (h11 on asyncio streams), keeping connections alive.

    Our own connection handling in httpx's place, measured: 0.3 ms of CPU per post
    where httpx took 1.3 to 2 ms (`bench/bench_webhook_post.py`).

    Each endpoint address (host, address, port) gets at most `MAX_CONNECTIONS` at
    once; a connection that answered cleanly waits for the next post for up to
    `KEEP_ALIVE` seconds. A kept connection the endpoint closed meanwhile is
    replaced once, without counting as an attempt.
    """

    def __init__(
        self,
        *,
        allow_private: bool,
        timeout: float,
        ca_file: Path | None = None,
        max_body: int = MAX_BODY,
    ) -> None:
        self.allow_private = allow_private
        self.timeout = timeout
        self.max_body = max_body  # a webhook destination's parsed message is larger
        self._tls = tls_context(ca_file)
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._slots: dict[tuple[str, str, int], asyncio.Semaphore] = {}
        self._resolved: dict[tuple[str, int], tuple[str, float]] = {}  # → (address, until)

    async def close(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()
        await asyncio.sleep(0)  # the transports close on the loop's next turn

    async def post(self, url: str, *, body: str, headers: dict[str, str]) -> Answer:
        """POST `body` to `url`; the answer, or the error that stood in for one."""
        started = time.monotonic()

        def elapsed() -> int:
            return int((time.monotonic() - started) * 1000)

        data = body.encode()
        if len(data) > self.max_body:
            return Answer(None, 0, error=f"the event is {len(data)} bytes, over {self.max_body}")
        try:
            target = _parsed(url, self.allow_private)
            address = await self._address(target)
        except (InvalidInput, Refused) as exc:
            return Answer(None, elapsed(), error=str(exc))
        try:
            request = h11.Request(
                method="POST",
                target=target.target,
                headers=[
                    ("Host", target.host_header),
                    ("Content-Type", "application/json"),
                    ("Content-Length", str(len(data))),
                    ("User-Agent", USER_AGENT),
                    *headers.items(),
                ],
            )
        except h11.LocalProtocolError as exc:  # a path HTTP cannot carry as it is
            return Answer(None, elapsed(), error=f"cannot send this request: {exc}"[:500])
        key = (target.host, address, target.port)
        slots = self._slots.get(key)
        if slots is None:
            slots = self._slots[key] = asyncio.Semaphore(MAX_CONNECTIONS)
        async with slots:  # waiting for a connection of our own is not the endpoint's time
            started = time.monotonic()
            try:
                async with asyncio.timeout(self.timeout):
                    kept = self._take(key)
                    if kept is not None:
                        try:
                            return await self._exchange(key, kept, request, data, started)
                        except _Dropped:
                            pass  # closed while idle: once more on a new connection
                    connection = await self._connect(target, address)
                    return await self._exchange(key, connection, request, data, started)
            except TimeoutError:
                return Answer(None, elapsed(), error=f"no answer within {self.timeout:g} s")
            except Exception as exc:  # a refused connection, a TLS failure, a broken answer
                reason = str(exc) or type(exc).__name__
                return Answer(None, elapsed(), error=f"{type(exc).__name__}: {reason}"[:500])

    async def _address(self, target: Target) -> str:
        """The checked address of `target`'s host, looked up again once `RESOLVED_FOR` old.

        An address is remembered only once every address of the name passed the
        checks (`resolve`), and the connection goes to it: remembering it lets no
        other address in. A refused name is looked up again at the next post."""
        name = (target.host, target.port)
        hit = self._resolved.get(name)
        now = time.monotonic()
        if hit is not None and now < hit[1]:
            return hit[0]
        address = await resolve(target, allow_private=self.allow_private, within=self.timeout)
        if len(self._resolved) >= MAX_ENDPOINTS:  # many endpoints: start again
            self._resolved.clear()
        self._resolved[name] = (address, now + RESOLVED_FOR)
        return address

    def _take(self, key: tuple[str, str, int]) -> _Connection | None:
        """A kept connection to `key` that has not idled too long, or None."""
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if now - connection.idle_since < KEEP_ALIVE and not connection.reader.at_eof():
                return connection
            connection.close()
        return None

    def _keep(self, key: tuple[str, str, int], connection: _Connection) -> None:
        if key not in self._idle and len(self._idle) >= MAX_ENDPOINTS:
            for connections in self._idle.values():  # many endpoints: start again
                for old in connections:
                    old.close()
            self._idle.clear()
            self._slots = {k: v for k, v in self._slots.items() if v.locked()}
        connection.idle_since = time.monotonic()
        self._idle.setdefault(key, []).append(connection)

    async def _connect(self, target: Target, address: str) -> _Connection:
        """A new connection to the checked `address`; TLS verifies the URL's host name."""
        https = target.scheme == "https"
        reader, writer = await asyncio.open_connection(
            address,
            target.port,
            ssl=self._tls if https else None,
            server_hostname=target.host if https else None,
            limit=MAX_ANSWER * 2,
        )
        return _Connection(reader, writer, h11.Connection(h11.CLIENT))

    async def _exchange(
        self,
        key: tuple[str, str, int],
        connection: _Connection,
        request: h11.Request,
        data: bytes,
        started: float,
    ) -> Answer:
        """Send the request on `connection` and read the answer (its body up to MAX_ANSWER);
        keep the connection if the endpoint allows, close it otherwise."""
        http = connection.http
        reused = connection.idle_since > 0  # it came from the kept connections
        keep = False
        try:
            connection.writer.write(
                http.send(request) + http.send(h11.Data(data=data)) + http.send(h11.EndOfMessage())
            )
            status: int | None = None
            retry_after: str | None = None
            chunks: list[bytes] = []
            size = 0
            while True:
                event = http.next_event()
                if event is h11.NEED_DATA:
                    try:
                        received = await connection.reader.read(READ_SIZE)
                    except OSError:  # reset
                        received = b""
                        if not (reused and status is None):
                            raise
                    if not received and reused and status is None:
                        raise _Dropped
                    http.receive_data(received)
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    for name, value in event.headers:
                        if name == b"retry-after":
                            retry_after = value.decode("latin-1")
                elif isinstance(event, h11.Data):
                    chunks.append(bytes(event.data[: MAX_ANSWER - size]))
                    size += len(chunks[-1])
                    if size >= MAX_ANSWER:
                        break  # the rest is not read: the connection closes
                elif isinstance(event, h11.EndOfMessage):
                    keep = http.our_state is h11.DONE and http.their_state is h11.DONE
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    raise ConnectionError("the endpoint closed the connection")
                # h11.InformationalResponse (1xx): the real answer follows
            assert status is not None
            if keep:
                http.start_next_cycle()
        finally:
            if keep:
                self._keep(key, connection)
            else:
                connection.close()
        return Answer(
            status,
            int((time.monotonic() - started) * 1000),
            body=b"".join(chunks).decode("utf-8", "replace"),
            retry_after=_retry_after(retry_after, time.time()) if status in (429, 503) else None,
        )


async def send_delivery(sender: Sender, delivery: Claimed, *, now: float) -> Answer:
    """Sign `delivery` as of `now` (both secrets during a rotation) and post it."""
    from smtpy.events import signing

    headers = signing.headers(
        delivery.secrets(now), msg_id=delivery.event_id, timestamp=int(now), body=delivery.body
    )
    return await sender.post(delivery.url, body=delivery.body, headers=headers)
