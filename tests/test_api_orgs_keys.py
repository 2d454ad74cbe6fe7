"""/api/v1/orgs, /org, /org/members and /api-keys through the real `smtpy api`, on both stores.

Callers are real: API keys made by the core (as `smtpy apikey create` does) and
browser sessions made by the core's session service (the sign-in routes are
another module's), sent as the cookie with the CSRF token.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from apiserver import ApiServer, seed_org
from conftest import Cli
from smtpy.accounts import sessions
from smtpy.store.db import Database

PROBLEM = "application/problem+json"


@pytest.fixture
def api(cli_env: dict[str, str]) -> Iterator[ApiServer]:
    with ApiServer(cli_env) as server:
        yield server


def signed_in(api: ApiServer, store_url: str, user_id: int, org: int) -> httpx.Client:
    """A browser signed in as `user_id` acting in `org`, past its second factor."""
    with Database(store_url) as db:
        new = sessions.create(
            db=db, user_id=user_id, organization_id=org, mfa_passed=True, lifetime=3600
        )
    browser = api.browser()
    browser.cookies.set("smtpy_session", new.token)
    browser.headers["X-CSRF-Token"] = sessions.csrf_token(new.token)
    return browser


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM), response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["detail"]
    return body


def test_a_revoked_key_is_refused_at_once_and_an_expired_one_too(
    api: ApiServer, store_url: str
) -> None:
    acme = seed_org(store_url)
    admin = api.as_key(acme["key"])
    created = admin.post("/api/v1/api-keys", json={"name": "deploy"})
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["key"].startswith(f"smtpy_{body['id']}_")
    assert body["status"] == "active" and body["revoked_at"] is None
    assert body["created_at"].endswith("Z")
    deploy = api.as_key(body["key"])
    assert deploy.get("/api/v1/org").status_code == 200

    listed = admin.get("/api/v1/api-keys").json()
    assert set(listed) == {"data", "has_more", "next_cursor"}
    assert body["id"] in [k["id"] for k in listed["data"]]
    assert body["key"] not in json.dumps(listed)  # shown once only
    assert all(isinstance(k["id"], str) for k in listed["data"])

    assert admin.delete(f"/api/v1/api-keys/{body['id']}").status_code == 204
    problem(deploy.get("/api/v1/org"), 401)  # the very next request
    problem(deploy.get("/api/v1/api-keys"), 401)
    states = {k["id"]: k["status"] for k in admin.get("/api/v1/api-keys").json()["data"]}
    assert states[body["id"]] == "revoked"

    later = admin.post(
        "/api/v1/api-keys", json={"name": "temp", "expires_at": "2099-01-01T00:00:00Z"}
    ).json()
    assert later["expires_at"].startswith("2099-01-01T00:00:00")
    temp = api.as_key(later["key"])
    assert temp.get("/api/v1/org").status_code == 200
    with Database(store_url) as db:  # its expiry has come
        db.execute(
            "UPDATE api_keys SET expires_at = :t WHERE id = :id",
            {"t": time.time() - 1, "id": later["id"]},
        )
    problem(temp.get("/api/v1/org"), 401)

    # Bad input: no name, a past or zone-less expiry, unknown fields.
    for bad in (
        {"name": ""},
        {},
        {"name": "x", "expires_at": "2000-01-01T00:00:00Z"},
        {"name": "x", "expires_at": "2099-01-01T00:00:00"},
        {"name": "x", "scope": "all"},
    ):
        problem(admin.post("/api/v1/api-keys", json=bad), 422)
    problem(admin.delete("/api/v1/api-keys/0123456789abcdef"), 404)
    problem(api.client.get("/api/v1/api-keys"), 401)
    problem(api.as_key("smtpy_0123456789abcdef_" + "x" * 43).get("/api/v1/api-keys"), 401)


def test_roles_decide_who_changes_members_and_the_last_owner_stays(
    api: ApiServer, store_url: str
) -> None:
    owner = seed_org(store_url, role="owner")
    member = seed_org(store_url, role="member")
    org = owner["org"]
    as_owner = signed_in(api, store_url, owner["user"], org)
    as_member = signed_in(api, store_url, member["user"], org)

    people = as_member.get("/api/v1/org/members").json()  # members may read
    ids = {m["email"]: m["id"] for m in people["data"]}
    assert set(ids) == {owner["email"], member["email"]}
    assert all(isinstance(i, str) for i in ids.values())
    assert people["data"][0]["email"] == member["email"]  # newest first

    # A member may not change roles, remove members, rename, or manage keys.
    problem(
        as_member.patch(f"/api/v1/org/members/{ids[member['email']]}", json={"role": "owner"}),
        403,
    )
    problem(as_member.delete(f"/api/v1/org/members/{ids[owner['email']]}"), 403)
    problem(as_member.patch("/api/v1/org", json={"name": "mine now"}), 403)
    problem(as_member.get("/api/v1/api-keys"), 403)
    # An API key acts as an admin: keys yes, members and the organization's name no.
    as_key = api.as_key(owner["key"])
    problem(
        as_key.patch(f"/api/v1/org/members/{ids[member['email']]}", json={"role": "admin"}), 403
    )
    problem(as_key.patch("/api/v1/org", json={"name": "keyed"}), 403)

    # The last owner cannot be demoted, nor removed.
    problem(
        as_owner.patch(f"/api/v1/org/members/{ids[owner['email']]}", json={"role": "member"}),
        422,
    )
    problem(as_owner.delete(f"/api/v1/org/members/{ids[owner['email']]}"), 422)
    roles = {m["email"]: m["role"] for m in as_owner.get("/api/v1/org/members").json()["data"]}
    assert roles == {owner["email"]: "owner", member["email"]: "member"}

    promoted = as_owner.patch(f"/api/v1/org/members/{ids[member['email']]}", json={"role": "admin"})
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["role"] == "admin"
    assert as_member.get("/api/v1/api-keys").status_code == 200  # an admin now
    problem(
        as_owner.patch(f"/api/v1/org/members/{ids[member['email']]}", json={"role": "boss"}), 422
    )
    problem(as_owner.patch("/api/v1/org/members/nope", json={"role": "admin"}), 404)

    renamed = as_owner.patch("/api/v1/org", json={"name": "Acme Inc"})
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["name"] == "Acme Inc" and renamed.json()["role"] == "owner"
    problem(as_owner.patch("/api/v1/org", json={"name": ""}), 422)

    assert as_owner.delete(f"/api/v1/org/members/{ids[member['email']]}").status_code == 204
    problem(as_member.get("/api/v1/org"), 401)  # their session in it ended
    left = [m["email"] for m in as_owner.get("/api/v1/org/members").json()["data"]]
    assert left == [owner["email"]]


def test_orgs_lists_mine_and_post_makes_me_owner(api: ApiServer, store_url: str) -> None:
    acme = seed_org(store_url, org="acme")
    browser = signed_in(api, store_url, acme["user"], acme["org"])
    mine = browser.get("/api/v1/orgs").json()
    assert mine == {
        "data": [{"id": str(acme["org"]), "name": "acme", "role": "owner"}],
        "has_more": False,
        "next_cursor": None,
    }
    created = browser.post("/api/v1/orgs", json={"name": "Side Project"})
    assert created.status_code == 201, created.text
    assert created.json()["name"] == "Side Project" and created.json()["role"] == "owner"
    problem(browser.post("/api/v1/orgs", json={"name": "side project"}), 409)
    problem(browser.post("/api/v1/orgs", json={"name": "default"}), 409)
    problem(browser.post("/api/v1/orgs", json={"name": " "}), 422)

    first = browser.get("/api/v1/orgs", params={"limit": 1}).json()
    assert first["has_more"] is True and first["data"][0]["name"] == "Side Project"
    second = browser.get("/api/v1/orgs", params={"limit": 1, "cursor": first["next_cursor"]})
    assert [o["name"] for o in second.json()["data"]] == ["acme"]
    assert second.json()["has_more"] is False
    problem(browser.get("/api/v1/orgs", params={"limit": 0}), 422)
    problem(browser.get("/api/v1/orgs", params={"cursor": "garbage"}), 422)

    # An API key sees its own organization, and may not create one.
    as_key = api.as_key(acme["key"])
    assert as_key.get("/api/v1/orgs").json()["data"] == [
        {"id": str(acme["org"]), "name": "acme", "role": "admin"}
    ]
    problem(as_key.post("/api/v1/orgs", json={"name": "keyed"}), 403)
    detail = as_key.get("/api/v1/org").json()
    assert detail["id"] == str(acme["org"]) and detail["members"] == 1
    assert detail["api_keys"] == 1 and detail["created_at"].endswith("Z")


def test_another_organizations_keys_and_members_are_not_found(
    api: ApiServer, store_url: str
) -> None:
    acme = seed_org(store_url, org="acme")
    other = seed_org(store_url, org="other")
    acme_key = api.as_key(acme["key"])
    other_keys = api.as_key(other["key"]).get("/api/v1/api-keys").json()["data"]
    other_members = signed_in(api, store_url, other["user"], other["org"])
    member_id = other_members.get("/api/v1/org/members").json()["data"][0]["id"]
    acme_owner = signed_in(api, store_url, acme["user"], acme["org"])

    problem(acme_key.delete(f"/api/v1/api-keys/{other_keys[0]['id']}"), 404)
    problem(acme_owner.patch(f"/api/v1/org/members/{member_id}", json={"role": "admin"}), 404)
    problem(acme_owner.delete(f"/api/v1/org/members/{member_id}"), 404)
    assert api.as_key(other["key"]).get("/api/v1/org").status_code == 200  # still works
    assert [m["role"] for m in other_members.get("/api/v1/org/members").json()["data"]] == ["owner"]


def test_the_cli_and_the_api_see_the_same_keys_and_members(
    api: ApiServer, store_url: str, cli: Cli
) -> None:
    acme = seed_org(store_url, org="acme")
    as_key = api.as_key(acme["key"])

    made = cli("apikey", "create", "--org", "acme", "--name", "from the cli", "--json")
    assert made.code == 0, made.stderr
    cli_key = json.loads(made.stdout)
    listed = {k["id"]: k for k in as_key.get("/api/v1/api-keys").json()["data"]}
    assert listed[cli_key["id"]]["name"] == "from the cli"
    assert api.as_key(cli_key["key"]).get("/api/v1/org").status_code == 200

    api_key = as_key.post("/api/v1/api-keys", json={"name": "from the api"}).json()
    in_cli = json.loads(cli("apikey", "list", "--org", "acme", "--json").stdout)
    assert {k["id"]: k["name"] for k in in_cli}[api_key["id"]] == "from the api"

    assert cli("apikey", "revoke", api_key["id"]).code == 0
    problem(api.as_key(api_key["key"]).get("/api/v1/org"), 401)

    added = cli("user", "add", "bob@acme.test", "--org", "acme", "--role", "admin")
    assert added.code == 0, added.stderr
    members = as_key.get("/api/v1/org/members").json()["data"]
    assert {m["email"]: m["role"] for m in members}["bob@acme.test"] == "admin"
    shown = json.loads(cli("org", "show", "acme", "--json").stdout)
    assert shown["members"] == len(members) == 2


def test_a_user_in_no_organization_lists_none_and_creates_one(
    api: ApiServer, store_url: str
) -> None:
    from smtpy.accounts import users

    with Database(store_url) as db:
        user = users.create_user(db=db, email="loner@solo.test", password="correct horse battery")
        new = sessions.create(
            db=db, user_id=user.id, organization_id=None, mfa_passed=True, lifetime=3600
        )
    browser = api.browser()
    browser.cookies.set("smtpy_session", new.token)
    browser.headers["X-CSRF-Token"] = sessions.csrf_token(new.token)

    assert browser.get("/api/v1/orgs").json() == {
        "data": [],
        "has_more": False,
        "next_cursor": None,
    }
    problem(browser.get("/api/v1/org"), 403)
    created = browser.post("/api/v1/orgs", json={"name": "Solo"})
    assert created.status_code == 201, created.text
    # The session now acts in the organization it made.
    detail = browser.get("/api/v1/org").json()
    assert detail["name"] == "Solo" and detail["role"] == "owner"
