"""What the delivery worker does to a stored message before it goes out (pure).

    wire = outgoing(data, alias="team@example.org", signer=signer, sealer=signer,
                    auth_results=claimed.auth_results, from_display="{name} via smtpy")

1. From rewrite, when receive recorded that decision (`fromrewrite`) and the
   alias domain signs: the new From is the alias address, which the DKIM
   signature of step 2 aligns with. Without a key of the alias domain the
   rewrite would not help DMARC, and From is left alone.
2. DKIM signature(s) of the alias domain (`smtpy.dkim.sign`).
3. The ARC set (`seal`), when a sealer with an RSA key is given, over
   `auth_results`: what the receiving node's checks found, which the queue
   keeps with the message. Whichever node delivers seals the same results,
   and none a client wrote into the message.
"""

from __future__ import annotations

from smtpy.dkim.arc_seal import seal
from smtpy.dkim.sign import Signer, message_body_hash
from smtpy.mail.framing import crlf_line_endings
from smtpy.outbound.from_rewrite import rewrite_from, wants_rewrite

__all__ = ["outgoing"]


def outgoing(
    data: bytes,
    *,
    alias: str,
    signer: Signer,
    sealer: Signer | None,
    auth_results: str | None,
    from_display: str | None,
) -> bytes:
    """The message as it goes on the wire to one alias's destinations."""
    if from_display is not None and len(signer) and wants_rewrite(data):
        data = rewrite_from(data, address=alias, display=from_display)
    # Line endings checked once here, not by each signature (a scan of the message each).
    data = crlf_line_endings(data)
    key = sealer.seal_key() if sealer is not None and auth_results else None
    if key is None:
        return signer.sign(data, crlf=True) + data
    body_hash = message_body_hash(data, crlf=True)  # once for both: they cover the same body
    signed = signer.sign(data, body_hash=body_hash, crlf=True) + data
    return seal(signed, key, results=auth_results, body_hash=body_hash, crlf=True) + signed
