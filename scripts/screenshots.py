"""Screenshots of the dashboard's main pages, desktop and phone, light and dark, into
docs/screenshots/ (the README shows two of them).

    .venv/bin/python scripts/screenshots.py [--out docs/screenshots]

It makes a temporary SQLite store with an organization ("Example"), an owner, three
domains with aliases and a week of message-log rows, starts the real `smtpy api` on a
free loopback port and drives Debian's Chromium (/usr/bin/chromium) with Playwright.
Pages this build does not have (404) are skipped. Names: <page>-<desktop|phone>-<light|dark>.png.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from bench_api import running_api
from bench_web import CHROMIUM, CHROMIUM_ARGS

ROOT = Path(__file__).resolve().parent.parent
EMAIL = "ada@example.org"
PASSWORD = "correct horse battery staple"  # noqa: S105  # a throwaway store's
DOMAINS = ["example.org", "example.net", "family.example"]
PAGES = [  # (file name, path)
    ("login", "/login"),
    ("overview", "/"),
    ("domains", "/domains"),
    ("domain", "/domains/example.org"),
    ("messages", "/messages"),
    ("stats", "/stats"),
    ("security", "/settings/security"),
    ("api-keys", "/settings/api-keys"),
    ("webhooks", "/webhooks"),
]
VIEWPORTS = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}


def seed(url: str) -> None:
    from smtpy.accounts import api_keys, members, users
    from smtpy.admin.aliases import AliasCreate, add_alias
    from smtpy.admin.domains import DomainCreate, add_domain
    from smtpy.admin.webhooks import create_webhook, update_webhook
    from smtpy.store.db import Database

    rng = random.Random(3)
    now = time.time()
    with Database(url) as db:
        org = db.insert(
            "INSERT INTO organizations (name, created_at) VALUES ('Example', :now) RETURNING id",
            {"now": now},
        )
        user = users.create_user(db=db, email=EMAIL, password=PASSWORD, name="Ada Lovelace")
        members.add_member(db=db, org=org, user_id=user.id, role="owner")
        api_keys.create_key(db=db, org=org, name="backup script", created_by=user.id)
        for name in DOMAINS:
            add_domain(db=db, org=org, domain=DomainCreate(name=name, key_algorithm="ed25519"))
        for local, dests in (
            ("hello", ["ada@mailbox.example"]),
            ("billing", ["ada@mailbox.example", "books@accounting.example"]),
            ("*", ["ada@mailbox.example"]),
        ):
            add_alias(
                db=db,
                org=org,
                alias=AliasCreate(address=f"{local}@example.org", destinations=dests),
            )
        create_webhook(  # allow_private: no DNS look-up of these names
            db=db, org=org, url="https://crm.example.org/hooks/smtpy", allow_private=True
        )
        old = create_webhook(
            db=db,
            org=org,
            url="https://old.example.net/incoming",
            events=["message.bounced", "message.rejected"],
            allow_private=True,
        )
        update_webhook(db=db, org=org, webhook_id=old.id, enabled=False)
        events = ["received", "delivered", "delivered", "rejected", "deferred", "bounced"]
        rows = []
        for n in range(1500):
            event = rng.choice(events)
            domain = rng.choice(DOMAINS)
            rows.append(
                {
                    "at": now - rng.random() * 7 * 86400,
                    "event": event,
                    "queue_id": None if event == "rejected" else f"{rng.getrandbits(64):016X}",
                    "client_ip": f"198.51.100.{n % 250}",
                    "sender": f"news{n % 40}@sender{n % 7}.example",
                    "alias": f"hello@{domain}",
                    "recipient": None if event == "rejected" else "ada@mailbox.example",
                    "domain": domain,
                    "size": 2000 + n * 7,
                    "reason": "unknown_user" if event == "rejected" else None,
                    "code": 550 if event == "rejected" else (250 if event == "delivered" else None),
                    "reply": "550 5.1.1 no such user" if event == "rejected" else None,
                    "remote_host": None if event == "rejected" else "mx.mailbox.example",
                    "delay": 1.2 if event == "delivered" else None,
                }
            )
        db.executemany(
            "INSERT INTO message_log (at, event, queue_id, client_ip, sender, alias, recipient,"
            " domain, size, reason, code, reply, remote_host, delay) VALUES (:at, :event,"
            " :queue_id, :client_ip, :sender, :alias, :recipient, :domain, :size, :reason,"
            " :code, :reply, :remote_host, :delay)",
            rows,
        )


def shoot(base: str, out: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright

    made: list[Path] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for device, viewport in VIEWPORTS.items():
            for scheme in ("light", "dark"):
                context = browser.new_context(
                    viewport=viewport,  # type: ignore[arg-type]
                    color_scheme=scheme,  # type: ignore[arg-type]
                    device_scale_factor=1,
                )
                context.set_default_timeout(30_000)
                page = context.new_page()
                for name, path in PAGES:
                    if name == "overview":  # sign in once the login page is taken
                        page.get_by_label("E-mail address").fill(EMAIL)
                        page.get_by_label("Password").fill(PASSWORD)
                        page.get_by_role("button", name="Sign in").click()
                        page.wait_for_url(base + "/")
                    answer = page.goto(base + path, wait_until="networkidle")
                    if answer is None or answer.status == 404:
                        print(f"  {path}: no such page in this build")
                        continue
                    page.wait_for_timeout(300)  # let charts finish their first draw
                    target = out / f"{name}-{device}-{scheme}.png"
                    page.screenshot(path=str(target), animations="disabled")
                    made.append(target)
                context.close()
        browser.close()
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args()
    if not os.path.exists(CHROMIUM):
        raise SystemExit("needs Chromium at /usr/bin/chromium (apt-get install chromium)")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'smtpy.db'}"
        seed(url)
        with running_api(
            url,
            str(Path(tmp) / "state"),
            SMTPY_HOSTNAME="mx.example.org",
            SMTPY_DNS_NAMESERVERS="127.0.0.1:9",  # nothing answers: no query leaves
            SMTPY_DNS_TIMEOUT="1",
            HOME=tmp,
        ) as api:
            made = shoot(api.base_url, args.out)
    for path in made:
        print(f"  {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


if __name__ == "__main__":
    main()
