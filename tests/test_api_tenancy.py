"""Tenancy: another organization's object answers 404, exactly like one that does not exist,
and nothing of it changes.

Generated from the OpenAPI document of the real `smtpy api`: every operation under
/api/v1 whose path holds a parameter is called with organization A's credentials on
organization B's object, and must answer a 404 problem with B's rows unchanged.
`TABLE` says where B's value for each path comes from; a path with a parameter that
the table does not know fails `test_every_path_with_a_parameter_is_in_the_table`:
add the new route there. The operations of API.md are listed in `OPERATIONS` so that
each has its own test; those not served yet are skipped, with the reason.
A path with two parameters names both values, joined by "+", in TABLE.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from apiserver import ApiServer
from apiworld import World, base_env, make_world, module_store
from conftest import BACKENDS
from dnsserver import DNSServer

# Path template -> (what of B's fills the parameter, A's credential: key or session).
# /me/... acts as a signed-in user (API keys get 403 there) and members are managed by
# owners (an API key acts as an admin), so A calls those with its owner's session.
TABLE: dict[str, tuple[str, str]] = {
    "/api/v1/domains/{name}": ("domain", "key"),
    "/api/v1/domains/{name}/records": ("domain", "key"),
    "/api/v1/domains/{name}/verify": ("domain", "key"),
    "/api/v1/domains/{name}/aliases": ("domain", "key"),
    "/api/v1/aliases/{alias_id}": ("alias_id", "key"),
    "/api/v1/messages/{message_id}": ("queue_id", "key"),
    "/api/v1/messages/{message_id}/retry": ("queue_id", "key"),
    "/api/v1/api-keys/{key_id}": ("key_id", "key"),
    "/api/v1/org/members/{member_id}": ("member_id", "session"),  # owners only
    "/api/v1/me/sessions/{session_id}": ("session_id", "session"),
    "/api/v1/webhooks/{webhook_id}": ("webhook_id", "key"),
    "/api/v1/webhooks/{webhook_id}/deliveries": ("webhook_id", "key"),
    "/api/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/retry": (
        "webhook_id+delivery_id",
        "key",
    ),
    "/api/v1/webhooks/{webhook_id}/rotate-secret": ("webhook_id", "key"),
    "/api/v1/webhooks/{webhook_id}/test": ("webhook_id", "key"),
    "/api/v1/destinations/{destination_id}": ("destination_id", "key"),
    "/api/v1/destinations/{destination_id}/resend": ("destination_id", "key"),
}

# The operations of API.md with a path parameter: one test each.
OPERATIONS: list[tuple[str, str]] = [
    ("GET", "/api/v1/domains/{name}"),
    ("DELETE", "/api/v1/domains/{name}"),
    ("GET", "/api/v1/domains/{name}/records"),
    ("POST", "/api/v1/domains/{name}/verify"),
    ("GET", "/api/v1/domains/{name}/aliases"),
    ("POST", "/api/v1/domains/{name}/aliases"),
    ("GET", "/api/v1/aliases/{alias_id}"),
    ("PATCH", "/api/v1/aliases/{alias_id}"),
    ("DELETE", "/api/v1/aliases/{alias_id}"),
    ("GET", "/api/v1/messages/{message_id}"),
    ("DELETE", "/api/v1/messages/{message_id}"),
    ("POST", "/api/v1/messages/{message_id}/retry"),
    ("DELETE", "/api/v1/api-keys/{key_id}"),
    ("PATCH", "/api/v1/org/members/{member_id}"),
    ("DELETE", "/api/v1/org/members/{member_id}"),
    ("DELETE", "/api/v1/me/sessions/{session_id}"),
    ("PATCH", "/api/v1/webhooks/{webhook_id}"),
    ("DELETE", "/api/v1/webhooks/{webhook_id}"),
    ("GET", "/api/v1/webhooks/{webhook_id}/deliveries"),
    ("POST", "/api/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/retry"),
    ("POST", "/api/v1/webhooks/{webhook_id}/rotate-secret"),
    ("POST", "/api/v1/webhooks/{webhook_id}/test"),
    ("DELETE", "/api/v1/destinations/{destination_id}"),
    ("POST", "/api/v1/destinations/{destination_id}/resend"),
]

# Valid bodies, so that the call reaches the lookup instead of failing validation.
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/api/v1/domains/{name}/aliases"): {
        "local_part": "sneaky",
        "destinations": ["thief@elsewhere.example"],
    },
    ("PATCH", "/api/v1/aliases/{alias_id}"): {
        "enabled": False,
        "destinations": ["thief@elsewhere.example"],
    },
    ("PATCH", "/api/v1/org/members/{member_id}"): {"role": "owner"},
    ("PATCH", "/api/v1/webhooks/{webhook_id}"): {"enabled": False},
}

# How B itself sees the value (so that A's 404 is not a wrong value): a GET of the path
# itself, or the list (path, credential) whose `data` holds an item with this `id`.
LISTED_IN: dict[str, tuple[str, str]] = {
    "/api/v1/api-keys/{key_id}": ("/api/v1/api-keys", "key"),
    "/api/v1/org/members/{member_id}": ("/api/v1/org/members", "key"),
    "/api/v1/me/sessions/{session_id}": ("/api/v1/me/sessions", "session"),
    "/api/v1/messages/{message_id}/retry": ("/api/v1/messages/{message_id}", "key"),
    "/api/v1/domains/{name}/verify": ("/api/v1/domains/{name}", "key"),
    "/api/v1/domains/{name}/aliases": ("/api/v1/domains/{name}", "key"),
    "/api/v1/webhooks/{webhook_id}": ("/api/v1/webhooks", "key"),
    "/api/v1/webhooks/{webhook_id}/deliveries": ("/api/v1/webhooks", "key"),
    "/api/v1/webhooks/{webhook_id}/rotate-secret": ("/api/v1/webhooks", "key"),
    "/api/v1/webhooks/{webhook_id}/test": ("/api/v1/webhooks", "key"),
    "/api/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/retry": (
        "/api/v1/webhooks/{webhook_id}/deliveries",
        "key",
    ),
    "/api/v1/destinations/{destination_id}/resend": (
        "/api/v1/destinations/{destination_id}",
        "key",
    ),
}

METHODS = ("get", "post", "put", "patch", "delete")


@pytest.fixture(scope="module", params=BACKENDS)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, dns_session: DNSServer
) -> Iterator[World]:
    """A and B on one real `smtpy api` (for the module: each test changes nothing of B's
    when the code is right)."""
    if request.param == "postgresql":
        request.getfixturevalue("postgres_template")  # skips without PostgreSQL
    tmp: Path = tmp_path_factory.mktemp(f"tenancy-{request.param}")
    with module_store(request.param, tmp) as store_url:
        world = make_world(store_url)
        with ApiServer(base_env(store_url, tmp, dns_session.nameserver)) as server:
            world.server = server
            answer = server.client.get("/api/v1/openapi.json")
            assert answer.status_code == 200
            world.document = answer.json()
            yield world


def operations(document: dict[str, Any]) -> list[tuple[str, str]]:
    """(METHOD, path) of every operation under /api/v1 whose path holds a parameter."""
    return [
        (method.upper(), path)
        for path, item in document.get("paths", {}).items()
        if path.startswith("/api/v1/") and "{" in path
        for method in METHODS
        if method in item
    ]


def client(world: World, who: dict[str, Any], credential: str) -> httpx.Client:
    assert world.server is not None
    if credential == "key":
        return world.server.as_key(who["key"])
    from smtpy.accounts.sessions import COOKIE, csrf_token

    browser = world.server.browser()
    browser.cookies.set(COOKIE, who["session_token"])
    browser.headers["X-CSRF-Token"] = csrf_token(who["session_token"])
    return browser


def fill(template: str, who: dict[str, Any], value_key: str) -> str:
    """The path of `template` with `who`'s values (value_key "a+b": one per parameter)."""
    values = iter(str(who[key]) for key in value_key.split("+"))
    return re.sub(r"\{[^}]+\}", lambda _: next(values), template)


def b_sees_it(world: World, template: str) -> None:
    """B reaches the value with its own credentials (the control of the 404 below)."""
    value_key, credential = TABLE[template]
    paths = world.document["paths"]
    if template in paths and "get" in paths[template]:
        answer = client(world, world.b, credential).get(fill(template, world.b, value_key))
        assert answer.status_code == 200, (template, answer.text)
        return
    listed = LISTED_IN.get(template)
    if listed is None or listed[0] not in paths:
        return  # nothing to look it up with yet
    list_path, list_credential = listed
    answer = client(world, world.b, list_credential).get(fill(list_path, world.b, value_key))
    assert answer.status_code == 200, (list_path, answer.text)
    body = answer.json()
    if "data" in body:  # the item is the path's last parameter
        value = str(world.b[value_key.split("+")[-1]])
        assert value in [str(item.get("id")) for item in body["data"]], (list_path, body)


def check_not_found(world: World, method: str, template: str) -> None:
    value_key, credential = TABLE[template]
    b_sees_it(world, template)
    before = world.snapshot_b()
    answer = client(world, world.a, credential).request(
        method, fill(template, world.b, value_key), json=BODIES.get((method, template))
    )
    assert answer.status_code == 404, (method, template, answer.status_code, answer.text)
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["code"] == "not_found"
    assert world.snapshot_b() == before, f"{method} {template} changed B's data"


@pytest.mark.parametrize(
    ("method", "template"), OPERATIONS, ids=[f"{m} {t}" for m, t in OPERATIONS]
)
def test_another_organizations_object_is_not_found(
    world: World, method: str, template: str
) -> None:
    item = world.document["paths"].get(template, {})
    if method.lower() not in item:
        pytest.skip(f"{method} {template} is not in the OpenAPI document yet")
    check_not_found(world, method, template)


def test_every_path_with_a_parameter_is_in_the_table(world: World) -> None:
    unknown = sorted({path for _, path in operations(world.document) if path not in TABLE})
    assert unknown == [], (
        f"add these paths to TABLE in {Path(__file__).name} (where B's value comes from): {unknown}"
    )


def test_operations_not_listed_are_checked_too(world: World) -> None:
    """Operations the document has beyond OPERATIONS (a new method on a known path)."""
    extra = [
        (method, path)
        for method, path in operations(world.document)
        if (method, path) not in OPERATIONS and path in TABLE
    ]
    for method, path in extra:
        check_not_found(world, method, path)


def test_the_values_are_real(world: World) -> None:
    """A's own objects are found with A's credentials: the 404s above are about tenancy."""
    paths = world.document["paths"]
    checked = 0
    for template, (value_key, credential) in TABLE.items():
        if template in paths and "get" in paths[template]:
            answer = client(world, world.a, credential).get(fill(template, world.a, value_key))
            assert answer.status_code == 200, (template, answer.text)
            checked += 1
    if checked == 0:
        pytest.skip("no GET route with a path parameter is served yet")
