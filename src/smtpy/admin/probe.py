"""`smtpy test ADDRESS`: prove that forwarding works, without reading a log line.

A probe message goes to the running daemon over SMTP (its first SMTPY_LISTEN
address; a wildcard address is reached on loopback), exactly as a sender's
would: from smtpy-test@ the alias's domain, DKIM-signed with that domain's own
keys, so that the daemon's DMARC check passes whatever policy the domain
publishes (the probe does not come from an address its SPF allows). It is
then followed through the message log by its queue id until the
MX of every destination has answered:

    daemon      a `smtpy serve` answers on the listener            (SMTP)
    accepted    250 after DATA, with the queue id                  (SMTP)
    route       the alias and its destinations                     (message log: received)
    srs         the envelope sender the copies leave with          (the SRS rule and secret)
    signed      the DKIM keys that sign them                       (the alias domain's keys)
    sealed      the ARC seal                                       (settings and keys)
    delivered   each destination's MX and its reply                (message log)

`srs`, `signed` and `sealed` are not in the message log: they come from the
same rules and store the delivery workers use (the SRS secret, the alias
domain's active keys, SMTPY_ARC_SEAL), for this message's alias.

The probe stops at the first step that fails and says what to do: no daemon
(start it), recipient refused (its reply; add an alias), the daemon accepted
the probe into another store (compare the stores), deferred (the reason; it
stays queued and is retried), bounced, or no answer before the timeout.
`delivered` is true only when every destination's MX took the message.
"""

from __future__ import annotations

import contextlib
import re
import smtplib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import TYPE_CHECKING, Any

from smtpy.errors import InvalidInput
from smtpy.mail.addresses import normalize_domain, parse_address, split_address

if TYPE_CHECKING:
    from smtpy.config import Settings
    from smtpy.store.db import Database

DEFAULT_TIMEOUT = 60.0
POLL = 0.25  # seconds between two reads of the message log
RECORD_WAIT = 10.0  # the received row commits with the 250: longer means another store
SMTP_TIMEOUT = 30.0
START_WAIT = 5.0  # seconds a refused connection is tried again (`smtpy serve &` just ran)

_QUEUED = re.compile(r"queued as ([0-9A-Z]+)")


@dataclass(frozen=True, slots=True)
class Step:
    """One step of the probe's way; `ok` False is where it stopped."""

    name: str
    ok: bool
    detail: str
    data: dict[str, Any] = field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        return {"step": self.name, "ok": self.ok, "detail": self.detail, **self.data}


@dataclass
class ProbeResult:
    address: str
    sender: str
    listener: str
    queue_id: str | None = None
    steps: list[Step] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)  # what to do about the failed steps
    delivered: bool = False  # every destination's MX took the probe

    def add(self, name: str, ok: bool, detail: str, **data: Any) -> Step:
        step = Step(name, ok, detail, data)
        self.steps.append(step)
        return step

    def stop(self, name: str, detail: str, advice: str, **data: Any) -> Step:
        """A step that failed, and what to do about it."""
        self.advice.append(advice)
        return self.add(name, False, detail, **data)

    def public(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "sender": self.sender,
            "listener": self.listener,
            "queue_id": self.queue_id,
            "delivered": self.delivered,
            "steps": [s.public() for s in self.steps],
            "advice": self.advice,
        }


def listener(settings: Settings) -> tuple[str, int]:
    """Where the probe connects: the first SMTPY_LISTEN address, a wildcard on loopback."""
    host, port = settings.listen[0]
    if host in ("", "0.0.0.0"):  # noqa: S104 - a wildcard listener is reached on loopback
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return host, port


def probe_message(*, sender: str, address: str, token: str, hostname: str) -> bytes:
    now = datetime.now(UTC)
    lines = [
        f"From: smtpy test <{sender}>",
        f"To: <{address}>",
        f"Subject: smtpy test {token}",
        f"Date: {format_datetime(now)}",
        f"Message-ID: <{token}@{hostname}>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "",
        f"A probe sent by `smtpy test {address}` at {now:%Y-%m-%d %H:%M:%S} UTC",
        f"through the forwarder {hostname}. If you read this, forwarding works.",
        "",
    ]
    return "\r\n".join(lines).encode("utf-8")


def run_probe(
    settings: Settings,
    address: str,
    *,
    open_store: Callable[[], Database],
    sender: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    progress: Callable[[Step], None] = lambda _step: None,
) -> ProbeResult:
    """Send one probe to `address` through the running daemon and follow it (blocking).

    `open_store` opens the store the daemon is expected to use (never creating
    one); `progress` is called with each step as it is known.
    """
    if timeout <= 0:
        raise InvalidInput("--timeout must be more than 0 seconds")
    recipient = str(parse_address(address))
    sender = str(parse_address(sender)) if sender else f"smtpy-test@{split_address(recipient)[1]}"
    host, port = listener(settings)
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    result = ProbeResult(recipient, sender, shown)
    deadline = time.monotonic() + timeout
    with open_store() as db:
        sent = _send(result, settings, host, port, _signer(db, sender), progress)
        if sent is None:
            return result
        _follow(result, db, settings, deadline, progress)
    return result


def _signer(db: Database, sender: str) -> Callable[[bytes], bytes]:
    """Sign the probe with the sender domain's active DKIM keys, when smtpy has them: its
    From then passes DMARC at the daemon whatever the domain's policy (p=reject included),
    as mail from that domain's real senders would."""
    from smtpy.admin.keys import signing_keys
    from smtpy.dkim.sign import Signer, SigningKey

    domain = split_address(sender)[1]
    rows = signing_keys(db, domain)
    if not rows:
        return lambda data: data
    signer = Signer(
        [SigningKey(domain, r["selector"], r["algorithm"], r["private_key"]) for r in rows]
    )
    return lambda data: signer.sign(data) + data


def _send(
    result: ProbeResult,
    settings: Settings,
    host: str,
    port: int,
    sign: Callable[[bytes], bytes],
    report: Callable[[Step], None],
) -> str | None:
    """The SMTP part: connect, MAIL, RCPT, DATA; the queue id, or None where it stopped."""
    token = uuid.uuid4().hex[:16]
    data = sign(
        probe_message(
            sender=result.sender, address=result.address, token=token, hostname=settings.hostname
        )
    )
    try:
        client = _connect(host, port, settings.hostname)
    except (OSError, smtplib.SMTPException) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        report(
            result.stop(
                "daemon",
                f"no smtpy serve answers on {result.listener}: {reason}",
                "start the daemon (`smtpy serve`, or `systemctl start smtpy`) and check "
                "SMTPY_LISTEN",
            )
        )
        return None
    try:
        report(result.add("daemon", True, f"smtpy serve answers on {result.listener}"))
        client.ehlo()
        utf8 = not (result.sender + result.address).isascii()
        code, reply = client.mail(result.sender, ["SMTPUTF8"] if utf8 else [])
        if code != 250:
            text = f"{code} {reply.decode(errors='replace')}"
            report(
                result.stop(
                    "accepted",
                    f"sender {result.sender} refused: {text}",
                    "give another sender with --from",
                    reply=text,
                )
            )
            return None
        code, reply = client.rcpt(result.address)
        if code not in (250, 251):
            text = f"{code} {reply.decode(errors='replace')}"
            report(
                result.stop(
                    "accepted",
                    f"recipient {result.address} refused: {text}",
                    _refused_advice(result.address, code),
                    reply=text,
                )
            )
            return None
        try:
            code, reply = client.data(data)
        except smtplib.SMTPDataError as exc:
            code, reply = exc.smtp_code, _bytes(exc.smtp_error)
        text = f"{code} {reply.decode(errors='replace')}"
        match = _QUEUED.search(text)
        if code != 250 or match is None:
            report(
                result.stop(
                    "accepted", f"message refused: {text}", _data_advice(result, text), reply=text
                )
            )
            return None
        result.queue_id = match.group(1)
        report(result.add("accepted", True, f"queue id {result.queue_id}: {text}", reply=text))
        return result.queue_id
    except (OSError, smtplib.SMTPException) as exc:
        report(
            result.stop(
                "accepted",
                f"the SMTP session with {result.listener} broke: {exc}",
                "look at the daemon's log (`journalctl -u smtpy`)",
            )
        )
        return None
    finally:
        with contextlib.suppress(OSError, smtplib.SMTPException):
            client.quit()
        client.close()


def _connect(host: str, port: int, hostname: str) -> smtplib.SMTP:
    """An SMTP session with the daemon; a daemon still starting gets `START_WAIT` seconds."""
    deadline = time.monotonic() + START_WAIT
    while True:
        try:
            return smtplib.SMTP(host, port, local_hostname=hostname, timeout=SMTP_TIMEOUT)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(POLL)


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def _data_advice(result: ProbeResult, reply: str) -> str:
    if "DMARC" in reply:
        domain = split_address(result.sender)[1]
        return (
            f"the probe's DKIM signature of {domain} did not verify (is its key published? "
            f"`smtpy domain verify {domain}`); for a trial without DNS, set "
            "SMTPY_DMARC_REJECT=false for the daemon"
        )
    return "see the reason in the reply; `smtpy log --event rejected -n 5` shows the daemon's side"


def _refused_advice(address: str, code: int) -> str:
    domain = split_address(address)[1]
    if code >= 500:
        return (
            f"check that smtpy serves {domain} (`smtpy domain list`) and that an alias "
            f"matches (`smtpy route explain {address}`; add one with `smtpy alias add`)"
        )
    return "a temporary refusal: try again, and see `smtpy log --event rejected -n 5`"


def _follow(
    result: ProbeResult,
    db: Database,
    settings: Settings,
    deadline: float,
    report: Callable[[Step], None],
) -> None:
    """Read the message log for the queue id until every destination's MX answered."""
    from smtpy.admin.messages import LogFilter, after
    from smtpy.admin.organizations import organization_of

    assert result.queue_id is not None
    flt = LogFilter(queue_id=result.queue_id)
    org = organization_of(db=db, domain=normalize_domain(split_address(result.address)[1]))
    record_deadline = min(deadline, time.monotonic() + RECORD_WAIT)
    seen: dict[int, dict[str, Any]] = {}
    destinations: list[str] | None = None
    outcomes: dict[str, dict[str, Any]] = {}
    while True:
        for row in after(db=db, org=org, flt=flt, after_id=0):
            seen.setdefault(int(row["id"]), row)
        rows = [seen[i] for i in sorted(seen)]
        if destinations is None:
            received = [r for r in rows if r["event"] in ("received", "discarded")]
            if received:
                destinations = _route_steps(result, db, settings, received[0], report)
                if destinations is None:
                    return
            elif time.monotonic() > record_deadline:
                report(
                    result.stop(
                        "route",
                        f"the daemon accepted {result.queue_id}, but this store has no record "
                        "of it: the daemon uses another store",
                        "compare `smtpy config show` (store: …) with the daemon's `starting` "
                        "log line, and give both the same SMTPY_DATABASE_URL",
                    )
                )
                return
        if destinations is not None:
            for row in rows:
                if row["event"] in ("delivered", "deferred", "bounced") and row["recipient"]:
                    outcomes.setdefault(row["recipient"], row)
            if all(d in outcomes for d in destinations):
                _outcome_steps(result, destinations, outcomes, report)
                return
        if time.monotonic() > deadline:
            waiting = [d for d in destinations or () if d not in outcomes]
            answered = [d for d in destinations or () if d in outcomes]
            _outcome_steps(result, answered, outcomes, report)
            result.delivered = False
            report(
                result.stop(
                    "delivered",
                    "no answer yet from the MX of "
                    + (", ".join(waiting) or "the destinations")
                    + f" (still queued as {result.queue_id})",
                    f"see `smtpy queue show {result.queue_id}` and `smtpy status` (is a "
                    "daemon delivering?); run again with a longer --timeout",
                )
            )
            return
        time.sleep(POLL)


def _route_steps(
    result: ProbeResult,
    db: Database,
    settings: Settings,
    received: dict[str, Any],
    report: Callable[[Step], None],
) -> list[str] | None:
    """The route, SRS, signed and sealed steps; the destinations, or None if none."""
    alias = str(received["alias"] or result.address)
    if received["event"] == "discarded":
        report(
            result.stop(
                "route",
                f"{alias} discards its mail: nothing is forwarded",
                f"give {alias} destinations (`smtpy alias add {alias} DEST`) to test forwarding",
            )
        )
        return None
    destinations = [d.strip() for d in str(received["recipient"] or "").split(",") if d.strip()]
    via = _via(settings)
    report(
        result.add(
            "route",
            True,
            f"{alias} → {', '.join(destinations)}{via}",
            alias=alias,
            destinations=destinations,
        )
    )
    report(_srs_step(result, db, settings))
    domain = split_address(alias)[1]
    from smtpy.admin.keys import signing_keys

    keys = signing_keys(db, domain)
    if keys:
        shown = ", ".join(f"s={k['selector']} ({k['algorithm']})" for k in keys)
        report(result.add("signed", True, f"DKIM d={domain} {shown}", domain=domain))
    else:
        report(
            result.stop(
                "signed",
                f"not signed: {domain} has no active DKIM key",
                f"create one with `smtpy key generate {domain}` and publish it",
                domain=domain,
            )
        )
    report(_seal_step(result, db, settings, domain))
    return destinations


def _via(settings: Settings) -> str:
    if settings.relay_host is not None:
        host, port = settings.relay_host
        return f" (through the relay {host}:{port})"
    if settings.delivery_port != 25:
        return f" (to their MX hosts on port {settings.delivery_port})"
    return ""


def _srs_step(result: ProbeResult, db: Database, settings: Settings) -> Step:
    from smtpy.admin.srs_secret import stored_srs_secret
    from smtpy.route.srs import SRS

    secret = (
        settings.srs_secret.get_secret_value()
        if settings.srs_secret is not None
        else stored_srs_secret(db)
    )
    rewritten = SRS(secrets=(secret.encode(),), domain=settings.hostname).forward(result.sender)
    return result.add(
        "srs", True, f"envelope sender {result.sender} → {rewritten}", envelope_sender=rewritten
    )


def _seal_step(result: ProbeResult, db: Database, settings: Settings, domain: str) -> Step:
    from smtpy.admin.keys import signing_keys

    if not settings.arc_seal:
        return result.add("sealed", True, "not sealed: ARC sealing is off (SMTPY_ARC_SEAL)")
    if not settings.auth_checks:
        return result.add(
            "sealed", True, "not sealed: the seal needs the checks (SMTPY_AUTH_CHECKS is off)"
        )
    seal_domain = settings.arc_seal_domain or domain
    rsa = [k for k in signing_keys(db, seal_domain) if k["algorithm"] == "rsa"]
    if not rsa:
        return result.add(
            "sealed", True, f"not sealed: {seal_domain} has no active RSA key for ARC"
        )
    return result.add(
        "sealed", True, f"ARC d={seal_domain} s={rsa[0]['selector']}", domain=seal_domain
    )


def _outcome_steps(
    result: ProbeResult,
    destinations: list[str],
    outcomes: dict[str, dict[str, Any]],
    report: Callable[[Step], None],
) -> None:
    result.delivered = bool(destinations) and all(
        outcomes[d]["event"] == "delivered" for d in destinations
    )
    for destination in destinations:
        row = outcomes[destination]
        remote = row["remote_host"] or "no host reached"
        reply = str(row["reply"] or "")
        if row["code"] is not None and not reply.startswith(str(row["code"])):
            reply = f"{row['code']} {reply}"  # the log keeps the code apart
        data = {
            "recipient": destination,
            "remote_host": row["remote_host"],
            "code": row["code"],
            "reply": reply,
        }
        if row["event"] == "delivered":
            report(result.add("delivered", True, f"{destination} via {remote}: {reply}", **data))
        elif row["event"] == "deferred":
            report(
                result.stop(
                    "deferred",
                    f"{destination} via {remote}: {reply}",
                    f"the message stays queued and is retried (`smtpy queue show "
                    f"{result.queue_id}`); fix what the reply says, then "
                    f"`smtpy queue retry {result.queue_id}`",
                    **data,
                )
            )
        else:
            report(
                result.stop(
                    "bounced",
                    f"{destination} via {remote}: {reply}",
                    f"the destination refused it for good: check {destination} and what the "
                    "reply says",
                    **data,
                )
            )
