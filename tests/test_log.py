"""The daemon's structured log (smtpy.log)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

WRITER = """
import sys
from smtpy import log
log.configure(json=True)
logger = log.get("test")
for n in range(int(sys.argv[1])):
    logger.info("line", writer=sys.argv[2], n=n, padding="x" * 200)
"""


def test_processes_sharing_stderr_never_mix_their_lines(tmp_path: Path) -> None:
    """Serving processes share the supervisor's stderr: each line must arrive whole."""
    path = tmp_path / "shared.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # stderr unbuffered: the hardest case
    with path.open("ab") as shared:
        writers = [
            subprocess.Popen([sys.executable, "-c", WRITER, "3000", name], stderr=shared, env=env)
            for name in ("a", "b", "c")
        ]
        for writer in writers:
            assert writer.wait(timeout=60) == 0
    events = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted((e["writer"], e["n"]) for e in events) == sorted(
        (name, n) for name in ("a", "b", "c") for n in range(3000)
    )


def run_python(code: str, *, env: dict[str, str] | None = None) -> tuple[str, str]:
    """Run `code` in a new interpreter, stderr a pipe (not a terminal); (stdout, stderr)."""
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )
    assert run.returncode == 0, run.stderr
    return run.stdout, run.stderr


def json_lines(stderr: str) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in stderr.splitlines()]
    for line in lines:
        assert isinstance(line, dict)
        assert {"event", "level", "timestamp"} <= line.keys(), line
    return lines


STANDARD_LIBRARY = """
import asyncio, logging, warnings
from smtpy import log
log.configure()
log.bind(process=2)
logging.getLogger("smtpy.outbound.deliver").info("%s did not take mail", "mx.dest.test[127.0.0.2]")
logging.getLogger("mail.log").info("%r Data: %s", ("127.0.0.1", 4000), "EHLO \\x1b[2Jevil")
logging.getLogger("mail.log").warning("%r unrecognised: %s", ("127.0.0.1", 4000), "GAR\\rBAGE")
logging.getLogger("alembic.runtime.migration").info("Running upgrade  -> 0001")
warnings.warn("an old API")

def deliver():
    dkim_private_key = "-----BEGIN PRIVATE KEY----- SECRET"
    raise RuntimeError("the transaction broke")

try:
    deliver()
except RuntimeError:
    logging.getLogger("smtpy.outbound.deliver").exception("delivery to %s failed", "dest.test")
    log.get("smtpy.queue.scheduler").exception("delivery_error", queue_id="Q1")

async def main():
    asyncio.get_running_loop().call_soon(deliver)
    await asyncio.sleep(0)
asyncio.run(main())
"""


def test_standard_library_records_become_json_lines_like_ours() -> None:
    """deliver.py's INFO lines, aiosmtpd, alembic, warnings, asyncio: one JSON object each."""
    _, stderr = run_python(STANDARD_LIBRARY)
    lines = json_lines(stderr)
    by_logger = [(e.get("logger"), e["level"]) for e in lines]
    assert by_logger == [
        ("smtpy.outbound.deliver", "info"),
        ("mail.log", "warning"),  # its INFO echo of the client's command is held back
        ("alembic.runtime.migration", "info"),
        ("py.warnings", "warning"),
        ("smtpy.outbound.deliver", "error"),
        ("smtpy.queue.scheduler", "error"),
        ("asyncio", "error"),
    ]
    assert lines[0]["event"] == "mx.dest.test[127.0.0.2] did not take mail"
    assert all(e["process"] == 2 for e in lines)
    assert "evil" not in stderr
    assert lines[1]["event"] == "('127.0.0.1', 4000) unrecognised: GAR\rBAGE"  # escaped in JSON
    for traced in lines[4:]:
        exception = str(traced["exception"])
        assert exception.startswith("Traceback (most recent call last):")
        assert exception.endswith("RuntimeError: the transaction broke")
    assert "SECRET" not in stderr  # no local variables in a traceback


def test_terminal_lines_escape_control_characters() -> None:
    _, stderr = run_python(
        "import logging\n"
        "from smtpy import log\n"
        "log.configure(json=False)\n"
        "log.get('smtpy.smtp.handler').info('session', helo='x\\x1b[2J\\r\\nfake line')\n"
        "logging.getLogger('mail.log').warning('unrecognised: %s', 'A\\x00B')\n"
    )
    assert not any(c in stderr for c in "\x1b\r\x00")
    lines = stderr.splitlines()
    assert len(lines) == 2
    assert "session" in lines[0]
    assert "helo='x\\x1b[2J\\r\\nfake line'" in lines[0]
    assert "unrecognised: A\\x00B" in lines[1]


def test_the_level_holds_back_lower_events() -> None:
    _, stderr = run_python(
        "import logging\n"
        "from smtpy import log\n"
        "log.configure('warning')\n"
        "log.get('a').info('hidden')\n"
        "logging.getLogger('b').info('hidden too')\n"
        "log.get('a').warning('shown')\n"
        "logging.getLogger('b').error('shown too')\n"
    )
    assert [(e["event"], e["level"]) for e in json_lines(stderr)] == [
        ("shown", "warning"),
        ("shown too", "error"),
    ]


def test_structlog_loads_only_to_log_and_never_rich() -> None:
    """A command that logs nothing never imports structlog; a JSON process never loads rich."""
    stdout, stderr = run_python(
        "import sys\n"
        "from smtpy import log\n"
        "logger = log.get('smtpy.x')\n"
        "log.configure('info', lazy=True)\n"
        "print('structlog' in sys.modules)\n"
        "logger.info('first')\n"
        "print('structlog' in sys.modules, 'rich' in sys.modules, 'pygments' in sys.modules)\n"
    )
    assert stdout.split("\n")[:2] == ["False", "True False False"]
    assert [e["event"] for e in json_lines(stderr)] == ["first"]
