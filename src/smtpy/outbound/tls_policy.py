"""Outbound TLS policy: opportunistic, required by a setting, or MTA-STS (RFC 8461).

`TlsPolicies.for_domain(domain)` answers which TLS a delivery to `domain` needs:

    opportunistic  STARTTLS when offered, certificate not checked (RFC 7435)
    required       the domain is in SMTPY_TLS_REQUIRED_DOMAINS: STARTTLS with a
                   certificate valid for the MX host, else the mail waits (4.7.x)
    enforce        the domain's MTA-STS policy says "enforce": only MX hosts its
                   `mx` patterns name, TLS with a valid certificate, else the
                   mail waits; never sent in clear
    testing        an MTA-STS policy in "testing" mode: delivered as with
                   opportunistic TLS, what would have failed is logged

MTA-STS as RFC 8461 §3 and §5 describe it: the TXT record `_mta-sts.DOMAIN`
("v=STSv1; id=…") says a policy exists and names its version; the policy is
fetched over HTTPS from `https://mta-sts.DOMAIN/.well-known/mta-sts.txt`
(certificate verified, no redirects, 200 with text/plain only) and cached for
its `max_age`. A cached policy is used while the TXT id is unchanged, and also
when the TXT record or the fetch fails; with no usable policy the domain gets
opportunistic TLS. The parsing and matching functions are pure; the fetch is
the only I/O and goes through `Lookups` (never the system resolver) and the
port and CA bundle settings, so tests point it at loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from smtpy import log
from smtpy.dns import DNSTemporaryError, Lookups
from smtpy.errors import SmtpyError

__all__ = [
    "MtaStsError",
    "StsPolicy",
    "TlsPolicies",
    "TlsPolicy",
    "decide",
    "mx_matches",
    "parse_policy",
    "parse_txt",
    "verified_context",
]

logger = log.get(__name__)

Mode = Literal["enforce", "testing", "none"]
PolicyMode = Literal["opportunistic", "required", "enforce", "testing"]

MAX_AGE_LIMIT = 31_557_600
"""RFC 8461 §3.2: max_age is at most one year."""
MAX_POLICY_BYTES = 64 * 1024
"""RFC 8461 §3.3: a policy body larger than 64 KiB is refused."""
FETCH_TIMEOUT = 30.0
RECHECK_SECONDS = 60.0
"""How long one domain's answer is reused before its TXT record is looked at again."""
RETRY_FAILED_FETCH = 300.0
"""After a failed fetch, the same policy id is not fetched again for this long."""
MAX_DOMAINS = 10_000
WELL_KNOWN = "/.well-known/mta-sts.txt"

_TXT_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")
_MAX_AGE = re.compile(r"^[0-9]{1,10}$")


class MtaStsError(SmtpyError):
    """A TXT record or policy is malformed, or the policy could not be fetched."""


# -- pure parsing and matching -------------------------------------------------------


@dataclass(frozen=True)
class StsPolicy:
    """A parsed MTA-STS policy (RFC 8461 §3.2)."""

    mode: Mode
    mx: tuple[str, ...]
    max_age: int
    id: str = ""
    """The TXT record id it was fetched under."""


def parse_txt(records: Iterable[str]) -> str | None:
    """The policy id from the TXT records of `_mta-sts.DOMAIN`; None when there is no policy.

    RFC 8461 §3.1: records not starting with "v=STSv1" are ignored; anything
    but exactly one valid record means no policy.
    """
    candidates = [r for r in records if r.startswith("v=STSv1")]
    if len(candidates) != 1:
        return None
    fields: dict[str, str] = {}
    for part in candidates[0].split(";"):
        name, sep, value = part.strip().partition("=")
        if not part.strip():
            continue
        if not sep:
            return None
        fields.setdefault(name.strip(), value.strip())
    if fields.get("v") != "STSv1":
        return None
    policy_id = fields.get("id", "")
    return policy_id if _TXT_ID.match(policy_id) else None


def parse_policy(text: str, policy_id: str = "") -> StsPolicy:
    """Parse a policy body; raise MtaStsError saying what is wrong with it."""
    fields: dict[str, str] = {}
    mx: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise MtaStsError(f"policy line {line[:60]!r} is not 'key: value'")
        name, value = name.strip(), value.strip()
        if name == "mx":
            mx.append(value.lower().rstrip("."))
        else:
            fields.setdefault(name, value)
    if fields.get("version") != "STSv1":
        raise MtaStsError(f"policy version is {fields.get('version')!r}, expected 'STSv1'")
    modes: dict[str, Mode] = {"enforce": "enforce", "testing": "testing", "none": "none"}
    mode = modes.get(fields.get("mode", ""))
    if mode is None:
        raise MtaStsError(
            f"policy mode is {fields.get('mode')!r}, expected enforce, testing or none"
        )
    max_age_text = fields.get("max_age", "")
    if not _MAX_AGE.match(max_age_text) or int(max_age_text) > MAX_AGE_LIMIT:
        raise MtaStsError(f"policy max_age is {max_age_text!r}, expected 0 to {MAX_AGE_LIMIT}")
    if mode != "none" and not mx:
        raise MtaStsError(f"a policy in mode {mode} needs at least one mx line")
    return StsPolicy(mode, tuple(mx), int(max_age_text), policy_id)


def mx_matches(host: str, patterns: Iterable[str]) -> bool:
    """Whether an MX host name matches one of a policy's `mx` patterns (RFC 8461 §4.1).

    `*.example.org` matches exactly one more label on the left, never the bare domain.
    """
    name = host.lower().rstrip(".")
    for pattern in patterns:
        if pattern.startswith("*."):
            label, dot, rest = name.partition(".")
            if dot and label and rest == pattern[2:]:
                return True
        elif name == pattern:
            return True
    return False


@dataclass(frozen=True)
class TlsPolicy:
    """The TLS a delivery to one destination domain needs, and why."""

    mode: PolicyMode
    reason: str
    mx_patterns: tuple[str, ...] = ()
    max_age: int | None = None

    @property
    def mandatory(self) -> bool:
        """No delivery without TLS and a valid certificate: defer instead."""
        return self.mode in ("required", "enforce")

    @property
    def verify(self) -> bool:
        """Check the certificate against the MX host name (reported only under testing)."""
        return self.mode != "opportunistic"

    def mx_allowed(self, host: str) -> bool:
        """Whether the policy lets mail go to this MX host."""
        return not self.mx_patterns or mx_matches(host, self.mx_patterns)

    def public(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "reason": self.reason,
            "mx_patterns": list(self.mx_patterns),
            "max_age": self.max_age,
        }


OPPORTUNISTIC = TlsPolicy("opportunistic", "STARTTLS when offered, certificate not checked")


def decide(domain: str, *, required: bool, sts: StsPolicy | None, note: str = "") -> TlsPolicy:
    """The policy for `domain` from the required-TLS setting and its MTA-STS policy, if any.

    `note` says how the MTA-STS policy was found, or why there is none.
    """
    if sts is not None and sts.mode == "enforce":
        return TlsPolicy(
            "enforce",
            f"MTA-STS policy of {domain} (id {sts.id}) in mode enforce",
            sts.mx,
            sts.max_age,
        )
    if required:
        return TlsPolicy("required", f"{domain} is in SMTPY_TLS_REQUIRED_DOMAINS")
    if sts is not None and sts.mode == "testing":
        return TlsPolicy(
            "testing",
            f"MTA-STS policy of {domain} (id {sts.id}) in mode testing: failures are only logged",
            sts.mx,
            sts.max_age,
        )
    if sts is not None:
        return TlsPolicy(
            "opportunistic", f"MTA-STS policy of {domain} in mode none", max_age=sts.max_age
        )
    if note:
        return TlsPolicy("opportunistic", f"{OPPORTUNISTIC.reason}; {note}")
    return OPPORTUNISTIC


def verified_context(ca_file: str | Path | None = None) -> ssl.SSLContext:
    """A client context that checks certificates and names (TLS 1.2+), against `ca_file` if set."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


# -- fetching ------------------------------------------------------------------------


def parse_http_response(raw: bytes, url: str) -> str:
    """The body of an HTTP response carrying a policy; MtaStsError unless 200 text/plain."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise MtaStsError(f"{url}: incomplete HTTP response")
    lines = head.decode("iso-8859-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise MtaStsError(f"{url}: not an HTTP response")
    if parts[1] != "200":
        # RFC 8461 §3.3: redirects are not followed; anything but 200 is a failure.
        raise MtaStsError(f"{url}: HTTP status {' '.join(parts[1:])}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    media_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "text/plain":
        raise MtaStsError(f"{url}: media type {media_type or 'missing'!r}, expected text/plain")
    length = headers.get("content-length")
    if length is not None and length.isdigit():
        body = body[: int(length)]
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise MtaStsError(f"{url}: the policy is not UTF-8") from None


async def fetch_policy_text(
    domain: str,
    addresses: Sequence[str],
    *,
    port: int,
    context: ssl.SSLContext,
    time_limit: float = FETCH_TIMEOUT,
) -> str:
    """GET the policy of `domain` over HTTPS from the first address that answers."""
    host = f"mta-sts.{domain}"
    url = f"https://{host}{WELL_KNOWN}"
    request = (
        f"GET {WELL_KNOWN} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: smtpy\r\n"
        "Accept: text/plain\r\nConnection: close\r\n\r\n"
    ).encode("ascii")
    limit = MAX_POLICY_BYTES + 16 * 1024  # the body plus room for the headers
    errors: list[str] = []
    for address in addresses:
        try:
            async with asyncio.timeout(time_limit):
                reader, writer = await asyncio.open_connection(
                    address, port, ssl=context, server_hostname=host
                )
                try:
                    writer.write(request)
                    await writer.drain()
                    raw = b""
                    while len(raw) <= limit:
                        more = await reader.read(limit + 1 - len(raw))
                        if not more:
                            break
                        raw += more
                finally:
                    writer.close()
                    with contextlib.suppress(OSError, ssl.SSLError):
                        await writer.wait_closed()
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            errors.append(f"{address}: {exc or type(exc).__name__}")
            continue
        if len(raw) > limit:
            raise MtaStsError(f"{url}: the policy is larger than {MAX_POLICY_BYTES} bytes")
        return parse_http_response(raw, url)
    raise MtaStsError(f"cannot fetch {url}: {'; '.join(errors) or 'no address'}")


# -- the cache the daemon and `route explain` use -------------------------------------


class TlsPolicies:
    """The TLS policy of each destination domain, MTA-STS policies cached per max_age.

    One domain's answer is reused for `recheck` seconds, so a delivery costs no
    lookup at all most of the time; concurrent deliveries to one domain share
    one lookup and one fetch.
    """

    def __init__(
        self,
        lookups: Lookups,
        *,
        required_domains: Iterable[str] = (),
        mta_sts: bool = True,
        port: int = 443,
        ca_file: str | Path | None = None,
        timeout: float = FETCH_TIMEOUT,
        recheck: float = RECHECK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lookups = lookups
        self._required = frozenset(d.lower().rstrip(".") for d in required_domains)
        self._mta_sts = mta_sts
        self._port = port
        self._ca_file = ca_file
        self._context: ssl.SSLContext | None = None
        self._timeout = timeout
        self._recheck = recheck
        self._clock = clock
        self._answers: dict[str, tuple[float, TlsPolicy]] = {}
        self._policies: dict[str, tuple[float, StsPolicy]] = {}
        self._failed: dict[str, tuple[float, str]] = {}
        self._inflight: dict[str, asyncio.Future[TlsPolicy]] = {}

    async def for_domain(self, domain: str) -> TlsPolicy:
        """The policy for mail to `domain` (A-label); never raises for DNS or HTTPS trouble."""
        domain = domain.lower().rstrip(".")
        hit = self._answers.get(domain)
        if hit is not None and self._clock() < hit[0]:
            return hit[1]
        pending = self._inflight.get(domain)
        if pending is None:
            pending = asyncio.ensure_future(self._decide(domain))
            self._inflight[domain] = pending
            pending.add_done_callback(lambda _f: self._inflight.pop(domain, None))
        return await asyncio.shield(pending)

    async def sts_policy(self, domain: str) -> tuple[StsPolicy | None, str]:
        """The domain's MTA-STS policy (cached, fetched when its id changed) or None, and a
        note on how it was found (or why there is none)."""
        if not self._mta_sts:
            return None, "MTA-STS is off (SMTPY_MTA_STS)"
        now = self._clock()
        cached = self._policies.get(domain)
        if cached is not None and now >= cached[0]:
            del self._policies[domain]
            cached = None
        try:
            policy_id = parse_txt(await self._lookups.txt(f"_mta-sts.{domain}"))
        except SmtpyError as exc:
            if cached is not None:
                return cached[1], "cached; the TXT lookup failed"
            logger.info("mta_sts_txt_failed", domain=domain, error=str(exc))
            return None, f"MTA-STS unknown, the TXT lookup failed ({exc})"
        if policy_id is None:
            if cached is not None:  # RFC 8461 §5.1: keep using a cached policy
                return cached[1], "cached; the TXT record is gone"
            return None, f"{domain} publishes no MTA-STS policy"
        if cached is not None and cached[1].id == policy_id:
            return cached[1], "cached"
        failed = self._failed.get(domain)
        if failed is not None and failed[1] == policy_id and now < failed[0]:
            if cached is not None:
                return cached[1], "cached; the new policy could not be fetched"
            return None, f"the MTA-STS policy (id {policy_id}) of {domain} could not be fetched"
        try:
            policy = await self._fetch(domain, policy_id)
        except (MtaStsError, DNSTemporaryError) as exc:
            logger.warning("mta_sts_fetch_failed", domain=domain, id=policy_id, error=str(exc))
            self._remember(self._failed, domain, (now + RETRY_FAILED_FETCH, policy_id))
            if cached is not None:
                return cached[1], f"cached; the new policy could not be fetched ({exc})"
            return None, f"the MTA-STS policy of {domain} could not be fetched: {exc}"
        logger.info("mta_sts_policy", domain=domain, id=policy_id, mode=policy.mode)
        self._remember(self._policies, domain, (now + policy.max_age, policy))
        self._failed.pop(domain, None)
        return policy, "fetched"

    async def _decide(self, domain: str) -> TlsPolicy:
        sts, note = await self.sts_policy(domain)
        policy = decide(domain, required=domain in self._required, sts=sts, note=note)
        self._remember(self._answers, domain, (self._clock() + self._recheck, policy))
        return policy

    async def _fetch(self, domain: str, policy_id: str) -> StsPolicy:
        host = f"mta-sts.{domain}"
        addresses = await self._lookups.addresses(host)
        if not addresses:
            raise MtaStsError(f"{host} has no address")
        if self._context is None:
            self._context = verified_context(self._ca_file)
        text = await fetch_policy_text(
            domain, addresses, port=self._port, context=self._context, time_limit=self._timeout
        )
        return parse_policy(text, policy_id)

    @staticmethod
    def _remember(table: dict[str, Any], domain: str, value: Any) -> None:
        if len(table) >= MAX_DOMAINS and domain not in table:
            table.clear()
        table[domain] = value
