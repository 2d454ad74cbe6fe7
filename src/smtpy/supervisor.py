"""Several serving processes for one `smtpy serve`: one core each.

A Python process runs on one core; `smtpy serve` with SMTPY_PROCESSES=N binds
the listening sockets once, forks N serving processes that all accept on
them, and watches them:

- Each process is a whole daemon (inbound sessions and delivery workers) with
  its own store connections. They share the queue the way several nodes do,
  so each leases deliveries under its own name, `NODE.1` … `NODE.N`.
- systemd hears READY=1 once every process serves, and STOPPING=1 on
  SIGTERM, which goes to every process; each finishes its sessions and
  returns its in-flight deliveries to the queue, and the supervisor exits 0
  once all have. SIGHUP goes to every process (reload without dropping
  sessions).
- A process that dies is started again at once; its deliveries come back
  to the queue as it starts. A process that keeps dying (more than
  `MAX_RESTARTS` in `RESTART_WINDOW` seconds) or reports a configuration
  error stops the whole daemon with its exit code, as systemd expects.

Nothing but the supervisor's own bookkeeping runs in the parent: no thread is
started before the forks, and the store is touched only to resume the
deliveries a previous run left leased.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

from smtpy import listeners, log
from smtpy.config import Settings
from smtpy.errors import SmtpyError
from smtpy.store.db import dialect

logger = log.get("smtpy.supervisor")

READY_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0  # after SIGTERM, before SIGKILL
RESTART_WINDOW = 60.0
MAX_RESTARTS = 5
_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
# The modules a serving process imports as it starts.
PRELOAD = (
    "smtpy.receive",
    "smtpy.worker",
    "smtpy.deliver",
    "smtpy.dns",
    "smtpy.sign",
    "smtpy.bounce",
    "smtpy.admin.aliases",
    "smtpy.admin.keys",
    "smtpy.admin.srs_secret",
    "smtpy.authcheck",
    "smtpy.limits",
    "smtpy.scan",
    "smtpy.upkeep",
    "smtpy.metrics",
    "aiosmtplib",
)


@dataclass
class _Child:
    index: int
    pid: int
    started: float


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        *,
        processes: int,
        reload: Callable[[], Settings] | None = None,
    ) -> None:
        self.settings = settings
        self.processes = processes
        self._reload = reload
        self._children: dict[int, _Child] = {}
        self._restarts: list[float] = []
        self._sockets: list[socket.socket] = []

    def node_name(self, index: int) -> str:
        return f"{self.settings.node_name}.{index}"

    def run(self) -> int:
        from smtpy.daemon import notify_systemd, tls_context

        # Signals wait (sigtimedwait) from now on: a SIGTERM during start-up stops cleanly.
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        ready_read, ready_write = os.pipe()
        metrics_dir: str | None = None
        try:
            tls_context(self.settings)  # a bad certificate fails here, once, not in every process
            self._resume_deliveries()
            metrics_dir = self._share_metrics()
            _preload(postgres=dialect(self.settings.database_url) == "postgresql")
            self._sockets = listeners.bind(self.settings.listen)
            for index in range(1, self.processes + 1):
                self._start(index, ready_write)
            code = self._wait_ready(ready_read)
            if code is not None:
                return self._stop_all(code)
            addresses = ", ".join(f"{h}:{p}" for h, p in self.settings.listen)
            logger.info(
                "started",
                listen=addresses,
                processes=self.processes,
                node=self.settings.node_name,
            )
            notify_systemd(f"READY=1\nSTATUS={self.processes} processes listening on {addresses}")
            code = self._watch(ready_write)
            notify_systemd("STOPPING=1")
            return self._stop_all(code)
        finally:
            if metrics_dir is not None:
                shutil.rmtree(metrics_dir, ignore_errors=True)
            os.close(ready_read)
            os.close(ready_write)
            for sock in self._sockets:
                sock.close()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)

    # -- the parent --------------------------------------------------------

    def _resume_deliveries(self) -> None:
        """Return what the processes of a previous run still held (after a crash) to the queue."""
        from smtpy.queue import release_leases
        from smtpy.store.db import Database

        with Database(self.settings.database_url) as db:
            released = release_leases(db, node=f"{self.settings.node_name}.", prefix=True)
        if released:
            logger.info("resumed", deliveries=released, node=self.settings.node_name)

    def _share_metrics(self) -> str | None:
        """With SMTPY_METRICS_LISTEN: a directory where every process keeps its counters."""
        if self.settings.metrics_listen is None:
            return None
        if "prometheus_client" in sys.modules:  # too late: its values were made per process
            logger.warning("metrics_per_process", reason="prometheus_client was imported early")
            return None
        directory = tempfile.mkdtemp(prefix="smtpy-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory  # read as prometheus_client loads
        return directory

    def _start(self, index: int, ready_write: int) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os._exit(self._child_main(index, ready_write))
        self._children[pid] = _Child(index, pid, time.monotonic())

    def _wait_ready(self, ready_read: int) -> int | None:
        """Wait until every process serves; an exit code if one failed instead."""
        waiting = {child.index for child in self._children.values()}
        deadline = time.monotonic() + READY_TIMEOUT
        os.set_blocking(ready_read, False)
        while waiting:
            with contextlib.suppress(BlockingIOError):
                for byte in os.read(ready_read, 64):
                    waiting.discard(byte)
            if not waiting:
                break
            for pid, code in _reap():
                child = self._children.pop(pid, None)
                if child is not None:
                    logger.error("process_failed_to_start", process=child.index, exit_code=code)
                    return code or 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                logger.error("start_timeout", waiting=sorted(waiting), seconds=READY_TIMEOUT)
                return 1
            info = signal.sigtimedwait(_SIGNALS, min(remaining, 0.05))
            if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT):
                return 0
        return None

    def _watch(self, ready_write: int) -> int:
        """Until SIGTERM: forward SIGHUP, start again what dies; the exit code to stop with."""
        while True:
            info = signal.sigtimedwait(_SIGNALS, 5.0)
            signo = info.si_signo if info is not None else None
            if signo in (signal.SIGTERM, signal.SIGINT):
                logger.info("stopping", processes=len(self._children))
                return 0
            if signo == signal.SIGHUP:
                self._signal_all(signal.SIGHUP)
                continue
            for pid, code in _reap():
                child = self._children.pop(pid, None)
                if child is None:
                    continue
                logger.error("process_died", process=child.index, pid=pid, exit_code=code)
                if code == 2:  # a configuration error: starting again would fail the same way
                    return 2
                now = time.monotonic()
                self._restarts = [t for t in self._restarts if now - t < RESTART_WINDOW]
                if len(self._restarts) >= MAX_RESTARTS:
                    logger.error(
                        "giving_up", reason=f"{MAX_RESTARTS} restarts in {RESTART_WINDOW:.0f} s"
                    )
                    return 1
                self._restarts.append(now)
                self._start(child.index, ready_write)

    def _stop_all(self, code: int) -> int:
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while self._children and time.monotonic() < deadline:
            for pid, child_code in _reap():
                if self._children.pop(pid, None) is not None and child_code:
                    code = code or child_code
            if self._children:
                signal.sigtimedwait([signal.SIGCHLD], 0.1)
        if self._children:
            logger.error("killing", processes=sorted(c.index for c in self._children.values()))
            self._signal_all(signal.SIGKILL)
            for pid in list(self._children):
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
            self._children.clear()
            code = code or 1
        logger.info("stopped", exit_code=code)
        return code

    def _signal_all(self, signo: int) -> None:
        for pid in self._children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signo)

    # -- a serving process -------------------------------------------------

    def _child_main(self, index: int, ready_write: int) -> int:
        from smtpy.daemon import Daemon

        os.environ.pop("NOTIFY_SOCKET", None)  # only the supervisor talks to systemd
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        log.bind(process=index)  # on every event of this process
        settings = self.settings.model_copy(update={"node_name": self.node_name(index)})

        def ready(status: str) -> None:
            os.write(ready_write, bytes([index]))

        try:
            daemon = Daemon(
                settings,
                reload=self._reload,
                sockets=self._sockets,
                ready=ready,
                serve_metrics=index == 1,
            )
            return asyncio.run(daemon.serve())
        except SmtpyError as exc:
            print(f"smtpy: error: {exc}", file=sys.stderr)
            return exc.exit_code
        except KeyboardInterrupt:
            return 0
        except BaseException as exc:
            logger.error(
                "process_crashed", process=index, error_type=type(exc).__name__, error=str(exc)
            )
            return 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()


def _preload(*, postgres: bool) -> None:
    """Import what serving needs before the forks, so the processes share those pages.

    The PostgreSQL driver only for a PostgreSQL store: a SQLite one never loads it.

    `gc.freeze()` keeps the collector from writing to the imported objects'
    headers in each process, which would copy the shared pages one by one.
    """
    import gc
    import importlib

    for module in (*PRELOAD, "psycopg") if postgres else PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    gc.freeze()


def _reap() -> list[tuple[int, int]]:
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
