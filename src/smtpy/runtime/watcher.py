"""The supervisor of several serving processes, once they serve: a small process.

`smtpy.runtime.supervisor` binds the sockets, imports what serving needs and forks
the serving processes, which share those pages. Once they all serve, it
replaces itself (exec) with this module, so the supervisor no longer holds a
copy of every page the processes have since written to: about 20 MB less
with two processes. It imports nothing but a few modules of the standard
library and `smtpy.log` (structlog loads with its first event, at a stop or
a process's death: `configure(lazy=True)`); its state comes on its command
line (which `ps` shows), not as JSON, since `json` and the `re` it needs
would double what it imports.

From then on it forwards SIGHUP to every process, sends SIGTERM to all on
SIGTERM (and SIGKILL after `STOP_TIMEOUT` seconds), and starts a process that
died again at once, as a new program (`smtpy serve` with its original
command line, told by `PROCESS_VAR` which process it is and which inherited
descriptors are its sockets). A process that keeps dying (more than
`MAX_RESTARTS` in `RESTART_WINDOW` seconds) or reports a configuration error
(exit code 2) stops the whole daemon with its exit code, as systemd expects.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterable

from smtpy import log

logger = log.get("smtpy.runtime.supervisor")

STOP_TIMEOUT = 30.0  # after SIGTERM, before SIGKILL
RESTART_WINDOW = 60.0
MAX_RESTARTS = 5
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
PROCESS_VAR = "SMTPY_SERVING_PROCESS"  # a restarted process: "index;socket,socket;ready"


def notify_systemd(state: str) -> None:
    """sd_notify(3) without a dependency: a datagram to $NOTIFY_SOCKET."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    import socket

    if address.startswith("@"):
        address = "\0" + address[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(state.encode(), address)


class Child:
    __slots__ = ("index", "pid", "started")

    def __init__(self, index: int, pid: int, started: float) -> None:
        self.index = index
        self.pid = pid
        self.started = started


class Watcher:
    """The serving processes of one `smtpy serve` and what restarting one takes.

    `command` is the daemon's own command line; `sockets` the listening
    descriptors and `ready` the pipe a process writes its index to once it
    serves, all inherited by a restarted process.
    """

    def __init__(
        self,
        *,
        command: list[str],
        sockets: list[int],
        ready: tuple[int, int],  # (read, write)
        children: dict[int, Child] | None = None,
        restarts: list[float] | None = None,
        metrics_dir: str | None = None,  # removed on the way out
        log_level: str = "info",
    ) -> None:
        self.command = command
        self.sockets = sockets
        self.ready = ready
        self.children = {} if children is None else children
        self.restarts = [] if restarts is None else restarts
        self.metrics_dir = metrics_dir
        self.log_level = log_level

    def run(self) -> int:
        """Watch until SIGTERM, then stop every process; the daemon's exit code."""
        try:
            code = self.watch()
            notify_systemd("STOPPING=1")
            return self.stop_all(code)
        finally:
            if self.metrics_dir is not None:
                import shutil

                shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def watch(self) -> int:
        """Until SIGTERM: forward SIGHUP, start again what dies; the exit code to stop with."""
        os.set_blocking(self.ready[0], False)
        while True:
            info = signal.sigtimedwait(SIGNALS, 5.0)
            signo = info.si_signo if info is not None else None
            with contextlib.suppress(BlockingIOError):
                os.read(self.ready[0], 64)  # restarted processes say they serve: nobody waits
            if signo in (signal.SIGTERM, signal.SIGINT):
                logger.info("stopping", processes=len(self.children))
                return 0
            if signo == signal.SIGHUP:
                self.signal_all(signal.SIGHUP)
                continue
            for pid, code in reap():
                child = self.children.pop(pid, None)
                if child is None:
                    continue
                logger.error("process_died", process=child.index, pid=pid, exit_code=code)
                if code == 2:  # a configuration error: starting again would fail the same way
                    return 2
                now = time.monotonic()
                self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW]
                if len(self.restarts) >= MAX_RESTARTS:
                    logger.error(
                        "giving_up", reason=f"{MAX_RESTARTS} restarts in {RESTART_WINDOW:.0f} s"
                    )
                    return 1
                self.restarts.append(now)
                self.restart(child.index)

    def restart(self, index: int) -> None:
        """Start serving process `index` again: `smtpy serve` anew, as that process."""
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        env[PROCESS_VAR] = process_spec(index, self.sockets, self.ready[1])
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            try:
                os.execve(self.command[0], self.command, env)  # noqa: S606 - our own command line
            finally:
                os._exit(127)
        self.children[pid] = Child(index, pid, time.monotonic())

    def stop_all(self, code: int) -> int:
        """SIGTERM to every process, SIGKILL to what still runs after `STOP_TIMEOUT`."""
        self.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while self.children and time.monotonic() < deadline:
            for pid, child_code in reap():
                if self.children.pop(pid, None) is not None and child_code:
                    code = code or child_code
            if self.children:
                signal.sigtimedwait([signal.SIGCHLD], 0.1)
        if self.children:
            logger.error("killing", processes=sorted(c.index for c in self.children.values()))
            self.signal_all(signal.SIGKILL)
            for pid in list(self.children):
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
            self.children.clear()
            code = code or 1
        logger.info("stopped", exit_code=code)
        return code

    def signal_all(self, signo: int) -> None:
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signo)

    # -- across the exec: the watcher's command line ------------------------

    def to_args(self) -> list[str]:
        """`key=value` words, then `--` and the daemon's command line."""
        children = ",".join(f"{c.index}:{c.pid}:{c.started!r}" for c in self.children.values())
        return [
            f"sockets={_join(self.sockets)}",
            f"ready={_join(self.ready)}",
            f"children={children}",
            f"restarts={_join(self.restarts)}",
            f"log_level={self.log_level}",
            *([f"metrics_dir={self.metrics_dir}"] if self.metrics_dir is not None else []),
            "--",
            *self.command,
        ]

    @classmethod
    def from_args(cls, args: list[str]) -> Watcher:
        end = args.index("--")
        state = dict(word.split("=", 1) for word in args[:end])
        children = [
            Child(int(index), int(pid), float(started))
            for index, pid, started in (c.split(":") for c in _split(state["children"]))
        ]
        read, write = (int(fd) for fd in _split(state["ready"]))
        return cls(
            command=args[end + 1 :],
            sockets=[int(fd) for fd in _split(state["sockets"])],
            ready=(read, write),
            children={c.pid: c for c in children},
            restarts=[float(t) for t in _split(state["restarts"])],
            metrics_dir=state.get("metrics_dir"),
            log_level=state["log_level"],
        )


def process_spec(index: int, sockets: list[int], ready: int) -> str:
    """What `PROCESS_VAR` tells a restarted serving process."""
    return f"{index};{_join(sockets)};{ready}"


def parse_process_spec(spec: str) -> tuple[int, list[int], int]:
    """(index, listening sockets, ready pipe) from `PROCESS_VAR`."""
    index, sockets, ready = spec.split(";")
    return int(index), [int(fd) for fd in _split(sockets)], int(ready)


def _join(values: Iterable[object]) -> str:
    return ",".join(repr(v) for v in values)


def _split(text: str) -> list[str]:
    return text.split(",") if text else []


def reap() -> list[tuple[int, int]]:
    """(pid, exit code) of every child that ended, without waiting."""
    ended: list[tuple[int, int]] = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return ended
        if pid == 0:
            return ended
        code = os.waitstatus_to_exitcode(status)
        ended.append((pid, code if code >= 0 else 1))  # killed by a signal: a failure


def main() -> int:
    """The supervisor after its exec: watch until SIGTERM, stop everything, clean up."""
    watcher = Watcher.from_args(sys.argv[1:])
    log.configure(watcher.log_level, lazy=True)  # structlog loads with the first event
    return watcher.run()


if __name__ == "__main__":
    sys.exit(main())
