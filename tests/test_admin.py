"""The services the CLI and the HTTP API share, against a real store on both backends."""

from __future__ import annotations

import threading
import time

import pytest

from dnsserver import DNSServer
from smtpy.admin import aliases, domains, keys
from smtpy.admin.aliases import AliasCreate, AliasUpdate
from smtpy.admin.domains import DomainCreate
from smtpy.admin.keys import KeyCreate, KeyRotate
from smtpy.admin.organizations import resolve_organization
from smtpy.errors import Conflict, InvalidInput, NotFound
from smtpy.route.aliases import resolve
from smtpy.store.db import Database

HOST = "mx.forwarder.test"
IDN = "bücher.example"
IDN_A = "xn--bcher-kva.example"


@pytest.fixture
def org(db: Database) -> int:
    """The default organization, as the CLI acts in it."""
    return resolve_organization(db=db).id


def counts(db: Database) -> dict[str, int]:
    return {
        table: int(db.scalar(f"SELECT count(*) FROM {table}"))
        for table in ("organizations", "domains", "aliases", "dkim_keys")
    }


def add_domain(db: Database, org: int, name: str = IDN) -> domains.DomainPublic:
    return domains.add_domain(
        db=db, org=org, domain=DomainCreate(name=name, key_algorithm="ed25519")
    )


# -- domains ---------------------------------------------------------------------------------


def test_domain_is_stored_as_a_label_and_shown_as_u_label(db: Database, org: int) -> None:
    info = domains.add_domain(db=db, org=org, domain=DomainCreate(name="Bücher.Example."))
    assert info.ascii_name == IDN_A
    assert info.name == IDN
    assert db.scalar("SELECT name FROM domains") == IDN_A
    assert info.organization == "default"
    assert (info.aliases, info.keys, info.verified, info.verified_at) == (0, 1, False, None)
    public = info.model_dump(mode="json")
    assert public["name"] == IDN
    assert public["ascii_name"] == IDN_A
    assert public["verified"] is False
    for form in (IDN, IDN_A, "BÜCHER.example", "XN--BCHER-KVA.EXAMPLE."):
        assert domains.get_domain(db=db, org=org, name=form) == info


def test_new_domain_gets_a_first_active_rsa_key(db: Database, org: int) -> None:
    domains.add_domain(db=db, org=org, domain=DomainCreate(name="example.org"))
    [key] = keys.list_keys(db=db, org=org, domain="example.org")
    assert (key.algorithm, key.bits, key.active) == ("rsa", 2048, True)
    assert key.public_record.startswith("v=DKIM1; k=rsa; p=")


def test_domains_share_the_default_organization(db: Database, org: int) -> None:
    add_domain(db, org, "one.example")
    add_domain(db, org, "two.example")
    assert [d.name for d in domains.list_domains(db=db, org=org)] == ["one.example", "two.example"]
    assert counts(db)["organizations"] == 1


def test_duplicate_domain_in_any_form_is_a_conflict(db: Database, org: int) -> None:
    add_domain(db, org)
    before = counts(db)
    for form in [IDN, IDN_A, "Bücher.EXAMPLE"]:
        with pytest.raises(Conflict, match="already served"):
            add_domain(db, org, form)
    assert counts(db) == before


def test_invalid_domain_writes_nothing(db: Database, org: int) -> None:
    for name in ["not a domain", "localhost", "1.2.3.4", "exa_mple.org", ""]:
        with pytest.raises(InvalidInput):
            domains.add_domain(db=db, org=org, domain=DomainCreate(name=name))
    assert counts(db) == {"organizations": 1, "domains": 0, "aliases": 0, "dkim_keys": 0}


def test_failed_first_key_leaves_no_domain_behind(db: Database, org: int) -> None:
    with pytest.raises(InvalidInput, match="algorithm"):
        domains.add_domain(
            db=db, org=org, domain=DomainCreate(name="example.org", key_algorithm="dsa")
        )
    assert counts(db) == {"organizations": 1, "domains": 0, "aliases": 0, "dkim_keys": 0}


def test_unknown_domain_is_not_found_with_a_hint(db: Database, org: int) -> None:
    for call in (
        lambda: domains.get_domain(db=db, org=org, name="nope.example"),
        lambda: domains.remove_domain(db=db, org=org, name="nope.example"),
        lambda: domains.domain_records(db=db, org=org, name="nope.example", hostname=HOST),
        lambda: aliases.list_aliases(db=db, org=org, domain="nope.example"),
        lambda: keys.generate_key(db=db, org=org, domain="nope.example", key=KeyCreate()),
    ):
        with pytest.raises(NotFound, match=r"smtpy domain add nope\.example"):
            call()


def test_remove_domain_takes_its_aliases_and_keys_only(db: Database, org: int) -> None:
    add_domain(db, org, "gone.example")
    add_domain(db, org, "kept.example")
    aliases.add_alias(
        db=db, org=org, alias=AliasCreate(address="a@gone.example", destinations=["x@dest.test"])
    )
    aliases.add_alias(
        db=db, org=org, alias=AliasCreate(address="a@kept.example", destinations=["x@dest.test"])
    )
    removed = domains.remove_domain(db=db, org=org, name="gone.example")
    assert (removed.aliases, removed.keys) == (1, 1)
    assert [d.name for d in domains.list_domains(db=db, org=org)] == ["kept.example"]
    assert [a.domain for a in aliases.list_aliases(db=db, org=org)] == ["kept.example"]
    assert [k.domain for k in keys.list_keys(db=db, org=org)] == ["kept.example"]
    with pytest.raises(NotFound):
        domains.get_domain(db=db, org=org, name="gone.example")
    assert aliases.domain_rules(db, "gone.example") is None


def test_domain_records_list_every_key_and_a_stable_token(db: Database, org: int) -> None:
    add_domain(db, org)
    keys.generate_key(db=db, org=org, domain=IDN, key=KeyCreate(selector="extra", bits=1024))
    first = domains.domain_records(db=db, org=org, name=IDN, hostname=HOST)
    assert domains.domain_records(db=db, org=org, name=IDN_A, hostname=HOST) == first
    assert [r.type for r in first if r.name == IDN_A] == ["MX", "TXT"]
    assert first[0].value == f"10 {HOST}."
    dkim = [r for r in first if r.purpose == "dkim"]
    assert [r.name for r in dkim] == [
        f"{k.selector}._domainkey.{IDN_A}" for k in keys.list_keys(db=db, org=org, domain=IDN)
    ]
    assert f"extra._domainkey.{IDN_A}" in [r.name for r in dkim]
    [ownership] = [r for r in first if r.purpose == "ownership"]
    assert ownership.name == f"_smtpy.{IDN_A}"
    assert ownership.value.startswith("smtpy-verification=")
    assert "PRIVATE KEY" not in repr(first)


# -- verification against the loopback DNS server ---------------------------------------------


def publish(dns_server: DNSServer, db: Database, org: int, *, skip: str = "") -> None:
    for record in domains.domain_records(db=db, org=org, name=IDN, hostname=HOST):
        if record.purpose != skip:
            dns_server.add(record.name, record.type, record.value)


def verify(
    db: Database, org: int, dns_server: DNSServer, timeout: float = 2.0
) -> domains.Verification:
    host, _, port = dns_server.nameserver.rpartition(":")
    return domains.verify_domain(
        db=db, org=org, name=IDN, hostname=HOST, nameservers=[(host, int(port))], timeout=timeout
    )


def statuses(report: domains.Verification) -> dict[str, str]:
    return {f.purpose: f.status for f in report.records}


def test_verify_marks_the_domain_verified_when_everything_is_published(
    db: Database, org: int, dns_server: DNSServer
) -> None:
    add_domain(db, org)
    publish(dns_server, db, org)
    report = verify(db, org, dns_server)
    assert report.verified
    assert set(statuses(report).values()) == {"ok"}
    assert domains.get_domain(db=db, org=org, name=IDN).verified_at is not None


def test_verify_needs_mx_and_ownership_only(db: Database, org: int, dns_server: DNSServer) -> None:
    add_domain(db, org)
    for record in domains.domain_records(db=db, org=org, name=IDN, hostname=HOST):
        if record.purpose in ("mx", "ownership"):
            dns_server.add(record.name, record.type, record.value)
    report = verify(db, org, dns_server)
    assert report.verified
    assert statuses(report)["dkim"] == "missing"
    assert statuses(report)["dmarc"] == "missing"


@pytest.mark.parametrize("skip", ["mx", "ownership"])
def test_verify_fails_without_a_required_record(
    db: Database, org: int, dns_server: DNSServer, skip: str
) -> None:
    add_domain(db, org)
    publish(dns_server, db, org, skip=skip)
    report = verify(db, org, dns_server)
    assert not report.verified
    assert statuses(report)[skip] == "missing"
    assert domains.get_domain(db=db, org=org, name=IDN).verified_at is None


def test_verify_reports_servfail_and_timeout_as_such(
    db: Database, org: int, dns_server: DNSServer
) -> None:
    add_domain(db, org)
    publish(dns_server, db, org)
    dns_server.fail(IDN_A)  # MX and SPF
    dns_server.drop(f"_smtpy.{IDN_A}")
    report = verify(db, org, dns_server, timeout=0.5)
    assert not report.verified
    found = statuses(report)
    assert (found["mx"], found["spf"], found["ownership"]) == ("servfail", "servfail", "timeout")
    assert (found["dkim"], found["dmarc"]) == ("ok", "ok")
    assert domains.get_domain(db=db, org=org, name=IDN).verified_at is None


def test_wrong_mx_is_reported_as_wrong(db: Database, org: int, dns_server: DNSServer) -> None:
    add_domain(db, org)
    publish(dns_server, db, org, skip="mx")
    dns_server.add(IDN_A, "MX", "10 mx.elsewhere.test.")
    report = verify(db, org, dns_server)
    assert not report.verified
    [mx] = [f for f in report.records if f.purpose == "mx"]
    assert (mx.status, mx.found) == ("wrong", ("10 mx.elsewhere.test",))


# -- aliases ---------------------------------------------------------------------------------------


def test_add_alias_of_each_kind(db: Database, org: int) -> None:
    add_domain(db, org)
    alice = aliases.add_alias(
        db=db,
        org=org,
        alias=AliasCreate(
            address=f"Alice@{IDN}", destinations=["bob@dest.test", "Carol@Bücher.Example"]
        ),
    )
    catch = aliases.add_alias(
        db=db, org=org, alias=AliasCreate(address=f"*@{IDN_A}", destinations=["all@dest.test"])
    )
    sales = aliases.add_alias(
        db=db,
        org=org,
        alias=AliasCreate(address=f"/sales-[0-9]+/@{IDN}", destinations=["sales@dest.test"]),
    )
    assert alice.kind == "exact" and alice.address == f"Alice@{IDN}"
    rules = aliases.domain_rules(db, IDN_A)
    assert rules is not None
    [routed] = [r for r in rules.exact.values() if r.local_part == "Alice"]
    assert routed.destinations == ("bob@dest.test", f"Carol@{IDN_A}")  # as delivered
    assert alice.destinations == ["bob@dest.test", f"Carol@{IDN}"]  # as shown
    assert catch.address == f"*@{IDN}"
    assert sales.address == f"/sales-[0-9]+/@{IDN}"
    # Listed exact first, then regex, then the catch-all.
    assert [a.kind for a in aliases.list_aliases(db=db, org=org)] == ["exact", "regex", "catchall"]
    assert domains.get_domain(db=db, org=org, name=IDN).aliases == 3


def test_destinations_are_deduplicated_and_validated(db: Database, org: int) -> None:
    add_domain(db, org)
    info = aliases.add_alias(
        db=db,
        org=org,
        alias=AliasCreate(
            address=f"a@{IDN}", destinations=["x@dest.test", "x@DEST.test", "y@dest.test"]
        ),
    )
    assert info.destinations == ["x@dest.test", "y@dest.test"]


def test_utf8_alias_and_destination(db: Database, org: int) -> None:
    add_domain(db, org)
    info = aliases.add_alias(
        db=db, org=org, alias=AliasCreate(address=f"Jörg@{IDN}", destinations=["jürgen@dest.test"])
    )
    assert info.address == f"Jörg@{IDN}"
    assert aliases.find_alias(db=db, org=org, address=f"JÖRG@{IDN}").id == info.id


BAD_ALIASES: list[tuple[str, list[str], dict[str, str], type[Exception], str]] = [
    ("bob@unknown.example", ["x@dest.test"], {}, NotFound, "not served"),
    ("bob@not a domain", ["x@dest.test"], {}, InvalidInput, "not a valid domain"),
    ("bob@", ["x@dest.test"], {}, InvalidInput, "no domain"),
    ("bo b@bücher.example", ["x@dest.test"], {}, InvalidInput, "not a valid alias"),
    ("bob", ["x@dest.test"], {}, InvalidInput, "expected local@domain"),
    ("/(open/@bücher.example", ["x@dest.test"], {}, InvalidInput, "RE2"),
    ("//@bücher.example", ["x@dest.test"], {}, InvalidInput, "empty"),
    ("TAKEN@bücher.example", ["y@dest.test"], {}, Conflict, "already exists"),
    ("bob@bücher.example", [], {}, InvalidInput, "at least one destination"),
    ("bob@bücher.example", ["not-an-address"], {}, InvalidInput, "not a mail address"),
    ("bob@bücher.example", ["x@dest.test", "y@"], {}, InvalidInput, "not a valid mail"),
    ("bob@bücher.example", ["BOB@Bücher.Example"], {}, InvalidInput, "mail loop"),
    ("bob@bücher.example", [f"d{i}@dest.test" for i in range(51)], {}, InvalidInput, "50"),
    ("bob@bücher.example", ["x@dest.test"], {"mode": "bounce"}, InvalidInput, "mode"),
    ("bob@bücher.example", ["x@dest.test"], {"mode": "reject"}, InvalidInput, "no dest"),
    ("bob@bücher.example", ["x@dest.test"], {"mode": "discard"}, InvalidInput, "no dest"),
    (
        "bob@bücher.example",
        ["x@dest.test"],
        {"reject_message": "no"},
        InvalidInput,
        "only applies to reject",
    ),
    (
        "bob@bücher.example",
        [],
        {"mode": "reject", "reject_message": "two\nlines"},
        InvalidInput,
        "one printable line",
    ),
    (
        "bob@bücher.example",
        [],
        {"mode": "reject", "reject_message": "x" * 201},
        InvalidInput,
        "200",
    ),
]


def test_bad_alias_writes_nothing(db: Database, org: int) -> None:
    add_domain(db, org)
    aliases.add_alias(
        db=db, org=org, alias=AliasCreate(address=f"taken@{IDN}", destinations=["x@dest.test"])
    )
    before = counts(db)
    for address, dests, options, error, reason in BAD_ALIASES:
        with pytest.raises(error, match=reason):
            aliases.add_alias(
                db=db, org=org, alias=AliasCreate(address=address, destinations=dests, **options)
            )
        assert counts(db) == before, address


def test_duplicate_alias_is_a_conflict(db: Database, org: int) -> None:
    add_domain(db, org)
    for first, second in [
        ("alice@bücher.example", "ALICE@xn--bcher-kva.example"),
        ("*@bücher.example", "*@BÜCHER.example"),
        ("/sales-.*/@bücher.example", "/sales-.*/@bücher.example"),
    ]:
        aliases.add_alias(
            db=db, org=org, alias=AliasCreate(address=first, destinations=["x@dest.test"])
        )
        with pytest.raises(Conflict, match="already exists"):
            aliases.add_alias(
                db=db, org=org, alias=AliasCreate(address=second, destinations=["y@dest.test"])
            )
    assert [a.destinations for a in aliases.list_aliases(db=db, org=org)] == [["x@dest.test"]] * 3


def test_same_local_part_on_two_domains_is_fine(db: Database, org: int) -> None:
    add_domain(db, org, "one.example")
    add_domain(db, org, "two.example")
    aliases.add_alias(
        db=db, org=org, alias=AliasCreate(address="info@one.example", destinations=["x@dest.test"])
    )
    aliases.add_alias(
        db=db, org=org, alias=AliasCreate(address="info@two.example", destinations=["y@dest.test"])
    )
    assert [a.address for a in aliases.list_aliases(db=db, org=org, domain="two.example")] == [
        "info@two.example"
    ]


def test_reject_and_discard_modes(db: Database, org: int) -> None:
    add_domain(db, org)
    reject = aliases.add_alias(
        db=db,
        org=org,
        alias=AliasCreate(
            address=f"old@{IDN}", destinations=[], mode="reject", reject_message="moved away"
        ),
    )
    discard = aliases.add_alias(
        db=db, org=org, alias=AliasCreate(address=f"noise@{IDN}", destinations=[], mode="discard")
    )
    plain = aliases.add_alias(
        db=db, org=org, alias=AliasCreate(address=f"gone@{IDN}", destinations=[], mode="reject")
    )
    assert (reject.mode, reject.reject_message, reject.destinations) == ("reject", "moved away", [])
    assert (discard.mode, discard.destinations) == ("discard", [])
    assert plain.reject_message is None


def test_remove_enable_disable_find_the_alias_in_any_case(db: Database, org: int) -> None:
    add_domain(db, org)
    aliases.add_alias(
        db=db, org=org, alias=AliasCreate(address=f"Alice@{IDN}", destinations=["x@dest.test"])
    )
    assert (
        aliases.update_alias(
            db=db, org=org, address=f"ALICE@{IDN_A}", update=AliasUpdate(enabled=False)
        ).enabled
        is False
    )
    assert aliases.list_aliases(db=db, org=org)[0].enabled is False
    assert (
        aliases.update_alias(
            db=db, org=org, address=f"alice@{IDN}", update=AliasUpdate(enabled=True)
        ).enabled
        is True
    )
    removed = aliases.remove_alias(db=db, org=org, address=f"aLiCe@{IDN}")
    assert removed.address == f"Alice@{IDN}"
    assert aliases.list_aliases(db=db, org=org) == []
    for call in (
        lambda: aliases.remove_alias(db=db, org=org, address=f"alice@{IDN}"),
        lambda: aliases.update_alias(
            db=db, org=org, address=f"alice@{IDN}", update=AliasUpdate(enabled=True)
        ),
        lambda: aliases.remove_alias(db=db, org=org, address=f"*@{IDN}"),
        lambda: aliases.remove_alias(db=db, org=org, address=f"/x/@{IDN}"),
    ):
        with pytest.raises(NotFound, match="smtpy alias list"):
            call()


def test_store_rules_route_like_the_admin_wrote_them(db: Database, org: int) -> None:
    add_domain(db, org)
    aliases.add_alias(
        db=db, org=org, alias=AliasCreate(address=f"Alice@{IDN}", destinations=["alice@dest.test"])
    )
    aliases.add_alias(
        db=db,
        org=org,
        alias=AliasCreate(address=f"/sales-[0-9]+/@{IDN}", destinations=["sales@dest.test"]),
    )
    aliases.add_alias(
        db=db, org=org, alias=AliasCreate(address=f"*@{IDN}", destinations=["all@dest.test"])
    )
    aliases.add_alias(
        db=db, org=org, alias=AliasCreate(address=f"bob@{IDN}", destinations=["bob@dest.test"])
    )
    aliases.update_alias(db=db, org=org, address=f"bob@{IDN}", update=AliasUpdate(enabled=False))

    rules = aliases.domain_rules(db, "BÜCHER.example")
    assert rules is not None and rules.domain == IDN_A

    def route(local: str) -> tuple[str, tuple[str, ...], bool]:
        match = resolve(local, rules)
        assert match is not None
        return match.how, match.rule.destinations, match.rule.enabled

    assert route("ALICE") == ("exact", ("alice@dest.test",), True)
    assert route("alice+news") == ("plus", ("alice@dest.test",), True)
    assert route("Sales-7") == ("regex", ("sales@dest.test",), True)
    assert route("nobody") == ("catchall", ("all@dest.test",), True)
    assert route("bob+x") == ("plus", ("bob@dest.test",), False)  # refused, not caught
    assert aliases.domain_rules(db, "other.example") is None


# -- DKIM keys ------------------------------------------------------------------------------


def test_generate_list_and_remove_keys(db: Database, org: int) -> None:
    add_domain(db, org)
    new = keys.generate_key(
        db=db, org=org, domain=IDN, key=KeyCreate(selector="Mail2026", algorithm="rsa", bits=1024)
    )
    assert (new.selector, new.algorithm, new.bits, new.active) == ("mail2026", "rsa", 1024, True)
    assert new.dns_name == f"mail2026._domainkey.{IDN_A}"
    listed = keys.list_keys(db=db, org=org, domain=IDN)
    assert [k.selector for k in listed][-1] == "mail2026"
    assert all(k.active for k in listed)  # a generated key signs alongside the others
    for key in listed:
        public = key.model_dump()
        assert "private_key" not in public
        assert "PRIVATE KEY" not in repr(public) + repr(key)
        assert public["domain"] == IDN
    signing = keys.signing_keys(db, IDN_A)
    assert len(signing) == 2
    assert all(k["private_key"].startswith("-----BEGIN PRIVATE KEY-----") for k in signing)

    removed = keys.remove_key(db=db, org=org, domain=IDN, selector="MAIL2026")
    assert removed.selector == "mail2026"
    assert "mail2026" not in [k.selector for k in keys.list_keys(db=db, org=org)]
    names = [r.name for r in domains.domain_records(db=db, org=org, name=IDN, hostname=HOST)]
    assert f"mail2026._domainkey.{IDN_A}" not in names


def test_default_selectors_do_not_collide(db: Database, org: int) -> None:
    add_domain(db, org)  # its first key is ed25519
    first = keys.generate_key(db=db, org=org, domain=IDN, key=KeyCreate(algorithm="ed25519"))
    second = keys.generate_key(db=db, org=org, domain=IDN, key=KeyCreate(bits=1024))
    third = keys.generate_key(db=db, org=org, domain=IDN, key=KeyCreate(bits=1024))
    selectors = [k.selector for k in keys.list_keys(db=db, org=org, domain=IDN)]
    assert len(set(selectors)) == 4
    assert third.selector == f"{second.selector}-2"
    assert first.selector.endswith("-2")


def test_bad_key_request_writes_nothing(db: Database, org: int) -> None:
    add_domain(db, org)
    keys.generate_key(
        db=db, org=org, domain=IDN, key=KeyCreate(selector="taken", algorithm="ed25519")
    )
    before = keys.list_keys(db=db, org=org)
    for options, error, reason in [
        ({"algorithm": "dsa"}, InvalidInput, "algorithm"),
        ({"bits": 512}, InvalidInput, "1024, 2048"),
        ({"bits": 1000}, InvalidInput, "1024, 2048"),
        ({"selector": "bad selector"}, InvalidInput, "selector"),
        ({"selector": "-x"}, InvalidInput, "selector"),
        ({"selector": "taken"}, Conflict, f"{IDN} already has a key with selector taken"),
        ({"selector": "TAKEN"}, Conflict, "already has a key"),
    ]:
        with pytest.raises(error, match=reason):
            keys.generate_key(db=db, org=org, domain=IDN, key=KeyCreate(**options))  # type: ignore[arg-type]
        assert keys.list_keys(db=db, org=org) == before, options


def test_rotate_keeps_the_old_key_published_until_removed(db: Database, org: int) -> None:
    domains.add_domain(db=db, org=org, domain=DomainCreate(name=IDN))
    [old] = keys.list_keys(db=db, org=org, domain=IDN)
    rotation = keys.rotate_key(
        db=db, org=org, domain=IDN, key=KeyRotate(selector="next", bits=1024)
    )
    new, retired = rotation.new, rotation.retired
    assert [k.selector for k in retired] == [old.selector]
    assert (new.selector, new.algorithm, new.active) == ("next", "rsa", True)
    state = {k.selector: k.active for k in keys.list_keys(db=db, org=org, domain=IDN)}
    assert state == {old.selector: False, "next": True}
    assert [k["selector"] for k in keys.signing_keys(db, IDN_A)] == ["next"]
    dkim = [
        r.name
        for r in domains.domain_records(db=db, org=org, name=IDN, hostname=HOST)
        if r.purpose == "dkim"
    ]
    assert dkim == [f"{old.selector}._domainkey.{IDN_A}", f"next._domainkey.{IDN_A}"]
    keys.remove_key(db=db, org=org, domain=IDN, selector=old.selector)
    dkim = [
        r.name
        for r in domains.domain_records(db=db, org=org, name=IDN, hostname=HOST)
        if r.purpose == "dkim"
    ]
    assert dkim == [f"next._domainkey.{IDN_A}"]


def test_rotate_retires_only_keys_of_the_same_algorithm(db: Database, org: int) -> None:
    add_domain(db, org)  # ed25519
    keys.generate_key(db=db, org=org, domain=IDN, key=KeyCreate(selector="rsa1", bits=1024))
    rotation = keys.rotate_key(
        db=db, org=org, domain=IDN, key=KeyRotate(algorithm="rsa", selector="rsa2", bits=1024)
    )
    new, retired = rotation.new, rotation.retired
    assert new.active
    assert [k.selector for k in retired] == ["rsa1"]
    active = sorted(k["selector"] for k in keys.signing_keys(db, IDN_A))
    assert len(active) == 2 and "rsa2" in active and "rsa1" not in active


def test_failed_rotation_changes_nothing(db: Database, org: int) -> None:
    add_domain(db, org)
    before = keys.list_keys(db=db, org=org)
    with pytest.raises(Conflict):
        keys.rotate_key(db=db, org=org, domain=IDN, key=KeyRotate(selector=before[0].selector))
    with pytest.raises(InvalidInput):
        keys.rotate_key(db=db, org=org, domain=IDN, key=KeyRotate(algorithm="rsa", bits=123))
    assert keys.list_keys(db=db, org=org) == before


def test_unknown_key_is_not_found(db: Database, org: int) -> None:
    add_domain(db, org)
    with pytest.raises(NotFound, match="no key with selector nosuch"):
        keys.remove_key(db=db, org=org, domain=IDN, selector="nosuch")


# -- two admins at once ------------------------------------------------------------------------


@pytest.mark.parametrize("what", ["domain", "key"])
def test_racing_adds_are_a_conflict_not_a_crash(store_url: str, what: str) -> None:
    """Two nodes add the same thing at once: the loser gets Conflict, not a driver error."""
    first = Database(store_url)
    second = Database(store_url)
    org = resolve_organization(db=first).id
    outcome: list[BaseException | None] = []
    if what == "domain":
        sql = (
            "INSERT INTO domains (organization_id, name, verification_token, created_at)"
            " VALUES (:org, 'race.example', 'token', 0)"
        )
        params = {"org": org}

        def add() -> object:
            return add_domain(second, org, "race.example")
    else:
        add_domain(first, org, "race.example")
        did = first.scalar("SELECT id FROM domains WHERE name = 'race.example'")
        sql = (
            "INSERT INTO dkim_keys (domain_id, selector, algorithm, bits, private_key,"
            " public_record, active, created_at)"
            " VALUES (:did, 'sel', 'ed25519', NULL, 'x', 'y', :t, 0)"
        )
        params = {"did": did, "t": True}

        def add() -> object:
            return keys.generate_key(
                db=second,
                org=org,
                domain="race.example",
                key=KeyCreate(selector="sel", algorithm="ed25519"),
            )

    def add_on_second() -> None:
        try:
            add()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    try:
        before = counts(first)
        with first.transaction():
            first.execute(sql, params)
            racer = threading.Thread(target=add_on_second)
            racer.start()
            time.sleep(0.3)  # the second insert now waits for the first transaction
        racer.join(timeout=30)
        [error] = outcome
        assert isinstance(error, Conflict), repr(error)
        after = counts(first)
        assert sum(after.values()) == sum(before.values()) + 1  # only the first one's row
    finally:
        first.close()
        second.close()
