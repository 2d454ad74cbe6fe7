"""Signing in over HTTP against the real `smtpy api` process, on SQLite and PostgreSQL:
cookies, the same answer for an unknown address and a wrong password, throttling shared
by two processes, 2FA with a code computed by pyotp, CSRF, sessions, and a password
reset whose mail the real `smtpy serve` delivers to a real SMTP sink."""

from __future__ import annotations

import json
import re
import time
from email.message import EmailMessage
from pathlib import Path

import httpx
import pyotp
import pytest

from apiserver import ApiServer, seed_org
from conftest import Cli
from dnsserver import DNSServer
from mailpeers import DEST1, HOSTNAME, Received, forwarding_world

pytestmark = [pytest.mark.timeout(300)]

PASSWORD = "correct horse battery"


def login(client: httpx.Client, email: str, password: str = PASSWORD) -> httpx.Response:
    return client.post("/api/v1/auth/login", json={"email": email, "password": password})


def signed_in(api: ApiServer, email: str, password: str = PASSWORD) -> tuple[httpx.Client, str]:
    """A browser signed in (no 2FA): the client and its CSRF token."""
    browser = api.browser()
    answer = login(browser, email, password)
    assert answer.status_code == 200, answer.text
    return browser, answer.json()["csrf_token"]


def test_login_sets_the_cookie_and_logout_ends_the_session(cli_env: dict[str, str]) -> None:
    with ApiServer(cli_env) as api:
        seeded = seed_org(cli_env["SMTPY_DATABASE_URL"])
        browser = api.browser()
        answer = login(browser, seeded["email"].upper())
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["mfa_required"] is False and body["csrf_token"]
        assert body["user"]["email"] == seeded["email"] and body["user"]["id"] == str(
            seeded["user"]
        )
        cookie = answer.headers["set-cookie"]
        assert cookie.startswith("smtpy_session=")
        assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie
        assert "Secure" not in cookie  # plain http: SMTPY_PUBLIC_URL is not https
        me = browser.get("/api/v1/me")
        assert me.status_code == 200 and me.json()["email"] == seeded["email"]
        assert [o["role"] for o in me.json()["organizations"]] == ["owner"]
        assert browser.get("/api/v1/auth/csrf").json() == {"csrf_token": body["csrf_token"]}

        # A wrong password and an unknown address: the same answer.
        wrong = login(api.browser(), seeded["email"], "not the password at all")
        unknown = login(api.browser(), "nobody@acme.test", "not the password at all")
        assert wrong.status_code == unknown.status_code == 401
        assert wrong.headers["content-type"].startswith("application/problem+json")
        assert wrong.json()["detail"] == unknown.json()["detail"]
        assert "set-cookie" not in wrong.headers

        out = browser.post("/api/v1/auth/logout", headers={"X-CSRF-Token": body["csrf_token"]})
        assert out.status_code == 204
        assert browser.get("/api/v1/me").status_code == 401


def test_throttling_is_shared_by_two_api_processes(cli_env: dict[str, str]) -> None:
    with ApiServer(cli_env) as first, ApiServer(cli_env) as second:
        seeded = seed_org(cli_env["SMTPY_DATABASE_URL"])
        for n in range(10):  # smtpy.accounts.throttle.ACCOUNT_LIMIT, half on each process
            api = first if n % 2 else second
            answer = login(api.client, seeded["email"], f"wrong password {n}")
            assert answer.status_code == 401, answer.text
        refused = login(second.client, seeded["email"])  # even the right password now
        assert refused.status_code == 429, refused.text
        retry_after = int(refused.headers["Retry-After"])
        assert 800 <= retry_after <= 900
        assert refused.json()["status"] == 429
        assert login(first.client, seeded["email"]).status_code == 429
        # Counted in the store, under the account and the address.
        from smtpy.store.db import Database

        with Database(cli_env["SMTPY_DATABASE_URL"]) as db:
            keys = {
                r["key"]: r["n"]
                for r in db.all("SELECT key, count(*) AS n FROM login_failures GROUP BY key")
            }
        assert keys == {f"account:{seeded['email']}": 10, "ip:127.0.0.1": 10}


def test_two_factor_enrolment_login_replay_and_recovery_code(cli_env: dict[str, str]) -> None:
    with ApiServer(cli_env) as api:
        seeded = seed_org(cli_env["SMTPY_DATABASE_URL"])
        browser, csrf = signed_in(api, seeded["email"])
        started = browser.post("/api/v1/me/2fa", headers={"X-CSRF-Token": csrf})
        assert started.status_code == 201, started.text
        enrolment = started.json()
        assert enrolment["otpauth_uri"].startswith("otpauth://totp/")
        assert enrolment["qr_svg"].startswith("<svg")
        app = pyotp.TOTP(enrolment["secret"])  # the authenticator app
        first_code = app.now()
        confirmed = browser.post(
            "/api/v1/me/2fa/confirm", json={"code": first_code}, headers={"X-CSRF-Token": csrf}
        )
        assert confirmed.status_code == 200, confirmed.text
        recovery = confirmed.json()["recovery_codes"]
        assert len(recovery) == 10
        assert browser.get("/api/v1/me").json()["two_factor"] is True

        # Signing in now needs the second factor.
        other = api.browser()
        answer = login(other, seeded["email"])
        assert answer.status_code == 200 and answer.json()["mfa_required"] is True
        limited_csrf = answer.json()["csrf_token"]
        assert other.get("/api/v1/me").status_code == 401
        replay = other.post(
            "/api/v1/auth/mfa", json={"code": first_code}, headers={"X-CSRF-Token": limited_csrf}
        )
        assert replay.status_code == 401, replay.text  # the enrolment's code is spent
        old_cookie = other.cookies["smtpy_session"]
        code = app.at(time.time() + app.interval)
        passed = other.post(
            "/api/v1/auth/mfa", json={"code": code}, headers={"X-CSRF-Token": limited_csrf}
        )
        assert passed.status_code == 200, passed.text
        assert passed.json()["csrf_token"] != limited_csrf
        assert other.cookies["smtpy_session"] != old_cookie  # rotated
        assert other.get("/api/v1/me").status_code == 200
        stale = httpx.Client(base_url=api.base_url, cookies={"smtpy_session": old_cookie})
        with stale:
            assert stale.get("/api/v1/me").status_code == 401

        # The same code a second time: refused; a recovery code: once.
        third = api.browser()
        third_csrf = login(third, seeded["email"]).json()["csrf_token"]
        again = third.post(
            "/api/v1/auth/mfa", json={"code": code}, headers={"X-CSRF-Token": third_csrf}
        )
        assert again.status_code == 401
        used = third.post(
            "/api/v1/auth/mfa", json={"code": recovery[3]}, headers={"X-CSRF-Token": third_csrf}
        )
        assert used.status_code == 200, used.text
        fourth = api.browser()
        fourth_csrf = login(fourth, seeded["email"]).json()["csrf_token"]
        reused = fourth.post(
            "/api/v1/auth/mfa", json={"code": recovery[3]}, headers={"X-CSRF-Token": fourth_csrf}
        )
        assert reused.status_code == 401
        assert fourth.get("/api/v1/me").status_code == 401

        # Off again: a wrong password is refused, the right one turns 2FA off.
        wrong = browser.request(
            "DELETE",
            "/api/v1/me/2fa",
            json={"password": "not it at all"},
            headers={"X-CSRF-Token": csrf},
        )
        assert wrong.status_code == 422
        off = browser.request(
            "DELETE", "/api/v1/me/2fa", json={"password": PASSWORD}, headers={"X-CSRF-Token": csrf}
        )
        assert off.status_code == 204, off.text
        assert browser.get("/api/v1/me").json()["two_factor"] is False
        assert login(api.browser(), seeded["email"]).json()["mfa_required"] is False


def test_csrf_sessions_and_password_change(cli_env: dict[str, str]) -> None:
    with ApiServer(cli_env) as api:
        seeded = seed_org(cli_env["SMTPY_DATABASE_URL"])
        here, csrf = signed_in(api, seeded["email"])
        there, there_csrf = signed_in(api, seeded["email"])

        # CSRF: refused without the token, with a wrong one, and from another site.
        assert here.patch("/api/v1/me", json={"name": "Ann"}).status_code == 403
        wrong = here.patch("/api/v1/me", json={"name": "Ann"}, headers={"X-CSRF-Token": "x"})
        assert wrong.status_code == 403
        cross = here.patch(
            "/api/v1/me",
            json={"name": "Ann"},
            headers={"X-CSRF-Token": csrf, "Sec-Fetch-Site": "cross-site"},
        )
        assert cross.status_code == 403
        assert here.get("/api/v1/me").json()["name"] == ""
        ok = here.patch("/api/v1/me", json={"name": "Ann"}, headers={"X-CSRF-Token": csrf})
        assert ok.status_code == 200 and ok.json()["name"] == "Ann"
        assert login(api.browser(), seeded["email"]).status_code == 200
        cross_login = api.browser().post(
            "/api/v1/auth/login",
            json={"email": seeded["email"], "password": PASSWORD},
            headers={"Sec-Fetch-Site": "cross-site"},
        )
        assert cross_login.status_code == 403

        # Sessions: listed with the current one marked; another one revoked.
        listed = here.get("/api/v1/me/sessions").json()
        assert listed["has_more"] is False and len(listed["data"]) == 3
        [current] = [s for s in listed["data"] if s["current"]]
        there_id = next(
            s["id"] for s in there.get("/api/v1/me/sessions").json()["data"] if s["current"]
        )
        assert there_id != current["id"]
        revoked = here.delete(f"/api/v1/me/sessions/{there_id}", headers={"X-CSRF-Token": csrf})
        assert revoked.status_code == 204
        assert there.get("/api/v1/me").status_code == 401
        assert (
            here.delete("/api/v1/me/sessions/999999", headers={"X-CSRF-Token": csrf}).status_code
            == 404
        )
        del there_csrf

        # A password change ends every other session, not this one.
        other, _ = signed_in(api, seeded["email"])
        bad = here.post(
            "/api/v1/me/password",
            json={"current_password": "not it at all", "new_password": "a new long password"},
            headers={"X-CSRF-Token": csrf},
        )
        assert bad.status_code == 422
        changed = here.post(
            "/api/v1/me/password",
            json={"current_password": PASSWORD, "new_password": "a new long password"},
            headers={"X-CSRF-Token": csrf},
        )
        assert changed.status_code == 204, changed.text
        assert other.get("/api/v1/me").status_code == 401
        assert here.get("/api/v1/me").status_code == 200
        assert login(api.browser(), seeded["email"]).status_code == 401
        assert login(api.browser(), seeded["email"], "a new long password").status_code == 200

        # API keys are no user: /me is refused to them.
        assert api.as_key(seeded["key"]).get("/api/v1/me").status_code == 403


def _link_token(message: EmailMessage, path: str) -> str:
    match = re.search(re.escape(path) + r"\?token=([A-Za-z0-9_-]+)", message.get_content())
    assert match, message.get_content()
    return match.group(1)


def test_password_reset_mail_is_delivered_by_smtpy_serve(
    cli: Cli, cli_env: dict[str, str], dns_server: DNSServer, tmp_path: Path
) -> None:
    with forwarding_world(cli, cli_env, dns_server, tmp_path) as world:
        # The operator serves its own host name, with a DKIM key: smtpy's mail is signed.
        world.run("domain", "add", HOSTNAME)
        for record in json.loads(world.run("domain", "records", HOSTNAME, "--json")):
            if record["type"] != "A":
                dns_server.add(record["name"], record["type"], record["value"])
        world.start()
        seeded = seed_org(world.database_url, email="ann@dest1.test")
        with ApiServer(world.env, SMTPY_PUBLIC_URL="https://mail.example.net") as api:
            session = api.browser()
            assert login(session, "ann@dest1.test").status_code == 200
            for address in ("nobody@dest1.test", "ANN@dest1.test"):
                answer = api.client.post("/api/v1/auth/password-reset", json={"email": address})
                assert answer.status_code == 202, answer.text
            answer_unknown = api.client.post(
                "/api/v1/auth/password-reset", json={"email": "nobody@dest1.test"}
            )
            assert answer_unknown.json() == answer.json()

            [mail] = world.peers.wait_for(
                lambda got: [r for r in got if "ann@dest1.test" in r.rcpt_tos], timeout=60
            )
            assert isinstance(mail, Received) and mail.host == DEST1
            assert mail.mail_from == f"smtpy@{HOSTNAME}"
            message = mail.message
            assert message["From"] == f"smtpy <smtpy@{HOSTNAME}>"
            assert message["Date"] and message["Message-ID"]
            assert message.get_content_type() == "text/plain"
            assert world.dkim_ok(mail.data)
            token = _link_token(message, "https://mail.example.net/password-reset")

            done = api.client.post(
                "/api/v1/auth/password-reset/confirm",
                json={"token": token, "password": "chosen after the reset"},
            )
            assert done.status_code == 200, done.text
            again = api.client.post(
                "/api/v1/auth/password-reset/confirm",
                json={"token": token, "password": "chosen a second time"},
            )
            assert again.status_code == 422
            assert session.get("/api/v1/me").status_code == 401  # every session ended
            assert login(api.browser(), "ann@dest1.test").status_code == 401
            assert (
                login(api.browser(), "ann@dest1.test", "chosen after the reset").status_code == 200
            )
            world.wait_settled()
            # Only the one mail: nothing for the unknown address.
            assert [r.rcpt_tos for r in world.peers.received] == [("ann@dest1.test",)]
        del seeded


def test_sign_up_confirmation_and_invitation(cli_env: dict[str, str]) -> None:
    from email import message_from_bytes, policy

    from smtpy.store.db import Database

    def mailed_token(to: str, path: str) -> str:
        with Database(cli_env["SMTPY_DATABASE_URL"]) as db:
            data = db.scalar(
                "SELECT m.data FROM messages m JOIN deliveries d ON d.message_id = m.id"
                " WHERE d.recipient = :to ORDER BY m.id DESC",
                {"to": to},
            )
        message = message_from_bytes(bytes(data), policy=policy.default)
        assert isinstance(message, EmailMessage)
        return _link_token(message, path)

    with ApiServer(cli_env) as closed:
        refused = closed.client.post(
            "/api/v1/auth/register",
            json={"email": "zed@dest2.test", "password": PASSWORD, "organization": "Zed"},
        )
        assert refused.status_code == 403
    with ApiServer(cli_env, SMTPY_SIGNUP="open") as api:
        made = api.client.post(
            "/api/v1/auth/register",
            json={"email": "zed@dest2.test", "password": PASSWORD, "organization": "Zed"},
        )
        assert made.status_code == 201, made.text
        assert made.json()["user"]["email_confirmed"] is False
        assert login(api.browser(), "zed@dest2.test").status_code == 401
        token = mailed_token("zed@dest2.test", "/confirm")
        assert api.client.post("/api/v1/auth/confirm", json={"token": token}).status_code == 200
        assert api.client.post("/api/v1/auth/confirm", json={"token": token}).status_code == 422
        owner, csrf = signed_in(api, "zed@dest2.test")

        invited = owner.post(
            "/api/v1/org/members",
            json={"email": "yan@dest2.test", "role": "admin"},
            headers={"X-CSRF-Token": csrf},
        )
        assert invited.status_code == 202, invited.text
        token = mailed_token("yan@dest2.test", "/invitation")
        accepted = api.client.post(
            "/api/v1/auth/invitations/accept", json={"token": token, "password": PASSWORD}
        )
        assert accepted.status_code == 200, accepted.text
        assert accepted.json()["organization"]["name"] == "Zed"
        assert accepted.json()["role"] == "admin"
        yan, yan_csrf = signed_in(api, "yan@dest2.test")
        # An admin may not invite: that is the owner's.
        not_owner = yan.post(
            "/api/v1/org/members",
            json={"email": "xia@dest2.test", "role": "member"},
            headers={"X-CSRF-Token": yan_csrf},
        )
        assert not_owner.status_code == 403
