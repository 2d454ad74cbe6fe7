"""/api/v1/destinations against the real `smtpy api` process, on SQLite and PostgreSQL:
a mail address is added pending and mailed a confirmation link (queued in smtpy's own
queue), an https URL is confirmed at once with its secret shown once (never in an
idempotent replay), keyset pages, roles, another organization's id answers 404,
resending is throttled, a destination an alias names cannot be removed, the plan's
`destinations` limit, and an alias made through the API shows its pending destination."""

from __future__ import annotations

import re
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from apiserver import ApiServer, seed_org
from conftest import Cli

pytestmark = [pytest.mark.timeout(300)]

PLANS = """
[plans.free]
name = "Free"
default = true
limits = { destinations = 3 }
"""


def mailed_to(store_url: str, to: str) -> list[EmailMessage]:
    """The messages smtpy queued for `to`, oldest first."""
    from smtpy.store.db import Database

    with Database(store_url) as db:
        rows = db.all(
            "SELECT m.data FROM messages m JOIN deliveries d ON d.message_id = m.id"
            " WHERE d.recipient = :to ORDER BY m.id",
            {"to": to},
        )
    found = []
    for row in rows:
        message = message_from_bytes(bytes(row["data"]), policy=policy.default)
        assert isinstance(message, EmailMessage)
        found.append(message)
    return found


def test_destinations_api(cli: Cli, cli_env: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "smtpy.toml"
    config.write_text(PLANS, encoding="utf-8")
    cli_env["SMTPY_CONFIG"] = str(config)
    url = cli_env["SMTPY_DATABASE_URL"]
    assert cli("domain", "add", "example.test").code == 0
    acme = seed_org(url, org="default", email="admin@acme.test", role="admin")
    member = seed_org(url, org="default", email="member@acme.test", role="member")
    other = seed_org(url, org="other", email="owner@other.test")
    with ApiServer(cli_env, SMTPY_WEBHOOK_ALLOW_PRIVATE="true") as api:
        admin = api.as_key(acme["key"])

        # A mail address: pending, and mailed a link to the confirmation page.
        made = admin.post("/api/v1/destinations", json={"address": "Bob@Dest1.test"})
        assert made.status_code == 201, made.text
        bob = made.json()
        assert bob["kind"] == "address" and bob["address"] == "Bob@dest1.test"
        assert bob["status"] == "pending confirmation" and bob["confirmed_at"] is None
        assert bob["confirmation_sent_at"] and bob["secret"] is None
        [mail] = mailed_to(url, "Bob@dest1.test")
        assert mail["Subject"] == "Confirm that mail may be forwarded to you"
        assert re.search(
            re.escape(api.base_url) + r"/destinations/confirm\?token=[A-Za-z0-9_-]{40,}",
            mail.get_content(),
        )
        again = admin.post("/api/v1/destinations", json={"address": "bob@dest1.test"})
        assert again.status_code == 409, again.text
        assert admin.post("/api/v1/destinations", json={}).status_code == 422
        both = {"address": "x@dest1.test", "url": "https://127.0.0.1/x"}
        assert admin.post("/api/v1/destinations", json=both).status_code == 422

        # Resending at once is throttled, with Retry-After.
        resent = admin.post(f"/api/v1/destinations/{bob['id']}/resend")
        assert resent.status_code == 429, resent.text
        assert 1 <= int(resent.headers["Retry-After"]) <= 61
        assert len(mailed_to(url, "Bob@dest1.test")) == 1

        # A URL: confirmed at once; its secret in this answer, null in a replay.
        headers = {"Idempotency-Key": "dest-url-1"}
        hook = admin.post(
            "/api/v1/destinations", json={"url": "https://127.0.0.1:9/in"}, headers=headers
        )
        assert hook.status_code == 201, hook.text
        assert hook.json()["status"] == "confirmed" and hook.json()["kind"] == "url"
        assert hook.json()["secret"].startswith("whsec_")
        replay = admin.post(
            "/api/v1/destinations", json={"url": "https://127.0.0.1:9/in"}, headers=headers
        )
        assert replay.status_code == 201 and replay.headers["Idempotent-Replayed"] == "true"
        assert replay.json()["id"] == hook.json()["id"] and replay.json()["secret"] is None
        assert admin.post("/api/v1/destinations", json={"url": "ftp://x.test/"}).status_code == 422

        # Keyset pages, newest first; never a secret in a list. Members read.
        first = admin.get("/api/v1/destinations", params={"limit": 1})
        assert first.status_code == 200, first.text
        assert [d["id"] for d in first.json()["data"]] == [hook.json()["id"]]
        assert first.json()["has_more"] is True
        second = admin.get(
            "/api/v1/destinations", params={"limit": 1, "cursor": first.json()["next_cursor"]}
        )
        assert [d["id"] for d in second.json()["data"]] == [bob["id"]]
        assert second.json()["has_more"] is False
        assert all("secret" not in d for d in first.json()["data"] + second.json()["data"])
        reader = api.browser()  # a member, signed in (an API key acts as an admin)
        signed = reader.post(
            "/api/v1/auth/login", json={"email": member["email"], "password": member["password"]}
        )
        assert signed.status_code == 200, signed.text
        csrf = {"X-CSRF-Token": signed.json()["csrf_token"]}
        assert reader.get("/api/v1/destinations").status_code == 200
        assert reader.get(f"/api/v1/destinations/{bob['id']}").json()["address"] == bob["address"]
        refused = reader.post(
            "/api/v1/destinations", json={"address": "m@dest1.test"}, headers=csrf
        )
        assert refused.status_code == 403, refused.text
        assert reader.delete(f"/api/v1/destinations/{bob['id']}", headers=csrf).status_code == 403

        # Another organization's destination is not found, exactly as a missing one.
        stranger = api.as_key(other["key"])
        assert stranger.get("/api/v1/destinations").json()["data"] == []
        for answer in (
            stranger.get(f"/api/v1/destinations/{bob['id']}"),
            stranger.delete(f"/api/v1/destinations/{bob['id']}"),
            stranger.post(f"/api/v1/destinations/{bob['id']}/resend"),
            admin.get("/api/v1/destinations/999999"),
            admin.get("/api/v1/destinations/nope"),
        ):
            assert answer.status_code == 404, answer.text
            assert answer.headers["content-type"].startswith("application/problem+json")

        # An alias made through the API with a new address: pending, mailed, shown so.
        alias = admin.post(
            "/api/v1/domains/example.test/aliases",
            json={"local_part": "team", "destinations": ["carol@dest2.test", "bob@dest1.test"]},
        )
        assert alias.status_code == 201, alias.text
        assert alias.json()["pending_destinations"] == ["carol@dest2.test", "bob@dest1.test"]
        assert len(mailed_to(url, "carol@dest2.test")) == 1
        assert len(mailed_to(url, "Bob@dest1.test")) == 1  # it had its row and its mail already
        listed = cli("alias", "list")
        assert "carol@dest2.test (pending confirmation)" in listed.stdout

        # The plan allows 3 destinations: bob, the URL, carol.
        limited = admin.post("/api/v1/destinations", json={"address": "dave@dest1.test"})
        assert limited.status_code == 402, limited.text

        # A destination an alias names cannot be removed (it would then count as the
        # operator's own); once the alias is gone it can.
        carol = next(
            d for d in admin.get("/api/v1/destinations").json()["data"] if "carol" in d["address"]
        )
        blocked = admin.delete(f"/api/v1/destinations/{carol['id']}")
        assert blocked.status_code == 409 and "team@example.test" in blocked.json()["detail"]
        assert admin.delete(f"/api/v1/aliases/{alias.json()['id']}").status_code == 204
        assert admin.delete(f"/api/v1/destinations/{carol['id']}").status_code == 204
        assert admin.get(f"/api/v1/destinations/{carol['id']}").status_code == 404
        assert admin.delete(f"/api/v1/destinations/{hook.json()['id']}").status_code == 204

    # Without SMTPY_WEBHOOK_ALLOW_PRIVATE a URL on a loopback address is refused.
    with ApiServer(cli_env) as api:
        answer = api.as_key(acme["key"]).post(
            "/api/v1/destinations", json={"url": "https://127.0.0.1:9/in"}
        )
        assert answer.status_code == 422, answer.text
        assert "SMTPY_WEBHOOK_ALLOW_PRIVATE" in answer.json()["detail"]
