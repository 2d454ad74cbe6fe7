"""Benchmark `smtpy.dkim.sign.Signer`: DKIM signatures per second.

    .venv/bin/python bench/bench_sign.py [--seconds 0.5]

Prints signatures per second for RSA-2048 and Ed25519 over a 2 KB and a
100 KB message (one key per Signer, so one signature per call), then for one
Signer holding both keys, and dkimpy's own `dkim.sign` (pure-Python RSA) on
the 2 KB message for comparison. Then what the delivery worker does per
message (`smtpy.outbound.prepare.outgoing`): DKIM sign + ARC seal with
RSA-2048 (three private-key operations), messages per second, next to the
seal alone and dkimpy's `dkim.arc_sign`. Each figure runs for a bounded time.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import dkim
from cryptography.hazmat.primitives import serialization

from smtpy.dkim.arc_seal import seal
from smtpy.dkim.keys import generate_key
from smtpy.dkim.sign import Signer, SigningKey
from smtpy.outbound.prepare import outgoing

AUTHSERV_ID = "smtpy.example.net"
RESULTS = (
    b"Authentication-Results: smtpy.example.net;\r\n\tspf=pass smtp.mailfrom=alice@example.org;"
    b"\r\n\tdkim=none (no signature);\r\n\tdmarc=none header.from=example.org;\r\n\tarc=none\r\n"
)


def make_message(size: int) -> bytes:
    head = (
        b"From: Alice Example <alice@example.org>\r\n"
        b"To: bob@example.net\r\n"
        b"Cc: carol@example.net\r\n"
        b"Subject: =?utf-8?q?Quarterly_r=C3=A9sum=C3=A9?= and a long subject line\r\n"
        b"Date: Tue, 03 Nov 2026 10:00:00 +0000\r\n"
        b"Message-ID: <20261103100000.12345@example.org>\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n"
        b"Received: from mx.example.org by smtpy.example.net; Tue, 03 Nov 2026\r\n"
        b"\r\n"
    )
    line = "Zürich  and the quick brown fox jumps over the lazy dog\t \r\n".encode()
    body = line * (max(0, size - len(head)) // len(line) + 1)
    return head + body[: max(0, size - len(head))] + b"\r\n"


def rate(fn: Callable[[], object], seconds: float) -> float:
    fn()  # warm up
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(10):
            fn()
        count += 10
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="time per figure")
    args = parser.parse_args()
    seconds = max(0.05, min(args.seconds, 5.0))

    rsa_key = generate_key("rsa", 2048)
    ed_key = generate_key("ed25519")
    rsa = SigningKey("example.org", "rsa2026", "rsa", rsa_key.private_key)
    ed = SigningKey("example.org", "ed2026", "ed25519", ed_key.private_key)
    messages = {"2 KB": make_message(2 * 1024), "100 KB": make_message(100 * 1024)}

    print(f"{'signer':<34} {'message':>8} {'signatures/s':>14}")
    for label, keys in (("smtpy RSA-2048", [rsa]), ("smtpy Ed25519", [ed])):
        signer = Signer(keys)
        for size, message in messages.items():
            per_s = rate(partial(signer.sign, message), seconds)
            print(f"{label:<34} {size:>8} {per_s:>14,.0f}")
    both = Signer([rsa, ed])
    for size, message in messages.items():
        per_s = 2 * rate(partial(both.sign, message), seconds)
        print(f"{'smtpy RSA-2048 + Ed25519 (1 call)':<34} {size:>8} {per_s:>14,.0f}")

    pem = serialization.load_pem_private_key(rsa_key.private_key.encode(), None).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    message = messages["2 KB"]
    per_s = rate(
        lambda: dkim.sign(
            message, b"rsa2026", b"example.org", pem, canonicalize=(b"relaxed", b"relaxed")
        ),
        seconds,
    )
    print(f"{'dkimpy dkim.sign RSA-2048':<34} {'2 KB':>8} {per_s:>14,.0f}")

    print()
    print(f"{'outgoing message (RSA-2048)':<34} {'message':>8} {'messages/s':>14}")
    rsa_signer = Signer([rsa])
    seal_key = rsa_signer.seal_key()
    assert seal_key is not None
    for size, plain in messages.items():
        stored = RESULTS + plain
        per_s = rate(partial(rsa_signer.sign, stored), seconds)
        print(f"{'smtpy DKIM sign only':<34} {size:>8} {per_s:>14,.0f}")
        per_s = rate(partial(seal, stored, seal_key, authserv_id=AUTHSERV_ID), seconds)
        print(f"{'smtpy ARC seal only':<34} {size:>8} {per_s:>14,.0f}")
        work = partial(
            outgoing,
            stored,
            alias="alias@example.org",
            signer=rsa_signer,
            sealer=rsa_signer,
            authserv_id=AUTHSERV_ID,
            from_display=None,
        )
        per_s = rate(work, seconds)
        print(f"{'smtpy DKIM sign + ARC seal':<34} {size:>8} {per_s:>14,.0f}")
    stored = RESULTS + messages["2 KB"]
    per_s = rate(
        lambda: dkim.arc_sign(stored, b"rsa2026", b"example.org", pem, AUTHSERV_ID.encode()),
        seconds,
    )
    print(f"{'dkimpy dkim.arc_sign':<34} {'2 KB':>8} {per_s:>14,.0f}")


if __name__ == "__main__":
    main()
