"""Benchmark end-to-end forwarding: smtpy against Postfix + OpenDKIM + postsrsd.

    .venv/bin/python bench/bench_forward.py [--quick] [--only smtpy|postfix] [--rounds N]

Run as root (it installs Debian packages when missing and runs a private
Postfix instance). Everything talks over loopback only.

What is measured, for each stack and message size (2 KB and 100 KB):
Postfix's `smtp-source` sends COUNT messages over 10 parallel sessions (one
message per connection, HELO, not EHLO) to one alias of a served domain; the
stack forwards each one to `smtp-sink`, the "destination MX" on loopback. The
time runs from the first connection to the moment the LAST message has
arrived at the sink (end to end, not just acceptance). The sink's counter is
compared with the number of messages the stack accepted: any difference is
"lost". Peak PSS is the sum over the stack's processes (and their children),
sampled from /proc/PID/smaps_rollup during the run; CPU is the user+system
time the stack's processes spent during the run.

Stacks:

- smtpy: `smtpy serve` with its default pipeline (SRS, DKIM RSA-2048, durable
  SQLite queue), SMTPY_RELAY_HOST pointing at the sink.
- postfix+dkim+srs: the stack a self-hoster would otherwise run: a Postfix
  instance (virtual alias map, transport to the sink) with OpenDKIM as a milter
  on a UNIX socket (RSA-2048, relaxed/relaxed) and postsrsd 1.x as its TCP
  canonical maps. Configuration templates: bench/postfix/.
- postfix-bare: the same Postfix without milter and SRS, for reference.
- libraries-only: `bench/relay_floor.py`, the libraries smtpy is built on and
  nothing else (aiosmtpd in, three RSA-2048 signatures, aiosmtplib out; no
  queue, SRS or checks), with as many processes as smtpy: the floor under
  smtpy's figures, for reference.

Before the timed runs each stack forwards one message to a dumping sink and
the script checks it: SRS0 envelope sender, the alias's destination, and a
DKIM signature that verifies with the domain's 2048-bit key. Then a short
untimed warm-up. The script prints a table and the smtpy/stack ratios against
the targets (1.2x for 2 KB, 1.0x for 100 KB, peak PSS at most 1.5x the
stack's). It exits 1 if a stack lost mail or failed its check.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "postfix"

SESSIONS = 10
SIZES = (2 * 1024, 100 * 1024)
COUNTS = {False: {2 * 1024: 2000, 100 * 1024: 500}, True: {2 * 1024: 300, 100 * 1024: 100}}
TARGETS = {2 * 1024: 1.2, 100 * 1024: 1.0}
PSS_TARGET = 1.5  # smtpy's peak PSS at most this times the stack's


def sender_dns() -> Any:
    """A DNS server on loopback (the test suite's) with the sender domain's SPF and DMARC."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    from dnsserver import DNSServer

    server = DNSServer()
    server.start()
    domain = SENDER.split("@")[1]
    server.add(domain, "SOA", f"ns.{domain}. hostmaster.{domain}. 1 3600 600 86400 300", ttl=300)
    server.add(domain, "TXT", "v=spf1 ip4:127.0.0.0/8 -all", ttl=300)
    server.add(f"_dmarc.{domain}", "TXT", "v=DMARC1; p=none", ttl=300)
    return server


HOSTNAME = "fwd.bench.example"  # the forwarder: HELO, SRS domain
ALIAS_DOMAIN = "forward.example"  # the served domain; DKIM d=
ALIAS = f"alias@{ALIAS_DOMAIN}"
DESTINATION = "user@dest.example"
SENDER = "sender@origin.example"
SELECTOR = "bench"

PACKAGES = {  # program -> Debian package
    "postfix": "postfix",
    "smtp-source": "postfix",
    "smtp-sink": "postfix",
    "opendkim": "opendkim",
    "opendkim-genkey": "opendkim-tools",
    "postsrsd": "postsrsd",
}


class BenchError(Exception):
    """Setup failed; the message says what and where to look."""


# -- small helpers ----------------------------------------------------------


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_smtp(
    port: int, timeout: float, what: str, alive: Callable[[], bool] = lambda: True
) -> None:
    """Wait until 127.0.0.1:port answers with a 220 greeting."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not alive():
            raise BenchError(f"{what} exited during start-up")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                greeting = sock.recv(512)
                with contextlib.suppress(OSError):
                    sock.sendall(b"QUIT\r\n")
                    sock.recv(512)
                if greeting.startswith(b"220"):
                    return
                last = greeting.decode(errors="replace").strip()
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise BenchError(f"{what} did not greet on 127.0.0.1:{port} within {timeout:.0f}s ({last})")


def render(template: str, values: dict[str, object]) -> str:
    text = (TEMPLATES / template).read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", str(value))
    left = re.findall(r"@[A-Z_]+@", text)
    if left:
        raise BenchError(f"{template}: unfilled fields {sorted(set(left))}")
    return text


def run(cmd: list[str], *, env: dict[str, str] | None = None, timeout: float = 120) -> str:
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise BenchError(
            f"{' '.join(cmd)} exited {result.returncode}: {(result.stderr or result.stdout).strip()[:500]}"
        )
    return result.stdout


def stop_process(proc: subprocess.Popen[bytes] | None, *, grace: float = 15) -> None:
    """SIGTERM one process we started, by pid; SIGKILL it after `grace` seconds."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def ensure_packages() -> None:
    missing = sorted({pkg for prog, pkg in PACKAGES.items() if shutil.which(prog) is None})
    if not missing:
        return
    if os.geteuid() != 0:
        raise BenchError(f"missing Debian packages {missing}; run as root to install them")
    log(f"installing {' '.join(missing)} (apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(
        ["debconf-set-selections"],
        input="postfix postfix/main_mailer_type select No configuration\n",
        text=True,
        check=True,
    )
    run(["apt-get", "update", "-q"], env=env, timeout=600)
    run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
        env=env,
        timeout=900,
    )
    still = [prog for prog in PACKAGES if shutil.which(prog) is None]
    if still:
        raise BenchError(f"still missing after apt-get install: {still}")


# -- /proc: memory and CPU of a process tree ---------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces.
    return text[text.rindex(")") + 2 :].split()


def process_tree(roots: Iterable[int]) -> set[int]:
    """The roots that still exist and all their descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat(int(entry))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    found: set[int] = set()
    todo = [pid for pid in roots if Path(f"/proc/{pid}").exists()]
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.add(pid)
        todo.extend(children.get(pid, ()))
    return found


def pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def cpu_seconds(pids: Iterable[int]) -> float:
    """utime+stime of each process plus what its reaped children used (cutime+cstime)."""
    ticks = 0
    for pid in pids:
        fields = _stat(pid)
        if fields is not None:
            ticks += sum(int(x) for x in fields[11:15])
    return ticks / _CLK_TCK


def machine_busy_seconds() -> float:
    """CPU time the whole machine spent busy, all cores (/proc/stat: every state but idle
    and iowait): what smtpy, the load generator, the sink and anything else used."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _CLK_TCK


def written_bytes(pids: Iterable[int]) -> int:
    """Bytes each process caused to be written to storage (`write_bytes` of /proc/PID/io):
    for SQLite, the WAL's pages and what checkpoints copy into the database."""
    total = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/io").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("write_bytes:"):
                total += int(line.split()[1])
    return total


class Sampler(threading.Thread):
    """Samples the summed PSS of a process tree until stopped; keeps the peak."""

    def __init__(self, roots: Callable[[], list[int]], interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.roots = roots
        self.interval = interval
        self.peak_kb = 0
        self.processes = 0
        self.names: dict[str, int] = {}  # process names at the peak, with their counts
        self._stop_event = threading.Event()

    def sample(self) -> None:
        pids = process_tree(self.roots())
        total = sum(pss_kb(pid) for pid in pids)
        if total > self.peak_kb:
            self.peak_kb = total
            self.processes = len(pids)
            names: dict[str, int] = {}
            for pid in pids:
                with contextlib.suppress(OSError):
                    name = Path(f"/proc/{pid}/comm").read_text().strip()
                    names[name] = names.get(name, 0) + 1
            self.names = names

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)
        self.sample()


# -- the destination MX: smtp-sink ---------------------------------------------


class Sink:
    """`smtp-sink -c` on 127.0.0.1:port; counts messages as they arrive ('.' received)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self.count = 0
        self._cond = threading.Condition()
        self._stamps: list[tuple[int, float]] = []

    def start(self, dump: Path | None = None) -> None:
        cmd = ["smtp-sink", "-c", "-u", "nobody", "-m", "1000"]
        if dump is not None:
            cmd += ["-D", str(dump)]
        cmd += [f"127.0.0.1:{self.port}", "1024"]
        for _ in range(50):  # the port may still be held for a moment after a restart
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            time.sleep(0.2)
            if self.proc.poll() is None:
                break
            time.sleep(0.2)
        else:
            raise BenchError(f"smtp-sink cannot listen on 127.0.0.1:{self.port}")
        self.count = 0
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        wait_smtp(
            self.port,
            10,
            "smtp-sink",
            alive=lambda: self.proc is not None and self.proc.poll() is None,
        )

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        pending = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            now = time.monotonic()
            pending += chunk
            *records, pending = re.split(rb"[\r\n]", pending)
            counts = [int(m.group(1)) for r in records if (m := re.search(rb"mesg=(\d+)", r))]
            if counts:
                with self._cond:
                    if proc is self.proc:
                        self.count = max(self.count, *counts)
                        self._stamps.append((self.count, now))
                        self._cond.notify_all()

    def wait_for(self, target: int, deadline: float) -> float | None:
        """Monotonic time at which the counter reached `target`, or None at the deadline."""
        with self._cond:
            while self.count < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(min(left, 0.5))
            return next(t for c, t in self._stamps if c >= target)

    def stop(self) -> None:
        stop_process(self.proc, grace=5)
        self.proc = None
        with self._cond:
            self._stamps.clear()


# -- the stacks -------------------------------------------------------------------


@dataclass
class Check:
    envelope_sender: str
    recipient: str
    dkim: str


class Stack:
    name = ""

    def __init__(self, work: Path, sink_port: int) -> None:
        self.work = work
        self.sink_port = sink_port
        self.port = free_port()

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def roots(self) -> list[int]:
        """Pids whose process trees are this stack."""
        raise NotImplementedError

    def queued(self) -> int:
        """Messages still in the stack's queue."""
        raise NotImplementedError

    def dkim_txt(self) -> bytes | None:
        """The DKIM TXT record the stack's signatures verify with (None: it does not sign)."""
        return None

    @property
    def signs(self) -> bool:
        return True


class ProcessStack(Stack):
    """A stack that is one process tree, started by `launch`."""

    proc: subprocess.Popen[bytes] | None = None

    def launch(
        self, what: str, cmd: list[str], log_path: Path, env: dict[str, str] | None = None
    ) -> None:
        """Start `cmd` (`what`, for errors) logging to `log_path`; return once it greets."""
        with log_path.open("ab") as output:
            self.proc = subprocess.Popen(cmd, env=env, stdout=output, stderr=subprocess.STDOUT)
        wait_smtp(
            self.port, 30, what, alive=lambda: self.proc is not None and self.proc.poll() is None
        )

    def stop(self) -> None:
        stop_process(self.proc, grace=20)
        self.proc = None

    def roots(self) -> list[int]:
        return [self.proc.pid] if self.proc is not None else []


class SmtpyStack(ProcessStack):
    name = "smtpy"

    def __init__(self, work: Path, sink_port: int, smtpy: str, processes: int | None) -> None:
        super().__init__(work, sink_port)
        self.smtpy = smtpy
        self.dir = work / "smtpy"
        self.db = self.dir / "smtpy.db"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SMTPY_")}
        # The sender's domain publishes SPF and DMARC, as real senders do; smtpy
        # checks them on every message (and caches the answers per their TTL).
        self.dns = sender_dns()
        self.env.update(
            SMTPY_CONFIG=str(self.dir / "smtpy.toml"),  # empty: never /etc/smtpy/smtpy.toml
            SMTPY_STATE_DIR=str(self.dir),
            SMTPY_DATABASE_URL=f"sqlite:///{self.db}",
            SMTPY_HOSTNAME=HOSTNAME,
            SMTPY_LISTEN=f"127.0.0.1:{self.port}",
            SMTPY_RELAY_HOST=f"127.0.0.1:{sink_port}",
            SMTPY_DNS_NAMESERVERS=self.dns.nameserver,
            SMTPY_NODE_NAME="bench",
        )
        if processes is not None:
            self.env["SMTPY_PROCESSES"] = str(processes)
        self._txt: bytes | None = None

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "smtpy.toml").write_text("")
        if not self.db.exists():
            run([self.smtpy, "domain", "add", ALIAS_DOMAIN], env=self.env)
            run([self.smtpy, "alias", "add", ALIAS, DESTINATION], env=self.env)
            records = json.loads(
                run([self.smtpy, "domain", "records", ALIAS_DOMAIN, "--json"], env=self.env)
            )
            for record in records:
                if (
                    record["type"] == "TXT"
                    and "._domainkey" in record["name"]
                    and "k=rsa" in record["value"]
                ):
                    self._txt = record["value"].encode()
        self.launch("smtpy serve", [self.smtpy, "serve"], self.dir / "serve.log", self.env)

    def queued(self) -> int:
        try:
            with contextlib.closing(
                sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
            ) as conn:
                return int(
                    conn.execute("SELECT count(DISTINCT message_id) FROM deliveries").fetchone()[0]
                )
        except sqlite3.Error:
            return -1

    def dkim_txt(self) -> bytes | None:
        return self._txt


class LibrariesOnlyStack(ProcessStack):
    """`relay_floor.py`: what aiosmtpd, three signatures and aiosmtplib cost alone."""

    name = "libraries-only"

    def __init__(self, work: Path, sink_port: int, processes: int) -> None:
        super().__init__(work, sink_port)
        self.processes = processes

    def start(self) -> None:
        self.launch(
            "relay_floor.py",
            [
                sys.executable, str(HERE / "relay_floor.py"), "--port", str(self.port),
                "--sink-port", str(self.sink_port), "--destination", DESTINATION,
                "--processes", str(self.processes),
            ],
            self.work / "libraries-only.log",
        )  # fmt: skip

    def queued(self) -> int:
        return 0  # no queue: the sink's count says what arrived

    @property
    def signs(self) -> bool:
        return False  # its signatures are the cost, not valid DKIM; no SRS


class PostfixStack(Stack):
    """A private Postfix instance; with `dkim_srs`, OpenDKIM and postsrsd beside it."""

    def __init__(self, work: Path, sink_port: int, *, dkim_srs: bool) -> None:
        super().__init__(work, sink_port)
        self.dkim_srs = dkim_srs
        self.name = "postfix+dkim+srs" if dkim_srs else "postfix-bare"
        self.dir = work / ("postfix-dkim-srs" if dkim_srs else "postfix-bare")
        self.config = self.dir / "etc"
        self.queue = self.dir / "spool"
        self.dkim_dir = self.dir / "opendkim"
        self.opendkim: subprocess.Popen[bytes] | None = None
        self.postsrsd: subprocess.Popen[bytes] | None = None
        self._txt: bytes | None = None
        self._started = False

    @property
    def signs(self) -> bool:
        return self.dkim_srs

    def _write_config(self) -> dict[str, object]:
        for d in (self.config, self.queue, self.dir / "data"):
            d.mkdir(parents=True, exist_ok=True)
        postfix = pwd.getpwnam("postfix")
        os.chown(self.dir / "data", postfix.pw_uid, postfix.pw_gid)
        values: dict[str, object] = {
            "CONFIG_DIR": self.config,
            "QUEUE_DIR": self.queue,
            "DATA_DIR": self.dir / "data",
            "WORK_DIR": self.dir,
            "LOG_FILE": self.dir / "maillog",
            "HOSTNAME": HOSTNAME,
            "ALIAS_DOMAIN": ALIAS_DOMAIN,
            "SMTPD_PORT": self.port,
            "SMTPD_ADDRESS": f"127.0.0.1:{self.port}",
            "SINK_PORT": self.sink_port,
            "OPENDKIM_DIR": self.dkim_dir,
            "OPENDKIM_SOCKET": self.dkim_dir / "opendkim.sock",
            "SRS_FORWARD_PORT": free_port(),
            "SRS_REVERSE_PORT": free_port(),
        }
        main_cf = render("main.cf.in", values)
        if self.dkim_srs:
            main_cf += "\n" + render("main-dkim-srs.cf.in", values)
        (self.config / "main.cf").write_text(main_cf)
        (self.config / "master.cf").write_text(render("master.cf.in", values))
        (self.config / "virtual").write_text(f"{ALIAS} {DESTINATION}\n")
        (self.config / "transport").write_text(
            f"{DESTINATION.split('@')[1]} smtp:[127.0.0.1]:{self.sink_port}\n"
        )
        return values

    def _start_opendkim(self, values: dict[str, object]) -> None:
        opendkim = pwd.getpwnam("opendkim")
        self.dkim_dir.mkdir(parents=True, exist_ok=True)
        keys = self.dkim_dir / "keys"
        keys.mkdir(exist_ok=True)
        private = keys / f"{SELECTOR}.private"
        if not private.exists():
            run(
                [
                    "opendkim-genkey",
                    "-b",
                    "2048",
                    "-d",
                    ALIAS_DOMAIN,
                    "-s",
                    SELECTOR,
                    "-D",
                    str(keys),
                ]
            )
        record = (keys / f"{SELECTOR}.txt").read_text()
        self._txt = "".join(re.findall(r'"([^"]*)"', record)).encode()
        for path in (self.dkim_dir, keys, private):
            os.chown(path, opendkim.pw_uid, opendkim.pw_gid)
        private.chmod(0o600)
        (self.dkim_dir / "keytable").write_text(f"{SELECTOR} {ALIAS_DOMAIN}:{SELECTOR}:{private}\n")
        (self.dkim_dir / "signingtable").write_text(f"* {SELECTOR}\n")
        (self.dkim_dir / "opendkim.conf").write_text(render("opendkim.conf.in", values))
        socket_path = Path(str(values["OPENDKIM_SOCKET"]))
        socket_path.unlink(missing_ok=True)
        with (self.dkim_dir / "opendkim.log").open("ab") as output:
            self.opendkim = subprocess.Popen(
                ["opendkim", "-f", "-x", str(self.dkim_dir / "opendkim.conf")],
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 15
        while not socket_path.exists():
            if self.opendkim.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"opendkim did not start; see {self.dkim_dir / 'opendkim.log'}")
            time.sleep(0.05)

    def _start_postsrsd(self, values: dict[str, object]) -> None:
        secret = self.dir / "postsrsd.secret"
        secret.write_text(base64.b64encode(os.urandom(24)).decode() + "\n")
        secret.chmod(0o600)
        forward, reverse = (
            int(str(values["SRS_FORWARD_PORT"])),
            int(str(values["SRS_REVERSE_PORT"])),
        )
        cmd = ["postsrsd", "-4", "-l", "127.0.0.1", "-f", str(forward), "-r", str(reverse)]
        cmd += [
            "-s",
            str(secret),
            "-d",
            HOSTNAME,
            "-u",
            "postsrsd",
            "-p",
            str(self.dir / "postsrsd.pid"),
        ]
        with (self.dir / "postsrsd.log").open("ab") as output:
            self.postsrsd = subprocess.Popen(cmd, stdout=output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while True:
            if self.postsrsd.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"postsrsd did not start; see {self.dir / 'postsrsd.log'}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", forward), 1):
                break
            time.sleep(0.05)

    def start(self) -> None:
        if os.geteuid() != 0:
            raise BenchError("the Postfix stacks need root (a private Postfix instance)")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o755)
        values = self._write_config()
        if self.dkim_srs:
            self._start_opendkim(values)
            self._start_postsrsd(values)
        run(["postfix", "-c", str(self.config), "check"])
        run(["postfix", "-c", str(self.config), "start"])
        self._started = True
        wait_smtp(self.port, 30, f"Postfix ({self.name})")

    def master_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.queue / "pid" / "master.pid").read_text().split()[0])
        return None

    def stop(self) -> None:
        if self._started:
            master = self.master_pid()
            with contextlib.suppress(BenchError, subprocess.TimeoutExpired):
                run(["postfix", "-c", str(self.config), "stop"], timeout=60)
            deadline = time.monotonic() + 20
            while (
                master is not None
                and Path(f"/proc/{master}").exists()
                and time.monotonic() < deadline
            ):
                time.sleep(0.1)
            self._started = False
        stop_process(self.postsrsd)
        stop_process(self.opendkim)
        self.postsrsd = self.opendkim = None

    def roots(self) -> list[int]:
        pids = [p.pid for p in (self.opendkim, self.postsrsd) if p is not None]
        master = self.master_pid()
        return pids + ([master] if master else [])

    def queued(self) -> int:
        total = 0
        for sub in ("maildrop", "incoming", "active", "deferred", "hold"):
            for _root, _dirs, files in os.walk(self.queue / sub):
                total += len(files)
        return total

    def dkim_txt(self) -> bytes | None:
        return self._txt


# -- the checks and the runs ----------------------------------------------------------


def smtp_source(port: int, size: int, count: int, sessions: int) -> list[str]:
    return [
        "smtp-source", "-c", "-l", str(size), "-m", str(count), "-s", str(sessions),
        "-f", SENDER, "-t", ALIAS, f"127.0.0.1:{port}",
    ]  # fmt: skip


def parse_dump(text: str) -> list[tuple[dict[str, str], bytes]]:
    """smtp-sink -D records: (envelope fields, message as received)."""
    messages = []
    for block in re.split(r"(?m)^(?=X-Client-Addr: )", text):
        if not block.strip():
            continue
        envelope: dict[str, str] = {}
        lines = block.split("\n")
        i = 0
        while i < len(lines) and lines[i].startswith("X-"):
            name, _, value = lines[i].partition(": ")
            envelope[name] = value
            i += 1
        i += 3  # smtp-sink's own three-line Received field
        body = "\n".join(lines[i:]).rstrip("\n") + "\n"
        messages.append((envelope, body.replace("\n", "\r\n").encode()))
    return messages


def verify_dkim(message: bytes, txt: bytes) -> str:
    import dkim  # dkimpy, an smtpy dependency

    match = re.search(rb"DKIM-Signature:.*?(?=\r\n\S)", message, re.S | re.I)
    if not match:
        return "no DKIM-Signature"
    tags = dict(
        (k.strip().lower(), v.strip())
        for k, _, v in (
            t.partition(b"=")
            for t in re.sub(rb"\s+", b"", match.group(0).split(b":", 1)[1]).split(b";")
        )
        if k
    )
    key = base64.b64decode(
        dict(t.strip().split(b"=", 1) for t in txt.split(b";") if b"=" in t)[b"p"]
    )
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    bits = load_der_public_key(key).key_size  # type: ignore[union-attr]

    def dnsfunc(name: bytes | str, timeout: float = 5) -> bytes:
        return txt

    ok = dkim.verify(message, dnsfunc=dnsfunc)
    algo, canon, domain = (tags.get(x, b"?").decode() for x in (b"a", b"c", b"d"))
    return f"{'valid' if ok else 'INVALID'} {algo} {bits}-bit {canon} d={domain}"


def check_stack(stack: Stack, sink: Sink) -> Check:
    """Forward one message through a dumping sink; check SRS, the destination and DKIM."""
    dump_dir = stack.work / "dumps"
    dump_dir.mkdir(exist_ok=True)
    dump_dir.chmod(0o777)
    dump = dump_dir / f"{stack.name}.dump"
    dump.unlink(missing_ok=True)
    sink.start(dump=dump)
    try:
        run(smtp_source(stack.port, 2048, 1, 1), timeout=60)
        if sink.wait_for(1, time.monotonic() + 60) is None:
            raise BenchError(f"{stack.name}: the check message did not reach the sink within 60 s")
        time.sleep(0.3)
    finally:
        sink.stop()
    records = parse_dump(dump.read_text(errors="replace"))
    if len(records) != 1:
        raise BenchError(f"{stack.name}: expected 1 message in {dump}, found {len(records)}")
    envelope, message = records[0]
    sender = envelope.get("X-Mail-Args", "").split()[0] if envelope.get("X-Mail-Args") else ""
    rcpt = envelope.get("X-Rcpt-Args", "")
    txt = stack.dkim_txt()
    dkim_result = verify_dkim(message, txt) if txt else "not signing"
    check = Check(sender, rcpt, dkim_result)
    problems = []
    if rcpt.split()[0:1] != [f"<{DESTINATION}>"]:
        problems.append(f"recipient {rcpt!r}")
    if stack.signs:
        if not re.fullmatch(rf"<SRS0[=+-][^@]+@{re.escape(HOSTNAME)}>", sender):
            problems.append(f"envelope sender {sender!r} is not SRS0")
        if not dkim_result.startswith("valid rsa-sha256 2048-bit"):
            problems.append(f"DKIM: {dkim_result}")
    if problems:
        raise BenchError(f"{stack.name}: check failed: {'; '.join(problems)} (dump: {dump})")
    return check


@dataclass
class Result:
    stack: str
    size: int
    sent: int
    accepted: int = 0
    received: int = 0
    seconds: float = 0.0
    accept_seconds: float = 0.0
    peak_pss_kb: int = 0
    processes: int = 0
    process_names: dict[str, int] = field(default_factory=dict)
    round: int = 0
    cpu: float = 0.0
    written: int = 0  # bytes the stack's processes wrote to storage during the run
    machine_cpu: float = 0.0  # CPU seconds the whole machine was busy during the run
    left_in_queue: int = 0
    error: str = ""

    @property
    def rate(self) -> float:
        return self.received / self.seconds if self.seconds else 0.0

    @property
    def lost(self) -> int:
        return max(0, self.accepted - self.received)


def wait_idle(stack: Stack, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        left = stack.queued()
        if left == 0 or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def start_profiler(stack: Stack, size: int, profile: Path | None) -> subprocess.Popen[bytes] | None:
    """py-spy on smtpy for this run (all threads, idle time included, raw collapsed stacks)."""
    if profile is None or not isinstance(stack, SmtpyStack) or stack.proc is None:
        return None
    py_spy = shutil.which(
        "py-spy", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
    )
    if py_spy is None:
        raise BenchError("--profile needs py-spy (pip install py-spy into the venv)")
    profile.mkdir(parents=True, exist_ok=True)
    output = profile / f"smtpy-{size // 1024}KB.txt"
    cmd = [py_spy, "record", "--pid", str(stack.proc.pid), "--rate", "250", "--threads", "--idle"]
    cmd += ["--format", "raw", "--output", str(output), "--nonblocking"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # let it attach
    return proc


def stop_profiler(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGINT)  # py-spy writes its output on SIGINT
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        stop_process(proc)


def measure(
    stack: Stack, sink: Sink, size: int, count: int, timeout: float, profile: Path | None = None
) -> Result:
    result = Result(stack.name, size, count)
    idle = wait_idle(stack, 30)
    if idle:
        log(f"  warning: {idle} messages still queued in {stack.name} before the run")
    base = sink.count
    sampler = Sampler(stack.roots)
    sampler.sample()
    cpu_before = cpu_seconds(process_tree(stack.roots()))
    written_before = written_bytes(process_tree(stack.roots()))
    machine_before = machine_busy_seconds()
    profiler = start_profiler(stack, size, profile)
    sampler.start()
    started = time.monotonic()
    deadline = started + timeout
    source = subprocess.Popen(
        smtp_source(stack.port, size, count, SESSIONS),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    outputs: dict[str, object] = {}

    def reap() -> None:
        outputs["out"], outputs["err"] = source.communicate()
        outputs["ended"] = time.monotonic()

    reaper = threading.Thread(target=reap, daemon=True)
    reaper.start()
    try:
        done = sink.wait_for(base + count, deadline)
        cpu_after = cpu_seconds(process_tree(stack.roots()))
        written_after = written_bytes(process_tree(stack.roots()))
        machine_after = machine_busy_seconds()
        reaper.join(timeout=max(1.0, deadline - time.monotonic()))
        if reaper.is_alive():
            stop_process(source, grace=2)
            reaper.join(timeout=10)
            result.error = "smtp-source timed out"
    finally:
        sampler.stop()
        stop_profiler(profiler)
    out = outputs.get("out") or b""
    err = outputs.get("err") or b""
    assert isinstance(out, bytes) and isinstance(err, bytes)
    ended = outputs.get("ended")
    result.accept_seconds = ended - started if isinstance(ended, float) else 0.0
    counters = re.findall(rb"\d+", out)
    result.accepted = int(counters[-1]) if counters else 0
    if source.returncode not in (0, None) and not result.error:
        result.error = f"smtp-source: {err.decode(errors='replace').strip()[:200]}"
    if done is None:
        time.sleep(0.5)
        result.seconds = time.monotonic() - started
        result.error = result.error or f"timed out after {timeout:.0f}s"
    else:
        result.seconds = done - started
    time.sleep(0.3)  # a duplicate would arrive now
    result.received = sink.count - base
    result.left_in_queue = wait_idle(stack, 10)
    result.peak_pss_kb = sampler.peak_kb
    result.processes = sampler.processes
    result.process_names = sampler.names
    result.cpu = cpu_after - cpu_before
    result.written = written_after - written_before
    result.machine_cpu = machine_after - machine_before
    return result


def warm_up(stack: Stack, sink: Sink) -> None:
    base = sink.count
    run(smtp_source(stack.port, 2048, 50, SESSIONS), timeout=120)
    if sink.wait_for(base + 50, time.monotonic() + 120) is None:
        raise BenchError(f"{stack.name}: the warm-up messages did not all arrive")


# -- report -----------------------------------------------------------------------


def size_label(size: int) -> str:
    return f"{size // 1024} KB"


def print_report(results: list[Result], checks: dict[str, Check], args: argparse.Namespace) -> None:
    print()
    print(
        f"End-to-end forwarding, {SESSIONS} concurrent smtp-source sessions (HELO, one message per"
    )
    print(
        f"connection) -> stack -> smtp-sink, loopback; {os.cpu_count()} CPUs; median of {args.rounds} round(s)"
    )
    print()
    for name, check in checks.items():
        print(
            f"  check {name:<17} MAIL FROM {check.envelope_sender}  RCPT {check.recipient}  DKIM {check.dkim}"
        )
    print()
    header = (
        f"{'stack':<17} {'size':>6} {'msgs':>5} {'seconds':>8} {'msg/s':>7} {'accept/s':>8}"
        f" {'lost':>4} {'left':>4} {'CPU s':>6} {'ms CPU/msg':>10} {'peak PSS MB':>11} {'procs':>5}"
    )
    print(header)
    print("-" * len(header))
    merged: dict[tuple[str, int], Result] = {}
    for key in dict.fromkeys((r.stack, r.size) for r in results):
        runs = [r for r in results if (r.stack, r.size) == key]
        best = sorted(runs, key=lambda r: r.rate)[len(runs) // 2]  # the median run
        merged[key] = best
        errors = "; ".join(sorted({r.error for r in runs if r.error}))
        print(
            f"{best.stack:<17} {size_label(best.size):>6} {best.sent:>5} {best.seconds:>8.2f}"
            f" {best.rate:>7.1f} {(best.accepted / best.accept_seconds if best.accept_seconds else 0):>8.1f}"
            f" {sum(r.lost for r in runs):>4} {max(r.left_in_queue for r in runs):>4}"
            f" {best.cpu:>6.2f} {(best.cpu / best.received * 1000 if best.received else 0):>10.2f}"
            f" {max(r.peak_pss_kb for r in runs) / 1024:>11.1f} {best.processes:>5}"
            + (f"  ERROR: {errors}" if errors else "")
        )
    print()
    print(
        "msg/s: messages arrived at the sink / seconds from the first connection to the last arrival."
    )
    print("accept/s: messages accepted / smtp-source run time. lost: accepted but never arrived.")
    print("left: still queued after the run. CPU: user+system time of the stack's processes.")
    smtpy_rows = {size: r for (stack, size), r in merged.items() if stack == "smtpy"}
    stack_rows = {size: r for (stack, size), r in merged.items() if stack == "postfix+dkim+srs"}
    bare_rows = {size: r for (stack, size), r in merged.items() if stack == "postfix-bare"}
    if smtpy_rows and stack_rows:
        print()
        print("smtpy / Postfix+OpenDKIM+postsrsd (same run, same machine):")
        for size in SIZES:
            s, p = smtpy_rows.get(size), stack_rows.get(size)
            if not s or not p or not p.rate:
                continue
            ratio = s.rate / p.rate
            target = TARGETS[size]
            bare = bare_rows.get(size)
            extra = f"   (vs bare Postfix {s.rate / bare.rate:.2f}x)" if bare and bare.rate else ""
            per_round = [
                a.rate / b.rate
                for a in results
                for b in results
                if a.stack == "smtpy" and b.stack == "postfix+dkim+srs"
                and a.size == b.size == size and a.round == b.round and b.rate
            ]  # fmt: skip
            rounds = (
                f"   per round: {', '.join(f'{r:.2f}x' for r in per_round)}"
                if len(per_round) > 1
                else ""
            )
            print(
                f"  {size_label(size):>6}: throughput {ratio:.2f}x  target >= {target:.1f}x  "
                f"{'MET' if ratio >= target else 'NOT MET'}{extra}{rounds}"
            )
        floor_rows = {size: r for (stack, size), r in merged.items() if stack == "libraries-only"}
        for size in SIZES:
            f, p = floor_rows.get(size), stack_rows.get(size)
            if f and p and p.rate:
                print(
                    f"  {size_label(size):>6}: libraries-only (aiosmtpd, 3 RSA signatures, aiosmtplib;"
                    f" nothing of smtpy's own) {f.rate / p.rate:.2f}x the stack"
                )
        s_pss = max((r.peak_pss_kb for r in results if r.stack == "smtpy"), default=0)
        p_pss = max((r.peak_pss_kb for r in results if r.stack == "postfix+dkim+srs"), default=0)
        if p_pss:
            print(
                f"  peak PSS: smtpy {s_pss / 1024:.1f} MB vs stack {p_pss / 1024:.1f} MB "
                f"({s_pss / p_pss:.2f}x)  target <= {PSS_TARGET}x  "
                f"{'MET' if s_pss <= PSS_TARGET * p_pss else 'NOT MET'}"
            )
        lost = sum(r.lost + r.left_in_queue for r in results if r.stack == "smtpy")
        print(f"  nothing lost: {'MET' if lost == 0 else f'NOT MET ({lost} messages)'}")


# -- main -------------------------------------------------------------------------


def main() -> int:
    global SESSIONS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="smaller counts (300 x 2 KB, 100 x 100 KB)"
    )
    parser.add_argument("--only", choices=("smtpy", "postfix"), help="run one side only")
    parser.add_argument("--no-bare", action="store_true", help="skip the bare-Postfix reference")
    parser.add_argument(
        "--no-floor", action="store_true", help="skip the libraries-only reference (relay_floor.py)"
    )
    parser.add_argument("--rounds", type=int, default=1, help="repeat every run; report the median")
    parser.add_argument("--count-2k", type=int, help="messages of 2 KB (default 2000, quick 300)")
    parser.add_argument(
        "--count-100k", type=int, help="messages of 100 KB (default 500, quick 100)"
    )
    parser.add_argument(
        "--sessions",
        type=int,
        default=SESSIONS,
        help=f"parallel smtp-source sessions (default {SESSIONS})",
    )
    parser.add_argument("--timeout", type=float, default=300, help="seconds per run at most")
    parser.add_argument("--smtpy", help="the smtpy command (default: next to this Python)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, dumps)")
    parser.add_argument(
        "--profile", type=Path, metavar="DIR",
        help="record smtpy's runs with py-spy (raw collapsed stacks, all threads) into DIR",
    )  # fmt: skip
    parser.add_argument("--workdir", help="parent of the work directory (default: $TMPDIR)")
    parser.add_argument(
        "--processes", type=int, metavar="N",
        help="SMTPY_PROCESSES for smtpy serve (default: smtpy's own default; 0: one per core)",
    )  # fmt: skip
    args = parser.parse_args()
    args.rounds = max(1, min(args.rounds, 10))
    SESSIONS = max(1, min(args.sessions, 200))
    counts = dict(COUNTS[args.quick])
    if args.count_2k:
        counts[2 * 1024] = max(1, min(args.count_2k, 100_000))
    if args.count_100k:
        counts[100 * 1024] = max(1, min(args.count_100k, 20_000))

    smtpy = args.smtpy or str(Path(sys.executable).parent / "smtpy")
    if args.only != "postfix" and not Path(smtpy).exists() and shutil.which("smtpy") is None:
        print(f"error: no smtpy command at {smtpy}; pass --smtpy", file=sys.stderr)
        return 2
    if not Path(smtpy).exists():
        smtpy = shutil.which("smtpy") or smtpy

    ensure_packages()
    work = Path(tempfile.mkdtemp(prefix="smtpy-bench-forward-", dir=args.workdir))
    work.chmod(0o755)  # smtp-sink (as nobody), postfix and opendkim reach their files in here
    log(f"work directory {work}")
    results: list[Result] = []
    checks: dict[str, Check] = {}
    failed = False
    try:
        factories: list[Callable[[int], Stack]] = []
        if args.only != "postfix":
            factories.append(lambda port: SmtpyStack(work, port, smtpy, args.processes))
            if not args.no_floor:
                # As many processes as smtpy runs (its default, 0, is one per core).
                floor_processes = args.processes or os.cpu_count() or 1
                factories.append(lambda port: LibrariesOnlyStack(work, port, floor_processes))
        if args.only != "smtpy":
            factories.append(lambda port: PostfixStack(work, port, dkim_srs=True))
            if not args.no_bare:
                factories.append(lambda port: PostfixStack(work, port, dkim_srs=False))
        for round_no in range(args.rounds):
            # Alternate the order, so that no stack always runs first on a cold machine.
            for factory in factories if round_no % 2 == 0 else factories[::-1]:
                sink_port = free_port()
                stack = factory(sink_port)
                sink = Sink(sink_port)
                try:
                    log(f"round {round_no + 1}: starting {stack.name}")
                    stack.start()
                    if stack.name not in checks:
                        checks[stack.name] = check_stack(stack, sink)
                        log(f"  checked: {checks[stack.name]}")
                        time.sleep(2.5)  # cached connections to the dumping sink expire
                    sink.start()
                    warm_up(stack, sink)
                    for size in SIZES:
                        log(f"  {counts[size]} x {size_label(size)} ...")
                        result = measure(
                            stack, sink, size, counts[size], args.timeout, args.profile
                        )
                        log(
                            f"  {result.received}/{result.accepted} in {result.seconds:.2f}s = "
                            f"{result.rate:.1f} msg/s, peak PSS {result.peak_pss_kb / 1024:.1f} MB"
                            + (f" ERROR {result.error}" if result.error else "")
                        )
                        log(
                            "  processes at peak: "
                            + ", ".join(
                                f"{n} x{c}" for n, c in sorted(result.process_names.items())
                            )
                        )
                        result.round = round_no
                        results.append(result)
                        failed |= bool(result.lost or result.error)
                except BenchError as exc:
                    log(f"  {stack.name} failed: {exc}")
                    failed = True
                finally:
                    sink.stop()
                    stack.stop()
    except KeyboardInterrupt:
        log("interrupted")
        failed = True
    finally:
        if args.keep or failed:
            log(f"kept {work} (logs, dumps)")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print_report(results, checks, args)
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
