"""Helpers for the authentication tests: keys made here, messages signed with dkimpy,
records published on the loopback DNS server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import dkim
import dns.resolver
from cryptography.hazmat.primitives import serialization

from dnsserver import DNSServer
from smtpy.dkim.keys import GeneratedKey, generate_key
from smtpy.dns import Lookups, make_resolver, parse_nameservers

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def lookups_for(server: DNSServer, timeout: float = 2.0) -> Lookups:
    return Lookups(make_resolver(parse_nameservers(server.nameserver), timeout=timeout))


def dnsfunc_for(server: DNSServer) -> Callable[..., bytes | None]:
    """A dkimpy `dnsfunc` asking the loopback DNS server, for dkimpy's verifiers."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [server.host]
    resolver.port = server.port

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        try:
            answer = resolver.resolve(name.decode(), "TXT", lifetime=timeout)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        return b"".join(answer[0].strings)

    return dnsfunc


@dataclass(frozen=True)
class Key:
    """A DKIM key made by the test: its selector and domain, the PEM dkimpy signs with."""

    domain: str
    selector: str
    generated: GeneratedKey

    @property
    def pem(self) -> bytes:
        """PKCS#1 for RSA (what dkimpy wants), the raw base64 seed for Ed25519."""
        private = serialization.load_pem_private_key(
            self.generated.private_key.encode(), password=None
        )
        if self.generated.algorithm == "rsa":
            return private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        import base64

        raw = private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        return base64.b64encode(raw)

    def publish(self, server: DNSServer) -> None:
        server.add(f"{self.selector}._domainkey.{self.domain}", "TXT", self.generated.public_record)

    def sign(self, message: bytes, **kwargs: Any) -> bytes:
        """`message` with a DKIM-Signature made by dkimpy on top."""
        algorithm = b"rsa-sha256" if self.generated.algorithm == "rsa" else b"ed25519-sha256"
        signature = dkim.sign(
            message,
            self.selector.encode(),
            self.domain.encode(),
            self.pem,
            signature_algorithm=algorithm,
            **{"canonicalize": (b"relaxed", b"relaxed"), **kwargs},
        )
        return bytes(signature) + message

    def arc_sign(self, message: bytes, srv_id: str) -> bytes:
        """`message` with an ARC set made by dkimpy on top (needs an A-R of `srv_id`)."""
        fields = dkim.arc_sign(
            message, self.selector.encode(), self.domain.encode(), self.pem, srv_id.encode()
        )
        return b"".join(fields) + message


_RSA_CACHE: dict[str, GeneratedKey] = {}


def make_key(domain: str, selector: str = "sel", algorithm: str = "rsa") -> Key:
    """A key for `domain`; RSA keys are reused across tests (2048-bit generation is slow)."""
    if algorithm == "rsa":
        generated = _RSA_CACHE.get(domain) or generate_key("rsa", 2048)
        _RSA_CACHE[domain] = generated
    else:
        generated = generate_key("ed25519")
    return Key(domain, selector, generated)


def message(
    *,
    from_: str = "Alice <alice@sender.test>",
    to: str = "team@example.test",
    subject: str = "Hello",
    body: str = "Hello there.\r\n",
    extra: tuple[str, ...] = (),
    message_id: str = "<test-1@sender.test>",
) -> bytes:
    headers = [
        *extra,
        f"From: {from_}",
        f"To: {to}",
        f"Subject: {subject}",
        "Date: Thu, 26 Nov 2026 10:00:00 +0000",
        f"Message-ID: {message_id}",
    ]
    return ("\r\n".join(headers) + "\r\n\r\n" + body).encode()
