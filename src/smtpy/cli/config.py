"""`smtpy config …`: the effective settings."""

from __future__ import annotations

import typer

from smtpy.cli.context import state
from smtpy.cli.output import JsonOption, done, print_json, print_table

app = typer.Typer(help="Show and check the settings.", no_args_is_help=True)


@app.command("show")
def show(ctx: typer.Context, json: JsonOption = False) -> None:
    """Print every setting, its value (secrets masked) and where it came from."""
    loaded = state(ctx).loaded
    settings = loaded.settings
    rows = [
        {
            "name": name,
            "env": f"SMTPY_{name.upper()}",
            "value": settings.display(name),
            "source": loaded.sources[name],
        }
        for name in type(settings).model_fields
    ]
    if json:
        print_json(rows)
        return
    print_table(
        None, ["setting", "value", "source"], [(r["env"], r["value"], r["source"]) for r in rows]
    )
    source = loaded.sources["database_url"]
    if source == "default":  # smtpy.db in the state directory: say how that was chosen
        source = loaded.sources["state_dir"]
    typer.echo(f"store: {settings.display('database_url')} ({source})")


@app.command("check")
def check(ctx: typer.Context) -> None:
    """Validate the settings and the files they name; exit 1 with the reason if one is wrong.

    SMTPY_* variables that are no setting are listed as problems too, with the closest
    setting's name."""
    from smtpy.admin.config_check import check_loaded
    from smtpy.errors import CheckFailed, SmtpyError

    st = state(ctx)
    st.print_warnings = False  # listed below with the other problems
    try:
        loaded = st.loaded
    except SmtpyError as exc:
        raise CheckFailed(str(exc)) from None
    problems = check_loaded(loaded)
    if problems:
        raise CheckFailed("; ".join(problems))
    done(f"configuration OK; store {loaded.settings.display('database_url')}")
