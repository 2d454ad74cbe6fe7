"""Tests of the DKIM signer (smtpy.dkim.sign).

Signatures are checked three ways: dkimpy verifies them, they are
byte-identical to what dkimpy's own `dkim.sign` makes from the same key and
second, and Perl's Mail::DKIM verifies them with its DNS pointed at a real
loopback DNS server.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import time
from collections.abc import Callable

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from dnsserver import DNSServer
from smtpy.dkim.keys import GeneratedKey, generate_key
from smtpy.dkim.sign import Signer, SigningKey
from smtpy.errors import InvalidInput
from smtpy.mail.framing import crlf_line_endings

DOMAIN = "example.test"

PLAIN = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: bob@example.net\r\n"
    b"Subject: Lunch\r\n"
    b"Date: Tue, 03 Nov 2026 10:00:00 +0000\r\n"
    b"Message-ID: <lunch-1@example.test>\r\n"
    b"Received: from somewhere by example.test\r\n"
    b"X-Mailer: test\r\n"
    b"\r\n"
    b"Shall we meet at noon?\r\n"
)

UTF8 = (
    "From: Jörg Müller <jörg@exämple.test>\r\n"
    "To: 山田 <yamada@例え.jp>\r\n"
    "Subject: Grüße   aus\tZürich —\r\n"
    "\t  ein gefalteter   Betreff  \r\n"
    "Date: Tue, 03 Nov 2026 10:00:00 +0000\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "Content-Transfer-Encoding: 8bit\r\n"
    "\r\n"
    "Schöne  Grüße,\t \r\n"
    "  Jörg — 日本語のテキスト  \r\n"
    "\r\n"
    "\r\n"
).encode()


def lf(message: bytes) -> bytes:
    return message.replace(b"\r\n", b"\n")


def wire(message: bytes) -> bytes:
    """The message as DATA sends it: CRLF line endings only (bare CR and LF become CRLF)."""
    return crlf_line_endings(message)


@pytest.fixture(scope="module")
def rsa2048() -> GeneratedKey:
    return generate_key("rsa", 2048)


@pytest.fixture(scope="module")
def rsa1024() -> GeneratedKey:
    return generate_key("rsa", 1024)


@pytest.fixture(scope="module")
def ed_key() -> GeneratedKey:
    return generate_key("ed25519")


@pytest.fixture(scope="module")
def keys(
    rsa2048: GeneratedKey, rsa1024: GeneratedKey, ed_key: GeneratedKey
) -> dict[str, GeneratedKey]:
    return {"rsa": rsa2048, "rsa1024": rsa1024, "ed25519": ed_key}


def signing_key(name: str, key: GeneratedKey, domain: str = DOMAIN) -> SigningKey:
    return SigningKey(
        domain=domain, selector=name, algorithm=key.algorithm, private_key=key.private_key
    )


def dnsfunc_for(records: dict[str, GeneratedKey]) -> Callable[..., bytes | None]:
    """A dkimpy dnsfunc answering `<selector>._domainkey.<domain>.` from `records`."""

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        key = records.get(name.decode().rstrip(".").lower())
        return key.public_record.encode() if key else None

    return dnsfunc


def dkimpy_verify(message: bytes, records: dict[str, GeneratedKey], idx: int = 0) -> bool:
    try:
        return bool(dkim.DKIM(message).verify(idx=idx, dnsfunc=dnsfunc_for(records)))
    except dkim.ValidationError:  # e.g. "body hash mismatch"
        return False


def tags(header: bytes) -> dict[str, str]:
    """The tags of one DKIM-Signature field, white space removed."""
    value = header.split(b":", 1)[1].decode()
    return {
        name.strip(): re.sub(r"\s+", "", val)
        for name, val in (part.split("=", 1) for part in value.split(";"))
    }


def split_fields(signatures: bytes) -> list[bytes]:
    return [b"DKIM-Signature:" + part for part in signatures.split(b"DKIM-Signature:")[1:]]


# -- verification by dkimpy ------------------------------------------------


@pytest.mark.parametrize("algorithm", ["rsa1024", "ed25519"])
@pytest.mark.parametrize("endings", ["crlf", "lf"])
@pytest.mark.parametrize("message", [PLAIN, UTF8], ids=["ascii", "utf8"])
def test_signature_verifies_with_dkimpy(
    keys: dict[str, GeneratedKey], algorithm: str, endings: str, message: bytes
) -> None:
    key = keys[algorithm]
    signer = Signer([signing_key("sel", key)])
    given = lf(message) if endings == "lf" else message
    signature = signer.sign(given)

    assert signature.startswith(b"DKIM-Signature: v=1; a=")
    assert signature.endswith(b"\r\n")
    assert b"\n" not in signature.replace(b"\r\n", b"")
    assert all(len(line) <= 78 for line in signature.split(b"\r\n"))
    assert all(line.startswith(b" ") for line in signature.split(b"\r\n")[1:-1])
    fields = tags(signature)
    assert fields["a"] == ("rsa-sha256" if key.algorithm == "rsa" else "ed25519-sha256")
    assert fields["c"] == "relaxed/relaxed"
    assert (fields["d"], fields["s"]) == (DOMAIN, "sel")

    records = {f"sel._domainkey.{DOMAIN}": key}
    assert dkimpy_verify(wire(signature + given), records)
    assert dkimpy_verify(signature + given, records)  # dkimpy reads LF too
    tampered = (
        wire(signature + given).replace(b"noon", b"one")
        if message is PLAIN
        else (wire(signature + given).replace("Zürich".encode(), b"Zurich"))
    )
    assert not dkimpy_verify(tampered, records)


def test_lf_and_crlf_inputs_get_the_same_signature(ed_key: GeneratedKey) -> None:
    signer = Signer([signing_key("sel", ed_key)])
    # Ed25519 signatures are deterministic: same input, same bytes.
    assert signer.sign(UTF8, timestamp=1_800_000_000) == signer.sign(
        lf(UTF8), timestamp=1_800_000_000
    )


def test_mixed_line_endings_are_signed_as_crlf(ed_key: GeneratedKey) -> None:
    signer = Signer([signing_key("sel", ed_key)])
    mixed = PLAIN.replace(b"Subject: Lunch\r\n", b"Subject: Lunch\n", 1)
    assert signer.sign(mixed, timestamp=1) == signer.sign(PLAIN, timestamp=1)


def test_timestamp(ed_key: GeneratedKey) -> None:
    signer = Signer([signing_key("sel", ed_key)])
    assert tags(signer.sign(PLAIN, timestamp=1_795_000_000))["t"] == "1795000000"
    before = int(time.time())
    t = int(tags(signer.sign(PLAIN))["t"])
    assert before <= t <= int(time.time())


def test_multiple_keys_in_one_call(keys: dict[str, GeneratedKey]) -> None:
    order = [
        signing_key("rsa", keys["rsa"]),
        signing_key("ed", keys["ed25519"]),
        signing_key("old", keys["rsa1024"], domain="Other.Example."),
    ]
    signature = Signer(order).sign(UTF8, timestamp=1_795_000_000)
    fields = [tags(field) for field in split_fields(signature)]
    assert [(f["d"], f["s"], f["a"]) for f in fields] == [
        (DOMAIN, "rsa", "rsa-sha256"),
        (DOMAIN, "ed", "ed25519-sha256"),
        ("other.example", "old", "rsa-sha256"),
    ]
    assert len({f["bh"] for f in fields}) == 1  # one body hash for all keys
    assert len({f["h"] for f in fields}) == 1

    records = {
        f"rsa._domainkey.{DOMAIN}": keys["rsa"],
        f"ed._domainkey.{DOMAIN}": keys["ed25519"],
        "old._domainkey.other.example": keys["rsa1024"],
    }
    signed = signature + UTF8
    assert all(dkimpy_verify(signed, records, idx) for idx in range(3))


def test_no_keys_no_signature() -> None:
    assert Signer([]).sign(PLAIN) == b""


# -- what is signed ---------------------------------------------------------


def test_signed_header_set_and_oversigned_from(ed_key: GeneratedKey) -> None:
    message = (
        b"Received: by mx\r\n"
        b"From: a@example.test\r\n"
        b"To: b@example.net\r\n"
        b"To: c@example.net\r\n"
        b"Cc: d@example.net\r\n"
        b"Reply-To: e@example.test\r\n"
        b"In-Reply-To: <1@x>\r\n"
        b"References: <0@x> <1@x>\r\n"
        b"List-Id: <list.example.test>\r\n"
        b"List-Unsubscribe: <https://example.test/u>\r\n"
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
        b"Return-Path: <x@example.test>\r\n"
        b"DKIM-Signature: v=1; d=example.net; b=old\r\n"
        b"Bcc: secret@example.net\r\n"
        b"X-Spam: no\r\n"
        b"\r\n"
        b"body\r\n"
    )
    h = tags(Signer([signing_key("sel", ed_key)]).sign(message))["h"]
    assert h.split(":") == [
        "from", "to", "to", "cc", "reply-to", "in-reply-to", "references", "list-id",
        "list-unsubscribe", "list-unsubscribe-post", "from",
    ]  # fmt: skip


def test_from_is_listed_even_when_missing(ed_key: GeneratedKey) -> None:
    message = b"Subject: no sender\r\n\r\nbody\r\n"
    signature = Signer([signing_key("sel", ed_key)]).sign(message)
    assert tags(signature)["h"] == "subject:from"
    records = {f"sel._domainkey.{DOMAIN}": ed_key}
    assert dkimpy_verify(signature + message, records)
    assert not dkimpy_verify(signature + b"From: x@evil.test\r\n" + message, records)


@pytest.mark.parametrize("algorithm", ["rsa1024", "ed25519"])
def test_an_added_from_breaks_the_signature(keys: dict[str, GeneratedKey], algorithm: str) -> None:
    key = keys[algorithm]
    signature = Signer([signing_key("sel", key)]).sign(PLAIN)
    records = {f"sel._domainkey.{DOMAIN}": key}
    assert dkimpy_verify(signature + PLAIN, records)
    # Unsigned fields may come and go...
    assert dkimpy_verify(signature + b"X-Added: yes\r\n" + PLAIN, records)
    # ...but a second From, on top or at the bottom of the header, may not.
    evil = b"From: Mallory <mallory@evil.test>\r\n"
    assert not dkimpy_verify(signature + evil + PLAIN, records)
    bottom = PLAIN.replace(b"\r\n\r\n", b"\r\n" + evil + b"\r\n", 1)
    assert not dkimpy_verify(signature + bottom, records)
    # A signed field changed breaks it too.
    assert not dkimpy_verify(signature + PLAIN.replace(b"Lunch", b"Dinner"), records)


def test_relaxed_canonicalization_tolerates_refolding(ed_key: GeneratedKey) -> None:
    signature = Signer([signing_key("sel", ed_key)]).sign(UTF8)
    records = {f"sel._domainkey.{DOMAIN}": ed_key}
    refolded = (
        UTF8.replace(b"Subject: Gr", b"Subject:   Gr")
        .replace(b"To: ", b"TO:\r\n  ", 1)
        .replace(b"\r\n\r\n\r\n", b"\r\n")
    )
    assert dkimpy_verify(signature + refolded, records)


@pytest.mark.parametrize(
    "message",
    [
        b"From: a@example.test\r\n\r\n",  # empty body
        b"From: a@example.test\r\n",  # no body at all
        b"From: a@example.test",  # not even a line break
        b"From: a@example.test\r\n\r\n\r\n\r\n  \r\n\t\r\n",  # only blank lines
        b"From: a@example.test\r\n\r\nno final line break  ",
        b"From: a@example.test\r\n\r\n\r\nstarts with a blank line\r\n",
        b"\r\nno header at all\r\n",
    ],
)
def test_body_edge_cases_verify_on_the_wire(ed_key: GeneratedKey, message: bytes) -> None:
    signature = Signer([signing_key("sel", ed_key)]).sign(message)
    records = {f"sel._domainkey.{DOMAIN}": ed_key}
    on_wire = signature + message
    if not on_wire.endswith(b"\r\n"):
        on_wire += b"\r\n"  # as the SMTP client sends it
    assert dkimpy_verify(on_wire, records)


def test_obsolete_space_before_colon_is_canonicalized(ed_key: GeneratedKey) -> None:
    signer = Signer([signing_key("sel", ed_key)])
    message = b"From: a@example.test\r\nSubject : hi\r\n\r\nbody\r\n"
    normal = b"From: a@example.test\r\nSubject: hi\r\n\r\nbody\r\n"
    assert signer.sign(message, timestamp=5) == signer.sign(normal, timestamp=5)


def test_long_unbreakable_values_are_kept_whole(ed_key: GeneratedKey) -> None:
    domain = ".".join(["a" * 63, "b" * 63, "c" * 10, "test"])
    key = signing_key("sel", ed_key, domain=domain)
    signature = Signer([key]).sign(PLAIN)
    assert f"d={domain};".encode() in signature  # never cut inside the domain
    records = {f"sel._domainkey.{domain}": ed_key}
    assert dkimpy_verify(signature + PLAIN, records)


def test_long_header_list_folds_at_spaces(ed_key: GeneratedKey) -> None:
    message = b"".join(b"To: r%d@example.net\r\n" % i for i in range(40)) + PLAIN
    signature = Signer([signing_key("sel", ed_key)]).sign(message)
    assert all(len(line) <= 78 for line in signature.split(b"\r\n"))
    assert tags(signature)["h"].count("to") == 41
    assert dkimpy_verify(signature + message, {f"sel._domainkey.{DOMAIN}": ed_key})


_PIECES = ["a", "b", " ", "é", "\t", "  ", "\t ", "日", "x:y", "=", ";"]
_TEXT = st.lists(st.sampled_from(_PIECES), max_size=20).map("".join)
_LINES = st.lists(_TEXT, max_size=8)


@settings(max_examples=150, deadline=None)
@given(
    subject=_LINES.filter(lambda lines: bool(lines)),
    body=_LINES,
    ending=st.sampled_from(["\r\n", "\n", "\r"]),
    final=st.booleans(),
)
def test_any_message_verifies(
    ed_key: GeneratedKey, subject: list[str], body: list[str], ending: str, final: bool
) -> None:
    """Random white space, folding, UTF-8 and line endings: dkimpy always verifies."""
    head = "From: a@example.test" + ending + "Subject:" + (ending + " ").join(subject) + ending
    text = head + ending + ending.join(body) + (ending if final else "")
    message = text.encode()
    signature = Signer([signing_key("sel", ed_key)]).sign(message)
    on_wire = wire(signature + message)
    if not on_wire.endswith(b"\r\n"):
        on_wire += b"\r\n"  # as the SMTP client sends it
    assert dkimpy_verify(on_wire, {f"sel._domainkey.{DOMAIN}": ed_key})


# -- byte-identical to dkimpy -----------------------------------------------


def dkimpy_private_key(key: GeneratedKey) -> bytes:
    """The key in the form dkimpy's sign() takes: PKCS#1 PEM, or base64 Ed25519 seed."""
    private = serialization.load_pem_private_key(key.private_key.encode(), password=None)
    if key.algorithm == "rsa":
        return private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    return base64.b64encode(
        private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
    )


IDENTICAL_CASES = {
    "plain": PLAIN,
    "plain-lf": lf(PLAIN),
    "utf8": UTF8,
    "utf8-lf": lf(UTF8),
    "repeated-fields": b"From: a@example.test\r\nTo: b@x\r\nSubject: s\r\nTo: c@x\r\n\r\nx\r\n",
    "empty-body": b"From: a@example.test\r\nSubject: s\r\n\r\n",
    "trailing-blank-lines": b"From: a@example.test\r\n\r\nbody \t \r\n\r\n\r\n \r\n",
}


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
@pytest.mark.parametrize("case", list(IDENTICAL_CASES))
def test_byte_identical_to_dkimpy(keys: dict[str, GeneratedKey], algorithm: str, case: str) -> None:
    key = keys[algorithm]
    message = IDENTICAL_CASES[case]
    signer = Signer([signing_key("sel2026", key)])
    dkimpy_key = dkimpy_private_key(key)
    a_tag = b"rsa-sha256" if algorithm == "rsa" else b"ed25519-sha256"
    for _attempt in range(5):
        # dkimpy takes t= from the clock: retry if the second changed meanwhile.
        now = int(time.time())
        ours = signer.sign(message, timestamp=now)
        theirs = dkim.sign(
            message,
            b"sel2026",
            DOMAIN.encode(),
            dkimpy_key,
            canonicalize=(b"relaxed", b"relaxed"),
            signature_algorithm=a_tag,
        )
        if int(time.time()) == now:
            break
    assert ours == theirs


# -- verification by Mail::DKIM (Perl) --------------------------------------

PERL_VERIFY = r"""
use strict;
use warnings;
use Mail::DKIM::Verifier;
use Net::DNS::Resolver;

my $port = shift @ARGV;
Mail::DKIM::DNS::resolver(Net::DNS::Resolver->new(
    nameservers => ['127.0.0.1'], port => $port, recurse => 0,
    udp_timeout => 5, tcp_timeout => 5, retry => 1,
));
binmode STDIN;
my $dkim = Mail::DKIM::Verifier->new();
while (my $line = <STDIN>) {
    $line =~ s/\015?\012\z/\015\012/;
    $dkim->PRINT($line);
}
$dkim->CLOSE;
foreach my $sig ($dkim->signatures) {
    print join(" ", $sig->domain, $sig->selector, $sig->algorithm // "-",
               $sig->result, $sig->result_detail // ""), "\n";
}
"""


def _have_mail_dkim() -> bool:
    if shutil.which("perl") is None:
        return False
    probe = subprocess.run(
        ["perl", "-MMail::DKIM::Verifier", "-MNet::DNS::Resolver", "-e", "1"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


needs_mail_dkim = pytest.mark.skipif(
    not _have_mail_dkim(),
    reason="Perl's Mail::DKIM is not installed (Debian: libmail-dkim-perl)",
)


def publish(dns_server: DNSServer, selector: str, key: GeneratedKey) -> None:
    """Serve `key`'s TXT record for `selector` (conftest's `dns_server` starts empty)."""
    # An RSA-2048 record is longer than 255 bytes: the server splits it into strings.
    dns_server.add(f"{selector}._domainkey.{DOMAIN}", "TXT", key.public_record)


def mail_dkim(dns_server: DNSServer, message: bytes) -> list[list[str]]:
    """Verify with Mail::DKIM; one [domain, selector, algorithm, result, ...] per signature."""
    done = subprocess.run(
        ["perl", "-e", PERL_VERIFY, str(dns_server.port)],
        input=message,
        capture_output=True,
        check=True,
        timeout=60,
    )
    return [line.split() for line in done.stdout.decode().splitlines()]


@needs_mail_dkim
@pytest.mark.parametrize("message", [PLAIN, UTF8, lf(UTF8)], ids=["ascii", "utf8", "utf8-lf"])
def test_mail_dkim_verifies(dns_server: DNSServer, rsa2048: GeneratedKey, message: bytes) -> None:
    publish(dns_server, "perl", rsa2048)
    signature = Signer([signing_key("perl", rsa2048)]).sign(message)
    results = mail_dkim(dns_server, signature + message)
    assert [r[:4] for r in results] == [[DOMAIN, "perl", "rsa-sha256", "pass"]]

    tampered = (signature + message).replace(b"From: ", b"From: x", 1)
    results = mail_dkim(dns_server, tampered)
    assert [r[:4] for r in results] == [[DOMAIN, "perl", "rsa-sha256", "fail"]]


@needs_mail_dkim
def test_mail_dkim_with_rsa_and_ed25519(
    dns_server: DNSServer, keys: dict[str, GeneratedKey]
) -> None:
    publish(dns_server, "perl-rsa", keys["rsa"])
    publish(dns_server, "perl-ed", keys["ed25519"])
    signer = Signer([signing_key("perl-rsa", keys["rsa"]), signing_key("perl-ed", keys["ed25519"])])
    signature = signer.sign(UTF8)
    results = {r[1]: r for r in mail_dkim(dns_server, signature + UTF8)}
    assert results["perl-rsa"][3] == "pass"
    # Debian's Mail::DKIM has no Ed25519 (it would need Crypt::PK::Ed25519):
    # the signature is then "invalid (unsupported algorithm ...)", never a fail.
    ed = results["perl-ed"]
    assert ed[2] == "ed25519-sha256"
    assert ed[3] == "pass" or (ed[3] == "invalid" and "unsupported" in " ".join(ed[4:]))
    assert (f"perl-rsa._domainkey.{DOMAIN}", "TXT") in dns_server.queries
    evil = b"From: Mallory <mallory@evil.test>\r\n"
    results = {r[1]: r for r in mail_dkim(dns_server, signature + evil + UTF8)}
    assert results["perl-rsa"][3] == "fail"


# -- bad input ---------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        b"not a header line\r\n\r\nbody\r\n",
        b" continuation first: x\r\n\r\nbody\r\n",
        b"From: a@example.test\r\nBad Name: x\r\n\r\n",
        b"From: a@example.test\r\n: no name\r\n\r\n",
        "Tö: x\r\n\r\n".encode(),
    ],
)
def test_malformed_header_is_invalid_input(ed_key: GeneratedKey, message: bytes) -> None:
    with pytest.raises(InvalidInput) as info:
        Signer([signing_key("sel", ed_key)]).sign(message)
    assert "\n" not in str(info.value)


def test_bad_keys_are_refused_when_the_signer_is_built(
    rsa1024: GeneratedKey, ed_key: GeneratedKey
) -> None:
    good = signing_key("sel", rsa1024)
    bad = [
        SigningKey(DOMAIN, "sel", "rsa", "garbage"),
        SigningKey(DOMAIN, "sel", "ed25519", rsa1024.private_key),
        SigningKey(DOMAIN, "sel", "rsa", ed_key.private_key),
        SigningKey(DOMAIN, "sel", "dsa", rsa1024.private_key),  # type: ignore[arg-type]
        SigningKey("exämple.test", "sel", "rsa", rsa1024.private_key),
        SigningKey("bad domain", "sel", "rsa", rsa1024.private_key),
        SigningKey("example.test; s=x", "sel", "rsa", rsa1024.private_key),
        SigningKey(DOMAIN, "bad_selector", "rsa", rsa1024.private_key),
        SigningKey(DOMAIN, "", "rsa", rsa1024.private_key),
    ]
    for key in bad:
        with pytest.raises(InvalidInput) as info:
            Signer([good, key])
        message = str(info.value)
        assert "\n" not in message
        assert "PRIVATE" not in message


def test_repr_hides_the_private_key(rsa1024: GeneratedKey) -> None:
    key = signing_key("sel", rsa1024)
    assert "PRIVATE" not in repr(key)
    assert "PRIVATE" not in repr(Signer([key]))
