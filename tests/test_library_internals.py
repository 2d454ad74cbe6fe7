"""The library internals smtpy leans on have not changed under it.

smtpy replaces a few pieces of aiosmtpd and aiosmtplib for measured reasons
(each stated beside the code: src/smtpy/smtp/ and src/smtpy/outbound/):
DATA read in large chunks instead of one `readuntil` per line, plain paths
without aiosmtpd's RFC 5322 parser, `dir()` limited to the names aiosmtpd
looks up, the message sent in wire form without aiosmtplib's two regular
expressions. Those overrides are only right for the code they were written
against. The versions are pinned in pyproject.toml; within the pin, this test
fails as soon as the source of any method we override, call privately or
replace differs from the one we read, so the override is read again against
the new code (and the hash below updated) before it ships.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import inspect
from collections.abc import Callable
from typing import Any

import pytest

# (module, "Class.method") -> sha256 of the method's source, as read for the pinned versions.
READ_AGAINST = {
    (
        "aiosmtpd.smtp",
        "SMTP.__init__",
    ): "8a9ca80f23ad9bf273e58e284170e9f919dc6269b280ca0624ac0603a8ad3604",
    (
        "aiosmtpd.smtp",
        "SMTP._getaddr",
    ): "0aeb21c56ac1260e784e430a340459c83c23640a85965e7b8de3e1ada74d85f5",
    (
        "aiosmtpd.smtp",
        "SMTP.connection_made",
    ): "77a45df5065bba343a040b6f6c88de8907b40c80bc03727e7f18ede20d19f4bf",
    (
        "aiosmtpd.smtp",
        "SMTP.connection_lost",
    ): "d3bf6349bc3c25c1da222896000a041fae278d177036ffaea0cabc4cb9bc655b",
    (
        "aiosmtpd.smtp",
        "SMTP.data_received",
    ): "e57e2bc9772342e51fb9e35a145e835c62946d01ea0305e116e6f790778e212e",
    (
        "aiosmtpd.smtp",
        "SMTP._reset_timeout",
    ): "fef19b94d28dff319ca0ca9ecc1884e8f419d9f016d1d25380b01d5e85ff3c78",
    (
        "aiosmtpd.smtp",
        "SMTP.push",
    ): "15f4f1de5e30c337e3df529f7b5794d3dd071f6c32ddf53bf21248c6e2277c48",
    (
        "aiosmtpd.smtp",
        "SMTP.smtp_HELO",
    ): "c61e63948c38ce2840b72bee1e9be14ba520438302421b318f44174c24eb8141",
    (
        "aiosmtpd.smtp",
        "SMTP.smtp_EHLO",
    ): "1d91592dd954c4cd87bf365fc57f0a16e36d9ff911cda1b2b253a4981618f19f",
    (
        "aiosmtpd.smtp",
        "SMTP.smtp_DATA",
    ): "3a33f30d3fd6d02f39c7d78a08288bffea9170525b62e2161568041ae7e018df",
    (
        "aiosmtpd.smtp",
        "SMTP._set_post_data_state",
    ): "1dc8a8abca2a81644a605b8ebf427fc7472eeadf5149dd3cf2591fa86b2256e9",
    (
        "aiosmtpd.smtp",
        "SMTP._call_handler_hook",
    ): "6ff23a6634ea03076444ef30df9fd65b01c4d52e9fda0bd3d99339aacc488d74",
    (
        "aiosmtpd.smtp",
        "SMTP._handle_client",
    ): "0e4d096403af6c74c87b2fe722c213884e2140a9388e95feb05aec2f39e05556",
    (
        "aiosmtpd.smtp",
        "SMTP.check_helo_needed",
    ): "9829bb73251c983eef39d54df95b7d7a177c054e315fecfa0602fa74f9eee8c4",
    (
        "aiosmtpd.smtp",
        "SMTP.check_auth_needed",
    ): "812bbc794078b1b0a6171a54910fab7fec3f3dff963fb3be933612ba775cd1ee",
    (
        "aiosmtplib.smtp",
        "SMTP.execute_command",
    ): "0da02e72439965c804f8366c5bbf61cfa9ef61a635800c85268f5ce31cb26001",
    (
        "aiosmtplib.smtp",
        "SMTP.data",
    ): "ac54fc47aec81b08ffa94bae8a3405a617776dfd98a0cb1ac3c62be79413a971",
    (
        "aiosmtplib.protocol",
        "SMTPProtocol.read_response",
    ): "0b9d810b358b1b0b439859b12ca972bc9e5c124cfe91f32d1116c69c9ade78ba",
    (
        "aiosmtplib.protocol",
        "SMTPProtocol.write",
    ): "4b11ce8fce2f2f16267633613d260fd007c67b11ea36976f5c5d69969ae0cce5",
}


def _method(module: str, qualname: str) -> Callable[..., Any]:
    owner: Any = importlib.import_module(module)
    for part in qualname.split("."):
        owner = getattr(owner, part)
    return owner  # type: ignore[no-any-return]


@pytest.mark.parametrize(("module", "qualname"), sorted(READ_AGAINST))
def test_overridden_library_code_is_the_code_we_read(module: str, qualname: str) -> None:
    source = inspect.getsource(_method(module, qualname))
    digest = hashlib.sha256(source.encode()).hexdigest()
    assert digest == READ_AGAINST[module, qualname], (
        f"{module}.{qualname} changed: read smtpy's override of it again, then update its hash"
    )


def test_stream_reader_keeps_its_buffer_where_the_data_reader_looks() -> None:
    """The chunked DATA reader takes what asyncio already buffered (falls back line by line)."""

    async def buffered() -> object:
        reader = asyncio.StreamReader()
        reader.feed_data(b"line\r\n")
        return getattr(reader, "_buffer", None)

    assert asyncio.run(buffered()) == bytearray(b"line\r\n")
