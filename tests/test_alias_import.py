"""`smtpy alias import`: a Postfix virtual map becomes aliases, all or nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from smtpy.admin import aliases, domains
from smtpy.admin.alias_import import (
    MapRejected,
    import_virtual_map,
    logical_lines,
    parse_virtual_map,
)
from smtpy.admin.domains import DomainCreate
from smtpy.admin.organizations import resolve_organization
from smtpy.errors import NotFound
from smtpy.route.aliases import resolve
from smtpy.store.db import Database

POSTFIX_MAP = """\
# /etc/postfix/virtual
example.org         anything
alice@example.org   alice@gmail.com, alice@work.example
bob@example.org
    bob@fastmail.com,
    # a comment inside a continued entry
    bob@backup.example
@example.org        catchall@fastmail.com
carol@example.net   carol@gmail.com
"""


def _errors(text: str, *, domain: str | None = None) -> list[tuple[int, str]]:
    return [(e.line, e.message) for e in parse_virtual_map(text, domain=domain).errors]


# -- reading the map -----------------------------------------------------------


def test_logical_lines_join_continuations_and_skip_comments() -> None:
    assert list(logical_lines(POSTFIX_MAP)) == [
        (2, "example.org         anything"),
        (3, "alice@example.org   alice@gmail.com, alice@work.example"),
        (4, "bob@example.org bob@fastmail.com, bob@backup.example"),
        (8, "@example.org        catchall@fastmail.com"),
        (9, "carol@example.net   carol@gmail.com"),
    ]


def test_each_accepted_form_becomes_an_alias_in_smtpy_form() -> None:
    parsed = parse_virtual_map(POSTFIX_MAP)
    assert parsed.errors == []
    assert [(d.line, d.domain) for d in parsed.domains] == [(2, "example.org")]
    assert [(a.line, a.address, a.destinations) for a in parsed.aliases] == [
        (3, "alice@example.org", ("alice@gmail.com", "alice@work.example")),
        (4, "bob@example.org", ("bob@fastmail.com", "bob@backup.example")),
        (8, "*@example.org", ("catchall@fastmail.com",)),
        (9, "carol@example.net", ("carol@gmail.com",)),
    ]


def test_domain_option_keeps_one_domain_and_completes_bare_keys() -> None:
    parsed = parse_virtual_map(
        "dave  dave@gmail.com\nalice@Example.ORG a@x.example\ncarol@example.net c@x.example\n",
        domain="example.org",
    )
    assert [a.address for a in parsed.aliases] == ["dave@example.org", "alice@Example.ORG"]
    assert [(s.line, s.key) for s in parsed.skipped] == [(3, "carol@example.net")]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("/^sales-.*@example\\.org$/  sales@corp.example", "regexp/pcre"),
        ("if /^a/", "regexp/pcre"),
        ("root@example.org  root", "has no domain"),
        ("log@example.org  |/usr/bin/logger", "command"),
        ("arch@example.org  /var/mail/archive", "file"),
        ("list@example.org  :include:/etc/postfix/list", ":include:"),
        ("@example.org  @example.net", "domain-to-domain"),
        ("alone@example.org", "no destination"),
        ("frank  frank@gmail.com", "--domain"),
    ],
)
def test_forms_smtpy_cannot_express_are_refused_with_their_line(line: str, reason: str) -> None:
    errors = _errors(f"# header\n\nok@example.org ok@x.example\n{line}\n")
    assert len(errors) == 1
    assert errors[0][0] == 4
    assert reason in errors[0][1]


def test_a_continuation_with_nothing_to_continue_and_conflicting_duplicates() -> None:
    text = "  stray@x.example\na@example.org x@x.example\nA@example.org y@x.example\n"
    assert [line for line, _ in _errors(text)] == [1, 3]
    assert "already given on line 2" in _errors(text)[1][1]
    # The same entry twice is harmless.
    assert _errors("a@example.org x@x.example\na@example.org x@x.example\n") == []


# -- importing into the store (SQLite and PostgreSQL) -----------------------------------


@pytest.fixture
def org(db: Database) -> int:
    return resolve_organization(db=db).id


@pytest.fixture
def served(db: Database, org: int) -> Database:
    domains.add_domain(db=db, org=org, domain=DomainCreate(name="example.org"))
    domains.add_domain(db=db, org=org, domain=DomainCreate(name="example.net"))
    return db


def _stored(db: Database) -> dict[str, list[str]]:
    org = resolve_organization(db=db).id
    return {a.address: a.destinations for a in aliases.list_aliases(db=db, org=org)}


def test_import_adds_every_alias_and_the_router_finds_them(served: Database, org: int) -> None:
    result = import_virtual_map(db=served, org=org, text=POSTFIX_MAP)
    assert [(a.line, a.address) for a in result.created] == [
        (3, "alice@example.org"),
        (4, "bob@example.org"),
        (8, "*@example.org"),
        (9, "carol@example.net"),
    ]
    assert _stored(served)["bob@example.org"] == ["bob@fastmail.com", "bob@backup.example"]
    rules = aliases.domain_rules(served, "example.org")
    assert rules is not None
    match = resolve("nobody", rules)
    assert match is not None and match.rule.destinations == ("catchall@fastmail.com",)


def test_dry_run_reports_the_same_and_writes_nothing(served: Database, org: int) -> None:
    result = import_virtual_map(db=served, org=org, text=POSTFIX_MAP, dry_run=True)
    assert len(result.created) == 4
    public = result.model_dump(mode="json")
    assert public["imported"] is False
    assert "id" not in public["created"][0]
    assert _stored(served) == {}


def test_one_bad_line_and_nothing_is_written(served: Database, org: int) -> None:
    text = POSTFIX_MAP + "eve@unknown.example  eve@gmail.com\nloop@example.org loop@example.org\n"
    with pytest.raises(MapRejected) as caught:
        import_virtual_map(db=served, org=org, text=text)
    errors = [(e.line, e.message) for e in caught.value.result.errors]
    assert [line for line, _ in errors] == [10, 11]
    assert "smtpy domain add" in errors[0][1]  # the alias service's own message
    assert "mail loop" in errors[1][1]
    assert "line 10" in str(caught.value)
    assert _stored(served) == {}


def test_import_twice_is_harmless_but_other_destinations_conflict(
    served: Database, org: int
) -> None:
    import_virtual_map(db=served, org=org, text=POSTFIX_MAP)
    again = import_virtual_map(db=served, org=org, text=POSTFIX_MAP)
    assert again.created == []
    assert len(again.unchanged) == 4
    with pytest.raises(MapRejected) as caught:
        import_virtual_map(
            db=served,
            org=org,
            text="new@example.org n@x.example\nalice@example.org other@x.example\n",
        )
    assert [e.line for e in caught.value.result.errors] == [2]
    assert "already exists" in caught.value.result.errors[0].message
    assert "new@example.org" not in _stored(served)


def test_a_declared_domain_must_be_served(db: Database, org: int) -> None:
    with pytest.raises(MapRejected) as caught:
        import_virtual_map(db=db, org=org, text="example.org anything\n")
    assert caught.value.result.errors[0].line == 1
    assert "smtpy domain add" in caught.value.result.errors[0].message


def test_an_unserved_domain_option_is_one_error(db: Database, org: int) -> None:
    with pytest.raises(NotFound, match=r"smtpy domain add example\.org"):
        import_virtual_map(
            db=db, org=org, text="alice  a@x.example\nbob  b@x.example\n", domain="example.org"
        )


# -- the command -------------------------------------------------------------------


def test_cli_import_dry_run_then_real(cli: Any, tmp_path: Path) -> None:
    run = cli
    assert run("domain", "add", "example.org").code == 0
    assert run("domain", "add", "example.net").code == 0
    virtual = tmp_path / "virtual"
    virtual.write_text(POSTFIX_MAP, encoding="utf-8")

    dry = run("alias", "import", str(virtual), "--dry-run", "--json")
    assert dry.code == 0, dry.stderr
    assert [a["address"] for a in json.loads(dry.stdout)["created"]] == [
        "alice@example.org",
        "bob@example.org",
        "*@example.org",
        "carol@example.net",
    ]
    assert json.loads(run("alias", "list", "--json").stdout) == []

    real = run("alias", "import", str(virtual), "--domain", "example.org")
    assert real.code == 0, real.stderr
    assert "imported 3 aliases" in real.stdout
    assert "1 skipped" in real.stdout
    listed = {a["address"] for a in json.loads(run("alias", "list", "--json").stdout)}
    assert listed == {"alice@example.org", "bob@example.org", "*@example.org"}


def test_cli_import_reports_each_bad_line_and_exits_2(cli: Any, tmp_path: Path) -> None:
    run = cli
    assert run("domain", "add", "example.org").code == 0
    virtual = tmp_path / "virtual"
    virtual.write_text("a@example.org a@x.example\nroot@example.org root\n/x/ y@x.example\n")
    result = run("alias", "import", str(virtual))
    assert result.code == 2
    assert f"{virtual}:2: destination 'root' has no domain" in result.stderr
    assert f"{virtual}:3: regexp/pcre" in result.stderr
    assert "2 bad line(s); nothing was imported" in result.stderr
    assert "Traceback" not in result.stderr
    assert json.loads(run("alias", "list", "--json").stdout) == []
    missing = run("alias", "import", str(tmp_path / "nope"))
    assert missing.code == 2
    assert "cannot read" in missing.stderr
