"""Signing in, 2FA, throttling, mailed links and smtpy's own mail, in the core, on SQLite
and PostgreSQL (smtpy.accounts.signin, mfa, throttle, links, mailer)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pyotp
import pytest

from smtpy.accounts import links, members, mfa, sessions, signin, throttle, users
from smtpy.accounts.actor import Actor, acting
from smtpy.config import Settings
from smtpy.errors import Conflict, Forbidden, InvalidInput, TooManyRequests, Unauthorized
from smtpy.store.db import Database

PASSWORD = "correct horse battery"


@pytest.fixture
def db(store_url: str) -> Iterator[Database]:
    database = Database(store_url)
    yield database
    database.close()


def settings_for(store_url: str, tmp_path: Path, **extra: Any) -> Settings:
    return Settings(
        state_dir=tmp_path,
        database_url=store_url,
        hostname="mx.forwarder.test",
        public_url="https://mail.example.net",
        **extra,
    )


@pytest.fixture
def settings(store_url: str, tmp_path: Path) -> Settings:
    return settings_for(store_url, tmp_path, signup="open")


def make_user(db: Database, email: str = "ann@example.test", org: str = "acme") -> int:
    user = users.create_user(db=db, email=email, password=PASSWORD)
    org_id = db.insert(
        "INSERT INTO organizations (name, created_at) VALUES (:n, :now) RETURNING id",
        {"n": org, "now": time.time()},
    )
    members.add_member(db=db, org=org_id, user_id=user.id, role="owner")
    return user.id


def login(db: Database, settings: Settings, email: str, password: str, ip: str = "192.0.2.1"):  # type: ignore[no-untyped-def]
    return signin.login(
        db=db, settings=settings, email=email, password=password, client_ip=ip, user_agent="t"
    )


def queued_mail(db: Database, to: str) -> list[EmailMessage]:
    """The messages smtpy queued for `to`, parsed, oldest first."""
    rows = db.all(
        "SELECT m.data FROM messages m JOIN deliveries d ON d.message_id = m.id"
        " WHERE d.recipient = :to ORDER BY m.id",
        {"to": to},
    )
    parsed = []
    for row in rows:
        message = message_from_bytes(bytes(row["data"]), policy=policy.default)
        assert isinstance(message, EmailMessage)
        parsed.append(message)
    return parsed


def token_of(message: EmailMessage, path: str) -> str:
    body = message.get_content()
    match = re.search(
        re.escape(f"https://mail.example.net{path}?token=") + r"([A-Za-z0-9_%-]+)", body
    )
    assert match, body
    return match.group(1)


def actions(db: Database) -> list[str]:
    return [r["action"] for r in db.all("SELECT action FROM audit_log ORDER BY id")]


# -- login ------------------------------------------------------------------------


def test_login_wrong_password_and_unknown_address_look_the_same(
    db: Database, settings: Settings
) -> None:
    make_user(db)
    with acting(Actor(via="session", name="ann@example.test", client_ip="192.0.2.1")):
        result = login(db, settings, " Ann@Example.test ", PASSWORD)
    assert result.user.email == "ann@example.test"
    assert result.mfa_required is False
    assert result.new.session.mfa_passed is True
    assert sessions.authenticate(db=db, token=result.new.token, idle_timeout=600).id == (
        result.new.session.id
    )
    with pytest.raises(Unauthorized) as wrong:
        login(db, settings, "ann@example.test", "not the password at all")
    with pytest.raises(Unauthorized) as unknown:
        login(db, settings, "nobody@example.test", "not the password at all")
    assert str(wrong.value) == str(unknown.value) == signin.WRONG_CREDENTIALS
    assert "user.login" in actions(db) and "user.login_failed" in actions(db)
    row = db.one("SELECT actor, via, client_ip FROM audit_log WHERE action = 'user.login'")
    assert row == {"actor": "ann@example.test", "via": "session", "client_ip": "192.0.2.1"}


def test_login_refused_until_the_address_is_confirmed(db: Database, settings: Settings) -> None:
    user = signin.register(
        db=db, settings=settings, email="Bob@Example.test", password=PASSWORD, organization="Bobs"
    )
    assert user.email_confirmed is False
    with pytest.raises(Unauthorized, match="confirm your e-mail address"):
        login(db, settings, "bob@example.test", PASSWORD)
    [mail] = queued_mail(db, "bob@example.test")
    assert mail["From"] == "smtpy <smtpy@mx.forwarder.test>"
    assert mail["To"] == "bob@example.test"
    assert mail["Date"] and mail["Message-ID"].endswith("@mx.forwarder.test>")
    assert mail.get_content_type() == "text/plain"
    assert mail.get_content_charset() == "utf-8"
    token = token_of(mail, "/confirm")
    assert signin.confirm_email(db=db, token=token).email_confirmed is True
    with pytest.raises(InvalidInput, match="not valid"):
        signin.confirm_email(db=db, token=token)  # works once
    result = login(db, settings, "bob@example.test", PASSWORD)
    orgs = members.organizations_of(db=db, user_id=user.id)
    assert [(o.name, o.role) for o in orgs] == [("Bobs", "owner")]
    assert result.new.session.organization_id == orgs[0].id
    # The token is in the mail only: the store keeps its digest.
    assert db.scalar("SELECT count(*) FROM account_tokens WHERE token_hash = :t", {"t": token}) == 0


def test_register_only_when_signup_is_open(db: Database, store_url: str, tmp_path: Path) -> None:
    for mode in ("closed", "invite"):
        with pytest.raises(Forbidden, match="sign-up is closed"):
            signin.register(
                db=db,
                settings=settings_for(store_url, tmp_path, signup=mode),
                email="eve@example.test",
                password=PASSWORD,
                organization="Eve",
            )
    assert users.find_by_email(db=db, email="eve@example.test") is None
    open_settings = settings_for(store_url, tmp_path, signup="open")
    signin.register(
        db=db, settings=open_settings, email="eve@example.test", password=PASSWORD, organization="E"
    )
    with pytest.raises(Conflict):
        signin.register(
            db=db,
            settings=open_settings,
            email="other@example.test",
            password=PASSWORD,
            organization="E",
        )
    assert users.find_by_email(db=db, email="other@example.test") is None  # all or nothing
    # Sign-up names organizations by the same rule as `smtpy org add` and POST /orgs.
    for name, error in (("e", Conflict), ("Default", Conflict), ("x" * 101, InvalidInput)):
        with pytest.raises(error):
            signin.register(
                db=db,
                settings=open_settings,
                email="other@example.test",
                password=PASSWORD,
                organization=name,
            )
    assert users.find_by_email(db=db, email="other@example.test") is None


# -- throttling ---------------------------------------------------------------------


def test_failed_logins_are_throttled_per_account_then_forgiven_by_time(
    db: Database, settings: Settings
) -> None:
    make_user(db)
    for n in range(throttle.ACCOUNT_LIMIT):
        with pytest.raises(Unauthorized):
            login(db, settings, "ann@example.test", f"wrong password {n}", ip=f"192.0.2.{n + 1}")
    started = time.time()
    with pytest.raises(TooManyRequests) as limited:
        login(db, settings, "ann@example.test", PASSWORD, ip="198.51.100.7")
    # The oldest failure leaves the window in at most WINDOW seconds from now.
    assert throttle.WINDOW - 60 <= limited.value.retry_after <= throttle.WINDOW
    keys = {r["key"] for r in db.all("SELECT key FROM login_failures")}
    assert "account:ann@example.test" in keys and "ip:192.0.2.1" in keys
    # No hard lock-out: once the window has passed, the right password works again.
    throttle.check(
        db=db, email="ann@example.test", client_ip="198.51.100.7", now=started + throttle.WINDOW
    )
    db.execute("UPDATE login_failures SET at = at - :w", {"w": throttle.WINDOW})
    login(db, settings, "ann@example.test", PASSWORD)
    assert (
        db.scalar("SELECT count(*) FROM login_failures WHERE key = 'account:ann@example.test'") == 0
    )  # a success clears the account's failures


def test_failures_from_one_address_throttle_it_for_every_account(
    db: Database, settings: Settings
) -> None:
    make_user(db)
    for n in range(throttle.ADDRESS_LIMIT):
        throttle.failed(db=db, email=f"guess{n}@example.test", client_ip="203.0.113.9")
    with pytest.raises(TooManyRequests):
        login(db, settings, "ann@example.test", PASSWORD, ip="203.0.113.9")
    login(db, settings, "ann@example.test", PASSWORD, ip="203.0.113.10")
    # Old rows go away.
    assert throttle.prune(db=db, now=time.time() + throttle.WINDOW + 1) >= throttle.ADDRESS_LIMIT
    assert db.scalar("SELECT count(*) FROM login_failures") == 0


# -- 2FA --------------------------------------------------------------------------


def enrol(db: Database, user_id: int) -> tuple[pyotp.TOTP, str, list[str]]:
    """Enrol with pyotp as the authenticator app: (app, the code that confirmed, codes)."""
    enrolment = mfa.start_enrolment(db=db, user_id=user_id)
    assert enrolment.otpauth_uri.startswith("otpauth://totp/")
    assert f"secret={enrolment.secret}" in enrolment.otpauth_uri
    assert enrolment.qr_svg.startswith("<svg") and "</svg>" in enrolment.qr_svg
    totp = pyotp.TOTP(enrolment.secret)
    with pytest.raises(InvalidInput):
        mfa.confirm_enrolment(
            db=db, user_id=user_id, code="000000" if totp.now() != "000000" else "111111"
        )
    code = totp.now()
    codes = mfa.confirm_enrolment(db=db, user_id=user_id, code=code)
    return totp, code, codes


def test_two_factor_enrolment_login_replay_and_recovery_codes(
    db: Database, settings: Settings
) -> None:
    user_id = make_user(db)
    totp, used, codes = enrol(db, user_id)
    assert len(codes) == mfa.RECOVERY_CODES == len(set(codes))
    assert users.get_user(db=db, user_id=user_id).two_factor is True
    stored = {r["code_hash"] for r in db.all("SELECT code_hash FROM recovery_codes")}
    assert not stored & set(codes)  # stored hashed

    first = login(db, settings, "ann@example.test", PASSWORD)
    assert first.mfa_required is True and first.new.session.mfa_passed is False
    # The code that confirmed the enrolment is spent: refused, and counted.
    with pytest.raises(Unauthorized, match="used already"):
        signin.second_factor(db=db, session_id=first.new.session.id, user_id=user_id, code=used)
    code = totp.at(time.time() + totp.interval)  # the next step's code (valid_window=1)
    new = signin.second_factor(db=db, session_id=first.new.session.id, user_id=user_id, code=code)
    assert new.session.mfa_passed is True and new.token != first.new.token
    with pytest.raises(Unauthorized, match="has ended"):
        sessions.authenticate(db=db, token=first.new.token, idle_timeout=600)  # rotated

    second = login(db, settings, "ann@example.test", PASSWORD)
    with pytest.raises(Unauthorized, match="used already"):  # a code works once
        signin.second_factor(db=db, session_id=second.new.session.id, user_id=user_id, code=code)
    signin.second_factor(
        db=db, session_id=second.new.session.id, user_id=user_id, code=codes[0].upper()
    )
    third = login(db, settings, "ann@example.test", PASSWORD)
    with pytest.raises(Unauthorized, match="wrong"):  # a recovery code works once
        signin.second_factor(db=db, session_id=third.new.session.id, user_id=user_id, code=codes[0])
    assert mfa.recovery_codes_left(db=db, user_id=user_id) == mfa.RECOVERY_CODES - 1
    assert actions(db).count("user.mfa_passed") == 2

    # Off with the password (a wrong one is refused and 2FA stays on).
    with pytest.raises(InvalidInput):
        mfa.disable(db=db, user_id=user_id, code_or_password="not the password at all")
    assert users.get_user(db=db, user_id=user_id).two_factor is True
    mfa.disable(db=db, user_id=user_id, code_or_password=PASSWORD)
    assert users.get_user(db=db, user_id=user_id).two_factor is False
    assert db.scalar("SELECT count(*) FROM recovery_codes") == 0
    assert login(db, settings, "ann@example.test", PASSWORD).mfa_required is False


def test_wrong_second_factor_codes_are_throttled(db: Database, settings: Settings) -> None:
    user_id = make_user(db)
    enrol(db, user_id)
    first = login(db, settings, "ann@example.test", PASSWORD)
    for _ in range(throttle.ACCOUNT_LIMIT):
        with pytest.raises(Unauthorized):
            signin.second_factor(
                db=db, session_id=first.new.session.id, user_id=user_id, code="abcde-fghij"
            )
    with pytest.raises(TooManyRequests):
        signin.second_factor(
            db=db, session_id=first.new.session.id, user_id=user_id, code="abcde-fghij"
        )
    # The password step does not forgive them: the account stays throttled.
    with pytest.raises(TooManyRequests):
        login(db, settings, "ann@example.test", PASSWORD)


# -- passwords and links --------------------------------------------------------------


def test_password_reset_link_works_once_and_ends_every_session(
    db: Database, settings: Settings
) -> None:
    user_id = make_user(db)
    old = login(db, settings, "ann@example.test", PASSWORD)
    signin.request_password_reset(db=db, settings=settings, email="nobody@example.test")
    assert db.scalar("SELECT count(*) FROM messages") == 0  # silent for an unknown address
    signin.request_password_reset(db=db, settings=settings, email="ANN@example.test")
    [mail] = queued_mail(db, "ann@example.test")
    assert mail["Subject"] == "Choose a new password"
    delivery = db.one("SELECT original_recipient, envelope_sender, domain FROM deliveries")
    assert delivery == {
        "original_recipient": "smtpy@mx.forwarder.test",  # signed as the sender's domain
        "envelope_sender": "smtpy@mx.forwarder.test",
        "domain": "example.test",
    }
    token = token_of(mail, "/password-reset")
    with pytest.raises(InvalidInput, match="too short"):
        signin.reset_password(db=db, token=token, password="short")
    signin.reset_password(db=db, token=token, password="a brand new password")  # still usable
    with pytest.raises(InvalidInput, match="not valid"):
        signin.reset_password(db=db, token=token, password="yet another password")
    with pytest.raises(Unauthorized, match="has ended"):
        sessions.authenticate(db=db, token=old.new.token, idle_timeout=600)
    with pytest.raises(Unauthorized):
        login(db, settings, "ann@example.test", PASSWORD)
    login(db, settings, "ann@example.test", "a brand new password")
    assert "user.password_reset" in actions(db)
    assert user_id


def test_links_expire_and_are_replaced_by_newer_ones(db: Database) -> None:
    user_id = make_user(db)
    expired = links.issue(
        db=db, kind="reset", email="ann@example.test", user_id=user_id, now=time.time() - 3601
    )
    with pytest.raises(InvalidInput, match="expired"):
        links.redeem(db=db, kind="reset", token=expired)
    older = links.issue(db=db, kind="reset", email="ann@example.test", user_id=user_id)
    newer = links.issue(db=db, kind="reset", email="ann@example.test", user_id=user_id)
    with pytest.raises(InvalidInput):
        links.redeem(db=db, kind="reset", token=older)
    with pytest.raises(InvalidInput):
        links.redeem(db=db, kind="confirm", token=newer)  # another kind
    assert links.redeem(db=db, kind="reset", token=newer).user_id == user_id


def test_change_password_checks_the_current_one_and_ends_the_other_sessions(
    db: Database, settings: Settings
) -> None:
    user_id = make_user(db)
    here = login(db, settings, "ann@example.test", PASSWORD)
    there = login(db, settings, "ann@example.test", PASSWORD)
    with pytest.raises(InvalidInput, match="current password is wrong"):
        signin.change_password(
            db=db,
            user_id=user_id,
            session_id=here.new.session.id,
            current="nope nope nope",
            new="x" * 12,
        )
    signin.change_password(
        db=db,
        user_id=user_id,
        session_id=here.new.session.id,
        current=PASSWORD,
        new="another long password",
    )
    assert [s.id for s in sessions.list_sessions(db=db, user_id=user_id)] == [here.new.session.id]
    with pytest.raises(Unauthorized):
        sessions.authenticate(db=db, token=there.new.token, idle_timeout=600)


def test_invitations_for_new_and_existing_users(db: Database, settings: Settings) -> None:
    owner = make_user(db)
    org = members.organizations_of(db=db, user_id=owner)[0].id
    make_user(db, email="carl@example.test", org="carls")
    signin.invite(
        db=db, settings=settings, org=org, email="Dee@Example.test", role="admin", invited_by=owner
    )
    signin.invite(
        db=db,
        settings=settings,
        org=org,
        email="carl@example.test",
        role="member",
        invited_by=owner,
    )
    with pytest.raises(Conflict, match="already a member"):
        signin.invite(
            db=db,
            settings=settings,
            org=org,
            email="ann@example.test",
            role="admin",
            invited_by=owner,
        )
    [mail] = queued_mail(db, "dee@example.test")
    assert "acme" in mail["Subject"]
    token = token_of(mail, "/invitation")
    with pytest.raises(InvalidInput, match="choose a password"):
        signin.accept_invitation(db=db, token=token, password=None, user_id=None)
    joined = signin.accept_invitation(db=db, token=token, password=PASSWORD, user_id=None)
    assert (joined.organization, joined.role, joined.user.email_confirmed) == (
        "acme",
        "admin",
        True,
    )
    with pytest.raises(InvalidInput):
        signin.accept_invitation(db=db, token=token, password=PASSWORD, user_id=None)
    carl_token = token_of(queued_mail(db, "carl@example.test")[0], "/invitation")
    carl = signin.accept_invitation(db=db, token=carl_token, password=None, user_id=None)
    assert [o.name for o in members.organizations_of(db=db, user_id=carl.user.id)] == [
        "carls",
        "acme",
    ]
    assert actions(db).count("member.join") == 2 and actions(db).count("member.invite") == 2


def test_mail_from_setting_names_the_sender(db: Database, store_url: str, tmp_path: Path) -> None:
    make_user(db)
    settings = settings_for(store_url, tmp_path, mail_from="No-Reply@Example.ORG")
    signin.request_password_reset(db=db, settings=settings, email="ann@example.test")
    [mail] = queued_mail(db, "ann@example.test")
    assert mail["From"] == "smtpy <No-Reply@example.org>"
    assert mail["Message-ID"].endswith("@example.org>")
    assert db.one("SELECT original_recipient, envelope_sender FROM deliveries") == {
        "original_recipient": "No-Reply@example.org",  # DKIM-signed by example.org's key
        "envelope_sender": "No-Reply@example.org",
    }
    with pytest.raises(ValueError, match="not a mail address"):
        settings_for(store_url, tmp_path, mail_from="nobody")


def test_retry_after_is_when_the_oldest_counted_failure_leaves_the_window(db: Database) -> None:
    start = 1_800_000_000.0
    for n in range(throttle.ACCOUNT_LIMIT + 2):  # two more than the limit (racing processes)
        throttle.record(db, [throttle.account_key("ann@example.test")], now=start + 10 * n)
    now = start + 200
    with pytest.raises(TooManyRequests) as limited:
        throttle.check(db=db, email="ann@example.test", client_ip=None, now=now)
    # Twelve counted: once the third oldest (start + 20) leaves, nine remain, under the limit.
    assert limited.value.retry_after == throttle.WINDOW + 20 - 200
    throttle.check(
        db=db, email="ann@example.test", client_ip=None, now=start + 20 + throttle.WINDOW
    )


def test_login_rehashes_a_password_made_with_other_parameters(
    db: Database, settings: Settings
) -> None:
    from argon2 import PasswordHasher, profiles

    from smtpy.accounts import passwords

    user_id = make_user(db)
    cheap = PasswordHasher.from_parameters(profiles.CHEAPEST).hash(PASSWORD)
    db.execute("UPDATE users SET password_hash = :h WHERE id = :id", {"h": cheap, "id": user_id})
    login(db, settings, "ann@example.test", PASSWORD)
    stored = db.scalar("SELECT password_hash FROM users WHERE id = :id", {"id": user_id})
    assert stored != cheap and not passwords.needs_rehash(stored)
    assert passwords.verify(stored, PASSWORD)
