"""`smtpy org|user|apikey`: accounts from the shell, on both stores.

Every command runs the real `smtpy` program; what a command did is checked the
way its user would: by the next command's output, a password that signs in, a
session or an API key that stops working. Bad input exits 2 and changes nothing.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from conftest import Cli
from smtpy.accounts import api_keys, passwords, sessions, users
from smtpy.errors import Unauthorized
from smtpy.store.db import Database

PASSWORD = "correct horse battery"


def store(cli: Cli) -> Database:
    return Database(cli.env["SMTPY_DATABASE_URL"])


def ok(cli: Cli, *args: str, input: str | None = None) -> str:
    result = cli(*args, input=input)
    assert result.code == 0, (args, result.stderr)
    return result.stdout


def as_json(cli: Cli, *args: str) -> Any:
    return json.loads(ok(cli, *args, "--json"))


def signs_in(cli: Cli, email: str, password: str) -> bool:
    with store(cli) as db:
        found = users.find_by_email(db=db, email=email)
    return found is not None and passwords.verify(found[1], password)


def new_session(cli: Cli, email: str) -> str:
    with store(cli) as db:
        user = users.user_by_email(db=db, email=email)
        return sessions.create(
            db=db, user_id=user.id, organization_id=None, mfa_passed=True, lifetime=3600
        ).token


def session_alive(cli: Cli, token: str) -> bool:
    with store(cli) as db:
        try:
            sessions.authenticate(db=db, token=token, idle_timeout=3600)
        except Unauthorized:
            return False
    return True


def key_works(cli: Cli, key: str) -> bool:
    with store(cli) as db:
        try:
            api_keys.authenticate(db=db, key=key)
        except Unauthorized:
            return False
    return True


@pytest.fixture
def acme(cli: Cli) -> Cli:
    """A store with the organization acme, whose owner is alice (a password from stdin)."""
    ok(cli, "db", "upgrade")
    ok(cli, "org", "add", "acme")
    ok(cli, "user", "add", "alice@acme.test", "--org", "acme", "--password-stdin", input=PASSWORD)
    return cli


def test_org_add_list_and_show(acme: Cli) -> None:
    cli = acme
    ok(cli, "user", "add", "bob@acme.test", "--org", "acme", "--role", "admin")
    ok(cli, "apikey", "create", "--org", "acme", "--name", "ci")
    ok(cli, "domain", "add", "acme.test", "--org", "acme", "--key-algorithm", "ed25519")
    ok(cli, "alias", "add", "info@acme.test", "dest@far.test", "--org", "acme")

    orgs = {o["name"]: o for o in as_json(cli, "org", "list")}
    assert orgs["acme"]["members"] == 2
    assert (orgs["acme"]["domains"], orgs["acme"]["aliases"], orgs["acme"]["api_keys"]) == (1, 1, 1)
    shown = as_json(cli, "org", "show", "acme")
    assert shown["name"] == "acme" and shown["members"] == 2
    assert {(m["email"], m["role"]) for m in shown["member_list"]} == {
        ("alice@acme.test", "owner"),
        ("bob@acme.test", "admin"),
    }
    table = ok(cli, "org", "show", "acme")
    assert "alice@acme.test" in table and "owner" in table
    assert "acme" in ok(cli, "org", "list")


def test_org_names_are_checked_and_a_taken_name_changes_nothing(acme: Cli) -> None:
    cli = acme
    before = as_json(cli, "org", "list")
    for name in ("ACME", " acme ", "", "x" * 101, "default"):
        result = cli("org", "add", name)
        assert result.code == 2, name
        assert result.stderr.startswith("smtpy: error: ") and "Traceback" not in result.stderr
    assert as_json(cli, "org", "list") == before
    assert cli("org", "show", "nope").code == 2


def test_user_add_reads_the_password_from_stdin_and_never_takes_one_in_argv(acme: Cli) -> None:
    cli = acme
    assert signs_in(cli, "alice@acme.test", PASSWORD)
    assert not signs_in(cli, "alice@acme.test", "wrong password here")
    # No --password-stdin and no terminal: no password; a reset link will set one.
    out = ok(cli, "user", "add", "Carol@Acme.TEST", "--org", "acme", "--name", "Carol C")
    assert "carol@acme.test" in out and "member" in out
    with store(cli) as db:
        found = users.find_by_email(db=db, email="carol@acme.test")
    assert found is not None and found[1] is None and found[0].name == "Carol C"
    # There is no option that takes a password as an argument.
    assert cli("user", "add", "dave@acme.test", "--password", PASSWORD).code == 2
    listed = {u["email"]: u for u in as_json(cli, "user", "list", "--org", "acme")}
    assert set(listed) == {"alice@acme.test", "carol@acme.test"}
    assert listed["alice@acme.test"]["organizations"] == [
        {"id": listed["alice@acme.test"]["organizations"][0]["id"], "name": "acme", "role": "owner"}
    ]
    assert "password" not in json.dumps(listed)


def test_bad_input_exits_2_and_changes_nothing(acme: Cli) -> None:
    cli = acme
    users_before = as_json(cli, "user", "list")
    keys_before = as_json(cli, "apikey", "list")
    bad = [
        (("user", "add", "not-an-address", "--org", "acme"), None),
        (("user", "add", "eve@acme.test", "--org", "nope"), None),
        (("user", "add", "eve@acme.test", "--org", "acme", "--role", "boss"), None),
        (("user", "add", "eve@acme.test", "--org", "acme", "--password-stdin"), "short"),
        (("user", "add", "eve@acme.test", "--org", "acme", "--password-stdin"), ""),
        (("user", "add", "alice@acme.test", "--org", "acme"), None),  # a member already
        (("user", "passwd", "nobody@acme.test", "--password-stdin"), PASSWORD),
        (("user", "passwd", "alice@acme.test"), None),  # no terminal, no --password-stdin
        (("user", "remove", "alice@acme.test", "--yes"), None),  # the last owner
        (("user", "reset-2fa", "nobody@acme.test"), None),
        (("apikey", "create", "--name", "  "), None),
        (("apikey", "create", "--name", "x", "--org", "nope"), None),
        (("apikey", "create", "--name", "x", "--expires-in", "0"), None),
        (("apikey", "revoke", "0123456789abcdef"), None),
    ]
    for args, stdin in bad:
        result = cli(*args, input=stdin)
        assert result.code == 2, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr, args
    assert as_json(cli, "user", "list") == users_before
    assert as_json(cli, "apikey", "list") == keys_before
    assert signs_in(cli, "alice@acme.test", PASSWORD)


def test_passwd_sets_the_password_and_ends_the_users_sessions(acme: Cli) -> None:
    cli = acme
    token = new_session(cli, "alice@acme.test")
    other = new_session(cli, "alice@acme.test")
    assert session_alive(cli, token)
    out = ok(
        cli,
        "user",
        "passwd",
        "alice@acme.test",
        "--password-stdin",
        input="a new password 2026\n",
    )
    assert "2 session(s) ended" in out
    assert not session_alive(cli, token) and not session_alive(cli, other)
    assert signs_in(cli, "alice@acme.test", "a new password 2026")
    assert not signs_in(cli, "alice@acme.test", PASSWORD)


def test_reset_2fa_turns_totp_off_deletes_recovery_codes_and_ends_sessions(acme: Cli) -> None:
    cli = acme
    with store(cli) as db:
        user = users.user_by_email(db=db, email="alice@acme.test")
        db.execute(
            "UPDATE users SET totp_secret = 'JBSWY3DPEHPK3PXP', totp_enabled_at = :now,"
            " totp_last_step = 5 WHERE id = :id",
            {"now": time.time(), "id": user.id},
        )
        db.execute(
            "INSERT INTO recovery_codes (user_id, code_hash) VALUES (:id, 'aa'), (:id, 'bb')",
            {"id": user.id},
        )
    token = new_session(cli, "alice@acme.test")
    assert as_json(cli, "user", "list")[0]["two_factor"] is True

    ok(cli, "user", "reset-2fa", "alice@acme.test")
    assert as_json(cli, "user", "list")[0]["two_factor"] is False
    assert not session_alive(cli, token)
    with store(cli) as db:
        row = db.one(
            "SELECT totp_secret, totp_enabled_at, totp_last_step FROM users WHERE id = :id",
            {"id": user.id},
        )
        codes = db.scalar(
            "SELECT count(*) FROM recovery_codes WHERE user_id = :id", {"id": user.id}
        )
    assert row == {"totp_secret": None, "totp_enabled_at": None, "totp_last_step": None}
    assert codes == 0
    assert signs_in(cli, "alice@acme.test", PASSWORD)  # the password is untouched


def test_user_remove_deletes_the_account_but_not_the_last_owner(acme: Cli) -> None:
    cli = acme
    ok(cli, "user", "add", "bob@acme.test", "--org", "acme", "--role", "owner")
    token = new_session(cli, "bob@acme.test")
    ok(cli, "user", "remove", "bob@acme.test", "--yes")
    assert [u["email"] for u in as_json(cli, "user", "list")] == ["alice@acme.test"]
    assert not session_alive(cli, token)
    assert not signs_in(cli, "bob@acme.test", PASSWORD)
    assert cli("user", "remove", "alice@acme.test", "--yes").code == 2  # acme's last owner
    with store(cli) as db:  # the audit log keeps the removed user's rows
        actions = {
            r["action"]
            for r in db.all("SELECT action FROM audit_log WHERE target = 'bob@acme.test'")
        }
    assert {"user.create", "member.add", "user.remove"} <= actions


def test_apikey_create_prints_the_key_once_and_revoke_stops_it_at_once(acme: Cli) -> None:
    cli = acme
    printed = cli("apikey", "create", "--org", "acme", "--name", "deploy")
    assert printed.code == 0
    key = printed.stdout.strip()
    assert key.startswith("smtpy_") and "\n" not in key
    assert "shown only this once" in printed.stderr
    assert key_works(cli, key)

    created = as_json(cli, "apikey", "create", "--name", "nightly", "--expires-in", "30")
    assert created["key"].startswith(f"smtpy_{created['id']}_")
    assert 29 * 86400 < created["expires_at"] - time.time() <= 30 * 86400
    default_org = created["organization_id"]

    everything = as_json(cli, "apikey", "list")
    assert {k["name"] for k in everything} == {"deploy", "nightly"}
    assert key not in json.dumps(everything) and created["key"] not in json.dumps(everything)
    acme_keys = as_json(cli, "apikey", "list", "--org", "acme")
    assert [k["name"] for k in acme_keys] == ["deploy"]
    assert acme_keys[0]["organization_id"] != default_org
    table = ok(cli, "apikey", "list")
    assert "deploy" in table and "active" in table
    assert key.split("_", 2)[2] not in table

    key_id = acme_keys[0]["id"]
    assert f"revoked API key {key_id}" in ok(cli, "apikey", "revoke", key_id)
    assert not key_works(cli, key)
    assert key_works(cli, created["key"])
    revoked = {k["id"]: k for k in as_json(cli, "apikey", "list")}[key_id]
    assert revoked["revoked_at"] is not None
    assert "revoked" in ok(cli, "apikey", "list", "--org", "acme")
    # Revoking it again changes nothing and is no error; another organization's is not found.
    ok(cli, "apikey", "revoke", key_id)
    assert cli("apikey", "revoke", created["id"], "--org", "acme").code == 2
    assert key_works(cli, created["key"])


def test_every_command_has_help(cli: Cli) -> None:
    for group, commands in {
        "org": ("add", "list", "show"),
        "user": ("add", "list", "remove", "passwd", "reset-2fa"),
        "apikey": ("create", "list", "revoke"),
    }.items():
        listing = ok(cli, group, "--help")
        for command in commands:
            assert command in listing
            assert "Usage:" in ok(cli, group, command, "--help")


def test_on_a_terminal_user_add_asks_for_the_password_twice_without_echo(acme: Cli) -> None:
    import os
    import pty
    import select
    import sys

    pid, fd = pty.fork()
    if pid == 0:  # the child: smtpy on a terminal
        os.execve(
            sys.executable,
            [sys.executable, "-m", "smtpy", "user", "add", "tty@acme.test", "--org", "acme"],
            acme.env,
        )
    seen = b""

    def wait_for(token: bytes) -> None:
        nonlocal seen
        deadline = time.monotonic() + 60
        while token not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                try:
                    seen += os.read(fd, 1024)
                except OSError:  # the child closed the terminal
                    return

    try:
        wait_for(b"Password: ")
        os.write(fd, b"typed on a terminal\n")
        wait_for(b"Repeat for confirmation: ")
        os.write(fd, b"typed on a terminal\n")
        wait_for(b"added tty@acme.test")
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, seen
    assert b"typed on a terminal" not in seen  # never echoed
    assert signs_in(acme, "tty@acme.test", "typed on a terminal")
