"""/api/v1/stats through the real `smtpy api`, on SQLite and PostgreSQL: a continuous series
per day or hour that agrees with the log rows seeded (closed hours from the rollup, the
open hour from the log itself), the organization's rows only, and the CSV/JSON export."""

from __future__ import annotations

import csv
import io
import time

from resourceworld import API, log, problem, rfc3339, served_domain, world
from smtpy.queue.message_log import LogEvent

ZERO = {"received": 0, "forwarded": 0, "bounced": 0, "rejected": 0, "deferred": 0}


def event(at: float, kind: str, domain: str = "acme.test") -> LogEvent:
    return LogEvent(at=at, event=kind, queue_id="Q1", alias=f"a@{domain}", domain=domain)


def test_the_series_agrees_with_the_log(cli_env: dict[str, str], store_url: str) -> None:
    now = time.time()
    day0 = now // 86400 * 86400 - 3 * 86400  # the start of the UTC day three days ago
    with world(cli_env, store_url) as w:
        served_domain(store_url, w.org, "acme.test")
        served_domain(store_url, w.org, "acme2.test")
        served_domain(store_url, w.other_org, "globex.test")
        log(
            store_url,
            [
                event(day0 + 3600, "received"),
                event(day0 + 3700, "received"),
                event(day0 + 3800, "delivered"),
                event(day0 + 3900, "discarded"),  # not in the series
                event(day0 + 86400 + 7200, "bounced", "acme2.test"),
                event(day0 + 86400 + 7300, "rejected"),
                event(day0 + 86400 + 7400, "received", "globex.test"),  # another organization's
                event(day0 - 1, "received"),  # before the window
            ],
        )
        window = f"since={rfc3339(day0)}&until={rfc3339(day0 + 4 * 86400)}"
        answer = w.admin.get(f"{API}/stats?{window}&interval=day")
        assert answer.status_code == 200, answer.text
        stats = answer.json()
        assert [p["t"] for p in stats["series"]] == [rfc3339(day0 + n * 86400) for n in range(4)]
        assert [{k: v for k, v in p.items() if k != "t"} for p in stats["series"]] == [
            ZERO | {"received": 2, "forwarded": 1},
            ZERO | {"bounced": 1, "rejected": 1},
            ZERO,  # an empty day is there, with zeros
            ZERO,
        ]
        assert stats["totals"] == ZERO | {
            "received": 2,
            "forwarded": 1,
            "bounced": 1,
            "rejected": 1,
        }
        assert (stats["interval"], stats["domain"]) == ("day", None)

        # Mail of the open hour counts at once (closed hours come from the rollup).
        log(store_url, [event(now - 1, "deferred"), event(day0 + 3650, "received")])
        later = w.admin.get(f"{API}/stats?{window}").json()
        assert later["series"][3] == stats["series"][3] | {"deferred": 1}
        # A row written late into an hour already rolled up stays out: hours are counted once.
        assert later["series"][0] == stats["series"][0]

        one = w.admin.get(f"{API}/stats?{window}&domain=acme2.test").json()
        assert one["domain"] == "acme2.test"
        assert one["totals"] == ZERO | {"bounced": 1}
        theirs = w.other.get(f"{API}/stats?{window}").json()
        assert theirs["totals"] == ZERO | {"received": 1}

        hours = w.admin.get(
            f"{API}/stats?since={rfc3339(day0)}&until={rfc3339(day0 + 86400)}&interval=hour"
        ).json()
        assert len(hours["series"]) == 24
        assert hours["series"][1] == {"t": rfc3339(day0 + 3600)} | ZERO | {
            "received": 2,
            "forwarded": 1,
        }
        assert sum(p["received"] for p in hours["series"]) == 2

        default = w.admin.get(f"{API}/stats").json()  # the last 30 days, by day
        assert len(default["series"]) in (30, 31)
        assert default["totals"]["received"] >= 2

        exported = w.admin.get(f"{API}/stats/export?format=csv&{window}")
        assert exported.status_code == 200
        assert exported.headers["content-type"].startswith("text/csv")
        disposition = exported.headers["content-disposition"]
        assert disposition.startswith("attachment;") and disposition.endswith('.csv"')
        lines = list(csv.DictReader(io.StringIO(exported.text)))
        assert [{k: int(v) if k != "t" else v for k, v in r.items()} for r in lines] == later[
            "series"
        ]
        as_json = w.admin.get(f"{API}/stats/export?format=json&{window}")
        assert as_json.headers["content-disposition"].endswith('.json"')
        assert as_json.json() == later


def test_stats_inputs_are_checked(cli_env: dict[str, str], store_url: str) -> None:
    with world(cli_env, store_url) as w:
        for query in (
            "interval=week",
            "since=2026-02-01T00:00:00Z&until=2026-01-01T00:00:00Z",
            "since=whenever",
            "since=2020-01-01T00:00:00Z&until=2026-01-01T00:00:00Z&interval=hour",
        ):
            problem(w.admin.get(f"{API}/stats?{query}"), 422)
        problem(w.admin.get(f"{API}/stats/export?format=xml"), 422)
        problem(w.admin.get(f"{API}/stats?domain=nowhere.test"), 404)
        assert w.api.client.get(f"{API}/stats").status_code == 401
