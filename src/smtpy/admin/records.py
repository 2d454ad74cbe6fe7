"""The DNS records a served domain needs, and how to judge what DNS returns (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

RecordType = Literal["MX", "TXT"]
Status = Literal["ok", "missing", "wrong", "timeout", "servfail", "error"]

OWNERSHIP_LABEL = "_smtpy"
OWNERSHIP_PREFIX = "smtpy-verification="


@dataclass(frozen=True, slots=True)
class DnsRecord:
    """A record to publish; `purpose` says which check it serves."""

    type: RecordType
    name: str
    value: str
    purpose: Literal["mx", "spf", "dkim", "dmarc", "ownership", "hostname-spf"]

    def public(self) -> dict[str, str]:
        """The `domain records --json` form: type, name, value."""
        return {key: value for key, value in asdict(self).items() if key != "purpose"}


@dataclass(frozen=True, slots=True)
class KeyRecord:
    selector: str
    public_record: str


def required_records(
    domain: str, *, hostname: str, token: str, keys: Sequence[KeyRecord]
) -> list[DnsRecord]:
    """Everything to publish for `domain` (A-label) served by `hostname`."""
    records = [
        DnsRecord("MX", domain, f"10 {hostname}.", "mx"),
        DnsRecord("TXT", domain, "v=spf1 mx ~all", "spf"),
    ]
    records += [
        DnsRecord("TXT", f"{key.selector}._domainkey.{domain}", key.public_record, "dkim")
        for key in keys
    ]
    records += [
        DnsRecord(
            "TXT", f"_dmarc.{domain}", f"v=DMARC1; p=none; rua=mailto:postmaster@{domain}", "dmarc"
        ),
        DnsRecord("TXT", f"{OWNERSHIP_LABEL}.{domain}", f"{OWNERSHIP_PREFIX}{token}", "ownership"),
        # Forwarded mail leaves with an SRS sender @hostname: SPF is checked there.
        DnsRecord("TXT", hostname, "v=spf1 a mx -all", "hostname-spf"),
    ]
    return records


@dataclass(frozen=True, slots=True)
class Finding:
    """One row of `domain verify`."""

    record: DnsRecord
    found: tuple[str, ...]
    status: Status
    fix: str

    @property
    def required(self) -> bool:
        return self.record.purpose in ("mx", "ownership")

    def public(self) -> dict[str, object]:
        return {
            **self.record.public(),
            "purpose": self.record.purpose,
            "found": list(self.found),
            "status": self.status,
            "required": self.required,
            "fix": self.fix,
        }


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
        return Finding(
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
            return Finding(record, values, "ok", "")
        if not values:
            return Finding(record, values, "missing", publish)
        return Finding(record, values, "wrong", f"the MX points elsewhere: {publish}")
    if record.purpose == "dkim":
        expected_key = _dkim_key_data(record.value)
        if any(_dkim_key_data(v) == expected_key for v in values):
            return Finding(record, values, "ok", "")
    elif record.purpose in ("spf", "hostname-spf"):
        spf = [v for v in values if v.lower().startswith("v=spf1")]
        if record.value in spf:
            return Finding(record, values, "ok", "")
        if spf:
            return Finding(
                record,
                values,
                "wrong",
                f"an SPF record exists; make sure it allows this forwarder, e.g. {publish}",
            )
    elif record.purpose == "dmarc":
        if any(v.lower().startswith("v=dmarc1") for v in values):
            return Finding(record, values, "ok", "")
    elif record.value in values:
        return Finding(record, values, "ok", "")
    if not values:
        return Finding(record, values, "missing", publish)
    return Finding(record, values, "wrong", publish)
