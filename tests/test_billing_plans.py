"""Plans in the configuration file, the limits the core enforces (CLI exit 2, API 402),
the operator's overrides, and `smtpy plan` / `smtpy org show`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apiserver import ApiServer, seed_org
from conftest import Cli
from smtpy.config import load
from smtpy.errors import ConfigError

PLANS_TOML = """
hostname = "mx.example.net"

[plans.free]
name = "Free"
default = true
limits = { domains = 1, aliases = 2, destinations = 2, messages_per_month = 1000 }

[plans.pro]
name = "Pro"
stripe_price = "smtpy_pro_monthly"
price = "9 EUR / month"
limits = { domains = 20, aliases = 2000, messages_per_month = 100000 }
"""


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "smtpy.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_plans_load_from_the_file_flat_or_next_to_an_smtpy_table(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path)}
    settings = load(_config(tmp_path, PLANS_TOML), environ=env).settings
    assert list(settings.plans) == ["free", "pro"]
    assert settings.plans["free"].default and settings.plans["free"].limits.domains == 1
    assert settings.plans["free"].limits.webhooks is None  # left out: no limit
    assert settings.plans["pro"].stripe_price == "smtpy_pro_monthly"
    assert settings.plans["pro"].price == "9 EUR / month"
    tabled = PLANS_TOML.replace(
        'hostname = "mx.example.net"', '[smtpy]\nhostname = "mx.example.net"'
    )
    assert list(load(_config(tmp_path, tabled), environ=env).settings.plans) == ["free", "pro"]
    from_env = load(None, environ={**env, "SMTPY_PLANS": '{"solo": {"name": "Solo"}}'}).settings
    assert list(from_env.plans) == ["solo"]
    assert load(None, environ=env).settings.plans == {}  # none: nothing is limited


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            PLANS_TOML.replace('name = "Pro"', 'name = "Pro"\ndefault = true'),
            "free and pro are both marked default = true",
        ),
        (PLANS_TOML.replace("domains = 20", "domain = 20"), "plans.pro.limits.domain"),
        (PLANS_TOML.replace("domains = 1,", "domains = -1,"), "plans.free.limits.domains"),
        (PLANS_TOML.replace("[plans.pro]", "[plans.Pro]"), "plan 'Pro'"),
        (
            PLANS_TOML.replace(
                'name = "Free"', 'name = "Free"\nstripe_price = "smtpy_pro_monthly"'
            ),
            "same stripe_price",
        ),
        (PLANS_TOML.replace('name = "Pro"', 'title = "Pro"'), "plans.pro"),
    ],
)
def test_a_wrong_plan_is_one_clear_error(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        load(_config(tmp_path, text), environ={"HOME": str(tmp_path)})
    assert str(error.value).startswith("setting plans")
    assert expected in str(error.value)


@pytest.fixture
def planned(cli_env: dict[str, str], tmp_path: Path) -> Cli:
    cli_env["SMTPY_CONFIG"] = str(
        _config(tmp_path, PLANS_TOML.replace('hostname = "mx.example.net"\n', ""))
    )
    return Cli(cli_env)


def test_cli_limits_refuse_with_exit_2_and_the_operator_raises_them(planned: Cli) -> None:
    assert planned("domain", "add", "one.test").code == 0
    refused = planned("domain", "add", "two.test")
    assert refused.code == 2
    assert (
        "limit of domains reached: the Free plan allows 1 and this organization has 1"
        in refused.stderr
    )
    assert "smtpy plan limits ORG --domains N" in refused.stderr
    assert planned("alias", "add", "a@one.test", "x@dest.test", "y@dest.test").code == 0
    too_many = planned("alias", "add", "b@one.test", "z@dest.test")
    assert too_many.code == 2 and "destination addresses" in too_many.stderr
    assert planned("alias", "add", "b@one.test", "x@dest.test").code == 0  # no new destination
    assert planned("alias", "add", "c@one.test", "x@dest.test").code == 2  # aliases: 2
    domains = json.loads(planned("domain", "list", "--json").stdout)
    assert [d["name"] for d in domains] == ["one.test"]  # nothing written by a refusal

    raised = planned("plan", "limits", "default", "--domains", "2", "--aliases", "unlimited")
    assert raised.code == 0, raised.stderr
    assert planned("domain", "add", "two.test").code == 0
    assert planned("alias", "add", "c@one.test", "x@dest.test").code == 0
    assert planned("domain", "add", "three.test").code == 2
    shown = json.loads(planned("plan", "limits", "default", "--json").stdout)
    assert shown["limits"]["domains"] == 2 and shown["limits"]["aliases"] is None
    assert shown["overrides"] == {"domains": 2, "aliases": None}
    back = planned("plan", "limits", "default", "--domains", "plan")
    assert back.code == 0
    assert json.loads(planned("plan", "limits", "default", "--json").stdout)["overrides"] == {
        "aliases": None
    }
    assert planned("plan", "limits", "default", "--domains", "lots").code == 2

    assert planned("plan", "set", "default", "pro").code == 0
    assert planned("domain", "add", "three.test").code == 0
    org = json.loads(planned("org", "show", "default", "--json").stdout)["billing"]
    assert org["plan"]["id"] == "pro" and org["source"] == "operator"
    assert org["usage"]["domains"] == 3 and org["usage"]["aliases"] == 3
    assert org["usage"]["destinations"] == 2
    assert org["limits"]["domains"] == 20 and org["subscription"] is None
    table = planned("org", "show", "default")
    assert "Pro (operator)" in table.stdout and "messages_per_month" in table.stdout
    assert planned("plan", "set", "default", "gold").code == 2
    assert planned("plan", "set", "default", "default").code == 0
    assert planned("domain", "add", "four.test").code == 2  # free again: 3 of 1


def test_plan_list(planned: Cli, cli_env: dict[str, str]) -> None:
    listed = json.loads(planned("plan", "list", "--json").stdout)
    assert [(p["id"], p["default"], p["price"]) for p in listed] == [
        ("free", True, None),
        ("pro", False, "9 EUR / month"),
    ]
    assert listed[0]["limits"]["domains"] == 1 and listed[0]["limits"]["webhooks"] is None
    table = planned("plan", "list").stdout
    assert "smtpy_pro_monthly" in table and "9 EUR / month" in table
    bare = {k: v for k, v in cli_env.items() if k != "SMTPY_CONFIG"}
    empty = Cli(bare)("plan", "list")
    assert empty.code == 0 and "nothing is limited" in empty.stdout + empty.stderr


def test_api_refuses_over_the_plan_with_a_402_problem(
    cli_env: dict[str, str], store_url: str, tmp_path: Path
) -> None:
    cli_env["SMTPY_PLANS"] = json.dumps(
        {"free": {"name": "Free", "default": True, "limits": {"domains": 1, "aliases": 1}}}
    )
    with ApiServer(cli_env) as api:
        owner = seed_org(store_url, org="acme")
        client = api.as_key(owner["key"])
        assert client.post("/api/v1/domains", json={"name": "one.test"}).status_code == 201
        refused = client.post("/api/v1/domains", json={"name": "two.test"})
        assert refused.status_code == 402
        assert refused.headers["content-type"].startswith("application/problem+json")
        body = refused.json()
        assert body["code"] == "plan_limit" and body["status"] == 402
        assert "Free plan allows 1" in body["detail"]
        alias = {"local_part": "a", "destinations": ["x@dest.test"]}
        assert client.post("/api/v1/domains/one.test/aliases", json=alias).status_code == 201
        second = client.post("/api/v1/domains/one.test/aliases", json={**alias, "local_part": "b"})
        assert second.status_code == 402 and "aliases" in second.json()["detail"]
        billing = client.get("/api/v1/billing").json()
        assert billing["usage"]["domains"] == 1 and billing["usage"]["aliases"] == 1
        assert billing["plan"] == {
            "id": "free",
            "name": "Free",
            "price": None,
            "limits": billing["plan"]["limits"],
            "default": True,
            "source": "default",
        }
        assert billing["subscription"] is None and billing["billing"] is False
        # Another organization has its own count.
        other = seed_org(store_url, org="other")
        assert (
            api.as_key(other["key"]).post("/api/v1/domains", json={"name": "o.test"}).status_code
            == 201
        )


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_creates_at_once_never_pass_the_limit_together(store_url: str, tmp_path: Path) -> None:
    """Six aliases created at the same moment on PostgreSQL (six connections, as six API
    requests): the plan allows two, so exactly two are made and four refused."""
    import threading

    from smtpy.admin.aliases import AliasCreate, add_alias
    from smtpy.admin.domains import DomainCreate, add_domain
    from smtpy.admin.organizations import resolve_organization
    from smtpy.billing.plans import Catalog
    from smtpy.errors import PlanLimit
    from smtpy.store.db import Database

    settings = load(_config(tmp_path, PLANS_TOML), environ={"HOME": str(tmp_path)}).settings
    catalog = Catalog.of(settings)
    with Database(store_url) as db:
        org = resolve_organization(db=db).id
        add_domain(db=db, org=org, domain=DomainCreate(name="example.test"), catalog=catalog)
    start = threading.Barrier(6)
    results: list[str] = []

    def create(n: int) -> None:
        with Database(store_url) as db:
            start.wait(timeout=30)
            try:
                add_alias(
                    db=db,
                    org=org,
                    alias=AliasCreate(address=f"a{n}@example.test", destinations=["x@dest.test"]),
                    catalog=catalog,
                )
                results.append("made")
            except PlanLimit:
                results.append("refused")

    threads = [threading.Thread(target=create, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(results) == ["made"] * 2 + ["refused"] * 4
    with Database(store_url) as db:
        assert db.scalar("SELECT count(*) FROM aliases") == 2
