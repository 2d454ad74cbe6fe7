"""A fake Stripe API on loopback that the REAL `stripe` library talks to.

    with FakeStripe(prices={"smtpy_pro_monthly": "price_pro"}) as fake:
        env["SMTPY_STRIPE_API_BASE"] = fake.url
        ...                                   # smtpy creates customers and sessions
        sub = fake.complete_checkout(session_id)   # the customer paid: an active subscription
        fake.update_subscription(sub["id"], status="past_due")
        payload = fake.event("customer.subscription.updated", sub)
        header = signature(payload, WEBHOOK_SECRET)   # stripe.WebhookSignature

It serves what smtpy uses: customers (create), prices (list by lookup key),
checkout sessions (create), billing portal sessions (create), subscriptions
(retrieve, list by customer). Bodies are form-encoded (`line_items[0][price]`)
and answers are JSON objects with an `"object"` field; an unknown object is a
404 `invalid_request_error`, as Stripe answers. Every request is recorded with
its Idempotency-Key, and a repeated key answers the first answer again.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import stripe

WEBHOOK_SECRET = "whsec_test_secret"
SECRET_KEY = "sk_test_fake"
MONTH = 30 * 86400


def signature(payload: str, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> str:
    """The Stripe-Signature header of `payload`, made by the library's own helper."""
    return stripe.WebhookSignature.generate_signature_header(payload, secret, timestamp=timestamp)


class FakeStripe:
    def __init__(self, prices: dict[str, str] | None = None) -> None:
        # lookup key -> price id
        self.prices = dict(
            prices or {"smtpy_pro_monthly": "price_pro", "smtpy_max_monthly": "price_max"}
        )
        self.requests: list[dict[str, Any]] = []
        self.customers: dict[str, dict[str, Any]] = {}
        self.sessions: dict[str, dict[str, Any]] = {}
        self.portal_sessions: dict[str, dict[str, Any]] = {}
        self.subscriptions: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)
        self._answers: dict[str, tuple[int, dict[str, Any]]] = {}  # by Idempotency-Key
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode() if length else ""
                params = dict(parse_qsl(raw if method == "POST" else parts.query))
                key = self.headers.get("Idempotency-Key")
                with fake._lock:
                    fake.requests.append(
                        {
                            "method": method,
                            "path": parts.path,
                            "params": params,
                            "idempotency_key": key,
                        }
                    )
                    if method == "POST" and key and key in fake._answers:
                        status, body = fake._answers[key]
                    else:
                        status, body = fake._route(method, parts.path, params)
                        if method == "POST" and key:
                            fake._answers[key] = (status, body)
                self._answer(status, body)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeStripe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)

    # -- the API ---------------------------------------------------------------

    def _id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):06d}"

    @staticmethod
    def _missing(what: str, ident: str) -> tuple[int, dict[str, Any]]:
        return 404, {
            "error": {
                "type": "invalid_request_error",
                "code": "resource_missing",
                "message": f"No such {what}: '{ident}'",
            }
        }

    @staticmethod
    def _list(path: str, data: list[dict[str, Any]]) -> dict[str, Any]:
        return {"object": "list", "url": path, "has_more": False, "data": data}

    def _route(self, method: str, path: str, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if method == "POST" and path == "/v1/customers":
            customer = {
                "id": self._id("cus"),
                "object": "customer",
                "name": params.get("name"),
                "metadata": {k[9:-1]: v for k, v in params.items() if k.startswith("metadata[")},
            }
            self.customers[customer["id"]] = customer
            return 200, customer
        if method == "GET" and path == "/v1/prices":
            keys = [v for k, v in params.items() if k.startswith("lookup_keys")]
            data = [self._price(k) for k in keys if k in self.prices]
            return 200, self._list(path, data)
        if method == "POST" and path == "/v1/checkout/sessions":
            if params.get("customer") not in self.customers:
                return self._missing("customer", str(params.get("customer")))
            ident = self._id("cs_test")
            session = {
                "id": ident,
                "object": "checkout.session",
                "mode": params.get("mode"),
                "customer": params.get("customer"),
                "client_reference_id": params.get("client_reference_id"),
                "price": params.get("line_items[0][price]"),
                "success_url": params.get("success_url"),
                "cancel_url": params.get("cancel_url"),
                "url": f"{self.url}/pay/{ident}",
                "subscription": None,
                "status": "open",
            }
            self.sessions[ident] = session
            return 200, session
        if method == "POST" and path == "/v1/billing_portal/sessions":
            if params.get("customer") not in self.customers:
                return self._missing("customer", str(params.get("customer")))
            ident = self._id("bps")
            session = {
                "id": ident,
                "object": "billing_portal.session",
                "customer": params.get("customer"),
                "return_url": params.get("return_url"),
                "url": f"{self.url}/portal/{ident}",
            }
            self.portal_sessions[ident] = session
            return 200, session
        if method == "GET" and path == "/v1/subscriptions":
            customer = params.get("customer")
            data = [s for s in self.subscriptions.values() if s["customer"] == customer]
            return 200, self._list(path, data)
        if method == "GET" and path.startswith("/v1/subscriptions/"):
            ident = path.rsplit("/", 1)[1]
            if ident not in self.subscriptions:
                return self._missing("subscription", ident)
            return 200, self.subscriptions[ident]
        return 404, {"error": {"type": "invalid_request_error", "message": f"no route {path}"}}

    def _price(self, lookup_key: str) -> dict[str, Any]:
        return {
            "id": self.prices[lookup_key],
            "object": "price",
            "lookup_key": lookup_key,
            "active": True,
        }

    # -- what happens at Stripe (the test plays the customer) -------------------------

    def lookup_key_of(self, price_id: str) -> str:
        return next(k for k, v in self.prices.items() if v == price_id)

    def complete_checkout(self, session_id: str, *, status: str = "active") -> dict[str, Any]:
        """The customer paid: the session completes with a new subscription."""
        with self._lock:
            session = self.sessions[session_id]
            sub = {
                "id": self._id("sub"),
                "object": "subscription",
                "customer": session["customer"],
                "status": status,
                "cancel_at_period_end": False,
                "current_period_end": int(time.time()) + MONTH,
                "metadata": {},
                "items": {
                    "object": "list",
                    "data": [
                        {
                            "object": "subscription_item",
                            "price": self._price(self.lookup_key_of(session["price"])),
                        }
                    ],
                },
            }
            self.subscriptions[sub["id"]] = sub
            session.update(status="complete", subscription=sub["id"])
            return dict(session)

    def update_subscription(
        self, sub_id: str, *, lookup_key: str | None = None, **changes: Any
    ) -> dict[str, Any]:
        with self._lock:
            sub = self.subscriptions[sub_id]
            sub.update(changes)
            if lookup_key is not None:
                sub["items"]["data"][0]["price"] = self._price(lookup_key)
            return json.loads(json.dumps(sub))

    def event(self, event_type: str, obj: dict[str, Any], *, event_id: str | None = None) -> str:
        """A webhook body as Stripe sends it (the object as it was when the event happened)."""
        return json.dumps(
            {
                "id": event_id or self._id("evt"),
                "object": "event",
                "type": event_type,
                "created": int(time.time()),
                "livemode": False,
                "api_version": "2025-01-27.acacia",
                "data": {"object": obj},
            }
        )

    def posts(self, path: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == "POST" and r["path"] == path]
