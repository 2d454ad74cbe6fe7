"""What every answer of `smtpy api` goes through, as plain ASGI middleware.

- `TrustedProxies`: the client's address and scheme from `X-Forwarded-For` and
  `X-Forwarded-Proto`, believed only from SMTPY_TRUSTED_PROXIES; the rightmost
  address that is not a trusted proxy is the client (`request.state.client_ip`).
- `AccessLog`: one line per request (method, path, status, duration, client);
  never the query string, cookies or the Authorization header.
- `SecurityHeaders`: a Content-Security-Policy without inline script, no framing,
  `nosniff`, `Referrer-Policy`, and HSTS when SMTPY_PUBLIC_URL is https.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from smtpy import log

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
HSTS = "max-age=31536000; includeSubDomains"

access_logger = log.get("smtpy.api.access")

Network = IPv4Network | IPv6Network
Address = IPv4Address | IPv6Address


def _address(text: str) -> Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def forwarded_client(peer: str, forwarded_for: Sequence[str], trusted: Iterable[Network]) -> str:
    """The client's address: `peer` unless it is a trusted proxy; then, walking
    `X-Forwarded-For` from the right, the first address that is not a trusted proxy
    (a garbled entry stops the walk at the last address that could be checked)."""
    networks = tuple(trusted)

    def is_trusted(address: Address) -> bool:
        return any(address in network for network in networks)

    current = _address(peer)
    if current is None or not is_trusted(current):
        return peer
    client = str(current)
    hops = [part for header in forwarded_for for part in header.split(",") if part.strip()]
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            break
        client = str(address)
        if not is_trusted(address):
            break
    return client


class TrustedProxies:
    """Believe `X-Forwarded-For`/`-Proto` only from `trusted` networks."""

    def __init__(self, app: ASGIApp, trusted: Iterable[Network]) -> None:
        self.app = app
        self.trusted = tuple(trusted)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in {"http", "websocket"}:
            peer = scope["client"][0] if scope.get("client") else ""
            client = peer
            if self.trusted and peer:
                headers = [(k.lower(), v.decode("latin-1")) for k, v in scope["headers"]]
                forwarded = [v for k, v in headers if k == b"x-forwarded-for"]
                client = forwarded_client(peer, forwarded, self.trusted)
                address = _address(peer)
                if address is not None and any(address in n for n in self.trusted):
                    proto = [v for k, v in headers if k == b"x-forwarded-proto"]
                    if proto:
                        scheme = proto[-1].split(",")[-1].strip().lower()
                        if scheme in {"http", "https"}:
                            scope["scheme"] = scheme if scope["type"] == "http" else "wss"
            if client != peer:
                scope["client"] = (client, 0)
            scope.setdefault("state", {})["client_ip"] = client or None
        await self.app(scope, receive, send)


class AccessLog:
    """One `request` line per HTTP request, once its answer is sent."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # an exception before any answer: Starlette's last resort says 500

        async def logging_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, logging_send)
        finally:
            state = scope.get("state") or {}
            client = state.get("client_ip") or (scope["client"][0] if scope.get("client") else None)
            access_logger.info(
                "request",
                method=scope["method"],
                path=scope["path"],
                status=status,
                duration_ms=round((time.perf_counter() - start) * 1000, 2),
                client=client,
            )


class SecurityHeaders:
    """The security headers on every HTTP answer (those a route set itself are kept)."""

    def __init__(self, app: ASGIApp, *, hsts: bool) -> None:
        self.app = app
        self.headers = {
            "Content-Security-Policy": CSP,
            "X-Frame-Options": "DENY",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin",
        }
        if hsts:
            self.headers["Strict-Transport-Security"] = HSTS

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def adding_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                headers = MutableHeaders(scope=message)
                for name, value in self.headers.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, adding_send)
