"""The real `smtpy` program, run as a subprocess on both backends, as an admin would use it.

Every call goes through `run`, which also checks what must hold for any output:
no traceback and no private key material, ever.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dnsserver import DNSServer
from smtpy.store.db import Database

IDN = "bücher.example"
IDN_A = "xn--bcher-kva.example"
HOST = "mx.forwarder.test"

Run = Callable[..., Any]


def check_output(args: tuple[str, ...], result: Any, code: int) -> None:
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert "PRIVATE KEY" not in output, output
    assert result.code == code, (
        f"smtpy {' '.join(args)}: exit {result.code}, expected {code}\n"
        f"stdout: {result.stdout}\nstderr: {result.stderr}"
    )


@pytest.fixture
def outputs() -> list[str]:
    """Everything the commands of a test printed, stdout and stderr."""
    return []


@pytest.fixture
def run(cli: Any, outputs: list[str]) -> Run:
    """`run(*args, code=0)`: the result, after checking the exit code and the output."""

    def run(*args: str, code: int = 0) -> Any:
        result = cli(*args, input="")  # stdin is never a terminal
        outputs.append(result.stdout + result.stderr)
        check_output(args, result, code)
        return result

    return run


@pytest.fixture
def run_json(run: Run) -> Run:
    def run_json(*args: str, code: int = 0) -> Any:
        return json.loads(run(*args, "--json", code=code).stdout)

    return run_json


@pytest.fixture
def refuse(run: Run) -> Run:
    """Run a command that must fail with exit 2 and one line saying why; return the line."""

    def refuse(*args: str) -> str:
        result = run(*args, code=2)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, f"smtpy {' '.join(args)}: {result.stderr}"
        assert lines[0].startswith("smtpy: error: ")
        assert result.stdout == ""
        return str(lines[0].removeprefix("smtpy: error: "))

    return refuse


def publish(dns_server: DNSServer, records: list[dict[str, str]], *, skip: str = "") -> None:
    for record in records:
        if record["name"] != skip:
            dns_server.add(record["name"], record["type"], record["value"])


def by_purpose(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["purpose"]: r for r in report["records"] if r["purpose"] != "dkim"}


# -- the whole flow -------------------------------------------------------------------------


def test_add_domain_aliases_and_key_then_publish_and_verify(
    run: Run, run_json: Run, dns_server: DNSServer, store_url: str, outputs: list[str]
) -> None:
    added = run("domain", "add", "Bücher.Example")
    assert f"added {IDN}" in added.stdout
    run("alias", "add", f"Alice@{IDN}", "bob@dest.test", "carol@mail.münchen.example")
    run("alias", "add", f"*@{IDN}", "all@dest.test")
    run("alias", "add", f"/sales-[0-9]+/@{IDN}", "sales@dest.test")
    generated = run("key", "generate", IDN, "--selector", "extra", "--bits", "1024")
    assert f"extra._domainkey.{IDN_A}" in generated.stdout

    [domain] = run_json("domain", "list")
    assert (domain["name"], domain["ascii_name"], domain["verified"]) == (IDN, IDN_A, False)
    assert (domain["aliases"], domain["keys"]) == (3, 2)

    records = run_json("domain", "records", IDN)
    assert all(set(record) == {"type", "name", "value"} for record in records)
    assert {"type": "MX", "name": IDN_A, "value": f"10 {HOST}."} in records
    txt = {r["name"]: r["value"] for r in records if r["type"] == "TXT" and r["name"] != IDN_A}
    assert txt[f"_dmarc.{IDN_A}"].startswith("v=DMARC1;")
    assert txt[f"_smtpy.{IDN_A}"].startswith("smtpy-verification=")
    assert txt[f"extra._domainkey.{IDN_A}"].startswith("v=DKIM1; k=rsa; p=")
    dkim = [name for name in txt if name.endswith(f"._domainkey.{IDN_A}")]
    assert len(dkim) == 2  # the first key made by `domain add` and the generated one
    assert "v=spf1 mx ~all" in [r["value"] for r in records if r["name"] == IDN_A]

    publish(dns_server, records)
    report = run_json("domain", "verify", IDN)
    assert report["domain"] == IDN
    assert report["verified"] is True
    assert {r["status"] for r in report["records"]} == {"ok"}
    assert len(report["records"]) == len(records)

    shown = run_json("domain", "show", IDN_A)
    assert shown["verified"] is True and shown["verified_at"] is not None
    table = run("domain", "list").stdout
    assert IDN in table and "yes" in table

    listed = run_json("alias", "list")
    assert [(a["address"], a["kind"]) for a in listed] == [
        (f"Alice@{IDN}", "exact"),
        (f"/sales-[0-9]+/@{IDN}", "regex"),
        (f"*@{IDN}", "catchall"),
    ]
    assert listed[0]["destinations"] == ["bob@dest.test", "carol@mail.münchen.example"]
    assert all(a["enabled"] and a["mode"] == "forward" for a in listed)

    keys = run_json("key", "list")
    assert len(keys) == 2 and all(k["active"] for k in keys)
    assert all("private" not in " ".join(k) for k in keys)

    # No piece of a private key was printed by any command above.
    with Database(store_url) as db:
        pems = [row["private_key"] for row in db.all("SELECT private_key FROM dkim_keys")]
    printed = "".join(outputs).replace("\n", "")
    for pem in pems:
        body = "".join(pem.strip().splitlines()[1:-1])
        assert len(body) > 60
        for start in range(0, len(body) - 32, 32):
            assert body[start : start + 32] not in printed


def test_verify_reports_missing_records_servfail_and_timeout(
    run: Run, run_json: Run, cli: Any, dns_server: DNSServer
) -> None:
    cli.env["SMTPY_DNS_TIMEOUT"] = "0.5"
    run("domain", "add", IDN, "--key-algorithm", "ed25519")
    records = run_json("domain", "records", IDN)
    ownership = f"_smtpy.{IDN_A}"

    publish(dns_server, records, skip=ownership)
    report = run_json("domain", "verify", IDN, code=1)
    assert report["verified"] is False
    found = by_purpose(report)
    assert found["mx"]["status"] == "ok"
    assert found["ownership"]["status"] == "missing"
    assert found["ownership"]["fix"].startswith(f"publish TXT {ownership}")

    publish(dns_server, [r for r in records if r["name"] == ownership])
    dns_server.fail(IDN_A)
    found = by_purpose(run_json("domain", "verify", IDN, code=1))
    assert (found["mx"]["status"], found["ownership"]["status"]) == ("servfail", "ok")
    assert "SERVFAIL" in found["mx"]["fix"]

    dns_server.remove(IDN_A)  # forgets the failure and the records
    publish(dns_server, [r for r in records if r["name"] == IDN_A])
    dns_server.drop(ownership)
    human = run("domain", "verify", IDN, code=1).stdout
    assert "timeout" in human
    assert human.strip().splitlines()[-1].startswith("not verified")
    assert run_json("domain", "show", IDN)["verified"] is False

    dns_server.remove(ownership)
    publish(dns_server, [r for r in records if r["name"] == ownership])
    assert run("domain", "verify", IDN).stdout.strip().splitlines()[-1] == "verified"
    assert run_json("domain", "show", IDN)["verified"] is True


# -- bad input: exit 2, one line, nothing written -----------------------------------------


def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    run_json: Run, run: Run, refuse: Run
) -> None:
    run("domain", "add", IDN, "--key-algorithm", "ed25519")
    run("alias", "add", f"alice@{IDN}", "x@dest.test")
    [key] = run_json("key", "list")

    def snapshot() -> list[Any]:
        return [run_json("domain", "list"), run_json("alias", "list"), run_json("key", "list")]

    before = snapshot()

    assert "not a valid domain name" in refuse("domain", "add", "not a domain")
    assert f"{IDN} is already served" in refuse("domain", "add", IDN_A)
    assert "algorithm" in refuse("domain", "add", "new.example", "--key-algorithm", "dsa")
    assert "not served here" in refuse("domain", "show", "unknown.example")
    assert "--yes" in refuse("domain", "remove", IDN)  # no terminal to ask on

    assert "not served here" in refuse("alias", "add", "bob@unknown.example", "x@dest.test")
    assert "not a valid alias" in refuse("alias", "add", f"b b@{IDN}", "x@dest.test")
    assert "not a mail address" in refuse("alias", "add", f"bob@{IDN}", "x@dest.test", "nobody")
    assert "already exists" in refuse("alias", "add", f"ALICE@{IDN_A}", "y@dest.test")
    assert "RE2" in refuse("alias", "add", f"/(open/@{IDN}", "x@dest.test")
    assert "mode" in refuse("alias", "add", f"bob@{IDN}", "x@dest.test", "--mode", "bounce")
    assert "no alias" in refuse("alias", "remove", f"nobody@{IDN}")

    assert "1024, 2048" in refuse("key", "generate", IDN, "--bits", "512")
    assert f"{IDN} already has a key" in refuse(
        "key", "generate", IDN, "--selector", key["selector"].upper()
    )
    assert "no key with selector nosuch" in refuse("key", "remove", IDN, "nosuch")

    # Bad usage is exit 2 too, without a traceback.
    run("key", "generate", IDN, "--bits", "many", code=2)

    assert snapshot() == before


# -- aliases, keys and domains over their lifetime ----------------------------------------


def test_alias_modes_enable_disable_remove(run: Run, run_json: Run, refuse: Run) -> None:
    run("domain", "add", IDN, "--key-algorithm", "ed25519")
    run("domain", "add", "other.example", "--key-algorithm", "ed25519")
    run("alias", "add", f"Old@{IDN}", "--mode", "reject", "--message", "moved to example.net")
    run("alias", "add", f"noise@{IDN}", "--mode", "discard")
    run("alias", "add", f"Jörg@{IDN}", "jörg@dest.test", "JÖRG@dest.test", "j@dest.test")
    run("alias", "add", "info@other.example", "x@dest.test")

    listed = {a["address"]: a for a in run_json("alias", "list", "--domain", IDN)}
    assert set(listed) == {f"Old@{IDN}", f"noise@{IDN}", f"Jörg@{IDN}"}
    assert (listed[f"Old@{IDN}"]["mode"], listed[f"Old@{IDN}"]["reject_message"]) == (
        "reject",
        "moved to example.net",
    )
    assert listed[f"noise@{IDN}"]["destinations"] == []
    # Local parts keep their case; the repeated destination differs only in case, but
    # local parts of destinations are not ours to fold.
    assert listed[f"Jörg@{IDN}"]["destinations"] == [
        "jörg@dest.test",
        "JÖRG@dest.test",
        "j@dest.test",
    ]

    assert f"disabled Jörg@{IDN}" in run("alias", "disable", f"JÖRG@{IDN_A}").stdout
    table = run("alias", "list", "--domain", IDN_A).stdout
    assert f"Jörg@{IDN}" in table and "moved to example.net" in table
    enabled = {a["address"]: a["enabled"] for a in run_json("alias", "list")}
    assert enabled == {
        "info@other.example": True,
        f"Jörg@{IDN}": False,
        f"noise@{IDN}": True,
        f"Old@{IDN}": True,
    }
    run("alias", "enable", f"jörg@{IDN}")
    run("alias", "remove", f"OLD@{IDN}")
    remaining = run_json("alias", "list")
    assert [a["address"] for a in remaining] == [
        "info@other.example",  # listed by domain, A-label order
        f"Jörg@{IDN}",
        f"noise@{IDN}",
    ]
    assert all(a["enabled"] for a in remaining)

    # Removing a domain takes its aliases with it.
    assert f"removed {IDN}" in run("domain", "remove", IDN, "--yes").stdout
    assert [d["name"] for d in run_json("domain", "list")] == ["other.example"]
    assert [a["address"] for a in run_json("alias", "list")] == ["info@other.example"]
    assert "not served here" in refuse("alias", "list", "--domain", IDN)


def test_key_generate_rotate_remove(run: Run, run_json: Run) -> None:
    run("domain", "add", IDN, "--key-algorithm", "ed25519")
    [first] = run_json("key", "list", IDN)
    assert (first["algorithm"], first["active"]) == ("ed25519", True)

    rotated = run("key", "rotate", IDN, "--selector", "next", "--algorithm", "ed25519")
    assert f"next now signs (retired: {first['selector']})" in rotated.stdout
    keys = {k["selector"]: k for k in run_json("key", "list", IDN)}
    assert {s: k["active"] for s, k in keys.items()} == {first["selector"]: False, "next": True}
    assert "still published" in run("key", "list").stdout

    def dkim_names() -> list[str]:
        records = run_json("domain", "records", IDN)
        return [r["name"] for r in records if "._domainkey." in r["name"]]

    assert dkim_names() == [f"{first['selector']}._domainkey.{IDN_A}", f"next._domainkey.{IDN_A}"]
    assert keys["next"]["public_record"] in run("domain", "records", IDN).stdout.replace("\n", "")

    run("key", "generate", IDN, "--selector", "rsa", "--bits", "1024")
    run("key", "remove", IDN, first["selector"])
    assert dkim_names() == [f"next._domainkey.{IDN_A}", f"rsa._domainkey.{IDN_A}"]
    listed = run_json("key", "list")
    assert [(k["selector"], k["algorithm"], k["bits"]) for k in listed] == [
        ("next", "ed25519", None),
        ("rsa", "rsa", 1024),
    ]


# -- settings and the store ------------------------------------------------------------------


def test_config_show_masks_secrets_and_check_reports_problems(
    run: Run, run_json: Run, cli: Any, store_url: str, tmp_path: Path
) -> None:
    cli.env["SMTPY_SRS_SECRET"] = "srs-secret-value"
    cli.env["SMTPY_RELAY_PASSWORD"] = "relay-secret-value"
    config = tmp_path / "smtpy.toml"
    config.write_text('max_recipients = 42\nrelay_host = "smtp.example.net:587"\n')
    cli.env["SMTPY_CONFIG"] = str(config)

    rows = {r["env"]: r for r in run_json("config", "show")}
    assert rows["SMTPY_HOSTNAME"]["value"] == HOST
    assert rows["SMTPY_HOSTNAME"]["source"] == "env SMTPY_HOSTNAME"
    assert (rows["SMTPY_MAX_RECIPIENTS"]["value"], rows["SMTPY_MAX_RECIPIENTS"]["source"]) == (
        "42",
        f"file {config}",
    )
    assert rows["SMTPY_DELIVERY_PORT"]["source"] == "default"
    assert rows["SMTPY_SRS_SECRET"]["value"] == "********"
    assert rows["SMTPY_RELAY_PASSWORD"]["value"] == "********"
    shown = run("config", "show").stdout + json.dumps(rows)
    assert "srs-secret-value" not in shown and "relay-secret-value" not in shown
    if store_url.startswith("postgresql://"):
        password = store_url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
        assert f":{password}@" not in shown
        assert rows["SMTPY_DATABASE_URL"]["value"].count("********") == 1

    # A relay password without a user name: `config check` fails with the reason.
    checked = run("config", "check", code=1)
    assert "SMTPY_RELAY_USERNAME and SMTPY_RELAY_PASSWORD must be set together" in checked.stderr
    cli.env["SMTPY_RELAY_USERNAME"] = "relay-user"
    assert "configuration OK" in run("config", "check").stdout

    # An invalid value: `config check` says which (exit 1), other commands refuse (exit 2).
    cli.env["SMTPY_DELIVERY_PORT"] = "0"
    checked = run("config", "check", code=1)
    assert "delivery_port (env SMTPY_DELIVERY_PORT)" in checked.stderr
    assert len(checked.stderr.strip().splitlines()) == 1
    run("alias", "list", code=2)


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_sqlite_store_is_created_on_first_use(run: Run, cli: Any, tmp_path: Path) -> None:
    del cli.env["SMTPY_DATABASE_URL"]  # the default: smtpy.db in the state directory
    assert "no smtpy store" in run("alias", "list", "--json", code=2).stderr
    assert not (tmp_path / "state").exists()  # a reading command creates nothing
    run("domain", "add", "example.org")
    assert (tmp_path / "state" / "smtpy.db").is_file()
    assert run("alias", "list", "--json").stdout.strip() == "[]"
    assert "is up to date" in run("db", "upgrade").stdout
    assert "smtpy" in run("--help").stdout
