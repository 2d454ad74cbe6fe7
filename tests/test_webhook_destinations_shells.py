"""URL destinations in the other shells: the real `smtpy api` (POST and PATCH aliases, the
secret shown once, a refused URL named by field) and `smtpy route explain` (a webhook
line instead of an MX lookup). SQLite and PostgreSQL."""

from __future__ import annotations

import json

from apiserver import ApiServer, seed_org
from conftest import Cli
from resourceworld import API, problem, served_domain
from smtpy.store.db import Database

HOOK = "https://127.0.0.1:9/hook"  # never posted to here


def test_api_aliases_take_urls_and_show_each_new_secret_once(
    cli_env: dict[str, str], store_url: str
) -> None:
    acme = seed_org(store_url, org="acme", role="owner")
    served_domain(store_url, acme["org"], "acme.test")
    with ApiServer(cli_env, SMTPY_WEBHOOK_ALLOW_PRIVATE="true") as api:
        admin = api.as_key(acme["key"])
        made = admin.post(
            f"{API}/domains/acme.test/aliases",
            json={"local_part": "orders", "destinations": ["box@mailbox.test", HOOK]},
        )
        assert made.status_code == 201, made.text
        body = made.json()
        assert body["destinations"] == ["box@mailbox.test", HOOK]
        secret = body["secrets"][HOOK]
        assert secret.startswith("whsec_")
        shown = admin.get(f"{API}/aliases/{body['id']}").json()
        assert "secrets" not in shown and secret not in json.dumps(shown)

        again = admin.post(
            f"{API}/domains/acme.test/aliases",
            json={"local_part": "sales", "destinations": [HOOK]},
        )
        assert again.status_code == 201 and "secrets" not in again.json()

        other = "https://127.0.0.1:9/other"
        patched = admin.patch(f"{API}/aliases/{body['id']}", json={"destinations": [other]})
        assert patched.status_code == 200, patched.text
        assert list(patched.json()["secrets"]) == [other]

        refused = admin.post(
            f"{API}/domains/acme.test/aliases",
            json={"local_part": "bad", "destinations": ["a@b.test", "https://u:p@127.0.0.1/x"]},
        )
        error = problem(refused, 422)
        assert error["errors"][0]["field"].endswith("destinations.1"), error
        assert "user name or password" in error["detail"]
    with Database(store_url) as db:
        rows = db.all("SELECT address_key, secret FROM destinations WHERE kind = 'url' ORDER BY id")
    assert [(r["address_key"], r["secret"] == secret) for r in rows] == [
        (HOOK, True),
        (other, False),
    ]


def test_route_explain_shows_the_webhook_instead_of_an_mx_lookup(
    cli: Cli, cli_env: dict[str, str]
) -> None:
    cli_env["SMTPY_WEBHOOK_ALLOW_PRIVATE"] = "true"
    assert cli("domain", "add", "example.test").code == 0
    assert cli("alias", "add", "orders@example.test", HOOK).code == 0

    shown = cli("route", "explain", "orders@example.test")
    assert shown.code == 0, shown.stderr
    assert f"webhook {HOOK}" in " ".join(shown.stdout.split())
    assert "MX host" not in shown.stdout

    data = json.loads(cli("route", "explain", "orders@example.test", "--json").stdout)
    assert data["destinations"] == [HOOK] and data["routes"] == []
    assert data["webhooks"][0].startswith(f"webhook {HOOK} ")

    cli_env.pop("SMTPY_WEBHOOK_ALLOW_PRIVATE")  # the daemon would refuse it now
    data = json.loads(cli("route", "explain", "orders@example.test", "--json").stdout)
    assert "refused, the delivery fails" in data["webhooks"][0]
