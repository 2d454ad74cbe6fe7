"""`smtpy user …`: the people who sign in to the API and the dashboard.

A password never goes on the command line (other users see it in `ps`, the
shell keeps it in its history): `--password-stdin` reads one line from stdin,
and on a terminal the command asks twice without echo.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from smtpy.cli.context import state
from smtpy.cli.output import (
    JsonOption,
    OrgOption,
    YesOption,
    acting_org,
    confirm,
    done,
    nothing,
    print_json,
    print_table,
    when,
    yes_no,
)

EveryOrgOption = Annotated[
    str | None,
    typer.Option(
        "--org",
        help="Only the members of the organization of this name (default: every organization).",
        show_default=False,
    ),
]

app = typer.Typer(
    help="Add, list and remove users; set their password; reset their two-factor login.",
    no_args_is_help=True,
)

EmailArg = Annotated[str, typer.Argument(help="The user's e-mail address.", show_default=False)]
PasswordStdinOption = Annotated[
    bool,
    typer.Option(
        "--password-stdin",
        help="Read the password from the first line of stdin (never give it as an argument).",
    ),
]


def _read_password(from_stdin: bool, *, required: bool) -> str | None:
    """The password from stdin's first line, else asked twice on a terminal; None when
    there is neither and none is `required`."""
    from smtpy.errors import InvalidInput

    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise InvalidInput("--password-stdin: stdin held no password on its first line")
        return password
    if sys.stdin.isatty():
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
        return str(password)
    if required:
        raise InvalidInput("give the new password on stdin with --password-stdin")
    return None


@app.command("add")
def add(
    ctx: typer.Context,
    email: EmailArg,
    org: OrgOption = None,
    role: Annotated[
        str | None,
        typer.Option(
            "--role",
            help="owner, admin or member (default: owner when the organization has no owner "
            "yet, else member).",
            show_default=False,
        ),
    ] = None,
    password_stdin: PasswordStdinOption = False,
    name: Annotated[
        str, typer.Option("--name", help="The user's name, as the dashboard shows it.")
    ] = "",
    json: JsonOption = False,
) -> None:
    """Create a user in an organization (an existing user joins it).

    Without --password-stdin, a terminal asks for the password twice; otherwise the user
    gets no password and sets one through a password-reset link.
    """
    from smtpy.accounts.roles import parse_role
    from smtpy.accounts.users import add_user

    chosen = None if role is None else parse_role(role)
    password = _read_password(password_stdin, required=False)
    with state(ctx).database() as db:
        user, given = add_user(
            db=db,
            email=email,
            org=acting_org(db, org),
            role=chosen,
            password=password,
            name=name,
        )
    if json:
        print_json({**user.model_dump(mode="json"), "role": given})
        return
    where = org or "the default organization"
    how = "" if password is not None else "; no password: they set one with a reset link"
    done(f"added {user.email} to {where} as {given}{how}")


@app.command("list")
def list_(ctx: typer.Context, org: EveryOrgOption = None, json: JsonOption = False) -> None:
    """List users with their organizations and roles (every user, or --org's members)."""
    from smtpy.accounts.users import list_users

    with state(ctx).database() as db:
        users = list_users(db=db, org=None if org is None else acting_org(db, org))
    if json:
        print_json(users)
        return
    if not users:
        nothing("there are no users yet; add one with `smtpy user add EMAIL --org NAME`")
        return
    print_table(
        None,
        ["email", "name", "organizations", "2fa", "confirmed", "added"],
        [
            (
                u.email,
                u.name,
                "\n".join(f"{o.name} ({o.role})" for o in u.organizations) or "-",
                yes_no(u.two_factor),
                yes_no(u.email_confirmed),
                when(u.created_at),
            )
            for u in users
        ],
        whole=["email"],
    )


@app.command("remove")
def remove(ctx: typer.Context, email: EmailArg, yes: YesOption = False) -> None:
    """Delete a user with their memberships and sessions (never an organization's last
    owner); the audit log keeps what they did."""
    from smtpy.accounts.users import remove_user, user_by_email

    with state(ctx).database() as db:
        user = user_by_email(db=db, email=email)
        confirm(f"Remove the user {user.email}?", yes)
        remove_user(db=db, user_id=user.id)
    done(f"removed {user.email}")


@app.command("passwd")
def passwd(
    ctx: typer.Context, email: EmailArg, password_stdin: PasswordStdinOption = False
) -> None:
    """Set a user's password; every session of theirs ends."""
    from smtpy.accounts.users import change_password, user_by_email

    with state(ctx).database() as db:
        user = user_by_email(db=db, email=email)
        password = _read_password(password_stdin, required=True)
        assert password is not None
        ended = change_password(db=db, user_id=user.id, password=password)
    done(f"changed the password of {user.email}; {ended} session(s) ended")


@app.command("reset-2fa")
def reset_2fa(ctx: typer.Context, email: EmailArg) -> None:
    """Turn off a user's two-factor login (a lost device): their TOTP secret and recovery
    codes are deleted and their sessions end; they sign in with the password and may
    enrol again."""
    from smtpy.accounts.users import reset_two_factor, user_by_email

    with state(ctx).database() as db:
        user = user_by_email(db=db, email=email)
        reset_two_factor(db=db, user_id=user.id)
    done(f"two-factor login of {user.email} is off; their sessions ended")
