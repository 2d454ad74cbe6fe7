"""The DNS records a domain needs, and how `domain verify` judges what DNS returned."""

from __future__ import annotations

import pytest

from smtpy.admin.records import DnsRecord, Finding, KeyRecord, judge, required_records

DOMAIN = "xn--bcher-kva.example"
HOST = "mx.forwarder.test"
RSA = KeyRecord("s2026", "v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAx")
ED = KeyRecord("s2026e", "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=")


def records(*keys: KeyRecord) -> list[DnsRecord]:
    return required_records(DOMAIN, hostname=HOST, token="abc123", keys=keys)


def by_purpose(items: list[DnsRecord], purpose: str) -> list[DnsRecord]:
    return [r for r in items if r.purpose == purpose]


def test_required_records_cover_mx_spf_dkim_dmarc_and_ownership() -> None:
    items = records(RSA, ED)
    assert [(r.type, r.name, r.value) for r in items] == [
        ("MX", DOMAIN, f"10 {HOST}."),
        ("TXT", DOMAIN, "v=spf1 mx ~all"),
        ("TXT", f"s2026._domainkey.{DOMAIN}", RSA.public_record),
        ("TXT", f"s2026e._domainkey.{DOMAIN}", ED.public_record),
        ("TXT", f"_dmarc.{DOMAIN}", f"v=DMARC1; p=none; rua=mailto:postmaster@{DOMAIN}"),
        ("TXT", f"_smtpy.{DOMAIN}", "smtpy-verification=abc123"),
        ("TXT", HOST, "v=spf1 a mx -all"),
    ]


def test_one_dkim_record_per_key() -> None:
    assert by_purpose(records(), "dkim") == []
    assert len(by_purpose(records(RSA), "dkim")) == 1
    assert len(by_purpose(records(RSA, ED), "dkim")) == 2


def test_public_form_is_type_name_value() -> None:
    for record in records(RSA):
        assert record.model_dump() == {
            "type": record.type,
            "name": record.name,
            "value": record.value,
        }


# -- judging what DNS returned -------------------------------------------------------------


def one(purpose: str) -> DnsRecord:
    [record] = by_purpose(records(RSA), purpose)
    return record


def status(purpose: str, found: list[str], lookup: str = "found") -> str:
    return judge(one(purpose), lookup, found).status


@pytest.mark.parametrize(
    ("found", "expected"),
    [
        ([f"10 {HOST}"], "ok"),
        ([f"20 {HOST.upper()}."], "ok"),  # any preference, any case, trailing dot or not
        (["10 mx.elsewhere.test", f"50 {HOST}"], "ok"),
        (["10 mx.elsewhere.test"], "wrong"),
        (["0 ."], "wrong"),
        ([], "missing"),
    ],
)
def test_mx(found: list[str], expected: str) -> None:
    assert status("mx", found) == expected


def test_ownership_needs_the_exact_token() -> None:
    assert status("ownership", ["smtpy-verification=abc123"]) == "ok"
    assert status("ownership", ["google-site-verification=x", "smtpy-verification=abc123"]) == "ok"
    assert status("ownership", ["smtpy-verification=other"]) == "wrong"
    assert status("ownership", []) == "missing"


def test_dkim_compares_the_key_data_only() -> None:
    assert status("dkim", [RSA.public_record]) == "ok"
    spaced = RSA.public_record.replace("; ", ";").replace("p=", "t=s; p= ")
    assert status("dkim", [spaced]) == "ok"
    assert status("dkim", ["v=DKIM1; k=rsa; p=MIIBother"]) == "wrong"
    assert status("dkim", []) == "missing"


def test_spf_and_dmarc() -> None:
    assert status("spf", ["v=spf1 mx ~all"]) == "ok"
    assert status("spf", ["some-other-txt", "v=spf1 mx ~all"]) == "ok"
    wrong = judge(one("spf"), "found", ["v=spf1 include:other.test -all"])
    assert wrong.status == "wrong"
    assert "an SPF record exists" in wrong.fix
    assert status("spf", ["unrelated"]) == "wrong"
    assert status("spf", []) == "missing"
    assert status("dmarc", ["v=DMARC1; p=reject"]) == "ok"  # any policy will do
    assert status("dmarc", ["not dmarc"]) == "wrong"
    assert status("dmarc", []) == "missing"


def test_missing_record_fix_says_what_to_publish() -> None:
    finding = judge(one("ownership"), "missing", [])
    assert finding.status == "missing"
    assert finding.fix == f'publish TXT _smtpy.{DOMAIN} "smtpy-verification=abc123"'


@pytest.mark.parametrize(
    ("lookup", "words"),
    [("timeout", "timed out"), ("servfail", "SERVFAIL"), ("error", "failed")],
)
@pytest.mark.parametrize("purpose", ["mx", "ownership", "dkim"])
def test_lookup_failures_are_reported_as_such_not_as_missing(
    lookup: str, words: str, purpose: str
) -> None:
    finding = judge(one(purpose), lookup, [], "the server said so")
    assert finding.status == lookup
    assert words in finding.fix
    assert "the server said so" in finding.fix
    assert "publish" not in finding.fix


def test_timeout_detail_is_not_repeated() -> None:
    finding = judge(one("mx"), "timeout", [], "timed out: lifetime expired after 2 seconds")
    assert finding.fix.count("timed out") == 1


def test_only_mx_and_ownership_are_required() -> None:
    required = {r.purpose for r in records(RSA) if judge(r, "missing", []).required}
    assert required == {"mx", "ownership"}


def test_finding_public_form() -> None:
    finding = judge(one("mx"), "found", [f"10 {HOST}"])
    assert isinstance(finding, Finding)
    assert finding.model_dump(mode="json") == {
        "type": "MX",
        "name": DOMAIN,
        "value": f"10 {HOST}.",
        "purpose": "mx",
        "found": [f"10 {HOST}"],
        "status": "ok",
        "required": True,
        "fix": "",
    }
