"""Webhook endpoints through the shells: the real `smtpy webhook` CLI and the real
`smtpy api` process see the same endpoints, with the same rules (the core's)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from apiserver import ApiServer, seed_org
from conftest import Cli
from webhook_receiver import Reply, WebhookReceiver


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[WebhookReceiver]:
    with WebhookReceiver(tmp_path) as r:
        yield r


@pytest.fixture
def private_env(cli_env: dict[str, str], receiver: WebhookReceiver) -> dict[str, str]:
    return {
        **cli_env,
        "SMTPY_WEBHOOK_ALLOW_PRIVATE": "true",
        "SMTPY_TLS_CA_FILE": str(receiver.ca_file),
    }


def test_cli_and_api_see_the_same_webhooks(
    private_env: dict[str, str], store_url: str, receiver: WebhookReceiver
) -> None:
    cli = Cli(private_env)
    with ApiServer(private_env) as api:
        acme = seed_org(store_url, org="acme")
        other = seed_org(store_url, org="other")
        client = api.as_key(acme["key"])

        made = client.post(
            "/api/v1/webhooks", json={"url": receiver.url(), "events": ["message.bounced"]}
        )
        assert made.status_code == 201, made.text
        body = made.json()
        assert body["secret"].startswith("whsec_")
        assert body["events"] == ["message.bounced"] and body["enabled"] is True
        hook_id = body["id"]

        # The CLI sees it, in that organization, without its secret.
        listed = cli("webhook", "list", "--org", "acme", "--json")
        assert listed.code == 0, listed.stderr
        [row] = json.loads(listed.stdout)
        assert row["id"] == hook_id and row["url"] == receiver.url()
        assert "secret" not in row and body["secret"] not in listed.stdout

        # One the CLI adds is in the API's list, never with a secret.
        added = cli("webhook", "add", receiver.url("/two"), "--org", "acme", "-e", "*")
        assert added.code == 0, added.stderr
        assert added.stdout.strip().startswith("whsec_")
        page = client.get("/api/v1/webhooks").json()
        assert {h["url"] for h in page["data"]} == {receiver.url(), receiver.url("/two")}
        assert page["has_more"] is False and page["next_cursor"] is None
        assert all("secret" not in h for h in page["data"])
        two = next(h for h in page["data"] if h["url"] == receiver.url("/two"))
        assert len(two["events"]) == 9

        # A member reads them (as on the dashboard's pages) and changes none of them.
        seeded = seed_org(store_url, org="acme", role="member")
        member = api.browser()  # signed in: an API key acts as an admin
        signed_in = member.post(
            "/api/v1/auth/login", json={"email": seeded["email"], "password": seeded["password"]}
        )
        assert signed_in.status_code == 200, signed_in.text
        member.headers["X-CSRF-Token"] = signed_in.json()["csrf_token"]
        assert {h["id"] for h in member.get("/api/v1/webhooks").json()["data"]} == {
            hook_id,
            two["id"],
        }
        assert member.get(f"/api/v1/webhooks/{hook_id}").json()["url"] == receiver.url()
        assert member.get(f"/api/v1/webhooks/{hook_id}/deliveries").status_code == 200
        assert member.delete(f"/api/v1/webhooks/{hook_id}").status_code == 403
        assert member.post(f"/api/v1/webhooks/{hook_id}/rotate-secret").status_code == 403
        made_by_member = member.post(
            "/api/v1/webhooks", json={"url": receiver.url("/three"), "events": ["message.bounced"]}
        )
        assert made_by_member.status_code == 403

        # Another organization sees none of them; its id answers 404 there.
        assert api.as_key(other["key"]).get("/api/v1/webhooks").json()["data"] == []
        assert api.as_key(other["key"]).delete(f"/api/v1/webhooks/{hook_id}").status_code == 404

        # The same rules: an unknown event type, a plain-http URL without the setting.
        bad = client.post("/api/v1/webhooks", json={"url": receiver.url(), "events": ["nope"]})
        assert bad.status_code == 422 and "unknown event type" in bad.json()["detail"]
        refused = cli("webhook", "add", receiver.url(), "-e", "message.sent")
        assert refused.code == 2 and "unknown event type" in refused.stderr

        # Test: signed, answered, listed with its attempt (API), then by the CLI.
        receiver.secrets.append(body["secret"])
        tested = client.post(f"/api/v1/webhooks/{hook_id}/test")
        assert tested.status_code == 200, tested.text
        assert tested.json()["status"] == "delivered"
        assert tested.json()["tries"][0]["status_code"] == 200
        [hit] = receiver.received()
        assert hit.type == "webhook.test" and hit.verified_by == (0,)
        deliveries = cli("webhook", "deliveries", hook_id, "--json")
        assert deliveries.code == 0, deliveries.stderr
        [delivery] = json.loads(deliveries.stdout)
        assert delivery["id"] == int(tested.json()["id"]) and delivery["status"] == "delivered"

        # A failing test from the CLI exits 1 and says what the endpoint answered.
        receiver.script(Reply(500, body="down for maintenance"))
        failed = cli("webhook", "test", hook_id)
        assert failed.code == 1
        assert "HTTP 500" in failed.stdout and "down for maintenance" in failed.stdout

        # Retry through the API: due again, for `smtpy serve` to send.
        failed_id = json.loads(cli("webhook", "deliveries", hook_id, "--json").stdout)[0]["id"]
        retried = client.post(f"/api/v1/webhooks/{hook_id}/deliveries/{failed_id}/retry")
        assert retried.status_code == 200, retried.text
        assert retried.json()["status"] == "pending"
        assert client.post(f"/api/v1/webhooks/{hook_id}/deliveries/x/retry").status_code == 404

        # Rotation: a new secret once; the old one still signs during the overlap.
        rotated = client.post(f"/api/v1/webhooks/{hook_id}/rotate-secret").json()
        assert rotated["secret"] != body["secret"] and rotated["previous_secret_until"]
        receiver.secrets.append(rotated["secret"])
        again = client.post(f"/api/v1/webhooks/{hook_id}/test").json()
        assert again["status"] == "delivered"
        assert receiver.received()[-1].verified_by == (0, 1)

        # PATCH disables; the CLI enables again; DELETE removes it for both.
        patched = client.patch(f"/api/v1/webhooks/{hook_id}", json={"enabled": False}).json()
        assert patched["enabled"] is False and patched["disabled_reason"]
        assert cli("webhook", "enable", hook_id).code == 0
        assert client.get(f"/api/v1/webhooks/{hook_id}").json()["enabled"] is True
        assert client.delete(f"/api/v1/webhooks/{hook_id}").status_code == 204
        assert hook_id not in cli("webhook", "list", "--json").stdout
        gone = cli("webhook", "remove", hook_id, "--yes")
        assert gone.code == 2 and "no webhook" in gone.stderr
        assert api.client.get("/api/v1/webhooks").status_code == 401  # no credentials


def test_private_urls_are_refused_by_both_shells_without_the_setting(
    cli_env: dict[str, str], store_url: str, receiver: WebhookReceiver
) -> None:
    cli = Cli(cli_env)
    assert cli("db", "upgrade").code == 0
    for url in (receiver.url(), f"https://localhost:{receiver.port}/hook"):
        result = cli("webhook", "add", url)
        assert result.code == 2
        assert "SMTPY_WEBHOOK_ALLOW_PRIVATE" in result.stderr
    with ApiServer(cli_env) as api:
        acme = seed_org(store_url, org="acme")
        answer = api.as_key(acme["key"]).post(
            "/api/v1/webhooks",
            json={"url": f"https://localhost:{receiver.port}/hook", "events": ["*"]},
        )
        assert answer.status_code == 422
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert "loopback" in answer.json()["detail"]
    assert json.loads(cli("webhook", "list", "--json").stdout) == []


def test_the_cli_changes_an_endpoints_url_and_events_and_keeps_its_secret(
    private_env: dict[str, str], receiver: WebhookReceiver
) -> None:
    cli = Cli(private_env)
    assert cli("db", "upgrade").code == 0
    added = cli("webhook", "add", receiver.url(), "-e", "message.bounced", "--json")
    assert added.code == 0, added.stderr
    hook = json.loads(added.stdout)

    def stored() -> tuple[str, list[str]]:
        [row] = json.loads(cli("webhook", "list", "--json").stdout)
        return row["url"], row["events"]

    asked_nothing = cli("webhook", "update", hook["id"])
    assert asked_nothing.code == 2 and "--url" in asked_nothing.stderr
    # A refused event type changes nothing, not even the URL given with it.
    bad = cli("webhook", "update", hook["id"], "--url", receiver.url("/new"), "-e", "message.sent")
    assert bad.code == 2 and "unknown event type" in bad.stderr
    refused = cli("webhook", "update", hook["id"], "--url", "ftp://example.net/hook")
    assert refused.code == 2 and "https://" in refused.stderr
    assert stored() == (receiver.url(), ["message.bounced"])

    changed = cli(
        "webhook", "update", hook["id"], "--url", receiver.url("/new"),
        "-e", "message.bounced", "-e", "message.forwarded", "--json",
    )  # fmt: skip
    assert changed.code == 0, changed.stderr
    body = json.loads(changed.stdout)
    assert (body["url"], body["events"]) == (
        receiver.url("/new"),
        ["message.forwarded", "message.bounced"],
    )
    assert "secret" not in body and hook["secret"] not in changed.stdout
    assert stored() == (receiver.url("/new"), ["message.forwarded", "message.bounced"])

    # The secret stays: a test event goes to the new URL, signed as before.
    receiver.secrets.append(hook["secret"])
    tested = cli("webhook", "test", hook["id"])
    assert tested.code == 0, tested.stdout + tested.stderr
    [hit] = receiver.received()
    assert hit.path == "/new" and hit.verified_by == (0,)

    every = cli("webhook", "update", hook["id"], "-e", "*")  # the URL stays
    assert every.code == 0 and "message.received" in every.stdout
    url, events = stored()
    assert url == receiver.url("/new") and len(events) == 9
