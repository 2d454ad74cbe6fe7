"""What every answer of the real `smtpy api` shares, on SQLite and PostgreSQL: errors as
RFC 9457 problems, security headers, CORS and trusted proxies as configured, idempotency
keys, CSRF for cookie sessions, the access log, the docs, and its life as a process
(start line, clear refusals to start, SIGTERM answering the request in flight, exit 0).

Tests that need a route of API.md skip, with the reason, while it is not served.
"""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from apiserver import ApiServer, seed_org
from conftest import POSTGRES_URL, Cli, drop_database

PROBLEM_KEYS = {"type", "title", "status", "detail", "code"}
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def assert_problem(answer: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """An RFC 9457 problem with `status` and `code`: never HTML, never a traceback."""
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = answer.json()
    assert set(body) >= PROBLEM_KEYS, body
    assert body["status"] == status and body["code"] == code, body
    assert body["detail"] and "\n" not in body["detail"]
    assert "Traceback" not in answer.text and "<html" not in answer.text.lower()
    assert set(body) - PROBLEM_KEYS <= {"errors"}
    if status == 422:
        assert all(set(e) == {"field", "message"} for e in body["errors"]), body
    return body


def assert_security_headers(answer: httpx.Response, *, hsts: bool) -> None:
    assert answer.headers["content-security-policy"] == CSP
    assert answer.headers["x-frame-options"] == "DENY"
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["referrer-policy"] == "same-origin"
    assert ("strict-transport-security" in answer.headers) is hsts


def log_lines(stderr: str) -> list[dict[str, Any]]:
    lines = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def requests_logged(stderr: str, path: str) -> list[dict[str, Any]]:
    return [e for e in log_lines(stderr) if e.get("event") == "request" and e.get("path") == path]


def served(api: ApiServer, method: str, path: str) -> bool:
    document = api.client.get("/api/v1/openapi.json").json()
    return method.lower() in document["paths"].get(path, {})


def require(api: ApiServer, method: str, path: str) -> None:
    if not served(api, method, path):
        pytest.skip(f"{method} {path} is not served yet (another branch adds it)")


def destroy_store(store_url: str) -> None:
    if store_url.startswith("sqlite:"):
        Path(store_url.removeprefix("sqlite:///")).unlink()
        for suffix in ("-wal", "-shm"):
            Path(store_url.removeprefix("sqlite:///") + suffix).unlink(missing_ok=True)
    else:
        drop_database(POSTGRES_URL, store_url.rsplit("/", 1)[1])


# -- errors, headers, docs, readiness (default settings) ------------------------------


def test_errors_headers_docs_and_readiness(cli_env: dict[str, str], store_url: str) -> None:
    with ApiServer(cli_env) as api:
        ok = api.client.get("/healthz")
        assert ok.status_code == 200
        assert_security_headers(ok, hsts=False)
        assert api.client.get("/readyz").json() == {"status": "ready"}

        unknown = api.client.get("/api/v1/no-such-thing")
        assert_problem(unknown, 404, "not_found")
        assert_security_headers(unknown, hsts=False)

        wrong_method = api.client.delete("/healthz")
        assert_problem(wrong_method, 405, "method_not_allowed")
        assert wrong_method.headers["allow"] == "GET"

        # CORS is off: no browser on another site may read an answer.
        origin = {"Origin": "https://elsewhere.example"}
        assert (
            "access-control-allow-origin" not in api.client.get("/healthz", headers=origin).headers
        )
        preflight = api.client.options(
            "/api/v1/domains", headers={**origin, "Access-Control-Request-Method": "POST"}
        )
        assert "access-control-allow-origin" not in preflight.headers
        assert preflight.headers["content-type"] == "application/problem+json"

        # Every operation that needs a caller answers 401 without one.
        document = api.client.get("/api/v1/openapi.json").json()
        schemes = document["components"]["securitySchemes"]
        assert schemes["apiKey"] == {
            "type": "http",
            "scheme": "bearer",
            "description": schemes["apiKey"]["description"],
        }
        assert (
            schemes["session"]["in"] == "cookie" and schemes["session"]["name"] == "smtpy_session"
        )
        secured = [
            (method, path)
            for path, item in document["paths"].items()
            for method, operation in item.items()
            if operation.get("security")
        ]
        for method, path in secured:
            answer = api.client.request(method, re.sub(r"\{[^}]+\}", "x", path))
            assert_problem(answer, 401, "unauthorized")
            assert answer.headers["www-authenticate"] == "Bearer"

        # The docs page: from the package, no script, nothing from elsewhere.
        page = api.client.get("/api/docs")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert_security_headers(page, hsts=False)
        html = page.text
        assert "<script" not in html.lower() and " style=" not in html.lower()
        assert re.findall(r'(?:href|src)="(?!/|#)', html) == []
        for path in document["paths"]:
            assert f"<code>{path}</code>" in html
        assert 'id="problem-not_found"' in html  # a problem's `type` points here
        css = api.client.get("/api/docs/docs.css")
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")

        # The store goes away: /readyz says so with a problem, the process stays up.
        destroy_store(store_url)
        down = api.client.get("/readyz")
        assert_problem(down, 503, "store_unavailable")
        # A middleware's store error (the idempotency keys') is a problem too. (A SQLite
        # connection opened before the file was removed still reads the removed file.)
        creating = api.client.post(
            "/api/v1/domains",
            json={"name": "down.test"},
            headers={"Authorization": "Bearer smtpy_x_y", "Idempotency-Key": "down-1"},
        )
        assert_security_headers(creating, hsts=False)
        if store_url.startswith("postgresql"):
            assert_problem(creating, 503, "store_unavailable")
        else:
            assert creating.headers["content-type"] == "application/problem+json"
        assert api.client.get("/healthz").status_code == 200
        assert api.stop() == 0
    warnings = [e for e in log_lines(api.stderr) if e.get("event") == "store unavailable"]
    assert warnings and warnings[0]["path"] == "/readyz"
    assert "Traceback" not in api.stderr


def test_malformed_json_and_field_errors(cli_env: dict[str, str], store_url: str) -> None:
    org = seed_org(store_url)
    with ApiServer(cli_env) as api:
        require(api, "POST", "/api/v1/domains")
        client = api.as_key(org["key"])
        for broken in (b'{"name": ', b"not json", b'{"name": "a.test",}'):
            answer = client.post(
                "/api/v1/domains", content=broken, headers={"Content-Type": "application/json"}
            )
            assert_problem(answer, 422, "malformed_json")
        wrong = assert_problem(
            client.post("/api/v1/domains", json={"name": ["x"]}), 422, "invalid_input"
        )
        assert [e["field"] for e in wrong["errors"]] == ["name"]
        missing = assert_problem(client.post("/api/v1/domains", json={}), 422, "invalid_input")
        assert [e["field"] for e in missing["errors"]] == ["name"]
        created = client.post("/api/v1/domains", json={"name": "fields.test"})
        assert created.status_code == 201, created.text
        assert_problem(
            client.post("/api/v1/domains", json={"name": "fields.test"}), 409, "conflict"
        )
        if served(api, "POST", "/api/v1/domains/{name}/aliases"):
            answer = client.post(
                "/api/v1/domains/fields.test/aliases",
                json={"local_part": "x", "destinations": ["ok@dest.example", 5]},
            )
            body = assert_problem(answer, 422, "invalid_input")
            assert [e["field"] for e in body["errors"]] == ["destinations.1"]


# -- idempotency keys ------------------------------------------------------------------


def test_idempotency_key_gives_the_first_answer_again(
    cli_env: dict[str, str], store_url: str
) -> None:
    from smtpy.store.db import Database

    a = seed_org(store_url, org="idem-a")
    b = seed_org(store_url, org="idem-b")
    with ApiServer(cli_env) as api:
        require(api, "POST", "/api/v1/domains")
        client = api.as_key(a["key"])
        key = {"Idempotency-Key": "create-idem-1"}
        first = client.post("/api/v1/domains", json={"name": "idem.test"}, headers=key)
        assert first.status_code == 201, first.text
        again = client.post("/api/v1/domains", json={"name": "idem.test"}, headers=key)
        assert again.status_code == 201
        assert again.json() == first.json()
        assert again.headers["idempotent-replayed"] == "true"

        reused = client.post("/api/v1/domains", json={"name": "other.test"}, headers=key)
        assert_problem(reused, 422, "idempotency_key_reused")

        # The same key from another caller is another key.
        theirs = api.as_key(b["key"]).post(
            "/api/v1/domains", json={"name": "idem-b.test"}, headers=key
        )
        assert theirs.status_code == 201 and "idempotent-replayed" not in theirs.headers

        # A failed request is not kept: the same key may be sent again.
        failed = client.post(
            "/api/v1/domains", json={"name": "idem.test"}, headers={"Idempotency-Key": "k2"}
        )
        assert_problem(failed, 409, "conflict")
        too_long = client.post(
            "/api/v1/domains", json={"name": "x.test"}, headers={"Idempotency-Key": "k" * 201}
        )
        assert_problem(too_long, 422, "invalid_input")

    with Database(store_url) as db:
        names = [
            r["name"]
            for r in db.all(
                "SELECT name FROM domains WHERE name LIKE '%idem%' OR name = 'other.test'"
            )
        ]
        rows = db.all("SELECT principal, key, status FROM idempotency_keys ORDER BY status, key")
    assert sorted(names) == ["idem-b.test", "idem.test"]  # one object, not two
    assert [(r["key"], r["status"]) for r in rows] == [
        ("create-idem-1", 201),
        ("create-idem-1", 201),
    ]
    assert all(a["key"] not in r["principal"] for r in rows)  # a digest, never the key


def test_idempotency_never_keeps_a_secret_shown_once(
    cli_env: dict[str, str], store_url: str
) -> None:
    from smtpy.store.db import Database

    a = seed_org(store_url, org="idem-secret")
    with ApiServer(cli_env) as api:
        client = api.as_key(a["key"])
        key = {"Idempotency-Key": "new-key-1"}
        first = client.post("/api/v1/api-keys", json={"name": "deploy"}, headers=key)
        assert first.status_code == 201, first.text
        secret = first.json()["key"]
        assert secret.startswith("smtpy_")
        again = client.post("/api/v1/api-keys", json={"name": "deploy"}, headers=key)
        assert again.status_code == 201
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json()["id"] == first.json()["id"]
        assert again.json()["key"] is None  # shown once: a replay cannot show it again
        listed = client.get("/api/v1/api-keys").json()["data"]
        assert [k["name"] for k in listed].count("deploy") == 1

    with Database(store_url) as db:
        bodies = [str(r["body"]) for r in db.all("SELECT body FROM idempotency_keys")]
    # the secret after "smtpy_<id>_" (url-safe base64: it may hold "_" itself)
    assert bodies and all(secret.split("_", 2)[2] not in body for body in bodies)


# -- CSRF for cookie sessions ------------------------------------------------------------


def test_a_cookie_session_needs_the_csrf_token_to_change_anything(
    cli_env: dict[str, str], store_url: str
) -> None:
    from smtpy.accounts import sessions
    from smtpy.store.db import Database

    org = seed_org(store_url, org="csrf")
    with Database(store_url) as db:
        session = sessions.create(
            db=db, user_id=org["user"], organization_id=org["org"], mfa_passed=True, lifetime=3600
        )
    token = sessions.csrf_token(session.token)
    with ApiServer(cli_env) as api:
        require(api, "POST", "/api/v1/domains")
        browser = api.browser()
        browser.cookies.set("smtpy_session", session.token)
        body = {"name": "csrf.test"}

        answer = browser.post("/api/v1/domains", json=body)
        assert "X-CSRF-Token" in assert_problem(answer, 403, "forbidden")["detail"]
        answer = browser.post(
            "/api/v1/domains",
            json=body,
            headers={"X-CSRF-Token": token, "Sec-Fetch-Site": "cross-site"},
        )
        assert "cross-site" in assert_problem(answer, 403, "forbidden")["detail"]
        answer = browser.post("/api/v1/domains", json=body, headers={"X-CSRF-Token": "0" * 64})
        assert_problem(answer, 403, "forbidden")
        if served(api, "GET", "/api/v1/domains"):  # reading needs no token
            listed = browser.get("/api/v1/domains")
            assert listed.status_code == 200 and listed.json()["data"] == []

        answer = browser.post(
            "/api/v1/domains",
            json=body,
            headers={"X-CSRF-Token": token, "Sec-Fetch-Site": "same-origin"},
        )
        assert answer.status_code == 201, answer.text
        # An API key is no cookie: no token needed.
        assert (
            api.as_key(org["key"]).post("/api/v1/domains", json={"name": "key.test"}).status_code
            == 201
        )


# -- configured: https public URL, CORS origins, trusted proxies --------------------------


def test_proxies_hsts_and_cors_as_configured(cli_env: dict[str, str]) -> None:
    allowed = "https://app.example.test"
    with ApiServer(
        cli_env,
        SMTPY_PUBLIC_URL="https://mail.example.test",
        SMTPY_CORS_ORIGINS=allowed,
        SMTPY_TRUSTED_PROXIES="127.0.0.0/8,::1",
    ) as api:
        ok = api.client.get("/healthz")
        assert_security_headers(ok, hsts=True)
        assert ok.headers["strict-transport-security"].startswith("max-age=")
        assert_security_headers(api.client.get("/api/v1/nothing-here"), hsts=True)

        preflight = api.client.options(
            "/api/v1/domains",
            headers={
                "Origin": allowed,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == allowed
        assert "access-control-allow-credentials" not in preflight.headers
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert "idempotency-key" in preflight.headers["access-control-allow-headers"].lower()
        simple = api.client.get("/healthz", headers={"Origin": allowed})
        assert simple.headers["access-control-allow-origin"] == allowed
        other = api.client.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers

        # From a trusted proxy: the rightmost address that is not a proxy is the client.
        api.client.get(
            "/probe-forwarded",
            headers={"X-Forwarded-For": "198.51.100.7, 203.0.113.9, 127.0.0.9"},
        )
        api.client.get("/probe-direct")
        assert api.stop() == 0
    assert requests_logged(api.stderr, "/probe-forwarded")[0]["client"] == "203.0.113.9"
    assert requests_logged(api.stderr, "/probe-direct")[0]["client"] == "127.0.0.1"
    started = [e for e in log_lines(api.stderr) if e.get("event") == "started"]
    assert started[0]["public_url"] == "https://mail.example.test"


def test_forwarded_for_is_ignored_from_untrusted_peers_and_the_log_keeps_no_secrets(
    cli_env: dict[str, str], store_url: str
) -> None:
    with ApiServer(cli_env) as api:
        answer = api.client.get(
            "/probe-untrusted",
            headers={
                "X-Forwarded-For": "203.0.113.9",
                "Authorization": "Bearer smtpy_canaryid_canary-secret",
                "Cookie": "smtpy_session=cookie-canary",
                "X-CSRF-Token": "csrf-canary",
            },
            params={"q": "query-canary"},
        )
        assert_problem(answer, 404, "not_found")
        assert api.stop() == 0
    (line,) = requests_logged(api.stderr, "/probe-untrusted")
    assert line["client"] == "127.0.0.1"
    assert line["method"] == "GET" and line["status"] == 404
    assert isinstance(line["duration_ms"], float)
    assert "canary" not in api.stderr
    (started,) = [e for e in log_lines(api.stderr) if e.get("event") == "started"]
    assert started["url"] == api.base_url
    assert started["store"].split("://")[0] == store_url.split("://")[0]
    assert ":smtpy@" not in started["store"]  # PostgreSQL's password is masked
    assert [e["event"] for e in log_lines(api.stderr)][-2:] == ["stopping", "stopped"]


def test_a_bug_is_a_logged_500_problem_without_local_variables() -> None:
    """In process: no route of smtpy fails on purpose, so a tiny application shows it."""
    import asyncio
    import io
    import sys

    from fastapi import FastAPI

    from smtpy import log
    from smtpy.api import problems

    app = FastAPI()
    problems.install(app)
    app.add_middleware(problems.CatchAll)

    @app.get("/bug")
    def bug() -> None:
        private_key = "SECRET-LOCAL-VALUE"
        raise RuntimeError(f"failed near {len(private_key)}")

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.get("/bug")

    # The log goes to a stream of this test's, and back onto the session's stderr after: a
    # handler left on a per-test capture would write to a closed file in later tests.
    stderr = io.StringIO()
    saved, sys.stderr = sys.stderr, stderr
    try:
        log.configure("info", json=True)
        answer = asyncio.run(call())
    finally:
        sys.stderr = saved
        log.configure("info")
    body = assert_problem(answer, 500, "internal_error")
    assert "failed near" not in body["detail"] and "SECRET" not in answer.text
    (line,) = [e for e in log_lines(stderr.getvalue()) if e.get("event") == "unhandled error"]
    assert line["path"] == "/bug" and line["error"] == "RuntimeError"
    assert "RuntimeError: failed near 18" in line["exception"]
    assert "SECRET-LOCAL-VALUE" not in line["exception"]  # no local variables


def test_forwarded_client_rules() -> None:
    from ipaddress import ip_network

    from smtpy.api.middleware import forwarded_client

    trusted = [ip_network("10.0.0.0/8"), ip_network("2001:db8::/32")]
    assert forwarded_client("192.0.2.1", ["203.0.113.9"], trusted) == "192.0.2.1"
    assert forwarded_client("10.0.0.1", ["203.0.113.9"], trusted) == "203.0.113.9"
    assert (
        forwarded_client("10.0.0.1", ["1.1.1.1, 203.0.113.9, 10.1.1.1"], trusted) == "203.0.113.9"
    )
    assert forwarded_client("10.0.0.1", ["1.1.1.1", "203.0.113.9"], trusted) == "203.0.113.9"
    assert forwarded_client("10.0.0.1", ["10.0.0.2, 10.0.0.3"], trusted) == "10.0.0.2"
    assert forwarded_client("10.0.0.1", ["garbage, 10.0.0.3"], trusted) == "10.0.0.3"
    assert forwarded_client("10.0.0.1", [], trusted) == "10.0.0.1"
    assert forwarded_client("2001:db8::1", ["[2001:db9::5]:443"], trusted) == "2001:db9::5"
    assert forwarded_client("10.0.0.1", ["203.0.113.9:5555"], trusted) == "203.0.113.9"


# -- the process ---------------------------------------------------------------------------


def test_sigterm_answers_the_request_in_flight_refuses_new_ones_and_exits_0(
    cli_env: dict[str, str], store_url: str
) -> None:
    org = seed_org(store_url)
    api = ApiServer(cli_env)
    with api:
        route = served(api, "POST", "/api/v1/domains")
        body = json.dumps({"name": "drain.test"}).encode()
        head = (
            "POST /api/v1/domains HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{api.port}\r\n"
            f"Authorization: Bearer {org['key']}\r\n"
            "Content-Type: application/json\r\n"
            "Idempotency-Key: drain-1\r\n"
            "Expect: 100-continue\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", api.port), timeout=30) as conn:
            conn.sendall(head)
            # "100 Continue" comes when the application asks for the body: it is in flight.
            assert conn.recv(1024).startswith(b"HTTP/1.1 100 ")
            assert api.proc is not None
            api.proc.send_signal(15)
            for _ in range(300):  # until the listener is closed (bounded: 30 s)
                try:
                    socket.create_connection(("127.0.0.1", api.port), timeout=1).close()
                except ConnectionRefusedError:
                    break
                time.sleep(0.1)
            else:
                pytest.fail("smtpy api still accepts connections after SIGTERM")
            assert api.proc.poll() is None  # still answering the request in flight
            conn.sendall(body)
            answer = b""
            for _ in range(1000):  # until the server closes the connection (bounded)
                chunk = conn.recv(65536)
                if not chunk:
                    break
                answer += chunk
        assert api.stop() == 0
    status = int(answer.split(b" ", 2)[1])
    assert status == (201 if route else 404), answer
    payload = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    if route:
        assert payload["name"] == "drain.test"


def test_refusals_to_start_are_one_line_and_exit_2(
    cli: Cli, cli_env: dict[str, str], store_url: str, tmp_path: Path
) -> None:
    from smtpy.store.db import Database

    # No store at all.
    missing = Cli({**cli_env, "SMTPY_DATABASE_URL": f"sqlite:///{tmp_path / 'none.db'}"})("api")
    assert missing.code == 2
    assert missing.stderr.strip().count("\n") == 0 and "smtpy db upgrade" in missing.stderr
    assert not (tmp_path / "none.db").exists()

    # An outdated store.
    assert cli("db", "upgrade").code == 0
    with Database(store_url) as db:
        current = db.scalar("SELECT version_num FROM alembic_version")
        db.execute("UPDATE alembic_version SET version_num = '0006'")
    outdated = cli("api")
    assert outdated.code == 2, outdated.stderr
    assert outdated.stderr.strip().count("\n") == 0 and "smtpy db upgrade" in outdated.stderr
    with Database(store_url, check_schema=False) as db:
        db.execute("UPDATE alembic_version SET version_num = :v", {"v": current})

    # The address is taken.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = Cli({**cli_env, "SMTPY_API_LISTEN": f"127.0.0.1:{port}"})("api")
    assert busy.code == 2
    assert busy.stderr.strip().count("\n") == 0, busy.stderr
    assert f"127.0.0.1:{port}" in busy.stderr and "in use" in busy.stderr
    assert "Traceback" not in missing.stderr + outdated.stderr + busy.stderr


def test_api_unit_is_hardened_like_the_daemons() -> None:
    """smtpy-api.service: Type=exec, the same user, store, settings and sandbox as
    smtpy.service, and not even the port-25 capability."""
    root = Path(__file__).resolve().parent.parent / "systemd"

    def service(name: str) -> dict[str, list[str]]:
        section, values = "", {}
        for raw in (root / name).read_text().splitlines():
            line = raw.strip()
            if line.startswith("["):
                section = line
            elif section == "[Service]" and "=" in line and not line.startswith("#"):
                key, _, value = line.partition("=")
                values.setdefault(key, []).append(value)
        return values

    daemon, api = service("smtpy.service"), service("smtpy-api.service")
    assert api["Type"] == ["exec"]
    assert api["ExecStart"] == ["/usr/bin/smtpy api"]
    different = {"Type", "NotifyAccess", "ExecStart", "ExecReload", "LimitNOFILE"}
    capabilities = {"AmbientCapabilities", "CapabilityBoundingSet"}
    for key in set(daemon) - different - capabilities:
        assert api.get(key) == daemon[key], key
    assert set(api) - set(daemon) == set()
    assert api["CapabilityBoundingSet"] == [""] and api["AmbientCapabilities"] == [""]


WEB_STACK = {
    "fastapi",
    "starlette",
    "uvicorn",
    "jinja2",
    "anyio",
    "h11",
    "argon2",
    "pyotp",
    "segno",
}


def test_the_web_stack_loads_only_when_smtpy_api_runs(cli_env: dict[str, str]) -> None:
    """`smtpy --help` and `smtpy api --help` load none of it; `smtpy api` itself does."""
    from test_import_budget import importtime

    for args in (("--help",), ("api", "--help")):
        proc, names = importtime(cli_env, *args)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert {"smtpy", "typer"} <= names  # the measurement works
        assert not names & WEB_STACK, (args, sorted(names & WEB_STACK))
    # and with the store missing, the command runs far enough to load it and refuse
    proc, names = importtime(
        {**cli_env, "SMTPY_DATABASE_URL": f"sqlite:///{cli_env['HOME']}/missing.db"}, "api"
    )
    assert proc.returncode == 2
    assert {"fastapi", "uvicorn"} <= names
