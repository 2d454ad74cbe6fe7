"""Several serving processes for one `smtpy serve`: one core each.

A Python process runs on one core; `smtpy serve` with SMTPY_PROCESSES=N binds
the listening sockets once, forks N serving processes that all accept on
them, and watches them:

- The supervisor binds the sockets, then takes the node's name
  (`smtpy.queue.nodes.claim`; refused while a live node holds it), and only
  then returns to the queue what an earlier start of the node left leased.
  A start that fails changes nothing in the queue.
- Each process is a whole daemon (inbound sessions and delivery workers) with
  its own store connections. They share the queue the way several nodes do,
  so each leases deliveries under its own name, `NODE.1` … `NODE.N`; each
  keeps the node's heartbeat, and dies with the supervisor (the node is the
  supervisor's process: another start may take the name once it is gone).
- systemd hears READY=1 once every process serves, and STOPPING=1 on
  SIGTERM, which goes to every process; each finishes its sessions and
  returns its in-flight deliveries to the queue, and the supervisor exits 0
  once all have. SIGHUP goes to every process (reload without dropping
  sessions).
- Once every process serves, the supervisor becomes a small program of its
  own (`smtpy.runtime.watcher`, by exec): it starts a process that dies again at
  once, and stops the daemon when one keeps dying or reports a configuration
  error.

Nothing but the supervisor's own bookkeeping runs in the parent: no thread is
started before the forks, and the store is touched only to take the name and
resume the deliveries a previous run left leased.
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
from collections.abc import Callable, Sequence

from smtpy import log
from smtpy.config import Settings
from smtpy.errors import SmtpyError
from smtpy.queue.nodes import NodeInfo
from smtpy.runtime import listeners
from smtpy.runtime.watcher import SIGNALS, Child, Watcher, notify_systemd, parse_process_spec, reap
from smtpy.store.db import dialect

logger = log.get(__name__)

READY_TIMEOUT = 60.0
# The instance of the node (and the supervisor's pid) for a serving process the watcher starts again.
NODE_VAR = "SMTPY_SERVING_NODE"  # "instance:pid"
PR_SET_PDEATHSIG = 1  # prctl(2): a signal for this process when its parent dies (Linux)
# The modules a serving process imports as it starts (a test imports each: a name
# that no longer exists fails loudly instead of silently not being preloaded).
PRELOAD = (
    "smtpy.smtp.handler",
    "smtpy.queue.scheduler",
    "smtpy.outbound.deliver",
    "smtpy.dns",
    "smtpy.dkim.sign",
    "smtpy.mail.dsn",
    "smtpy.admin.aliases",
    "smtpy.admin.keys",
    "smtpy.admin.srs_secret",
    "smtpy.checks.authentication",
    "smtpy.checks.limits",
    "smtpy.checks.scanners",
    "smtpy.runtime.upkeep",
    "smtpy.metrics",
    "aiosmtplib",
    "ctypes",  # _die_with
)


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
        self._children: dict[int, Child] = {}
        self._sockets: list[socket.socket] = []
        self._node: NodeInfo | None = None

    def run(self) -> int:
        from smtpy.runtime.daemon import tls_context

        # Signals wait (sigtimedwait) from now on: a SIGTERM during start-up stops cleanly.
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        ready_read, ready_write = os.pipe()
        metrics_dir: str | None = None
        try:
            tls_context(self.settings)  # a bad certificate fails here, once, not in every process
            # Listen, then take the name, then touch the queue: a start that fails changes nothing.
            self._sockets = listeners.bind(self.settings.listen)
            self._node = self._take_name()
            metrics_dir = self._share_metrics()
            _preload(
                postgres=dialect(self.settings.database_url) == "postgresql",
                metrics=metrics_dir is not None,
            )
            # For the processes the watcher starts again (it keeps this environment).
            os.environ[NODE_VAR] = f"{self._node.instance}:{self._node.pid}"
            watcher = Watcher(
                command=[sys.executable, *sys.orig_argv[1:]],
                sockets=[sock.fileno() for sock in self._sockets],
                ready=(ready_read, ready_write),
                children=self._children,
                metrics_dir=metrics_dir,
                log_level=self.settings.log_level,
            )
            for index in range(1, self.processes + 1):
                self._start(index, ready_write)
            code = self._wait_ready(ready_read)
            if code is not None:
                return watcher.stop_all(code)
            addresses = ", ".join(f"{h}:{p}" for h, p in self.settings.listen)
            logger.info(
                "started",
                listen=addresses,
                processes=self.processes,
                node=self.settings.node_name,
            )
            notify_systemd(f"READY=1\nSTATUS={self.processes} processes listening on {addresses}")
            _become(watcher)  # returns only if the exec failed: watch from here
            metrics_dir = None  # the watcher removes it
            return watcher.run()
        finally:
            if metrics_dir is not None:
                shutil.rmtree(metrics_dir, ignore_errors=True)
            os.close(ready_read)
            os.close(ready_write)
            for sock in self._sockets:
                sock.close()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)

    # -- the parent --------------------------------------------------------

    def _take_name(self) -> NodeInfo:
        """Claim the node's name, then return what a previous start left leased to the queue."""
        from smtpy.runtime.daemon import resume, take_name
        from smtpy.store.db import Database

        with Database(self.settings.database_url) as db:
            node = take_name(db, self.settings)
            resume(db, self.settings.node_name)
        return node

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
        self._children[pid] = Child(index, pid, time.monotonic())

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
            for pid, code in reap():
                child = self._children.pop(pid, None)
                if child is not None:
                    logger.error("process_failed_to_start", process=child.index, exit_code=code)
                    return code or 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                logger.error("start_timeout", waiting=sorted(waiting), seconds=READY_TIMEOUT)
                return 1
            info = signal.sigtimedwait(SIGNALS, min(remaining, 0.05))
            if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT):
                return 0
        return None

    # -- a serving process -------------------------------------------------

    def _child_main(self, index: int, ready_write: int) -> int:
        assert self._node is not None
        return serve_process(
            self.settings,
            index,
            node=self._node,
            sockets=self._sockets,
            ready_write=ready_write,
            reload=self._reload,
        )


def serve_process(
    settings: Settings,
    index: int,
    *,
    node: NodeInfo,
    sockets: list[socket.socket],
    ready_write: int,
    reload: Callable[[], Settings] | None,
) -> int:
    """Serving process `index` (forked, or started again by the watcher); its exit code."""
    from smtpy.queue.queries import process_owner
    from smtpy.runtime.daemon import Daemon

    if not _die_with(node.pid):
        logger.error("supervisor_gone", process=index, consequence="not serving")
        return 1
    os.environ.pop("NOTIFY_SOCKET", None)  # only the supervisor talks to systemd
    # Until the daemon's own handlers are in place: SIGTERM stops this process
    # cleanly (KeyboardInterrupt, exit 0), SIGHUP has nothing to reload yet.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
    log.bind(process=index)  # on every event of this process
    settings = settings.model_copy(update={"node_name": process_owner(settings.node_name, index)})

    def ready(status: str) -> None:
        os.write(ready_write, bytes([index]))

    try:
        daemon = Daemon(
            settings,
            reload=reload,
            sockets=sockets,
            ready=ready,
            serve_metrics=index == 1,
            node=node,
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


def serve_restarted(settings: Settings, spec: str, reload: Callable[[], Settings] | None) -> int:
    """A serving process the watcher started again: its index and descriptors are in `spec`."""
    index, fds, ready = parse_process_spec(spec)
    sockets = [socket.socket(fileno=fd) for fd in fds]
    instance, _, pid = os.environ.pop(NODE_VAR, "").partition(":")
    node = NodeInfo(
        settings.node_name,
        started_at=time.time(),
        hostname=settings.hostname,
        pid=int(pid) if pid.isdigit() else os.getppid(),
        instance=instance,
        process=None,
        heartbeat_seconds=settings.heartbeat_seconds,
    )
    return serve_process(
        settings, index, node=node, sockets=sockets, ready_write=ready, reload=reload
    )


def _die_with(supervisor: int) -> bool:
    """Have the kernel kill this process when the supervisor dies (Linux); False if it has.

    The node is the supervisor's process: once it is gone, another start may
    take the node's name and resume its deliveries, so none of its serving
    processes may go on delivering.
    """
    if sys.platform == "linux":
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    return os.getppid() == supervisor


def _become(watcher: Watcher) -> None:
    """Replace this process with the small watcher program (keeping its pid and children).

    The sockets and the ready pipe stay open across the exec, for the
    processes the watcher starts again. Returns only if the exec failed.
    """
    for fd in (*watcher.sockets, *watcher.ready):
        os.set_inheritable(fd, True)
    argv = [sys.executable, "-P", "-m", "smtpy.runtime.watcher", *watcher.to_args()]
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(sys.executable, argv)  # noqa: S606
    except OSError as exc:
        logger.warning("watcher_exec_failed", error=str(exc), consequence="watching from here")


def _preload(*, postgres: bool, metrics: bool) -> None:
    """Import what serving needs before the forks, so the processes share those pages.

    The PostgreSQL driver only for a PostgreSQL store, prometheus_client only
    with SMTPY_METRICS_LISTEN: a process without them never loads them.

    `gc.freeze()` keeps the collector from writing to the imported objects'
    headers in each process, which would copy the shared pages one by one.
    """
    import gc

    wanted = (
        *PRELOAD,
        *(["psycopg"] if postgres else []),
        *(["prometheus_client"] if metrics else []),
    )
    import_all(wanted)
    gc.freeze()


def import_all(modules: Sequence[str]) -> None:
    """Import each of `modules`; a missing one is an error, never silently skipped."""
    import importlib

    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise SmtpyError(
                f"cannot import {module} before starting the serving processes ({exc}): "
                "this installation of smtpy is incomplete; reinstall it"
            ) from None
