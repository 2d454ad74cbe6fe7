"""/api/v1 aliases through the real `smtpy api`, on SQLite and PostgreSQL: exact, catch-all,
regex and plus-tags as the router resolves them; by id; field errors, duplicates; a member
manages the aliases of verified domains only; another organization's alias is not found."""

from __future__ import annotations

from resourceworld import API, problem, served_domain, world
from smtpy.admin.aliases import domain_rules
from smtpy.route.aliases import resolve
from smtpy.store.db import Database


def test_aliases_are_made_found_changed_and_removed(
    cli_env: dict[str, str], store_url: str
) -> None:
    with world(cli_env, store_url) as w:
        served_domain(store_url, w.org, "acme.test")
        made = {}
        for local, dests in (
            ("Alice", ["alice@mailbox.test", "alice@backup.test"]),
            ("*", ["catchall@mailbox.test"]),
            ("/^sales-[a-z]+$/", ["sales@mailbox.test"]),
        ):
            answer = w.admin.post(
                f"{API}/domains/acme.test/aliases",
                json={"local_part": local, "destinations": dests},
            )
            assert answer.status_code == 201, answer.text
            made[local] = answer.json()
        alice = made["Alice"]
        assert isinstance(alice["id"], str) and alice["created_at"].endswith("Z")
        assert (alice["address"], alice["kind"], alice["enabled"]) == (
            "Alice@acme.test",
            "exact",
            True,
        )
        assert alice["destinations"] == ["alice@mailbox.test", "alice@backup.test"]
        assert (made["*"]["kind"], made["/^sales-[a-z]+$/"]["kind"]) == ("catchall", "regex")

        # The router sees them: exact (any case), plus-tag, regex, catch-all.
        with Database(store_url) as db:
            rules = domain_rules(db, "acme.test")
        assert rules is not None
        for local, how, rule_id in (
            ("alice", "exact", alice["id"]),
            ("alice+news", "plus", alice["id"]),
            ("sales-east", "regex", made["/^sales-[a-z]+$/"]["id"]),
            ("nobody", "catchall", made["*"]["id"]),
        ):
            match = resolve(local, rules)
            assert match is not None and (match.how, str(match.rule.id)) == (how, rule_id)

        listed = w.admin.get(f"{API}/domains/acme.test/aliases").json()
        assert [a["id"] for a in listed["data"]] == [
            made[k]["id"] for k in ("/^sales-[a-z]+$/", "*", "Alice")
        ]
        page = w.admin.get(f"{API}/domains/acme.test/aliases?limit=2").json()
        rest = w.admin.get(
            f"{API}/domains/acme.test/aliases?limit=2&cursor={page['next_cursor']}"
        ).json()
        assert [a["id"] for a in page["data"] + rest["data"]] == [a["id"] for a in listed["data"]]
        assert w.admin.get(f"{API}/aliases/{alice['id']}").json() == alice

        changed = w.admin.patch(
            f"{API}/aliases/{alice['id']}",
            json={"enabled": False, "destinations": ["new@mailbox.test"]},
        )
        assert changed.status_code == 200, changed.text
        assert (changed.json()["enabled"], changed.json()["destinations"]) == (
            False,
            ["new@mailbox.test"],
        )
        with Database(store_url) as db:
            rules = domain_rules(db, "acme.test")
        assert rules is not None
        match = resolve("alice", rules)
        assert match is not None
        assert (match.rule.enabled, match.rule.destinations) == (False, ("new@mailbox.test",))

        disabled = w.admin.post(
            f"{API}/domains/acme.test/aliases",
            json={"local_part": "bob", "destinations": ["bob@mailbox.test"], "enabled": False},
        ).json()
        assert disabled["enabled"] is False

        assert w.admin.delete(f"{API}/aliases/{alice['id']}").status_code == 204
        problem(w.admin.get(f"{API}/aliases/{alice['id']}"), 404)
        problem(w.admin.delete(f"{API}/aliases/{alice['id']}"), 404)


def test_alias_inputs_are_checked(cli_env: dict[str, str], store_url: str) -> None:
    with world(cli_env, store_url) as w:
        served_domain(store_url, w.org, "acme.test")
        url = f"{API}/domains/acme.test/aliases"
        bad = problem(
            w.admin.post(
                url, json={"local_part": "x", "destinations": ["ok@mailbox.test", "not an address"]}
            ),
            422,
        )
        assert [e["field"] for e in bad["errors"]] == ["destinations.1"]
        loop = problem(
            w.admin.post(url, json={"local_part": "me", "destinations": ["me@acme.test"]}), 422
        )
        assert [e["field"] for e in loop["errors"]] == ["destinations.0"]
        empty = problem(w.admin.post(url, json={"local_part": "x", "destinations": []}), 422)
        assert [e["field"] for e in empty["errors"]] == ["destinations"]
        local = problem(
            w.admin.post(url, json={"local_part": "a b", "destinations": ["a@mailbox.test"]}), 422
        )
        assert [e["field"] for e in local["errors"]] == ["local_part"]
        pattern = problem(
            w.admin.post(url, json={"local_part": "/(/", "destinations": ["a@mailbox.test"]}), 422
        )
        assert [e["field"] for e in pattern["errors"]] == ["local_part"]
        typed = problem(
            w.admin.post(url, json={"local_part": "x", "destinations": "a@b.test"}), 422
        )
        assert [e["field"] for e in typed["errors"]] == ["destinations"]
        with Database(store_url) as db:
            assert db.scalar("SELECT count(*) FROM aliases") == 0  # nothing written

        first = w.admin.post(url, json={"local_part": "dup", "destinations": ["a@mailbox.test"]})
        assert first.status_code == 201
        problem(
            w.admin.post(url, json={"local_part": "DUP", "destinations": ["b@mailbox.test"]}), 409
        )
        alias_id = first.json()["id"]
        bad_patch = problem(
            w.admin.patch(f"{API}/aliases/{alias_id}", json={"destinations": ["nope"]}), 422
        )
        assert [e["field"] for e in bad_patch["errors"]] == ["destinations.0"]
        problem(w.admin.patch(f"{API}/aliases/{alias_id}", json={"enabled": "maybe"}), 422)
        problem(
            w.admin.post(
                f"{API}/domains/nowhere.test/aliases",
                json={"local_part": "a", "destinations": ["a@mailbox.test"]},
            ),
            404,
        )
        for odd in ("abc", "0", "99999999", "1e3", "-1"):
            problem(w.admin.get(f"{API}/aliases/{odd}"), 404)
        problem(w.admin.get(f"{API}/domains/acme.test/aliases?limit=1000"), 422)


def test_another_organizations_alias_is_not_found(cli_env: dict[str, str], store_url: str) -> None:
    with world(cli_env, store_url) as w:
        served_domain(store_url, w.other_org, "globex.test")
        theirs = w.other.post(
            f"{API}/domains/globex.test/aliases",
            json={"local_part": "ceo", "destinations": ["ceo@mailbox.test"]},
        ).json()
        for method, body in (("GET", None), ("PATCH", {"enabled": False}), ("DELETE", None)):
            answer = problem(
                w.admin.request(method, f"{API}/aliases/{theirs['id']}", json=body), 404
            )
            nothing = problem(w.admin.request(method, f"{API}/aliases/987654", json=body), 404)
            assert answer["detail"].replace(theirs["id"], "987654") == nothing["detail"]
        assert w.other.get(f"{API}/aliases/{theirs['id']}").json() == theirs  # unchanged


def test_a_member_manages_aliases_of_verified_domains_only(
    cli_env: dict[str, str], store_url: str
) -> None:
    with world(cli_env, store_url) as w:
        served_domain(store_url, w.org, "acme.test")  # serves at once
        assert w.admin.post(f"{API}/domains", json={"name": "pending.test"}).status_code == 201
        member = w.member()
        made = member.post(
            f"{API}/domains/acme.test/aliases",
            json={"local_part": "team", "destinations": ["team@mailbox.test"]},
        )
        assert made.status_code == 201, made.text
        alias_id = made.json()["id"]
        assert (
            member.patch(f"{API}/aliases/{alias_id}", json={"enabled": False}).json()["enabled"]
            is False
        )
        assert member.delete(f"{API}/aliases/{alias_id}").status_code == 204

        refused = problem(
            member.post(
                f"{API}/domains/pending.test/aliases",
                json={"local_part": "team", "destinations": ["team@mailbox.test"]},
            ),
            403,
        )
        assert "verified" in refused["detail"]
        # an admin sets aliases up on a pending domain; the member may read but not change them
        setup = w.admin.post(
            f"{API}/domains/pending.test/aliases",
            json={"local_part": "early", "destinations": ["early@mailbox.test"]},
        ).json()
        assert member.get(f"{API}/aliases/{setup['id']}").status_code == 200
        problem(member.patch(f"{API}/aliases/{setup['id']}", json={"enabled": False}), 403)
        problem(member.delete(f"{API}/aliases/{setup['id']}"), 403)
        assert w.admin.get(f"{API}/aliases/{setup['id']}").json()["enabled"] is True
        # without the CSRF token, a session may not change anything
        del member.headers["X-CSRF-Token"]
        problem(
            member.post(
                f"{API}/domains/acme.test/aliases",
                json={"local_part": "x", "destinations": ["x@mailbox.test"]},
            ),
            403,
        )
