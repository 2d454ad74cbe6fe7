"""The parsed message a webhook destination receives (smtpy.mail.parsed): fields, caps,
and messages no parser should choke on."""

from __future__ import annotations

import base64
import json
from email.message import EmailMessage

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtpy.mail.parsed import MAX_ATTACHMENTS, is_url, message_payload, url_domain

PNG = bytes(range(256)) * 4  # binary content with every byte value


def mixed_message() -> bytes:
    message = EmailMessage()
    message["From"] = "Ann Émile <ann@sender.test>"
    message["To"] = "Orders <orders@example.test>, bob@example.test"
    message["Cc"] = "carol@example.test"
    message["Subject"] = "Commande n° 42"
    message["Date"] = "Thu, 26 Nov 2026 10:00:00 +0000"
    message["Message-ID"] = "<42@sender.test>"
    message["Authentication-Results"] = "mx.sender.test; spf=pass smtp.mailfrom=sender.test"
    message.set_content("Bonjour,\nvoici la commande.\n")
    message.add_alternative("<p>Bonjour, <b>voici</b> la commande.</p>\n", subtype="html")
    message.add_attachment(PNG, maintype="image", subtype="png", filename="logo.png")
    message.add_attachment("a,b\n1,2\n", subtype="csv", filename="order.csv")
    return message.as_bytes()


def test_every_field_of_a_message_with_text_html_and_attachments() -> None:
    data = message_payload(
        mixed_message(),
        mail_from="ann@sender.test",
        rcpt_to=["orders@example.test"],
        authentication_results=["mx.forwarder.test; dkim=pass header.d=sender.test"],
    )
    assert data["envelope"] == {"mail_from": "ann@sender.test", "rcpt_to": ["orders@example.test"]}
    assert data["message_id"] == "<42@sender.test>"
    assert data["subject"] == "Commande n° 42"
    assert data["from"] == "Ann Émile <ann@sender.test>"
    assert data["to"] == ["Orders <orders@example.test>", "bob@example.test"]
    assert data["cc"] == ["carol@example.test"]
    assert data["date"] == "Thu, 26 Nov 2026 10:00:00 +0000"
    assert ["Subject", "Commande n° 42"] in data["headers"]
    assert data["text"] == "Bonjour,\nvoici la commande.\n"
    assert data["html"] == "<p>Bonjour, <b>voici</b> la commande.</p>\n"
    logo, order = data["attachments"]
    assert (logo["filename"], logo["content_type"], logo["size"]) == ("logo.png", "image/png", 1024)
    assert base64.b64decode(logo["content_base64"]) == PNG
    assert (order["filename"], order["content_type"]) == ("order.csv", "text/csv")
    assert base64.b64decode(order["content_base64"]) == b"a,b\n1,2\n"
    assert data["authentication_results"] == [
        "mx.forwarder.test; dkim=pass header.d=sender.test",
        "mx.sender.test; spf=pass smtp.mailfrom=sender.test",
    ]
    assert data["truncated"] == {"text": False, "html": False, "headers": False, "attachments": []}
    json.dumps(data)  # JSON-ready as it is


def test_the_caps_cut_and_say_what_they_cut() -> None:
    message = EmailMessage()
    message["Subject"] = "big"
    message.set_content("x" * 5000)
    message.add_alternative("<p>" + "y" * 5000 + "</p>", subtype="html")
    message.add_attachment(b"a" * 3000, maintype="application", subtype="pdf", filename="one.pdf")
    message.add_attachment(b"b" * 3000, maintype="application", subtype="pdf", filename="two.pdf")
    message.add_attachment(b"c" * 300, maintype="application", subtype="pdf", filename="small.pdf")
    data = message_payload(
        message.as_bytes(),
        mail_from="",
        rcpt_to=["a@example.test"],
        max_text=100,
        max_html=200,
        max_attachments=4400,  # room for one 3000-byte attachment (4000 in base64) and the small one
    )
    assert data["text"] == "x" * 100
    assert len(data["html"]) == 200
    one, two, small = data["attachments"]
    assert base64.b64decode(one["content_base64"]) == b"a" * 3000
    assert (two["filename"], two["size"], two["content_base64"]) == ("two.pdf", 3000, None)
    assert base64.b64decode(small["content_base64"]) == b"c" * 300
    assert data["truncated"] == {
        "text": True,
        "html": True,
        "headers": False,
        "attachments": ["two.pdf"],
    }


def test_an_attachment_over_the_default_cap_arrives_cut() -> None:
    message = EmailMessage()
    message.set_content("see attached")
    big = b"\x00" * (MAX_ATTACHMENTS // 4 * 3 + 3)  # one base64 quantum over 10 MiB
    message.add_attachment(big, maintype="application", subtype="zip", filename="big.zip")
    data = message_payload(message.as_bytes(), mail_from="a@b.test", rcpt_to=[])
    [entry] = data["attachments"]
    assert entry["size"] == len(big) and entry["content_base64"] is None
    assert data["truncated"]["attachments"] == ["big.zip"]
    assert data["text"] == "see attached\n"


def test_headers_beyond_their_cap_are_left_out_saying_so() -> None:
    raw = b"".join(b"X-Filler-%d: %s\r\n" % (n, b"v" * 100) for n in range(50))
    data = message_payload(raw + b"\r\nbody\r\n", mail_from="", rcpt_to=[], max_headers=1000)
    assert 0 < len(data["headers"]) < 50
    assert data["truncated"]["headers"] is True
    assert data["text"] == "body\r\n" or data["text"] == "body\n"


BROKEN = (
    b"From: <<<@@>>>\r\n"
    b"To: =?bogus-charset?q?x?= <\r\n"
    b"Subject: =?utf-8?b?not base64!?=\r\n"
    b"Date: yesterday-ish\r\n"
    b"Content-Type: multipart/mixed; boundary=BOUND\r\n"
    b"\r\n"
    b"--BOUND\r\n"
    b"Content-Type: text/plain; charset=no-such-charset\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"!!!! this is not base64 ####\r\n"
    b"--BOUND\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"<p>caf=C3=A9 =ZZ broken</p>\r\n"
    b"--BOUND\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"\r\n"
    b"this is not a message at all\r\n"
    b"--BOUND\r\n"
    b"Content-Type: application/octet-stream; name*=utf-8''%FF%FE\r\n"
    b'Content-Disposition: attachment; filename="unterminated\r\n'
    b"Content-Transfer-Encoding: x-unknown\r\n"
    b"\r\n"
    b"\xff\xfe raw bytes\r\n"
    b"--BOUND\r\n"
    b"Content-Type: multipart/alternative; boundary=NEVER-CLOSED\r\n"
    b"\r\n"
    b"--NEVER-CLOSED\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"inner text, no closing boundary anywhere\r\n"
)


def test_a_broken_message_gives_what_it_can_and_never_raises() -> None:
    data = message_payload(BROKEN, mail_from="x@y.test", rcpt_to=["a@example.test"])
    json.dumps(data)
    assert data["date"] == "yesterday-ish"
    assert data["text"] is not None  # the undecodable text part: read with replacements
    assert data["html"] is not None and "caf" in data["html"]
    types = [a["content_type"] for a in data["attachments"]]
    assert "message/rfc822" in types and "application/octet-stream" in types
    assert any(n == "Subject" for n, _ in data["headers"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.sampled_from(
            [
                b"Content-Type: multipart/mixed; boundary=B\r\n",
                b"Content-Type: text/plain; charset=\xff\r\n",
                b"Content-Transfer-Encoding: base64\r\n",
                b"Content-Transfer-Encoding: quoted-printable\r\n",
                b"Content-Disposition: attachment; filename*=x''%ZZ\r\n",
                b"From: =?x?q?=FF?= <@>\r\n",
                b"\r\n",
                b"--B\r\n",
                b"--B--\r\n",
                b"=?\r\n",
                b"\xc3\x28\r\n",
                b"Content-Type: message/rfc822\r\n",
            ]
        ),
        max_size=30,
    ),
    st.binary(max_size=200),
)
def test_no_arrangement_of_mime_pieces_makes_it_raise(pieces: list[bytes], tail: bytes) -> None:
    data = message_payload(b"".join(pieces) + tail, mail_from="", rcpt_to=[])
    json.dumps(data)


def test_urls_are_told_from_addresses_and_grouped_apart() -> None:
    assert is_url("https://hooks.example/in") and is_url("HTTP://127.0.0.1:8080/x")
    assert not is_url("bob@dest.test") and not is_url("https@dest.test")
    assert url_domain("https://Hooks.Example:8443/in?x=1") == "https://hooks.example:8443"
    assert url_domain("https://hooks.example/a") == url_domain("https://hooks.example/b")
    assert url_domain("https://hooks.example/a") != "hooks.example"  # never a mail domain
    assert len(url_domain("https://" + "a" * 300 + ".test/")) <= 253
