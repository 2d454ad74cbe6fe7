"""The examples in examples/ say what the code does: they load, and agree with its output."""

from __future__ import annotations

from pathlib import Path

import dns.rdatatype
import dns.zone

from smtpy.admin.records import OWNERSHIP_PREFIX, KeyRecord, required_records
from smtpy.config import load

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _zone() -> dns.zone.Zone:
    text = (EXAMPLES / "dns/forwarded-domain.zone").read_text(encoding="utf-8")
    # Rooted at ".", so the one file may hold names of both example.org and example.net.
    return dns.zone.from_text(text, origin=".", relativize=False, check_origin=False)


def _published(zone: dns.zone.Zone, name: str, rtype: str) -> list[str]:
    rdataset = zone.get_rdataset(name + ".", dns.rdatatype.from_text(rtype))
    if rdataset is None:
        return []
    if rtype == "TXT":
        return [b"".join(r.strings).decode() for r in rdataset]
    return [r.to_text() for r in rdataset]


def test_zone_snippet_publishes_what_domain_records_prints() -> None:
    zone = _zone()
    (dkim_name,) = [str(name).rstrip(".") for name in zone.nodes if "._domainkey." in str(name)]
    selector = dkim_name.split(".")[0]
    (dkim_value,) = _published(zone, dkim_name, "TXT")
    records = required_records(
        "example.org",
        hostname="mx.example.net",
        token="339dc4af190f05a657b70af20f169ae3",
        keys=[KeyRecord(selector, dkim_value)],
    )
    assert {r.purpose for r in records} == {
        "mx", "spf", "dkim", "dmarc", "ownership", "hostname-spf"
    }  # fmt: skip
    for record in records:
        assert record.value in _published(zone, record.name, record.type), record
    assert dkim_value.startswith("v=DKIM1; k=rsa; p=MIIB")
    (token,) = _published(zone, "_smtpy.example.org", "TXT")
    assert token.startswith(OWNERSHIP_PREFIX)
    assert _published(zone, "mx.example.net", "A") == ["192.0.2.25"]


def test_two_node_settings_load_and_differ_only_in_the_node_names() -> None:
    env = {"HOME": "/nonexistent"}
    one = load(EXAMPLES / "two-nodes/mx1.toml", environ=env).settings
    two = load(EXAMPLES / "two-nodes/mx2.toml", environ=env).settings
    assert (one.hostname, one.node_name) == ("mx1.example.net", "mx1")
    assert (two.hostname, two.node_name) == ("mx2.example.net", "mx2")
    assert one.database_url.startswith("postgresql://")
    differing = {
        name for name in type(one).model_fields if getattr(one, name) != getattr(two, name)
    }
    assert differing == {"hostname", "node_name"}
