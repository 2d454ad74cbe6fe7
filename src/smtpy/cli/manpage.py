"""Generate the manual pages from the real CLI and settings.

`man/smtpy.1` documents every command and option, `man/smtpy.toml.5` every
setting with its environment variable and default. Both are written by
`python -m smtpy.cli.manpage man/`, and a test fails when the committed pages
differ from what the code generates, so they cannot go stale.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from smtpy import __version__

DATE = "2026-11-26"


def _escape(text: str) -> str:
    text = text.replace("\\", "\\e").replace("-", "\\-")
    lines = []
    for line in text.splitlines():
        if line.startswith((".", "'")):
            line = "\\&" + line
        lines.append(line)
    return "\n".join(lines)


def _paragraphs(text: str) -> str:
    """Click help text → troff paragraphs (blank lines separate them)."""
    import inspect

    cleaned = inspect.cleandoc(text or "")
    blocks = [" ".join(block.split()) for block in cleaned.split("\n\n") if block.strip()]
    return "\n.PP\n".join(_escape(block) for block in blocks)


def _option_line(param: click.Parameter) -> str:
    if isinstance(param, click.Option):
        names = ", ".join(f"\\fB{_escape(n)}\\fR" for n in param.opts + param.secondary_opts)
        if not param.is_flag:
            names += f" \\fI{_escape(param.name.upper() if param.name else 'VALUE')}\\fR"
        return names
    return f"\\fI{_escape((param.name or 'ARG').upper())}\\fR"


def _commands(
    group: click.Group, ctx: click.Context, prefix: list[str]
) -> list[tuple[list[str], click.Command]]:
    found: list[tuple[list[str], click.Command]] = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        path = [*prefix, name]
        if isinstance(command, click.Group):
            found += _commands(command, click.Context(command, parent=ctx, info_name=name), path)
        else:
            found.append((path, command))
    return found


def _usage(path: list[str], command: click.Command) -> str:
    parts = [f"\\fBsmtpy {' '.join(path)}\\fR"]
    for param in command.params:
        if isinstance(param, click.Argument):
            name = _escape((param.name or "ARG").upper())
            name += " ..." if param.nargs == -1 else ""
            parts.append(f"\\fI{name}\\fR" if param.required else f"[\\fI{name}\\fR]")
    if any(isinstance(p, click.Option) for p in command.params):
        parts.append("[\\fIOPTIONS\\fR]")
    return " ".join(parts)


_COMPLETION = [
    ".SH COMPLETION",
    "Command, option and argument completion works in bash, zsh and fish. "
    "\\fBsmtpy \\-\\-install\\-completion\\fR adds it to the start\\-up file of the shell "
    "it runs in; \\fBsmtpy \\-\\-show\\-completion\\fR prints that shell's script instead. "
    "For another shell, or to install the scripts system\\-wide as the Debian package does, "
    "set \\fB_SMTPY_COMPLETE\\fR to \\fBsource_bash\\fR, \\fBsource_zsh\\fR or "
    "\\fBsource_fish\\fR:",
    ".PP",
    ".nf",
    "_SMTPY_COMPLETE=source_bash smtpy > /usr/share/bash\\-completion/completions/smtpy",
    "_SMTPY_COMPLETE=source_zsh smtpy > /usr/share/zsh/vendor\\-completions/_smtpy",
    "_SMTPY_COMPLETE=source_fish smtpy > /usr/share/fish/vendor_completions.d/smtpy.fish",
    ".fi",
]


def smtpy_1() -> str:
    from typer.main import get_command

    from smtpy.cli import app

    root = get_command(app)
    assert isinstance(root, click.Group)
    ctx = click.Context(root, info_name="smtpy")
    out = [
        f'.TH SMTPY 1 "{DATE}" "smtpy {__version__}" "smtpy manual"',
        ".SH NAME",
        "smtpy \\- self\\-hosted mail forwarder with SRS, DKIM and a durable queue",
        ".SH SYNOPSIS",
        "\\fBsmtpy\\fR [\\fB\\-\\-config\\fR \\fIPATH\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]...",
        ".SH DESCRIPTION",
        _paragraphs(root.help or ""),
        ".PP",
        "\\fBsmtpy serve\\fR is the MX of the served domains: it accepts mail only for known "
        "recipients, rewrites the envelope sender with SRS, signs with DKIM, stores every "
        "accepted message durably before answering 250, and delivers it with retries or "
        "bounces it with a DSN. The other commands manage the same store and do not need "
        "the daemon to run.",
        ".SH GLOBAL OPTIONS",
    ]
    for param in root.params:
        if isinstance(param, click.Option) and not param.hidden:
            out += [".TP", _option_line(param), _escape(param.help or "")]
    out.append(".SH COMMANDS")
    for path, command in _commands(root, ctx, []):
        out += [
            ".SS " + _escape(" ".join(path)),
            _usage(path, command),
            ".PP",
            _paragraphs(command.help or ""),
        ]
        for param in command.params:
            if isinstance(param, click.Option) and param.name == "help":
                continue
            help_text = getattr(param, "help", None) or ""
            out += [".TP", _option_line(param), _escape(help_text)]
    out += [
        ".SH EXIT STATUS",
        "0 on success; 1 when a check fails (for example \\fBdomain verify\\fR finds records "
        "missing) or the store fails; 2 on bad usage or bad input. Errors are one line on "
        "standard error, never a traceback.",
        ".SH THE STORE",
        "Without \\fBSMTPY_DATABASE_URL\\fR or \\fBSMTPY_STATE_DIR\\fR, the store is "
        "\\fIsmtpy.db\\fR in \\fI/var/lib/smtpy\\fR or in \\fI$XDG_DATA_HOME/smtpy\\fR "
        "(\\fI~/.local/share/smtpy\\fR). A store that exists in one of them is the store, "
        "wherever it was created (installing the Debian package after a trial in the home "
        "directory keeps that store); when both hold one, every command refuses and names "
        "both. When neither does, a new store goes to /var/lib/smtpy if this user may write "
        "there, else to the home directory. \\fBsmtpy config show\\fR and \\fBsmtpy "
        "status\\fR say which store they use, and \\fBsmtpy serve\\fR says it in its first "
        "log line.",
        ".PP",
        "Only \\fBsmtpy serve\\fR, \\fBsmtpy db upgrade\\fR and \\fBsmtpy domain add\\fR "
        "create a store: the commands that make sense on an empty one. Every other command "
        "(including \\fBalias add\\fR, \\fBalias import\\fR and \\fBkey generate\\fR, "
        "whose domain could not be in a new store) exits 2 when the SQLite store does not "
        "exist, naming the path, and creates nothing: a mistyped \\fBSMTPY_DATABASE_URL\\fR "
        "never becomes a new, empty store.",
        ".SH ENVIRONMENT",
        "Every setting can be given as an \\fBSMTPY_*\\fR variable; see \\fBsmtpy.toml\\fR(5).",
        ".PP",
        "A local trial needs three: \\fBSMTPY_HOSTNAME\\fR (the forwarder's name), "
        "\\fBSMTPY_LISTEN\\fR (a high port such as 127.0.0.1:2525 needs no privilege), and "
        "\\fBSMTPY_RELAY_HOST\\fR (\\fIhost:port\\fR of a smarthost, or of a local SMTP sink "
        "such as \\fBaiosmtpd \\-n \\-l 127.0.0.1:2526\\fR, that takes every message instead "
        "of the destinations' MX hosts) or \\fBSMTPY_DELIVERY_PORT\\fR (the port used on the "
        "MX hosts, 25 by default). \\fBsmtpy test\\fR \\fIALIAS\\fR then proves that "
        "forwarding works.",
        *_COMPLETION,
        ".SH FILES",
        ".TP",
        "\\fI/etc/smtpy/smtpy.toml\\fR",
        "Settings, read when present.",
        ".TP",
        "\\fI/var/lib/smtpy/smtpy.db\\fR",
        "The default SQLite store, or \\fI$XDG_DATA_HOME/smtpy/smtpy.db\\fR (see THE STORE).",
        ".SH SEE ALSO",
        "\\fBsmtpy.toml\\fR(5)",
    ]
    return "\n".join(out) + "\n"


def _default(field: Any) -> str:
    if field.default_factory is not None:
        return "computed at start-up"
    value = field.default
    if value is None:
        return "unset"
    items = value if isinstance(value, list) else [value]
    return ",".join(
        (f"[{item[0]}]:{item[1]}" if ":" in item[0] else f"{item[0]}:{item[1]}")
        if isinstance(item, tuple)
        else str(item)
        for item in items
    )


_COMPUTED = {
    "state_dir": (
        "where a store exists, /var/lib/smtpy or $XDG_DATA_HOME/smtpy; without one, "
        "/var/lib/smtpy when writable, else $XDG_DATA_HOME/smtpy"
    ),
    "database_url": "sqlite:///STATE_DIR/smtpy.db",
    "hostname": "the machine's fully qualified name",
    "node_name": "the machine's host name",
}


def smtpy_toml_5() -> str:
    from smtpy.config import Settings

    out = [
        f'.TH SMTPY.TOML 5 "{DATE}" "smtpy {__version__}" "smtpy manual"',
        ".SH NAME",
        "smtpy.toml \\- settings of the smtpy mail forwarder",
        ".SH DESCRIPTION",
        "smtpy reads its settings from built\\-in defaults, then a TOML file, then "
        "environment variables, each overriding the one before. The file is the one given "
        "with \\fB\\-\\-config\\fR or \\fBSMTPY_CONFIG\\fR, else \\fI/etc/smtpy/smtpy.toml\\fR "
        "if it exists. In the file, a setting is its name in lower case (optionally inside an "
        "\\fB[smtpy]\\fR table); in the environment, the name in upper case with the "
        "\\fBSMTPY_\\fR prefix. Lists are comma\\-separated strings or TOML arrays. "
        "\\fBsmtpy config show\\fR prints the effective values and where each came from.",
        ".SH SETTINGS",
    ]
    for name, field in Settings.model_fields.items():
        default = _COMPUTED.get(name) or _default(field)
        out += [
            ".TP",
            f"\\fB{_escape(name)}\\fR (\\fBSMTPY_{_escape(name.upper())}\\fR)",
            _escape(field.description or ""),
            ".br",
            f"Default: {_escape(default)}.",
        ]
    out += [
        ".SH EXAMPLE",
        ".nf",
        'hostname = "mx.example.net"',
        'listen = "0.0.0.0:25,[::]:25"',
        'database_url = "postgresql://smtpy:secret@db.example.net/smtpy"',
        'retry_schedule = "60,300,900,1800,3600"',
        ".fi",
        ".SH SEE ALSO",
        "\\fBsmtpy\\fR(1)",
    ]
    return "\n".join(out) + "\n"


PAGES = {"smtpy.1": smtpy_1, "smtpy.toml.5": smtpy_toml_5}


def main(argv: list[str]) -> int:
    target = Path(argv[0] if argv else "man")
    target.mkdir(parents=True, exist_ok=True)
    for name, build in PAGES.items():
        (target / name).write_text(build(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
