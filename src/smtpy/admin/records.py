"""The DNS records a served domain needs, how to judge what DNS returns, and the
zone-file form of the records (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

RecordType = Literal["MX", "TXT"]
Status = Literal["ok", "missing", "wrong", "timeout", "servfail", "error"]

OWNERSHIP_LABEL = "_smtpy"
OWNERSHIP_PREFIX = "smtpy-verification="


Purpose = Literal["mx", "spf", "dkim", "dmarc", "ownership", "hostname-spf"]


class RecordPublic(BaseModel):
    """A record as `domain records --json` prints it: type, name, value."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    type: RecordType
    name: str  # A-label, no trailing dot
    value: str


class DnsRecord(RecordPublic):
    """A record to publish; `purpose` says which check it serves (not in the JSON)."""

    purpose: Purpose = Field(exclude=True)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    selector: str
    public_record: str


def required_records(
    domain: str, *, hostname: str, token: str, keys: Sequence[KeyRecord]
) -> list[DnsRecord]:
    """Everything to publish for `domain` (A-label) served by `hostname`."""

    def record(type_: RecordType, name: str, value: str, purpose: Purpose) -> DnsRecord:
        return DnsRecord(type=type_, name=name, value=value, purpose=purpose)

    records = [
        record("MX", domain, f"10 {hostname}.", "mx"),
        record("TXT", domain, "v=spf1 mx ~all", "spf"),
    ]
    records += [
        record("TXT", f"{key.selector}._domainkey.{domain}", key.public_record, "dkim")
        for key in keys
    ]
    records += [
        record(
            "TXT", f"_dmarc.{domain}", f"v=DMARC1; p=none; rua=mailto:postmaster@{domain}", "dmarc"
        ),
        record("TXT", f"{OWNERSHIP_LABEL}.{domain}", f"{OWNERSHIP_PREFIX}{token}", "ownership"),
        # Forwarded mail leaves with an SRS sender @hostname: SPF is checked there.
        record("TXT", hostname, "v=spf1 a mx -all", "hostname-spf"),
    ]
    return records


ZONE_TTL = 3600
TXT_STRING_MAX = 255  # bytes in one character-string (RFC 1035 3.3)


def _txt_strings(value: str) -> str:
    """A TXT value as quoted character-strings of at most 255 bytes each."""
    data = value.encode("utf-8")
    chunks = [data[i : i + TXT_STRING_MAX] for i in range(0, len(data), TXT_STRING_MAX)] or [b""]
    quoted = []
    for chunk in chunks:
        text = "".join(
            f"\\{byte:03d}"
            if byte < 0x20 or byte > 0x7E
            else ("\\" + chr(byte) if chr(byte) in '"\\' else chr(byte))
            for byte in chunk
        )
        quoted.append(f'"{text}"')
    return " ".join(quoted)


def zone_lines(records: Sequence[DnsRecord]) -> list[str]:
    """The records as zone-file lines (absolute names, class IN, a TTL), ready to paste.

    Long TXT values are split into 255-byte strings, as DNS requires. The
    forwarder's own SPF record lives in its hostname's zone: it comes last,
    under a comment saying so.
    """
    own = [r for r in records if r.purpose != "hostname-spf"]
    hostname = [r for r in records if r.purpose == "hostname-spf"]

    def line(record: DnsRecord) -> str:
        rdata = record.value if record.type == "MX" else _txt_strings(record.value)
        return f"{record.name}.\t{ZONE_TTL}\tIN\t{record.type}\t{rdata}"

    out = [f"; records for {own[0].name}" if own else "; no records"] + [line(r) for r in own]
    for record in hostname:
        out += [f"; in the zone of {record.name}, once for all served domains", line(record)]
    return out


class Finding(BaseModel):
    """One row of `domain verify`: the record, what DNS returned, and what to do."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    type: RecordType
    name: str
    value: str
    purpose: Purpose
    found: tuple[str, ...]
    status: Status
    required: bool  # ownership and MX: the domain is verified when these are ok
    fix: str


def _finding(record: DnsRecord, found: tuple[str, ...], status: Status, fix: str) -> Finding:
    return Finding(
        type=record.type,
        name=record.name,
        value=record.value,
        purpose=record.purpose,
        found=found,
        status=status,
        required=record.purpose in ("mx", "ownership"),
        fix=fix,
    )


def _dkim_key_data(value: str) -> str:
    tags = dict(
        part.strip().split("=", 1) for part in value.replace(" ", "").split(";") if "=" in part
    )
    return tags.get("p", "")


def judge(record: DnsRecord, lookup_status: str, found: Sequence[str], detail: str = "") -> Finding:
    """Compare what DNS returned for one record with what is expected."""
    values = tuple(found)
    where = f"{record.type} {record.name}"
    if lookup_status in ("timeout", "servfail", "error"):
        reason = {"timeout": "timed out", "servfail": "answered SERVFAIL"}.get(
            lookup_status, "failed"
        )
        if detail and not detail.startswith(reason):
            reason = f"{reason}: {detail}"
        elif detail:
            reason = detail  # the detail already says "timed out: ..."
        status: Status = lookup_status  # type: ignore[assignment]
        return _finding(
            record,
            values,
            status,
            f"the DNS lookup {reason}; check the domain's name servers and try again",
        )
    publish = f'publish {where} "{record.value}"'
    if record.purpose == "mx":
        hosts = [v.split()[-1].rstrip(".").lower() for v in values if v.split()]
        expected = record.value.split()[-1].rstrip(".").lower()
        if expected in hosts:
            return _finding(record, values, "ok", "")
        if not values:
            return _finding(record, values, "missing", publish)
        return _finding(record, values, "wrong", f"the MX points elsewhere: {publish}")
    if record.purpose == "dkim":
        expected_key = _dkim_key_data(record.value)
        if any(_dkim_key_data(v) == expected_key for v in values):
            return _finding(record, values, "ok", "")
    elif record.purpose in ("spf", "hostname-spf"):
        spf = [v for v in values if v.lower().startswith("v=spf1")]
        if record.value in spf:
            return _finding(record, values, "ok", "")
        if spf:
            return _finding(
                record,
                values,
                "wrong",
                f"an SPF record exists; make sure it allows this forwarder, e.g. {publish}",
            )
    elif record.purpose == "dmarc":
        if any(v.lower().startswith("v=dmarc1") for v in values):
            return _finding(record, values, "ok", "")
    elif record.value in values:
        return _finding(record, values, "ok", "")
    if not values:
        return _finding(record, values, "missing", publish)
    return _finding(record, values, "wrong", publish)
