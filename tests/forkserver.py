"""A warm interpreter that forks one real process per `smtpy` command of a test.

Each `python -m smtpy ...` of the suite spent about 0.8 s of CPU importing
Python, pydantic, SQLAlchemy and smtpy before it did its work: over half of the
suite's time (545 commands in four CLI test files took 815 s of 975). The fork
server imports smtpy once per pytest worker, then forks a child for each
command: the child gets the command's own stdin, stdout and stderr (passed as
file descriptors), environment, working directory and argv, runs `smtpy` as
`python -m smtpy` does (`runpy`, `__main__`), and leaves through the normal
interpreter exit. Its exit status is what `subprocess` would report (a
negative number for a signal). Nothing of smtpy runs in the server itself: it
only imports.

    server = ForkServer.start()
    code, pid = server.run(["domain", "list"], env=env, stdin=f0, stdout=f1, stderr=f2)

Run as a script, this file is the server: `python forkserver.py SOCKET`.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, TypedDict, cast

HEADER = struct.Struct("!I")


class Request(TypedDict):
    """What the client sends with the three file descriptors."""

    args: list[str]
    env: dict[str, str]
    cwd: str


class ForkServer:
    """The client side: the server's process and socket."""

    def __init__(self, proc: subprocess.Popen[bytes], path: Path) -> None:
        self.proc = proc
        self.path = path

    @classmethod
    def start(cls, timeout: float = 60.0) -> ForkServer:
        folder = Path(tempfile.mkdtemp(prefix="smtpy-fork-"))
        path = folder / "socket"
        env = {k: v for k, v in os.environ.items() if not k.startswith("SMTPY_")}
        proc = subprocess.Popen(
            [sys.executable, __file__, str(path)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=None,  # an import error shows in the test's output
        )
        deadline = time.monotonic() + timeout
        while not path.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"the fork server exited with {proc.returncode}")
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("the fork server did not start")
            time.sleep(0.02)
        return cls(proc, path)

    def spawn(
        self, args: list[str], *, env: dict[str, str], stdin: int, stdout: int, stderr: int
    ) -> ForkedProcess:
        """Start `smtpy ARGS` with these file descriptors; a handle like `subprocess.Popen`."""
        request = json.dumps({"args": args, "env": env, "cwd": os.getcwd()}).encode()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(self.path))
            socket.send_fds(sock, [HEADER.pack(len(request)) + request], [stdin, stdout, stderr])
            return ForkedProcess(["smtpy", *args], sock)
        except BaseException:
            sock.close()
            raise

    def run(
        self,
        args: list[str],
        *,
        env: dict[str, str],
        stdin: IO[bytes],
        stdout: IO[bytes],
        stderr: IO[bytes],
        timeout: float,
    ) -> int:
        """Run `smtpy ARGS` to its end; its return code, as `subprocess` reports it."""
        proc = self.spawn(
            args, env=env, stdin=stdin.fileno(), stdout=stdout.fileno(), stderr=stderr.fileno()
        )
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        finally:
            proc.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        with contextlib.suppress(OSError):
            self.path.unlink()
            self.path.parent.rmdir()


class ForkedProcess:
    """A command forked by the server, used as a `subprocess.Popen` is: pid, poll, wait,
    send_signal, terminate, kill, returncode. Its status comes from the server."""

    def __init__(self, args: list[str], sock: socket.socket) -> None:
        self.args = args
        self.returncode: int | None = None
        self._sock = sock
        self._buffer = b""
        self.pid = int(self._line(30.0))

    def _line(self, timeout: float | None) -> bytes:
        """The server's next line: the pid, then the return code."""
        self._sock.settimeout(timeout)
        while b"\n" not in self._buffer:
            chunk = self._sock.recv(64)
            if not chunk:
                raise RuntimeError(f"the fork server stopped while {self.args} ran")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def poll(self) -> int | None:
        if self.returncode is None:
            readable = b"\n" in self._buffer or select.select([self._sock], [], [], 0)[0]
            if readable:
                self.wait()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            try:
                self.returncode = int(self._line(timeout))
            except TimeoutError:
                raise subprocess.TimeoutExpired(self.args, timeout or 0) from None
            self.close()
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def close(self) -> None:
        self._sock.close()


_server: ForkServer | None = None


def fork_server() -> ForkServer:
    """This pytest process's fork server (started at first use, stopped at exit)."""
    global _server
    if _server is None or _server.proc.poll() is not None:
        _server = ForkServer.start()
        atexit.register(_server.stop)
    return _server


def popen(
    args: list[str], *, env: dict[str, str], stdout: IO[bytes], stderr: IO[bytes]
) -> ForkedProcess:
    """Start `smtpy ARGS` (stdin from /dev/null, output to these files), like `Popen`."""
    with open(os.devnull, "rb") as stdin:
        return fork_server().spawn(
            args, env=env, stdin=stdin.fileno(), stdout=stdout.fileno(), stderr=stderr.fileno()
        )


# -- the server ---------------------------------------------------------------------------


def _preload() -> None:
    """Import what the commands import, so that no child has to."""
    import importlib
    import pkgutil

    import smtpy

    for module in pkgutil.walk_packages(smtpy.__path__, "smtpy."):
        if module.name.endswith("__main__") or module.name.startswith("smtpy.store.migrations"):
            continue  # run as scripts (alembic's env.py needs alembic's context)
        importlib.import_module(module.name)


def _receive(conn: socket.socket) -> tuple[Request, list[int]]:
    data, fds, _flags, _addr = socket.recv_fds(conn, 1 << 16, 3)
    while len(data) < HEADER.size or len(data) < HEADER.size + HEADER.unpack_from(data)[0]:
        more = conn.recv(1 << 16)
        if not more:
            raise ConnectionError("the request was cut")
        data += more
    return cast(Request, json.loads(data[HEADER.size :])), fds


def _child(request: Request, fds: list[int]) -> None:
    """In the forked child: become the command's process (then `__main__` runs smtpy)."""
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_DFL)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    sys.argv = ["smtpy", *request["args"]]
    # What `python -m smtpy ARGS` would hold: a supervisor starts its processes again with it.
    sys.orig_argv = [sys.executable, "-m", "smtpy", *request["args"]]


def serve(path: str) -> bool:
    """Fork a child per request; True in a child (which then runs the command)."""
    import selectors

    _preload()
    # Frozen objects are left alone by the collector: a child's exit does not walk
    # (and copy, page by page) everything the server imported: 0.6 s down to 0.2 s a
    # command (the docs' advice for a server that forks).
    gc.freeze()
    sys.stdout.flush()
    sys.stderr.flush()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".new")
    listener.listen(64)
    os.rename(path + ".new", path)  # the client waits for the name: it appears ready
    waiting: dict[int, socket.socket] = {}  # pid -> the connection to answer
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    parent = os.getppid()
    while os.getppid() == parent:  # a pytest worker that died leaves no server behind
        for key, _ in selector.select(timeout=5):
            if key.fileobj is listener:
                conn, _ = listener.accept()
                try:
                    request, fds = _receive(conn)
                except (OSError, ValueError):
                    conn.close()
                    continue
                pid = os.fork()
                if pid == 0:
                    selector.close()
                    listener.close()
                    for other in waiting.values():
                        other.close()
                    conn.close()
                    os.close(wake_r)
                    os.close(wake_w)
                    _child(request, fds)
                    return True
                for fd in fds:
                    os.close(fd)
                conn.sendall(f"{pid}\n".encode())
                waiting[pid] = conn
            else:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 512)
                while waiting:
                    try:
                        pid, status = os.waitpid(-1, os.WNOHANG)
                    except ChildProcessError:
                        break
                    if pid == 0:
                        break
                    done = waiting.pop(pid, None)
                    if done is not None:
                        with contextlib.suppress(OSError):
                            done.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
                        done.close()
    return False


if __name__ == "__main__":
    if serve(sys.argv[1]):
        import runpy

        runpy.run_module("smtpy", run_name="__main__", alter_sys=True)
