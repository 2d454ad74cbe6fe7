"""The services the CLI and the HTTP API share, against a real store on both backends."""

from __future__ import annotations

import threading
import time

import pytest

from dnsserver import DNSServer
from smtpy.admin import aliases, domains, keys
from smtpy.errors import Conflict, InvalidInput, NotFound
from smtpy.route.aliases import resolve
from smtpy.store.db import Database

HOST = "mx.forwarder.test"
IDN = "bücher.example"
IDN_A = "xn--bcher-kva.example"


def counts(db: Database) -> dict[str, int]:
    return {
        table: int(db.scalar(f"SELECT count(*) FROM {table}"))
        for table in ("organizations", "domains", "aliases", "dkim_keys")
    }


def add_domain(db: Database, name: str = IDN) -> domains.DomainInfo:
    return domains.add_domain(db, name, key_algorithm="ed25519")


# -- domains ---------------------------------------------------------------------------------


def test_domain_is_stored_as_a_label_and_shown_as_u_label(db: Database) -> None:
    info = domains.add_domain(db, "Bücher.Example.")
    assert info.name == IDN_A
    assert info.display_name == IDN
    assert db.scalar("SELECT name FROM domains") == IDN_A
    assert info.organization == "default"
    assert (info.aliases, info.keys, info.verified_at) == (0, 1, None)
    public = info.public()
    assert public["name"] == IDN
    assert public["ascii_name"] == IDN_A
    assert public["verified"] is False
    for form in (IDN, IDN_A, "BÜCHER.example", "XN--BCHER-KVA.EXAMPLE."):
        assert domains.get_domain(db, form).id == info.id


def test_new_domain_gets_a_first_active_rsa_key(db: Database) -> None:
    domains.add_domain(db, "example.org")
    [key] = keys.list_keys(db, domain="example.org")
    assert (key.algorithm, key.bits, key.active) == ("rsa", 2048, True)
    assert key.public_record.startswith("v=DKIM1; k=rsa; p=")


def test_domains_share_the_default_organization(db: Database) -> None:
    add_domain(db, "one.example")
    add_domain(db, "two.example")
    assert [d.name for d in domains.list_domains(db)] == ["one.example", "two.example"]
    assert counts(db)["organizations"] == 1


def test_duplicate_domain_in_any_form_is_a_conflict(db: Database) -> None:
    add_domain(db)
    before = counts(db)
    for form in [IDN, IDN_A, "Bücher.EXAMPLE"]:
        with pytest.raises(Conflict, match="already served"):
            add_domain(db, form)
    assert counts(db) == before


def test_invalid_domain_writes_nothing(db: Database) -> None:
    for name in ["not a domain", "localhost", "1.2.3.4", "exa_mple.org", ""]:
        with pytest.raises(InvalidInput):
            domains.add_domain(db, name)
    assert counts(db) == {"organizations": 0, "domains": 0, "aliases": 0, "dkim_keys": 0}


def test_failed_first_key_leaves_no_domain_behind(db: Database) -> None:
    with pytest.raises(InvalidInput, match="algorithm"):
        domains.add_domain(db, "example.org", key_algorithm="dsa")
    assert counts(db) == {"organizations": 0, "domains": 0, "aliases": 0, "dkim_keys": 0}


def test_unknown_domain_is_not_found_with_a_hint(db: Database) -> None:
    for call in (
        lambda: domains.get_domain(db, "nope.example"),
        lambda: domains.remove_domain(db, "nope.example"),
        lambda: domains.domain_records(db, "nope.example", hostname=HOST),
        lambda: aliases.list_aliases(db, domain="nope.example"),
        lambda: keys.generate(db, "nope.example"),
    ):
        with pytest.raises(NotFound, match=r"smtpy domain add nope\.example"):
            call()


def test_remove_domain_takes_its_aliases_and_keys_only(db: Database) -> None:
    add_domain(db, "gone.example")
    add_domain(db, "kept.example")
    aliases.add_alias(db, "a@gone.example", ["x@dest.test"])
    aliases.add_alias(db, "a@kept.example", ["x@dest.test"])
    removed = domains.remove_domain(db, "gone.example")
    assert (removed.aliases, removed.keys) == (1, 1)
    assert [d.name for d in domains.list_domains(db)] == ["kept.example"]
    assert [a.rule.domain for a in aliases.list_aliases(db)] == ["kept.example"]
    assert [k.domain for k in keys.list_keys(db)] == ["kept.example"]
    with pytest.raises(NotFound):
        domains.get_domain(db, "gone.example")
    assert aliases.domain_rules(db, "gone.example") is None


def test_domain_records_list_every_key_and_a_stable_token(db: Database) -> None:
    add_domain(db)
    keys.generate(db, IDN, selector="extra", bits=1024)
    first = domains.domain_records(db, IDN, hostname=HOST)
    assert domains.domain_records(db, IDN_A, hostname=HOST) == first
    assert [r.type for r in first if r.name == IDN_A] == ["MX", "TXT"]
    assert first[0].value == f"10 {HOST}."
    dkim = [r for r in first if r.purpose == "dkim"]
    assert [r.name for r in dkim] == [
        f"{k.selector}._domainkey.{IDN_A}" for k in keys.list_keys(db, domain=IDN)
    ]
    assert f"extra._domainkey.{IDN_A}" in [r.name for r in dkim]
    [ownership] = [r for r in first if r.purpose == "ownership"]
    assert ownership.name == f"_smtpy.{IDN_A}"
    assert ownership.value.startswith("smtpy-verification=")
    assert "PRIVATE KEY" not in repr(first)


# -- verification against the loopback DNS server ---------------------------------------------


def publish(dns_server: DNSServer, db: Database, *, skip: str = "") -> None:
    for record in domains.domain_records(db, IDN, hostname=HOST):
        if record.purpose != skip:
            dns_server.add(record.name, record.type, record.value)


def verify(db: Database, dns_server: DNSServer, timeout: float = 2.0) -> domains.Verification:
    host, _, port = dns_server.nameserver.rpartition(":")
    return domains.verify_domain(
        db, IDN, hostname=HOST, nameservers=[(host, int(port))], timeout=timeout
    )


def statuses(report: domains.Verification) -> dict[str, str]:
    return {f.record.purpose: f.status for f in report.findings}


def test_verify_marks_the_domain_verified_when_everything_is_published(
    db: Database, dns_server: DNSServer
) -> None:
    add_domain(db)
    publish(dns_server, db)
    report = verify(db, dns_server)
    assert report.verified
    assert set(statuses(report).values()) == {"ok"}
    assert domains.get_domain(db, IDN).verified_at is not None


def test_verify_needs_mx_and_ownership_only(db: Database, dns_server: DNSServer) -> None:
    add_domain(db)
    for record in domains.domain_records(db, IDN, hostname=HOST):
        if record.purpose in ("mx", "ownership"):
            dns_server.add(record.name, record.type, record.value)
    report = verify(db, dns_server)
    assert report.verified
    assert statuses(report)["dkim"] == "missing"
    assert statuses(report)["dmarc"] == "missing"


@pytest.mark.parametrize("skip", ["mx", "ownership"])
def test_verify_fails_without_a_required_record(
    db: Database, dns_server: DNSServer, skip: str
) -> None:
    add_domain(db)
    publish(dns_server, db, skip=skip)
    report = verify(db, dns_server)
    assert not report.verified
    assert statuses(report)[skip] == "missing"
    assert domains.get_domain(db, IDN).verified_at is None


def test_verify_reports_servfail_and_timeout_as_such(db: Database, dns_server: DNSServer) -> None:
    add_domain(db)
    publish(dns_server, db)
    dns_server.fail(IDN_A)  # MX and SPF
    dns_server.drop(f"_smtpy.{IDN_A}")
    report = verify(db, dns_server, timeout=0.5)
    assert not report.verified
    found = statuses(report)
    assert (found["mx"], found["spf"], found["ownership"]) == ("servfail", "servfail", "timeout")
    assert (found["dkim"], found["dmarc"]) == ("ok", "ok")
    assert domains.get_domain(db, IDN).verified_at is None


def test_wrong_mx_is_reported_as_wrong(db: Database, dns_server: DNSServer) -> None:
    add_domain(db)
    publish(dns_server, db, skip="mx")
    dns_server.add(IDN_A, "MX", "10 mx.elsewhere.test.")
    report = verify(db, dns_server)
    assert not report.verified
    [mx] = [f for f in report.findings if f.record.purpose == "mx"]
    assert (mx.status, mx.found) == ("wrong", ("10 mx.elsewhere.test",))


# -- aliases ---------------------------------------------------------------------------------------


def test_add_alias_of_each_kind(db: Database) -> None:
    add_domain(db)
    alice = aliases.add_alias(db, f"Alice@{IDN}", ["bob@dest.test", "Carol@Bücher.Example"])
    catch = aliases.add_alias(db, f"*@{IDN_A}", ["all@dest.test"])
    sales = aliases.add_alias(db, f"/sales-[0-9]+/@{IDN}", ["sales@dest.test"])
    assert alice.rule.kind == "exact" and alice.rule.local_part == "Alice"
    assert alice.rule.destinations == ("bob@dest.test", f"Carol@{IDN_A}")  # as delivered
    assert alice.public()["destinations"] == ["bob@dest.test", f"Carol@{IDN}"]  # as shown
    assert alice.public()["address"] == f"Alice@{IDN}"
    assert catch.display_address == f"*@{IDN}"
    assert sales.display_address == f"/sales-[0-9]+/@{IDN}"
    # Listed exact first, then regex, then the catch-all.
    assert [a.rule.kind for a in aliases.list_aliases(db)] == ["exact", "regex", "catchall"]
    assert domains.get_domain(db, IDN).aliases == 3


def test_destinations_are_deduplicated_and_validated(db: Database) -> None:
    add_domain(db)
    info = aliases.add_alias(db, f"a@{IDN}", ["x@dest.test", "x@DEST.test", "y@dest.test"])
    assert info.rule.destinations == ("x@dest.test", "y@dest.test")


def test_utf8_alias_and_destination(db: Database) -> None:
    add_domain(db)
    info = aliases.add_alias(db, f"Jörg@{IDN}", ["jürgen@dest.test"])
    assert info.public()["address"] == f"Jörg@{IDN}"
    assert aliases.find_alias(db, f"JÖRG@{IDN}").rule.id == info.rule.id


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


def test_bad_alias_writes_nothing(db: Database) -> None:
    add_domain(db)
    aliases.add_alias(db, f"taken@{IDN}", ["x@dest.test"])
    before = counts(db)
    for address, dests, options, error, reason in BAD_ALIASES:
        with pytest.raises(error, match=reason):
            aliases.add_alias(db, address, dests, **options)
        assert counts(db) == before, address


def test_duplicate_alias_is_a_conflict(db: Database) -> None:
    add_domain(db)
    for first, second in [
        ("alice@bücher.example", "ALICE@xn--bcher-kva.example"),
        ("*@bücher.example", "*@BÜCHER.example"),
        ("/sales-.*/@bücher.example", "/sales-.*/@bücher.example"),
    ]:
        aliases.add_alias(db, first, ["x@dest.test"])
        with pytest.raises(Conflict, match="already exists"):
            aliases.add_alias(db, second, ["y@dest.test"])
    assert [a.rule.destinations for a in aliases.list_aliases(db)] == [("x@dest.test",)] * 3


def test_same_local_part_on_two_domains_is_fine(db: Database) -> None:
    add_domain(db, "one.example")
    add_domain(db, "two.example")
    aliases.add_alias(db, "info@one.example", ["x@dest.test"])
    aliases.add_alias(db, "info@two.example", ["y@dest.test"])
    assert [a.display_address for a in aliases.list_aliases(db, domain="two.example")] == [
        "info@two.example"
    ]


def test_reject_and_discard_modes(db: Database) -> None:
    add_domain(db)
    reject = aliases.add_alias(db, f"old@{IDN}", [], mode="reject", reject_message="moved away")
    discard = aliases.add_alias(db, f"noise@{IDN}", [], mode="discard")
    plain = aliases.add_alias(db, f"gone@{IDN}", [], mode="reject")
    assert (reject.rule.mode, reject.rule.reject_message, reject.rule.destinations) == (
        "reject",
        "moved away",
        (),
    )
    assert (discard.rule.mode, discard.rule.destinations) == ("discard", ())
    assert plain.rule.reject_message is None


def test_remove_enable_disable_find_the_alias_in_any_case(db: Database) -> None:
    add_domain(db)
    aliases.add_alias(db, f"Alice@{IDN}", ["x@dest.test"])
    assert aliases.set_enabled(db, f"ALICE@{IDN_A}", False).rule.enabled is False
    assert aliases.list_aliases(db)[0].rule.enabled is False
    assert aliases.set_enabled(db, f"alice@{IDN}", True).rule.enabled is True
    removed = aliases.remove_alias(db, f"aLiCe@{IDN}")
    assert removed.display_address == f"Alice@{IDN}"
    assert aliases.list_aliases(db) == []
    for call in (
        lambda: aliases.remove_alias(db, f"alice@{IDN}"),
        lambda: aliases.set_enabled(db, f"alice@{IDN}", True),
        lambda: aliases.remove_alias(db, f"*@{IDN}"),
        lambda: aliases.remove_alias(db, f"/x/@{IDN}"),
    ):
        with pytest.raises(NotFound, match="smtpy alias list"):
            call()


def test_store_rules_route_like_the_admin_wrote_them(db: Database) -> None:
    add_domain(db)
    aliases.add_alias(db, f"Alice@{IDN}", ["alice@dest.test"])
    aliases.add_alias(db, f"/sales-[0-9]+/@{IDN}", ["sales@dest.test"])
    aliases.add_alias(db, f"*@{IDN}", ["all@dest.test"])
    aliases.add_alias(db, f"bob@{IDN}", ["bob@dest.test"])
    aliases.set_enabled(db, f"bob@{IDN}", False)

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


def test_generate_list_and_remove_keys(db: Database) -> None:
    add_domain(db)
    new = keys.generate(db, IDN, selector="Mail2026", algorithm="rsa", bits=1024)
    assert (new.selector, new.algorithm, new.bits, new.active) == ("mail2026", "rsa", 1024, True)
    assert new.dns_name == f"mail2026._domainkey.{IDN_A}"
    listed = keys.list_keys(db, domain=IDN)
    assert [k.selector for k in listed][-1] == "mail2026"
    assert all(k.active for k in listed)  # a generated key signs alongside the others
    for key in listed:
        public = key.public()
        assert "private_key" not in public
        assert "PRIVATE KEY" not in repr(public) + repr(key)
        assert public["domain"] == IDN
    signing = keys.signing_keys(db, IDN_A)
    assert len(signing) == 2
    assert all(k["private_key"].startswith("-----BEGIN PRIVATE KEY-----") for k in signing)

    removed = keys.remove(db, IDN, "MAIL2026")
    assert removed.selector == "mail2026"
    assert "mail2026" not in [k.selector for k in keys.list_keys(db)]
    names = [r.name for r in domains.domain_records(db, IDN, hostname=HOST)]
    assert f"mail2026._domainkey.{IDN_A}" not in names


def test_default_selectors_do_not_collide(db: Database) -> None:
    add_domain(db)  # its first key is ed25519
    first = keys.generate(db, IDN, algorithm="ed25519")
    second = keys.generate(db, IDN, bits=1024)
    third = keys.generate(db, IDN, bits=1024)
    selectors = [k.selector for k in keys.list_keys(db, domain=IDN)]
    assert len(set(selectors)) == 4
    assert third.selector == f"{second.selector}-2"
    assert first.selector.endswith("-2")


def test_bad_key_request_writes_nothing(db: Database) -> None:
    add_domain(db)
    keys.generate(db, IDN, selector="taken", algorithm="ed25519")
    before = keys.list_keys(db)
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
            keys.generate(db, IDN, **options)  # type: ignore[arg-type]
        assert keys.list_keys(db) == before, options


def test_rotate_keeps_the_old_key_published_until_removed(db: Database) -> None:
    domains.add_domain(db, IDN)
    [old] = keys.list_keys(db, domain=IDN)
    new, retired = keys.rotate(db, IDN, selector="next", bits=1024)
    assert [k.selector for k in retired] == [old.selector]
    assert (new.selector, new.algorithm, new.active) == ("next", "rsa", True)
    state = {k.selector: k.active for k in keys.list_keys(db, domain=IDN)}
    assert state == {old.selector: False, "next": True}
    assert [k["selector"] for k in keys.signing_keys(db, IDN_A)] == ["next"]
    dkim = [r.name for r in domains.domain_records(db, IDN, hostname=HOST) if r.purpose == "dkim"]
    assert dkim == [f"{old.selector}._domainkey.{IDN_A}", f"next._domainkey.{IDN_A}"]
    keys.remove(db, IDN, old.selector)
    dkim = [r.name for r in domains.domain_records(db, IDN, hostname=HOST) if r.purpose == "dkim"]
    assert dkim == [f"next._domainkey.{IDN_A}"]


def test_rotate_retires_only_keys_of_the_same_algorithm(db: Database) -> None:
    add_domain(db)  # ed25519
    keys.generate(db, IDN, selector="rsa1", bits=1024)
    new, retired = keys.rotate(db, IDN, algorithm="rsa", selector="rsa2", bits=1024)
    assert new.active
    assert [k.selector for k in retired] == ["rsa1"]
    active = sorted(k["selector"] for k in keys.signing_keys(db, IDN_A))
    assert len(active) == 2 and "rsa2" in active and "rsa1" not in active


def test_failed_rotation_changes_nothing(db: Database) -> None:
    add_domain(db)
    before = keys.list_keys(db)
    with pytest.raises(Conflict):
        keys.rotate(db, IDN, selector=before[0].selector)
    with pytest.raises(InvalidInput):
        keys.rotate(db, IDN, algorithm="rsa", bits=123)
    assert keys.list_keys(db) == before


def test_unknown_key_is_not_found(db: Database) -> None:
    add_domain(db)
    with pytest.raises(NotFound, match="no key with selector nosuch"):
        keys.remove(db, IDN, "nosuch")


# -- two admins at once ------------------------------------------------------------------------


@pytest.mark.parametrize("what", ["domain", "key"])
def test_racing_adds_are_a_conflict_not_a_crash(store_url: str, what: str) -> None:
    """Two nodes add the same thing at once: the loser gets Conflict, not a driver error."""
    first = Database(store_url)
    second = Database(store_url)
    outcome: list[BaseException | None] = []
    if what == "domain":
        sql = (
            "INSERT INTO domains (organization_id, name, verification_token, created_at)"
            " VALUES (:org, 'race.example', 'token', 0)"
        )
        params = {"org": domains.organization_id(first)}

        def add() -> object:
            return add_domain(second, "race.example")
    else:
        did = add_domain(first, "race.example").id
        sql = (
            "INSERT INTO dkim_keys (domain_id, selector, algorithm, bits, private_key,"
            " public_record, active, created_at)"
            " VALUES (:did, 'sel', 'ed25519', NULL, 'x', 'y', :t, 0)"
        )
        params = {"did": did, "t": True}

        def add() -> object:
            return keys.generate(second, "race.example", selector="sel", algorithm="ed25519")

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
