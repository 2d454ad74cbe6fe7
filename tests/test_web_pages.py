"""The dashboard's mail pages against the real `smtpy api` (SQLite and PostgreSQL):

- every form works without JavaScript (POST, 303, the page shows the success message)
  and shows an error next to the field it concerns;
- a member does not see what their role may not do, and the dashboard and the API refuse
  it anyway (403);
- an axe-core scan of every page, light and dark, finds no serious or critical violation.
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, expect

from apiserver import ApiServer, seed_org
from browser import (  # noqa: F401
    Dashboard,
    assert_accessible,
    assert_fits,
    browser,
    csp_violations,
    dashboard,
    new_page,
    sign_in,
)

DOMAIN = "example.test"
QUEUE_ID = "4F2A9C1B7D"


def session(api: ApiServer, user: dict[str, Any]) -> tuple[httpx.Client, str]:
    """A browser-like client signed in as `user`, and its CSRF token."""
    client = api.browser()
    answer = client.post(
        "/api/v1/auth/login", json={"email": user["email"], "password": user["password"]}
    )
    assert answer.status_code == 200, answer.text
    return client, str(answer.json()["csrf_token"])


def flash(page: httpx.Response) -> str | None:
    found = re.search(r'class="flash[^"]*"[^>]*>([^<]*)<', page.text)
    return found.group(1) if found else None


def field_error(page: httpx.Response, field: str) -> str | None:
    """The error shown under `field`, if the field is marked invalid and tied to it."""
    marked = re.search(rf'id="f-{field}"[^>]*aria-invalid="true"', page.text, re.S)
    found = re.search(rf'id="f-{field}-error">([^<]*)<', page.text)
    return found.group(1) if marked and found else None


def add_domain(store_url: str, org: int, name: str = DOMAIN) -> None:
    """A served domain, as `smtpy domain add` makes it (not pending)."""
    from smtpy.admin import domains
    from smtpy.store.db import Database

    with Database(store_url) as db:
        domains.add_domain(db=db, org=org, domain=domains.DomainCreate(name=name))


def log_message(store_url: str) -> None:
    """A message received for team@ and delivered, as the daemon logs it."""
    from smtpy.queue.message_log import LogEvent, write_events
    from smtpy.store.db import Database

    now = time.time()
    common = {"queue_id": QUEUE_ID, "sender": "alice@sender.test", "domain": DOMAIN}
    with Database(store_url) as db:
        write_events(
            db,
            [
                LogEvent(
                    at=now - 2,
                    event="received",
                    client_ip="127.0.0.1",
                    alias=f"team@{DOMAIN}",
                    recipient="bob@dest1.test",
                    size=1234,
                    **common,
                ),
                LogEvent(
                    at=now - 1,
                    event="delivered",
                    alias=f"team@{DOMAIN}",
                    recipient="bob@dest1.test",
                    code=250,
                    reply="250 2.0.0 Ok: queued",
                    remote_host="mx.dest1.test",
                    delay=1.0,
                    **common,
                ),
            ],
        )


def queue_message(store_url: str, queue_id: str) -> None:
    """A message waiting in the queue, as `smtpy serve` stores it at DATA."""
    from smtpy.queue.queries import NewDelivery, NewMessage, enqueue
    from smtpy.store.db import Database

    data = (
        b"Authentication-Results: mx.forwarder.test; spf=pass smtp.mailfrom=sender.test\r\n"
        b"Subject: Still waiting\r\nFrom: alice@sender.test\r\n\r\nHello.\r\n"
    )
    with Database(store_url) as db, db.transaction():
        enqueue(
            db,
            NewMessage(
                queue_id=queue_id,
                sender="alice@sender.test",
                data=data,
                deliveries=[
                    NewDelivery(
                        f"team@{DOMAIN}", "bob@dest1.test", "dest1.test", "alice@sender.test"
                    )
                ],
                client_ip="127.0.0.1",
                auth_results="mx.forwarder.test; spf=pass smtp.mailfrom=sender.test",
            ),
        )


@pytest.fixture
def world(dashboard: Dashboard) -> dict[str, Any]:  # noqa: F811
    """The real `smtpy api` with an owner and a member of one organization."""
    member = seed_org(dashboard.store_url, org="acme", role="member")
    return {
        "api": dashboard.api,
        "owner": dashboard.user,
        "member": member,
        "store_url": dashboard.store_url,
    }


def test_forms_work_without_javascript_and_errors_show_at_their_field(
    world: dict[str, Any],
) -> None:
    client, csrf = session(world["api"], world["owner"])

    refused = client.post("/domains", data={"name": "bad..name", "csrf_token": csrf})
    assert refused.status_code == 422
    assert "not a valid domain name" in (field_error(refused, "name") or "")
    assert 'value="bad..name"' in refused.text  # what was typed stays

    added = client.post("/domains", data={"name": DOMAIN, "csrf_token": csrf})
    assert added.status_code == 303 and added.headers["location"] == f"/domains/{DOMAIN}"
    page = client.get(added.headers["location"])
    assert f"{DOMAIN} was added" in (flash(page) or "")
    assert "pending verification" in page.text
    assert "smtpy-verification=" in page.text and "_smtpy." + DOMAIN in page.text
    status = client.get(f"/domains/{DOMAIN}/status")  # without JavaScript: a page
    assert "<h1>" in status.text and 'data-record-status="ownership">missing<' in status.text
    zone = client.get(f"/domains/{DOMAIN}/zone")
    assert zone.status_code == 200 and f"_smtpy.{DOMAIN}.\t3600\tIN\tTXT" in zone.text

    wrong = client.post(
        f"/domains/{DOMAIN}/aliases",
        data={"local_part": "team", "destinations": "bob@dest1.test\nnobody", "csrf_token": csrf},
    )
    assert wrong.status_code == 422
    assert "nobody" in (field_error(wrong, "destinations") or "")
    empty = client.post(
        f"/domains/{DOMAIN}/aliases",
        data={"local_part": "", "destinations": "bob@dest1.test", "csrf_token": csrf},
    )
    assert empty.status_code == 422 and field_error(empty, "local_part")

    for local, destinations in (
        ("team", "bob@dest1.test, carol@dest2.test"),
        ("*", "all@dest1.test"),
    ):
        made = client.post(
            f"/domains/{DOMAIN}/aliases",
            data={"local_part": local, "destinations": destinations, "csrf_token": csrf},
        )
        assert made.status_code == 303, made.text
    page = client.get(f"/domains/{DOMAIN}")
    assert f"Alias *@{DOMAIN} was added" in (flash(page) or "")
    assert "catch-all" in page.text and "bob@dest1.test, carol@dest2.test" in page.text

    found = client.get(f"/domains/{DOMAIN}", params={"q": "carol"})
    assert f"team@{DOMAIN}" in found.text and "all@dest1.test" not in found.text

    [team_id] = re.findall(rf'/aliases/(\d+)/edit" aria-label="Edit team@{DOMAIN}"', page.text)

    def edit(fallbacks: str) -> httpx.Response:
        form = {"destinations": "dave@dest1.test", "fallbacks": fallbacks, "enabled": "on"}
        return client.post(f"/aliases/{team_id}/edit", data={**form, "csrf_token": csrf})

    # A fallback that is also a destination is refused at its field, and nothing changes.
    same = edit("erin@dest2.test\ndave@dest1.test")
    assert same.status_code == 422
    assert "dave@dest1.test" in (field_error(same, "fallbacks") or "")
    assert client.get(f"/api/v1/aliases/{team_id}").json()["destinations"] == [
        "bob@dest1.test",
        "carol@dest2.test",
    ]
    edited = edit("erin@dest2.test, frank@dest3.test")
    assert edited.status_code == 303
    page = client.get(f"/domains/{DOMAIN}")
    assert "fallback: erin@dest2.test, then frank@dest3.test" in page.text
    form = client.get(f"/aliases/{team_id}/edit").text  # the form shows them, in order
    assert re.search(r'id="f-fallbacks"[^>]*>erin@dest2.test\nfrank@dest3.test<', form)
    disabled = client.post(f"/aliases/{team_id}/disable", data={"csrf_token": csrf})
    assert disabled.status_code == 303
    page = client.get(disabled.headers["location"].split("#")[0])
    assert f"Alias team@{DOMAIN} is disabled" in (flash(page) or "")
    api_view = client.get(f"/api/v1/aliases/{team_id}").json()
    assert api_view["destinations"] == ["dave@dest1.test"] and api_view["enabled"] is False
    assert api_view["fallbacks"] == ["erin@dest2.test", "frank@dest3.test"]

    gone = client.post(f"/aliases/{team_id}/delete", data={"csrf_token": csrf})
    assert gone.status_code == 303
    assert client.get(f"/aliases/{team_id}/edit").status_code == 404

    # A change without the CSRF token is refused, as in the API.
    assert client.post(f"/domains/{DOMAIN}/delete", data={}).status_code == 403
    assert client.get(f"/domains/{DOMAIN}").status_code == 200


def test_an_alias_gets_its_fallbacks_in_the_browser(
    browser: Browser,  # noqa: F811
    dashboard: Dashboard,  # noqa: F811
) -> None:
    add_domain(dashboard.store_url, dashboard.user["org"])
    page = new_page(browser)
    sign_in(page, dashboard, dashboard.user["email"], dashboard.user["password"])
    expect(page).to_have_url(dashboard.url("/"))
    page.goto(dashboard.url(f"/domains/{DOMAIN}"))
    page.get_by_label("Address before @").fill("team")
    page.get_by_label("Destinations").fill("bob@dest1.test")
    page.get_by_role("button", name="Add alias").click()
    page.get_by_role("link", name=f"Edit team@{DOMAIN}").click()

    fallbacks = page.get_by_label("Fallbacks")
    fallbacks.fill("bob@dest1.test")  # a destination cannot be its own fallback
    page.get_by_role("button", name="Save alias").click()
    expect(fallbacks).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#f-fallbacks-error")).to_contain_text("bob@dest1.test")
    assert_accessible(page)

    fallbacks.fill("erin@dest2.test\nfrank@dest3.test")
    page.get_by_role("button", name="Save alias").click()
    expect(page.locator(".flash")).to_have_text(f"Alias team@{DOMAIN} was saved.")
    expect(page.locator("#aliases")).to_contain_text(
        "fallback: erin@dest2.test, then frank@dest3.test"
    )
    page.get_by_role("link", name=f"Edit team@{DOMAIN}").click()
    expect(page.get_by_label("Fallbacks")).to_have_value("erin@dest2.test\nfrank@dest3.test")
    page.get_by_label("Fallbacks").fill("")  # an empty box removes them
    page.get_by_role("button", name="Save alias").click()
    expect(page.locator(".flash")).to_have_text(f"Alias team@{DOMAIN} was saved.")
    expect(page.locator("#aliases")).not_to_contain_text("fallback:")
    page.context.close()
    assert csp_violations(page) == []


def test_messages_and_statistics_pages_read_the_log(world: dict[str, Any]) -> None:
    add_domain(world["store_url"], world["owner"]["org"])
    log_message(world["store_url"])
    client, _ = session(world["api"], world["owner"])

    listing = client.get("/messages", params={"status": "delivered", "domain": DOMAIN})
    assert listing.status_code == 200
    assert listing.text.count(f'href="/messages/{QUEUE_ID}"') == 1
    assert "/events/messages?view=table" in listing.text  # new rows come live
    none = client.get("/messages", params={"q": "nobody-sent-this"})
    assert f"/messages/{QUEUE_ID}" not in none.text
    bad = client.get("/messages", params={"since": "yesterday"})
    assert bad.status_code == 422 and "YYYY-MM-DD" in (field_error(bad, "since") or "")

    detail = client.get(f"/messages/{QUEUE_ID}")
    assert detail.status_code == 200
    assert 'id="message-status">delivered<' in detail.text
    assert "250 2.0.0 Ok: queued" in detail.text and "mx.dest1.test" in detail.text
    assert client.get("/messages/NOSUCHID").status_code == 404

    stats = client.get("/stats")
    assert 'data-total="received">1<' in stats.text and 'data-total="forwarded">1<' in stats.text
    assert DOMAIN in stats.text
    backwards = client.get("/stats", params={"since": "2026-12-03", "until": "2026-12-01"})
    assert backwards.status_code == 422
    assert "until must be later than since" in backwards.text.lower()
    typo = client.get("/stats", params={"since": "3 Dec"})
    assert typo.status_code == 422 and "YYYY-MM-DD" in (field_error(typo, "since") or "")
    hourly = client.get("/stats", params={"interval": "hour"})
    assert hourly.status_code == 200 and "Messages per hour" in hourly.text
    rows = list(csv.reader(io.StringIO(client.get("/stats/export?format=csv").text)))
    assert rows[0][:3] == ["t", "received", "forwarded"]
    assert sum(int(r[1]) for r in rows[1:]) == 1
    exported = json.loads(client.get("/stats/export", params={"format": "json"}).text)
    assert exported["totals"]["forwarded"] == 1 and exported["series"][-1]["t"].endswith("Z")

    overview = client.get("/")
    assert 'data-figure="forwarded">1<' in overview.text
    assert f"/messages/{QUEUE_ID}" in overview.text


def test_queued_mail_shows_its_content_and_can_be_retried_or_deleted(
    world: dict[str, Any],
) -> None:
    add_domain(world["store_url"], world["owner"]["org"])
    queue_message(world["store_url"], "7QUEUED000000001")
    member, _ = session(world["api"], world["member"])
    assert "Retry now" not in member.get("/messages/7QUEUED000000001").text
    client, csrf = session(world["api"], world["owner"])
    assert 'data-figure="queued">1<' in client.get("/").text

    page = client.get("/messages/7queued000000001")  # ids in any case
    assert page.status_code == 200
    assert "Subject: Still waiting" in page.text
    assert "spf=pass smtp.mailfrom=sender.test" in page.text
    assert "Retry now" in page.text and "Delete without bounce" in page.text

    retried = client.post("/messages/7QUEUED000000001/retry", data={"csrf_token": csrf})
    assert retried.status_code == 303
    assert "tried again" in (flash(client.get(retried.headers["location"])) or "")

    deleted = client.post("/messages/7QUEUED000000001/delete", data={"csrf_token": csrf})
    assert deleted.status_code == 303 and deleted.headers["location"] == "/messages"
    assert "deleted without a bounce" in (flash(client.get("/messages")) or "")
    after = client.get("/messages/7QUEUED000000001")
    assert 'id="message-status">discarded<' in after.text and "Retry now" not in after.text
    assert 'data-figure="queued">0<' in client.get("/").text


def test_a_member_sees_no_delete_button_and_is_refused_anyway(world: dict[str, Any]) -> None:
    add_domain(world["store_url"], world["owner"]["org"])
    owner, owner_csrf = session(world["api"], world["owner"])
    assert 'id="delete-domain"' in owner.get(f"/domains/{DOMAIN}").text

    member, csrf = session(world["api"], world["member"])
    page = member.get(f"/domains/{DOMAIN}")
    assert page.status_code == 200
    assert 'id="delete-domain"' not in page.text and "Delete example.test" not in page.text
    assert "Rotate DKIM key" not in page.text and "Verify now" not in page.text
    assert 'id="add-domain"' not in member.get("/domains").text
    assert 'id="add-alias"' in page.text  # a member manages the aliases of verified domains

    refused = member.post(f"/domains/{DOMAIN}/delete", data={"csrf_token": csrf})
    assert refused.status_code == 403
    api_refused = member.delete(f"/api/v1/domains/{DOMAIN}", headers={"X-CSRF-Token": csrf})
    assert api_refused.status_code == 403
    assert owner.get(f"/api/v1/domains/{DOMAIN}").status_code == 200  # still there

    # A domain waiting for verification: its aliases are the admins' until then.
    assert (
        owner.post("/domains", data={"name": "new.test", "csrf_token": owner_csrf}).status_code
        == 303
    )
    refused = member.post(
        "/domains/new.test/aliases",
        data={"local_part": "team", "destinations": "bob@dest1.test", "csrf_token": csrf},
    )
    assert refused.status_code == 403
    assert "once the domain is verified" in refused.text and 'role="alert"' in refused.text


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_page_that_does_not_exist_is_a_page_and_the_api_keeps_its_problem(
    browser: Browser,  # noqa: F811
    world: dict[str, Any],
) -> None:
    api: ApiServer = world["api"]
    page = new_page(browser)
    answer = page.goto(api.base_url + "/no/such/page")
    assert answer is not None and answer.status == 404
    assert page.locator("h1").inner_text() == "Not found"
    assert "There is no page at /no/such/page" in page.locator('[role="alert"]').inner_text()
    assert_accessible(page)
    page.context.close()

    with httpx.Client(base_url=api.base_url) as client:  # a script asking the API
        missing = client.get("/api/v1/no/such/path", headers={"Accept": "text/html"})
        assert missing.status_code == 404
        assert missing.headers["content-type"].startswith("application/problem+json")
        assert client.get("/no/such/page").json()["code"] == "not_found"


def test_a_stop_does_not_wait_for_an_open_event_stream(world: dict[str, Any]) -> None:
    api: ApiServer = world["api"]
    client, _ = session(api, world["owner"])
    with client.stream("GET", "/events/messages") as events:
        assert events.status_code == 200
        assert next(events.iter_text()).startswith("retry:")  # the stream is open
        started = time.monotonic()
        code = api.stop()  # SIGTERM, as systemd stops smtpy-api.service
        took = time.monotonic() - started
    # A stream lasts 25 s, as long as the stop may wait for requests: it must end at once.
    assert code == 0 and took < 10, f"exit {code} after {took:.1f} s\n{api.stderr[-2000:]}"


PAGES = ("/", "/domains", f"/domains/{DOMAIN}", "/messages", f"/messages/{QUEUE_ID}", "/stats")


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_every_page_passes_axe_in_light_and_dark_on_a_phone(
    browser: Browser,  # noqa: F811
    world: dict[str, Any],
) -> None:
    add_domain(world["store_url"], world["owner"]["org"])
    log_message(world["store_url"])
    api: ApiServer = world["api"]
    client, csrf = session(api, world["owner"])
    made = client.post(
        f"/domains/{DOMAIN}/aliases",
        data={"local_part": "team", "destinations": "bob@dest1.test", "csrf_token": csrf},
    )
    assert made.status_code == 303
    alias_id = re.findall(r"/aliases/(\d+)/edit", client.get(f"/domains/{DOMAIN}").text)[0]
    cookies = [
        {"name": c.name, "value": c.value or "", "url": api.base_url} for c in client.cookies.jar
    ]
    for scheme, width in (("light", 1280), ("dark", 390)):
        page = new_page(browser, color_scheme=scheme, viewport={"width": width, "height": 900})
        page.context.add_cookies(cookies)  # type: ignore[arg-type]
        for path in (*PAGES, f"/aliases/{alias_id}/edit"):
            page.goto(api.base_url + path)
            assert page.url.endswith(path), f"{path} went to {page.url}"
            if path == f"/domains/{DOMAIN}":  # with its record status, loaded by htmx
                page.wait_for_selector("#record-status")
            if width == 390:  # nothing wider than the phone's screen
                assert_fits(page)
            assert_accessible(page)
        page.context.close()
