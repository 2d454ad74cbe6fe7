"""DKIM and ARC public keys, fetched ahead through `smtpy.dns.Lookups` for dkimpy.

dkimpy looks keys up synchronously through a `dnsfunc`; smtpy fetches every
key a message needs first, concurrently and cached, then hands dkimpy a
`dnsfunc` that answers from what was fetched. dkimpy thus never touches the
network and never blocks the event loop on DNS.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from smtpy.dns import DNSTemporaryError, Lookups, NoSuchDomain

__all__ = ["FetchedKeys", "fetch_keys", "key_name", "parse_tags"]


def parse_tags(value: bytes) -> dict[bytes, bytes]:
    """The tag=value list of a DKIM-Signature, ARC-Seal or AMS (lower-case tags, no FWS)."""
    tags: dict[bytes, bytes] = {}
    for part in value.split(b";"):
        name, sep, tag_value = part.partition(b"=")
        name = name.strip().lower()
        if sep and name and name not in tags:
            tags[name] = b"".join(tag_value.split())
    return tags


def key_name(selector: bytes, domain: bytes) -> str:
    """`selector._domainkey.domain`, lower-case, without a final dot."""
    name = selector.decode("ascii", "replace") + "._domainkey." + domain.decode("ascii", "replace")
    return name.lower().rstrip(".")


@dataclass(frozen=True)
class FetchedKeys:
    """Key records by name: the record text, None without one, or the temporary error."""

    records: dict[str, str | None]
    failures: dict[str, str]

    def dnsfunc(self) -> Callable[..., bytes | None]:
        """A dkimpy `dnsfunc` answering from the fetched records only."""

        def lookup(name: bytes, timeout: float = 5) -> bytes | None:
            text = self.records.get(name.decode("ascii", "replace").lower().rstrip("."))
            return None if text is None else text.encode("utf-8")

        return lookup


async def fetch_keys(lookups: Lookups, names: Iterable[str]) -> FetchedKeys:
    """Look up the key records of `names` concurrently (each at most once)."""
    wanted = sorted(set(names))
    answers: list[list[str] | BaseException]
    if len(wanted) == 1:  # the common case: no task needed
        try:
            answers = [await lookups.txt(wanted[0])]
        except (NoSuchDomain, DNSTemporaryError) as exc:
            answers = [exc]
    else:
        answers = await asyncio.gather(
            *(lookups.txt(name) for name in wanted), return_exceptions=True
        )
    records: dict[str, str | None] = {}
    failures: dict[str, str] = {}
    for name, answer in zip(wanted, answers, strict=True):
        if isinstance(answer, NoSuchDomain):
            records[name] = None
        elif isinstance(answer, DNSTemporaryError):
            failures[name] = str(answer)
        elif isinstance(answer, BaseException):
            raise answer
        else:
            keys = [text for text in answer if "p=" in text]
            records[name] = keys[0] if keys else None
    return FetchedKeys(records, failures)
