"""Zone-file lines of a domain's records (pure): what dnspython reads back is what was meant."""

from __future__ import annotations

import dns.rdatatype
import dns.zonefile

from smtpy.admin.records import DnsRecord, KeyRecord, required_records, zone_lines


def read(lines: list[str]) -> list[tuple[str, str, bytes | str]]:
    found: list[tuple[str, str, bytes | str]] = []
    for rrset in dns.zonefile.read_rrsets("\n".join(lines), rdclass=None, relativize=False):
        for rdata in rrset:
            value = (
                b"".join(rdata.strings) if rrset.rdtype == dns.rdatatype.TXT else rdata.to_text()
            )
            found.append((rrset.name.to_text(), dns.rdatatype.to_text(rrset.rdtype), value))
    return found


def test_long_and_awkward_txt_values_come_back_byte_for_byte() -> None:
    value = 'v=DKIM1; k=rsa; p="quoted" back\\slash ' + "A" * 600 + " Ünïcode"
    record = DnsRecord(type="TXT", name="sel._domainkey.example.test", value=value, purpose="dkim")
    lines = zone_lines([record])
    [(name, rtype, data)] = read(lines)
    assert (name, rtype, data) == ("sel._domainkey.example.test.", "TXT", value.encode())
    [line] = [line for line in lines if not line.startswith(";")]
    strings = -(-len(value.encode()) // 255)  # as few strings of at most 255 bytes as can be
    assert strings == 3 and line.count('" "') == strings - 1


def test_every_required_record_is_a_line_and_the_hostname_record_says_where_it_goes() -> None:
    records = required_records(
        "example.test",
        hostname="mx.forwarder.test",
        token="abc",
        keys=[KeyRecord("s1", "v=DKIM1; k=ed25519; p=AAAA")],
    )
    lines = zone_lines(records)
    assert lines[0] == "; records for example.test"
    assert "; in the zone of mx.forwarder.test, once for all served domains" in lines
    assert read(lines) == [
        (f"{r.name}.", r.type, r.value.encode() if r.type == "TXT" else r.value) for r in records
    ]
