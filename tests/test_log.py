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
