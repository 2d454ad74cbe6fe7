"""A real authoritative DNS server on loopback for tests, built on dnslib.

It answers over UDP and TCP on the same port from records that the test adds
while it runs, so smtpy (and pyspf, dkimpy, ...) can be pointed at it with
`SMTPY_DNS_NAMESERVERS=server.nameserver`:

    with DNSServer() as dns_server:
        dns_server.add("example.test", "MX", "10 mx.example.test.")
        dns_server.add("mx.example.test", "A", "127.0.0.2")
        ...  # SMTPY_DNS_NAMESERVERS=dns_server.nameserver

Behaviour, as a real server would have it:

- NXDOMAIN for a name that has no records (and no records below it: an empty
  non-terminal such as `_domainkey.example.test` is NOERROR), NOERROR with an
  empty answer (NODATA) for a name that only has records of other types.
- CNAMEs are followed within the served data (up to 8 steps); the rcode is that
  of the end of the chain (RFC 6604).
- Over UDP, an answer larger than 512 bytes (or the client's EDNS payload size)
  is sent with only the question and the TC bit, so the client retries over TCP.
- Negative answers carry an SOA in the authority section only when the test
  added an SOA for an enclosing name (so nothing is negatively cached by
  default).
- `fail(name, rcode)` answers that name with an error rcode; `drop(name)` never
  answers it, so clients time out.

Every query received (UDP or TCP, answered or not) is appended to `queries` as
`(qname lower-cased without trailing dot, qtype)`, for tests about caching; a
truncated UDP answer retried over TCP therefore appears twice. Queries that
arrived over TCP are also appended to `tcp_queries`.
All mutators are thread-safe and take effect for the next query.
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import struct
import threading
from dataclasses import dataclass

from dnslib import (
    AAAA,
    CNAME,
    EDNS0,
    MX,
    NS,
    PTR,
    QTYPE,
    RCODE,
    RD,
    RR,
    SOA,
    TXT,
    A,
    DNSHeader,
    DNSLabel,
    DNSRecord,
)

SUPPORTED_TYPES = ("A", "AAAA", "MX", "TXT", "CNAME", "PTR", "NS", "SOA")
UDP_LIMIT = 512
MAX_CNAME_CHAIN = 8
_TCP_IDLE_SECONDS = 10.0


def _normalize(name: str) -> str:
    """Lower-case a domain name and strip its trailing dot ("" is the root)."""
    name = name.strip().lower()
    if name.endswith(".") and name != ".":
        name = name[:-1]
    return "" if name == "." else name


def _qtype_name(qtype: int) -> str:
    name = QTYPE.get(qtype, None)
    return name if isinstance(name, str) else f"TYPE{qtype}"


@dataclass(frozen=True)
class _Record:
    rtype: str
    rdata: RD
    ttl: int


def _make_rdata(rtype: str, value: str) -> RD:
    """Build dnslib rdata from a zone-file-like value; raise ValueError if bad."""
    value = value.strip()
    try:
        if rtype == "A":
            socket.inet_pton(socket.AF_INET, value)
            return A(value)
        if rtype == "AAAA":
            socket.inet_pton(socket.AF_INET6, value)
            return AAAA(value)
        if rtype == "MX":
            pref, _, host = value.partition(" ")
            return MX(host.strip() or ".", int(pref))
        if rtype == "TXT":
            data = value.encode("utf-8")
            chunks = [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
            return TXT(chunks)
        if rtype == "CNAME":
            return CNAME(value)
        if rtype == "PTR":
            return PTR(value)
        if rtype == "NS":
            return NS(value)
        if rtype == "SOA":
            parts = value.split()
            if len(parts) != 7:
                raise ValueError("SOA needs 'mname rname serial refresh retry expire minimum'")
            return SOA(parts[0], parts[1], tuple(int(p) for p in parts[2:]))
    except (OSError, ValueError) as exc:
        raise ValueError(f"bad {rtype} value {value!r}: {exc}") from exc
    raise ValueError(f"unsupported record type {rtype!r} (supported: {SUPPORTED_TYPES})")


class DNSServer:
    """An authoritative DNS server on a loopback address, UDP and TCP, one port."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.queries: list[tuple[str, str]] = []
        self.tcp_queries: list[tuple[str, str]] = []
        self._family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._lock = threading.Lock()
        self._records: dict[str, list[_Record]] = {}
        self._failures: dict[str, int] = {}
        self._dropped: set[str] = set()
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._stopping = threading.Event()
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._conn_threads: list[threading.Thread] = []
        self._conns: set[socket.socket] = set()

    # -- lifecycle ---------------------------------------------------------

    @property
    def nameserver(self) -> str:
        """The address in `SMTPY_DNS_NAMESERVERS` form: `127.0.0.1:PORT` or `[::1]:PORT`."""
        if self._family == socket.AF_INET6:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        """Bind UDP and TCP on one free port and serve in a background thread."""
        if self._thread is not None:
            raise RuntimeError("DNSServer already started")
        self._udp, self._tcp = self._bind_pair()
        self.port = self._udp.getsockname()[1]
        self._stopping.clear()
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(
            target=self._serve, name=f"dnsserver-{self.port}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close every socket; safe to call twice."""
        if self._thread is None:
            return
        self._stopping.set()
        assert self._wake_w is not None
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self._thread.join(timeout=5)
        with self._lock:
            conns = list(self._conns)
            threads = list(self._conn_threads)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(timeout=5)
        for sock in (self._udp, self._tcp, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        self._udp = self._tcp = self._wake_r = self._wake_w = None
        self._thread = None
        self._conn_threads = []

    def __enter__(self) -> DNSServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _bind_pair(self) -> tuple[socket.socket, socket.socket]:
        for _attempt in range(100):
            udp = socket.socket(self._family, socket.SOCK_DGRAM)
            try:
                udp.bind((self.host, 0))
                port = udp.getsockname()[1]
                tcp = socket.socket(self._family, socket.SOCK_STREAM)
                try:
                    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    tcp.bind((self.host, port))
                    tcp.listen(64)
                except OSError as exc:
                    tcp.close()
                    if exc.errno == errno.EADDRINUSE:
                        udp.close()
                        continue
                    raise
            except BaseException:
                udp.close()
                raise
            return udp, tcp
        raise OSError(errno.EADDRINUSE, f"no port free for both UDP and TCP on {self.host}")

    # -- zone data ---------------------------------------------------------

    def add(self, name: str, rtype: str, value: str, ttl: int = 60) -> None:
        """Add one record; MX as "10 mx.example.test." ("0 ." is a null MX)."""
        rtype = rtype.upper()
        record = _Record(rtype, _make_rdata(rtype, value), ttl)
        with self._lock:
            self._records.setdefault(_normalize(name), []).append(record)

    def remove(self, name: str, rtype: str | None = None) -> None:
        """Remove a name's records of one type, or everything about the name
        (records, `fail` and `drop`) when `rtype` is None."""
        key = _normalize(name)
        with self._lock:
            if rtype is None:
                self._records.pop(key, None)
                self._failures.pop(key, None)
                self._dropped.discard(key)
                return
            kept = [r for r in self._records.get(key, []) if r.rtype != rtype.upper()]
            if kept:
                self._records[key] = kept
            else:
                self._records.pop(key, None)

    def clear(self) -> None:
        """Forget all records, failures, drops and the query log."""
        with self._lock:
            self._records.clear()
            self._failures.clear()
            self._dropped.clear()
            self.queries.clear()
            self.tcp_queries.clear()

    def fail(self, name: str, rcode: str = "SERVFAIL") -> None:
        """Answer every query for `name` with `rcode` (SERVFAIL, REFUSED, ...)."""
        code = RCODE.reverse.get(rcode.upper())
        if code is None:
            raise ValueError(f"unknown rcode {rcode!r}")
        with self._lock:
            self._failures[_normalize(name)] = int(code)

    def drop(self, name: str) -> None:
        """Never answer queries for `name`, so that clients time out."""
        with self._lock:
            self._dropped.add(_normalize(name))

    # -- answering ---------------------------------------------------------

    def _exists(self, key: str) -> bool:
        if key in self._records:
            return True
        suffix = "." + key if key else ""
        return any(other.endswith(suffix) for other in self._records)

    def _soa_for(self, key: str) -> RR | None:
        labels = key.split(".") if key else []
        for i in range(len(labels) + 1):
            zone = ".".join(labels[i:])
            for record in self._records.get(zone, []):
                if record.rtype == "SOA":
                    return RR(zone + ".", QTYPE.SOA, rdata=record.rdata, ttl=record.ttl)
        return None

    def _answer(self, request: DNSRecord, *, udp: bool) -> DNSRecord | None:
        """Build the reply to `request`, or None to stay silent."""
        reply = DNSRecord(
            DNSHeader(id=request.header.id, qr=1, aa=1, rd=request.header.rd, ra=1),
            q=request.q,
        )
        qname = request.q.qname
        key = _normalize(str(qname))
        qtype = _qtype_name(request.q.qtype)
        with self._lock:
            self.queries.append((key, qtype))
            if not udp:
                self.tcp_queries.append((key, qtype))
            if key in self._dropped:
                return None
            if key in self._failures:
                reply.header.rcode = self._failures[key]
                return reply
            owner: DNSLabel = qname
            for _step in range(MAX_CNAME_CHAIN + 1):
                records = self._records.get(key, [])
                cnames = [r for r in records if r.rtype == "CNAME"]
                if cnames and qtype not in ("CNAME", "ANY"):
                    target = cnames[0]
                    reply.add_answer(RR(owner, QTYPE.CNAME, rdata=target.rdata, ttl=target.ttl))
                    owner = DNSLabel(str(target.rdata.label))
                    key = _normalize(str(owner))
                    continue
                matching = [r for r in records if qtype == "ANY" or r.rtype == qtype]
                for record in matching:
                    reply.add_answer(
                        RR(owner, getattr(QTYPE, record.rtype), rdata=record.rdata, ttl=record.ttl)
                    )
                if not matching:
                    if not self._exists(key):
                        reply.header.rcode = RCODE.NXDOMAIN
                    soa = self._soa_for(key)
                    if soa is not None:
                        reply.add_auth(soa)
                break
            else:
                reply.header.rcode = RCODE.SERVFAIL  # CNAME loop or chain too long
        return reply

    def _handle(self, data: bytes, *, udp: bool) -> bytes | None:
        try:
            request = DNSRecord.parse(data)
        except Exception:  # malformed packet: ignore it, as servers do
            return None
        if request.header.qr or not request.questions:
            return None
        reply = self._answer(request, udp=udp)
        if reply is None:
            return None
        limit = UDP_LIMIT
        opts = [rr for rr in request.ar if rr.rtype == QTYPE.OPT]
        if opts:
            limit = max(UDP_LIMIT, min(int(opts[0].rclass), 4096))
            reply.add_ar(EDNS0(udp_len=4096))
        packed = bytes(reply.pack())
        if udp and len(packed) > limit:
            truncated = DNSRecord(
                DNSHeader(id=reply.header.id, qr=1, aa=1, tc=1, rd=reply.header.rd, ra=1),
                q=request.q,
            )
            if opts:
                truncated.add_ar(EDNS0(udp_len=4096))
            packed = bytes(truncated.pack())
        return packed

    # -- sockets -----------------------------------------------------------

    def _serve(self) -> None:
        assert self._udp is not None and self._tcp is not None and self._wake_r is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self._udp, selectors.EVENT_READ, "udp")
            sel.register(self._tcp, selectors.EVENT_READ, "tcp")
            sel.register(self._wake_r, selectors.EVENT_READ, "wake")
            while not self._stopping.is_set():
                for key, _mask in sel.select():
                    if key.data == "wake":
                        return
                    if key.data == "udp":
                        self._serve_udp_once()
                    else:
                        self._accept_tcp()

    def _serve_udp_once(self) -> None:
        assert self._udp is not None
        try:
            data, addr = self._udp.recvfrom(65535)
        except OSError:
            return
        answer = self._handle(data, udp=True)
        if answer is not None:
            with contextlib.suppress(OSError):
                self._udp.sendto(answer, addr)

    def _accept_tcp(self) -> None:
        assert self._tcp is not None
        try:
            conn, _addr = self._tcp.accept()
        except OSError:
            return
        thread = threading.Thread(target=self._serve_tcp, args=(conn,), daemon=True)
        with self._lock:
            self._conns.add(conn)
            self._conn_threads = [t for t in self._conn_threads if t.is_alive()]
            self._conn_threads.append(thread)
        thread.start()

    def _serve_tcp(self, conn: socket.socket) -> None:
        conn.settimeout(_TCP_IDLE_SECONDS)
        try:
            while not self._stopping.is_set():
                header = _recv_exactly(conn, 2)
                if header is None:
                    return
                (length,) = struct.unpack("!H", header)
                data = _recv_exactly(conn, length)
                if data is None:
                    return
                answer = self._handle(data, udp=False)
                if answer is not None:
                    conn.sendall(struct.pack("!H", len(answer)) + answer)
        except OSError:
            return
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()


def _recv_exactly(conn: socket.socket, size: int) -> bytes | None:
    buf = b""
    while len(buf) < size:
        chunk = conn.recv(size - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf
