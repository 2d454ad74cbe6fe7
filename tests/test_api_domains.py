"""/api/v1/domains through the real `smtpy api`, on SQLite and PostgreSQL: a domain added
here stays pending (no mail) until verify finds its ownership token in the test DNS
server; live record status; paging; roles; another organization's domain is not found."""

from __future__ import annotations

from typing import Any

from conftest import Cli
from dnsserver import DNSServer
from resourceworld import API, problem, served_domain, world
from smtpy.admin.aliases import domain_rules
from smtpy.store.db import Database

HOST = "mx.forwarder.test"  # SMTPY_HOSTNAME of cli_env


def records_of(answer: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["type"], r["name"]): r for r in answer}


def test_an_api_domain_is_pending_until_its_token_is_in_dns(
    cli_env: dict[str, str], store_url: str, dns_server: DNSServer
) -> None:
    with world(cli_env, store_url) as w:
        added = w.admin.post(f"{API}/domains", json={"name": "Example.ORG"})
        assert added.status_code == 201, added.text
        domain = added.json()
        assert (domain["name"], domain["status"], domain["verified"]) == (
            "example.org",
            "pending",
            False,
        )
        assert isinstance(domain["id"], str) and domain["created_at"].endswith("Z")
        token = next(r for r in domain["records"] if r["name"] == "_smtpy.example.org")
        assert token["type"] == "TXT" and token["value"].startswith("smtpy-verification=")
        with Database(store_url) as db:
            assert domain_rules(db, "example.org") is None  # receives no mail

        listed = w.admin.get(f"{API}/domains").json()
        assert set(listed) == {"data", "has_more", "next_cursor"}
        assert [d["name"] for d in listed["data"]] == ["example.org"]
        shown = w.admin.get(f"{API}/domains/example.org").json()
        assert shown["status"] == "pending" and shown["records"] == domain["records"]

        live = w.admin.get(f"{API}/domains/example.org/records")
        assert live.status_code == 200
        assert {r["status"] for r in live.json()} == {"missing"}
        assert all(r["observed"] == [] for r in live.json())

        # DNS answers with the wrong MX and no token: still pending.
        dns_server.add("example.org", "MX", "10 mx.elsewhere.test.")
        report = w.admin.post(f"{API}/domains/example.org/verify").json()
        assert report["domain"]["status"] == "pending" and report["verified"] is False
        mx = records_of(report["records"])[("MX", "example.org")]
        assert mx["status"] == "wrong" and mx["observed"] == ["10 mx.elsewhere.test"]
        with Database(store_url) as db:
            assert domain_rules(db, "example.org") is None

        # The ownership token alone makes it active (mail flows); MX here makes it verified.
        dns_server.add("_smtpy.example.org", "TXT", token["value"])
        report = w.admin.post(f"{API}/domains/example.org/verify").json()
        assert report["domain"]["status"] == "active" and report["verified"] is False
        assert records_of(report["records"])[("TXT", "_smtpy.example.org")]["status"] == "ok"
        with Database(store_url) as db:
            assert domain_rules(db, "example.org") is not None
        dns_server.remove("example.org", "MX")
        dns_server.add("example.org", "MX", f"10 {HOST}.")
        report = w.admin.post(f"{API}/domains/example.org/verify").json()
        assert report["verified"] is True and report["domain"]["verified_at"].endswith("Z")
        live = records_of(w.admin.get(f"{API}/domains/example.org/records").json())
        assert live[("MX", "example.org")] | {"observed": None} == {
            "type": "MX",
            "name": "example.org",
            "value": f"10 {HOST}.",
            "status": "ok",
            "observed": None,
            "required": True,
            "fix": "",
        }

        assert w.admin.delete(f"{API}/domains/example.org").status_code == 204
        problem(w.admin.get(f"{API}/domains/example.org"), 404)
        assert w.admin.get(f"{API}/domains").json()["data"] == []


def test_the_cli_adds_domains_that_serve_at_once(
    cli_env: dict[str, str], store_url: str, cli: Cli
) -> None:
    with world(cli_env, store_url) as w:
        assert cli("domain", "add", "cli.test", "--org", "acme").code == 0
        shown = w.admin.get(f"{API}/domains/cli.test").json()
        assert shown["status"] == "active" and shown["verified"] is False


def test_domain_inputs_are_checked(cli_env: dict[str, str], store_url: str) -> None:
    with world(cli_env, store_url) as w:
        missing = problem(w.admin.post(f"{API}/domains", json={}), 422)
        assert [e["field"] for e in missing["errors"]] == ["name"]
        problem(w.admin.post(f"{API}/domains", json={"name": "not a domain!"}), 422)
        problem(w.admin.post(f"{API}/domains", json={"name": "x" * 300}), 422)
        assert w.admin.post(f"{API}/domains", json={"name": "dup.test"}).status_code == 201
        problem(w.admin.post(f"{API}/domains", json={"name": "DUP.test"}), 409)
        # another organization may not take a served domain either
        problem(w.other.post(f"{API}/domains", json={"name": "dup.test"}), 409)
        problem(w.admin.get(f"{API}/domains?limit=0"), 422)
        problem(w.admin.get(f"{API}/domains?limit=201"), 422)
        problem(w.admin.get(f"{API}/domains?cursor=garbage"), 422)
        problem(w.admin.get(f"{API}/domains/nowhere.test"), 404)
        problem(w.admin.post(f"{API}/domains/nowhere.test/verify"), 404)
        problem(w.admin.get(f"{API}/domains/nowhere.test/records"), 404)
        problem(w.admin.delete(f"{API}/domains/nowhere.test"), 404)
        assert w.api.client.get(f"{API}/domains").status_code == 401


def test_pages_of_domains_follow_their_cursor(cli_env: dict[str, str], store_url: str) -> None:
    with world(cli_env, store_url) as w:
        for name in ("a.test", "b.test", "c.test"):
            assert w.admin.post(f"{API}/domains", json={"name": name}).status_code == 201
        first = w.admin.get(f"{API}/domains?limit=2").json()
        assert [d["name"] for d in first["data"]] == ["c.test", "b.test"]
        assert first["has_more"] is True
        second = w.admin.get(f"{API}/domains?limit=2&cursor={first['next_cursor']}").json()
        assert [d["name"] for d in second["data"]] == ["a.test"]
        assert second == {"data": second["data"], "has_more": False, "next_cursor": None}


def test_another_organizations_domain_is_not_found(cli_env: dict[str, str], store_url: str) -> None:
    with world(cli_env, store_url) as w:
        served_domain(store_url, w.other_org, "globex.test")
        for method, path in (
            ("GET", "/domains/globex.test"),
            ("GET", "/domains/globex.test/records"),
            ("POST", "/domains/globex.test/verify"),
            ("DELETE", "/domains/globex.test"),
            ("GET", "/domains/globex.test/aliases"),
        ):
            theirs = problem(w.admin.request(method, f"{API}{path}"), 404)
            nothing = problem(
                w.admin.request(method, f"{API}{path.replace('globex', 'nothing')}"), 404
            )
            assert theirs["code"] == nothing["code"] == "not_found"
            assert theirs["detail"].replace("globex", "nothing") == nothing["detail"]
        assert w.admin.get(f"{API}/domains").json()["data"] == []
        assert w.other.get(f"{API}/domains/globex.test").status_code == 200


def test_a_member_reads_domains_but_may_not_add_or_delete_them(
    cli_env: dict[str, str], store_url: str
) -> None:
    with world(cli_env, store_url) as w:
        served_domain(store_url, w.org, "acme.test")
        member = w.member()
        assert [d["name"] for d in member.get(f"{API}/domains").json()["data"]] == ["acme.test"]
        problem(member.delete(f"{API}/domains/acme.test"), 403)
        problem(member.post(f"{API}/domains", json={"name": "new.test"}), 403)
        assert w.admin.get(f"{API}/domains/acme.test").status_code == 200
