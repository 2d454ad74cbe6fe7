"""What systemd/smtpy.service relies on, checked on the real daemon.

The unit says `Type=notify` (systemd waits for READY=1 and shows STATUS=),
`ExecReload=kill -HUP $MAINPID` and stops with SIGTERM. There is no systemd
here, so the test plays its part: a datagram socket in NOTIFY_SOCKET.
"""

from __future__ import annotations

import signal
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailpeers import Serve

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    # AF_UNIX paths are limited to 108 bytes: keep it short.
    with tempfile.TemporaryDirectory(prefix="sdn") as folder:
        path = str(Path(folder) / "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            sock.settimeout(30)
            yield sock, path


def _next_state(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.splitlines() if "=" in line)


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_daemon_speaks_the_notify_protocol_reloads_and_stops(
    cli_env: dict[str, str], tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    daemon = Serve({**cli_env, "NOTIFY_SOCKET": path}, tmp_path / "serve.log")
    daemon.start()
    try:
        ready = _next_state(sock)
        assert ready.get("READY") == "1", ready
        assert f"127.0.0.1:{daemon.port}" in ready.get("STATUS", ""), ready

        daemon.signal(signal.SIGHUP)  # systemctl reload smtpy
        daemon.wait_event("reloaded")
        assert daemon.running

        assert daemon.stop() == 0  # systemctl stop smtpy
        states = [_next_state(sock)]
        while "STOPPING" not in states[-1]:
            states.append(_next_state(sock))
        assert states[-1]["STOPPING"] == "1"
    finally:
        if daemon.running:
            daemon.stop()
