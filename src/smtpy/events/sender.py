"""The POST of one webhook: to a checked address, capped both ways, within a timeout.

Server-side request forgery is refused: a URL must be `https` (plain `http`
only with SMTPY_WEBHOOK_ALLOW_PRIVATE), and its host must resolve only to
public addresses: loopback, private, link-local (cloud metadata at
169.254.169.254 among them), shared, reserved and multicast addresses are
refused unless that setting is on. The name is resolved once and the
connection goes to the address that was checked (the URL's host stays the
`Host` header and the TLS server name, so the certificate is verified
against it): a second answer from DNS cannot move the request elsewhere.
Redirects are not followed; the answer's body is read up to `MAX_ANSWER`
bytes. Connecting, sending and each read have `timeout` seconds (httpx's own
timeouts, which close the connection cleanly), and a body still arriving
after `timeout` is given up.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import socket
import ssl
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from smtpy import __version__
from smtpy.errors import InvalidInput
from smtpy.events.deliveries import Answer, Claimed

if TYPE_CHECKING:
    import httpx

MAX_URL = 2000
MAX_BODY = 1024 * 1024  # bytes of an event body at most
MAX_ANSWER = 64 * 1024  # bytes of an answer read at most
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

    def url_to(self, address: str) -> str:
        host = f"[{address}]" if ":" in address else address
        return f"{self.scheme}://{host}:{self.port}{self.target}"


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


class Sender:
    """Posts webhooks; one HTTP client per (host, address, port), kept for reuse."""

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
        self._clients: dict[tuple[str, str, int], httpx.AsyncClient] = {}
        logging.getLogger("httpx").setLevel(logging.WARNING)  # smtpy logs each delivery itself

    def _client(self, target: Target, address: str) -> httpx.AsyncClient:
        import httpx

        key = (target.host, address, target.port)
        client = self._clients.get(key)
        if client is None:
            if len(self._clients) >= 256:  # many endpoints: start again rather than grow
                for old in list(self._clients.values()):
                    asyncio.get_running_loop().create_task(old.aclose())
                self._clients.clear()
            client = self._clients[key] = httpx.AsyncClient(
                verify=self._tls,
                trust_env=False,  # no proxy from the environment between us and the endpoint
                follow_redirects=False,
                timeout=self.timeout,
                # Every connection is kept: one closed after each answer meant a new TLS
                # handshake for the next post.
                limits=httpx.Limits(
                    max_connections=8, max_keepalive_connections=8, keepalive_expiry=15
                ),
            )
        return client

    async def close(self) -> None:
        clients = list(self._clients.values())
        self._clients.clear()
        await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)

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
            address = await resolve(target, allow_private=self.allow_private, within=self.timeout)
        except (InvalidInput, Refused) as exc:
            return Answer(None, elapsed(), error=str(exc))
        import httpx

        try:
            return await self._exchange(target, address, data, headers)
        except (httpx.TimeoutException, TimeoutError):
            return Answer(None, elapsed(), error=f"no answer within {self.timeout:g} s")
        except Exception as exc:  # a refused connection, a TLS failure, a broken answer
            reason = str(exc) or type(exc).__name__
            return Answer(None, elapsed(), error=f"{type(exc).__name__}: {reason}"[:500])

    async def _exchange(
        self, target: Target, address: str, data: bytes, headers: dict[str, str]
    ) -> Answer:
        client = self._client(target, address)
        started = time.monotonic()
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        async with client.stream(
            "POST",
            target.url_to(address),
            content=data,
            headers={
                "Host": target.host_header,
                "Content-Type": "application/json",
                "User-Agent": f"smtpy/{__version__} (webhooks)",
                **headers,
            },
            extensions=extensions,
        ) as response:
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_raw():
                chunks.append(chunk[: MAX_ANSWER - size])
                size += len(chunks[-1])
                if size >= MAX_ANSWER:
                    break
                if time.monotonic() - started > self.timeout:  # a body that trickles
                    raise TimeoutError
            text = b"".join(chunks).decode("utf-8", "replace")
            retry_after = None
            if response.status_code in (429, 503):
                retry_after = _retry_after(response.headers.get("retry-after"), time.time())
            return Answer(
                response.status_code,
                int((time.monotonic() - started) * 1000),
                body=text,
                retry_after=retry_after,
            )


async def send_delivery(sender: Sender, delivery: Claimed, *, now: float) -> Answer:
    """Sign `delivery` as of `now` (both secrets during a rotation) and post it."""
    from smtpy.events import signing

    headers = signing.headers(
        delivery.secrets(now), msg_id=delivery.event_id, timestamp=int(now), body=delivery.body
    )
    return await sender.post(delivery.url, body=delivery.body, headers=headers)
