"""Market updates between sweeps (monitoring.market_updates) and alert delivery (monitoring.delivery)."""

import json
import math
import threading
from datetime import date, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import polars as pl
import pytest

from monitoring import Monitor
from monitoring.delivery import SIGNATURE_HEADER, TIMESTAMP_HEADER, AlertDelivery, WebhookConfig, verify
from monitoring.market_updates import MAX_OBSERVATIONS, BatchTooLarge, apply_market_updates
from test_monitoring import AS_OF, book, steady_market

TODAY = date(2024, 6, 1)


@pytest.fixture
def monitor(store):
    store.upsert("spus", pl.DataFrame({"spu_id": ["A", "B"], "title": ["Alpha mug", "Beta vase"]}))
    store.upsert("positions", pl.concat([book(), book(position_id="P2", spu_id="B"),
                                         book(position_id="P3", spu_id="A", quantity=10, loan_amount=20.0)]))
    store.upsert("market", pl.concat([steady_market("A"), steady_market("B")]))
    monitor = Monitor(store)
    monitor.run_sweep(AS_OF)
    return monitor


def falling(spu="A", price=5.0, days=7, start=AS_OF + timedelta(days=1), source="feed"):
    return [{"spu_id": spu, "date": (start + timedelta(days=i)).isoformat(), "price": price, "units": 1,
             "source": source} for i in range(days)]


def test_an_update_rescores_only_the_positions_on_the_spu_that_moved_and_alerts_once(monitor):
    outcome = apply_market_updates(monitor, falling(), today=TODAY)
    assert (outcome.applied, outcome.unchanged, outcome.errors) == (7, 0, [])
    assert outcome.as_of == AS_OF + timedelta(days=7) and outcome.positions_rescored == 2  # P1 and P3, not P2
    events = monitor.store.read("health_events")
    assert sorted(events["position_id"]) == ["P1", "P3"] and set(events["trigger"]) == {"market"}
    p1 = events.filter(pl.col("position_id") == "P1").row(0, named=True)
    assert p1["unit_value"] == 5.0 and p1["action"] == "liquidate" and p1["previous_action"] == "ok"
    assert [o["price"] for o in json.loads(p1["observation"])] == [5.0] * 7
    alerts = monitor.log.alerts_since(0)
    assert [(a["position_id"], a["trigger"], a["action"]) for a in alerts] == [("P1", "market", "liquidate"),
                                                                                ("P3", "market", "watch")]
    assert alerts[0]["alert_key"] == f"{outcome.event_id}:P1" and alerts[0]["observation"][0]["source"] == "feed"

    again = apply_market_updates(monitor, falling(), today=TODAY)  # the same observations: nothing moves
    assert (again.applied, again.unchanged, again.event_id) == (0, 7, None)
    assert monitor.store.count("health_events") == 2
    # the next sweep is de-duplicated against the event: no second alert for the same action
    swept = monitor.run_sweep(AS_OF + timedelta(days=7))
    assert swept.n_alerts == 0 and len(monitor.log.alerts_since(0)) == 2


def test_the_event_scores_a_position_as_the_sweep_of_that_day_does(monitor):
    """One scoring code: a position re-scored by a market update equals the sweep of the same day."""
    outcome = apply_market_updates(monitor, falling(price=8.0), today=TODAY)
    event = monitor.store.read("health_events").filter(pl.col("position_id") == "P1").row(0, named=True)
    swept = monitor.run_sweep(outcome.as_of)
    result = monitor.results(swept.sweep_id).filter(pl.col("position_id") == "P1").row(0, named=True)
    for column in ("unit_value", "collateral_value", "ltv", "price_change", "velocity_trend", "health", "grade",
                   "action"):
        assert event[column] == pytest.approx(result[column]), column


def test_an_update_that_lands_while_another_is_scored_is_in_the_others_score(monitor, monkeypatch):
    """Updates are read and scored before they take the gate; one that finds the SPU changed meanwhile reads
    it again and scores what is stored, not what it read."""
    real = monitor.log.positions_on
    interleaved = []

    def another_update_lands_now(connection, spu_ids):
        if connection is None and not interleaved:
            interleaved.append(None)  # once
            interleaved[0] = (apply_market_updates(monitor, falling(price=4.0, days=2, start=AS_OF + timedelta(days=7)),
                                                    today=TODAY))
        return real(connection, spu_ids)

    monkeypatch.setattr(monitor.log, "positions_on", another_update_lands_now)
    first = apply_market_updates(monitor, falling(days=7), today=TODAY)
    assert interleaved[0].applied == 2 and first.applied == 7
    assert first.as_of == AS_OF + timedelta(days=8)  # the other update's newer day
    event = monitor.store.read("health_events").filter(pl.col("event_id") == first.event_id)
    swept = monitor.results(monitor.run_sweep(first.as_of).sweep_id)
    for position in ("P1", "P3"):
        mine = event.filter(pl.col("position_id") == position).row(0, named=True)
        theirs = swept.filter(pl.col("position_id") == position).row(0, named=True)
        assert (mine["unit_value"], mine["health"], mine["action"]) == (theirs["unit_value"], theirs["health"],
                                                                        theirs["action"]), position


def test_a_catalogue_load_that_lands_while_an_update_is_scored_is_in_its_score(monitor, monkeypatch, tmp_path):
    """A catalogue folder's market days count as a market update's do: an update scored from the rows
    before them reads them again."""
    from monitoring.jobs import load_catalog_into

    for table in ("spus", "reviews", "orders", "positions"):
        monitor.store.read(table).write_parquet(tmp_path / f"{table}.parquet")
    crash = [{"spu_id": "A", "date": AS_OF + timedelta(days=i), "price": 2.0, "units_sold": 0} for i in (1, 2, 3)]
    pl.DataFrame(crash).write_parquet(tmp_path / "market.parquet")
    real = monitor.log.positions_on
    loaded = []

    def catalogue_lands_now(connection, spu_ids):
        if connection is None and not loaded:
            loaded.append(load_catalog_into(monitor.store, tmp_path))
        return real(connection, spu_ids)

    monkeypatch.setattr(monitor.log, "positions_on", catalogue_lands_now)
    outcome = apply_market_updates(monitor, falling(price=9.0, days=1, start=AS_OF + timedelta(days=4)), today=TODAY)
    assert loaded[0]["market"] == 3 and outcome.applied == 1
    event = monitor.store.read("health_events").filter(pl.col("event_id") == outcome.event_id)
    swept = monitor.results(monitor.run_sweep(outcome.as_of).sweep_id)
    for position in ("P1", "P3"):
        mine = event.filter(pl.col("position_id") == position).row(0, named=True)
        theirs = swept.filter(pl.col("position_id") == position).row(0, named=True)
        assert (mine["health"], mine["velocity_trend"]) == (theirs["health"], theirs["velocity_trend"]), position


def test_bad_observations_are_refused_per_item_naming_the_field_and_the_rest_applied(monitor):
    good = falling(days=1)[0]
    items = [good,
             {**good, "spu_id": "NOPE"},
             {**good, "price": math.nan},
             {**good, "spu_id": "B", "price": -3.0},
             {**good, "spu_id": "B", "units": -1},
             {**good, "spu_id": "B", "date": "2030-01-01"},
             {**good, "spu_id": "B", "date": "2023-01-01"},  # before B's first observation
             {**good, "spu_id": "B", "date": "31/03/2024"},
             {**good, "price": 6.0},                       # A on the same day again
             # the date parser alone took these three (the first one overwrote B's stored 2024-03-05)
             {**good, "spu_id": "B", "date": "2024-3-5"},
             {**good, "spu_id": "B", "date": " " + good["date"]},
             {**good, "spu_id": "B", "date": "+" + good["date"]},
             {**good, "spu_id": "B", "price": 2e12},       # collateral values overflowed to infinity
             {**good, "spu_id": "B", "units": 2_000_000_000}]
    stored_before = monitor.store.read("market")
    outcome = apply_market_updates(monitor, items, today=TODAY)
    by_item = {e["item"]: (e["field"], e["error"]) for e in outcome.errors}
    assert sorted(by_item) == list(range(1, 14)) and outcome.applied == 1
    assert by_item[1] == ("spu_id", "unknown SPU 'NOPE'")
    assert by_item[2][0] == "price" and "finite number > 0" in by_item[2][1]
    assert by_item[3][0] == "price" and by_item[4][0] == "units"
    assert by_item[5] == ("date", "2030-01-01 is in the future (today is 2024-06-01)")
    assert by_item[6][0] == "date" and "before the SPU's first market observation (2023-12-01)" in by_item[6][1]
    assert by_item[7][0] == "date" and "not an ISO date" in by_item[7][1]
    assert by_item[8][0] == "date" and "item 0" in by_item[8][1]
    assert all(by_item[k][0] == "date" and "not an ISO date" in by_item[k][1] for k in (9, 10, 11))
    assert by_item[12][0] == "price" and "at most 1e+12" in by_item[12][1]
    assert by_item[13][0] == "units" and "from 0 to 1,000,000,000" in by_item[13][1]
    market = monitor.store.read("market")
    assert market.filter(pl.col("date") <= AS_OF).equals(stored_before)
    assert market.filter(pl.col("date") > AS_OF).rows() == [("A", AS_OF + timedelta(days=1), 5.0, 1)]


def test_a_batch_over_the_limit_is_refused_whole(monitor):
    items = falling(days=1) * (MAX_OBSERVATIONS + 1)
    with pytest.raises(BatchTooLarge, match=f"at most {MAX_OBSERVATIONS}"):
        apply_market_updates(monitor, items, today=TODAY)
    assert monitor.store.read("market").filter(pl.col("date") > AS_OF).height == 0


def test_a_crash_half_way_leaves_nothing_and_the_retry_applies_the_batch(monitor, monkeypatch):
    real = monitor.log.add_alerts

    def crash(connection, frame):
        raise RuntimeError("the worker died after writing the market rows and health records")

    monkeypatch.setattr(monitor.log, "add_alerts", crash)
    with pytest.raises(RuntimeError):
        apply_market_updates(monitor, falling(), today=TODAY)
    assert monitor.store.read("market").filter(pl.col("date") > AS_OF).height == 0
    assert monitor.store.count("health_events") == 0 and monitor.store.count("alert_outbox") == 0
    monkeypatch.setattr(monitor.log, "add_alerts", real)
    outcome = apply_market_updates(monitor, falling(), today=TODAY)  # the client sends it again
    assert outcome.applied == 7 and outcome.alerts == 2 and len(monitor.log.alerts_since(0)) == 2


KILL = """
import os, signal, sys
from datetime import date
from data import Store
from monitoring import Monitor, apply_market_updates
monitor = Monitor(Store(sys.argv[1]))
def die(connection, frame):  # the market rows and health records are written in the transaction ...
    os.kill(os.getpid(), signal.SIGKILL)  # ... when the worker dies
monitor.log.add_alerts = die
apply_market_updates(monitor, [{"spu_id": "A", "date": f"2024-04-0{d}", "price": 5.0, "units": 1} for d in range(1, 8)],
                     today=date(2024, 6, 1))
"""


def test_a_worker_killed_mid_update_leaves_nothing_and_the_batch_sent_again_applies(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from data import Store

    url = f"sqlite:///{tmp_path}/kill.db"
    store = Store(url)
    store.upsert("spus", pl.DataFrame({"spu_id": ["A"], "title": ["Alpha mug"]}))
    store.upsert("positions", book())
    store.upsert("market", steady_market("A"))
    monitor = Monitor(store)
    monitor.run_sweep(AS_OF)
    script = tmp_path / "kill.py"
    script.write_text(KILL)
    result = subprocess.run([sys.executable, str(script), url], capture_output=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()[-800:]
    assert store.read("market").filter(pl.col("date") > AS_OF).height == 0
    assert store.count("health_events") == 0 and store.count("alert_outbox") == 0
    outcome = apply_market_updates(monitor, falling(), today=TODAY)
    assert outcome.applied == 7 and outcome.alerts == 1 and len(monitor.log.alerts_since(0)) == 1


def test_a_sweep_of_an_earlier_day_does_not_move_a_newer_state_back(monitor):
    apply_market_updates(monitor, falling(), today=TODAY)
    monitor.run_sweep(AS_OF - timedelta(days=3))
    state = dict(monitor.store.read("position_state").select("position_id", "action").iter_rows())
    assert state["P1"] == "liquidate"


# -- delivery ---------------------------------------------------------------------------------
class Receiver:
    """A webhook receiver on loopback that checks signatures and can be down for its first requests."""

    def __init__(self, secret: str, fail_first: int = 0):
        self.keys: list[str] = []
        self.requests = 0
        self.bad_signatures = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests += 1
                if receiver.requests <= fail_first:
                    self.send_response(503)
                    self.end_headers()
                    return
                if not verify(secret, self.headers[TIMESTAMP_HEADER], body, self.headers[SIGNATURE_HEADER]):
                    receiver.bad_signatures += 1
                    self.send_response(401)
                    self.end_headers()
                    return
                receiver.keys += [a["alert_key"] for a in json.loads(body)["alerts"]]
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self):
        self.server.shutdown()


def alerting_book(monitor, n=30):
    """n more positions on A: the falling prices alert every one of them."""
    monitor.store.upsert("positions", pl.concat([book(position_id=f"Q{i:02d}") for i in range(n)]))
    apply_market_updates(monitor, falling(), today=TODAY)
    return {a["alert_key"] for a in monitor.log.alerts_since(0)}


def test_webhook_gets_every_alert_signed_once_after_being_down(monitor):
    expected = alerting_book(monitor)
    receiver = Receiver("s3cret", fail_first=2)
    config = WebhookConfig(url=receiver.url, secret="s3cret", batch=8, retry_base_seconds=0.05)
    delivery = AlertDelivery(monitor.log, config)
    try:
        for _ in range(200):
            delivery.deliver_due()
            if monitor.log.outbox_counts()["undelivered"] == 0:
                break
            threading.Event().wait(0.02)
    finally:
        receiver.close()
    assert monitor.log.outbox_counts() == {"alerts": len(expected), "undelivered": 0}
    assert sorted(receiver.keys) == sorted(expected) and receiver.bad_signatures == 0
    assert receiver.requests > 2  # it was down, and the alerts came after


def test_a_wrong_secret_is_refused_by_the_receiver_and_nothing_is_marked_delivered(monitor):
    alerting_book(monitor, n=3)
    receiver = Receiver("right")
    delivery = AlertDelivery(monitor.log, WebhookConfig(url=receiver.url, secret="wrong", retry_base_seconds=60))
    try:
        assert delivery.deliver_due() == 0
    finally:
        receiver.close()
    assert receiver.bad_signatures == 1 and monitor.log.outbox_counts()["undelivered"] == 5
    row = monitor.log.alerts_since(0)[0]
    assert row["attempts"] == 1 and "HTTP 401" in row["last_error"]


def test_two_workers_delivering_at_once_send_each_alert_once(monitor):
    expected = alerting_book(monitor, n=60)
    receiver = Receiver("k")
    config = WebhookConfig(url=receiver.url, secret="k", batch=5)
    workers = [AlertDelivery(monitor.log, config) for _ in range(2)]

    def drain(delivery):
        while monitor.log.outbox_counts()["undelivered"]:
            delivery.deliver_due()

    threads = [threading.Thread(target=drain, args=(w,)) for w in workers]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        receiver.close()
    assert sorted(receiver.keys) == sorted(expected)  # every one, none twice


def test_alerts_held_by_a_dead_worker_are_sent_when_its_claim_runs_out(monitor):
    from datetime import datetime

    expected = alerting_book(monitor, n=3)
    now = datetime.now()
    assert len(monitor.log.claim_due("dead-worker", now, now + timedelta(seconds=60), 100)) == len(expected)
    receiver = Receiver("k")
    delivery = AlertDelivery(monitor.log, WebhookConfig(url=receiver.url, secret="k"))
    try:
        assert delivery.deliver_due() == 0  # claimed, and the claim is live
        _expire_claims(monitor)
        assert delivery.deliver_due() == len(expected)
    finally:
        receiver.close()
    assert sorted(receiver.keys) == sorted(expected)


def _expire_claims(monitor):
    import sqlalchemy as sa
    from datetime import datetime

    table = monitor.store.table("alert_outbox")
    with monitor.store.engine.begin() as connection:
        connection.execute(sa.update(table).values(claimed_until=datetime.now() - timedelta(seconds=1)))


def test_webhook_config_needs_a_secret_and_an_http_url(monkeypatch):
    monkeypatch.delenv("PLEDGEVAL_WEBHOOK_URL", raising=False)
    monkeypatch.delenv("PLEDGEVAL_WEBHOOK_SECRET", raising=False)
    assert WebhookConfig.from_config({"alerts": {"webhook_url": ""}}) is None
    with pytest.raises(ValueError, match="webhook_secret"):
        WebhookConfig.from_config({"alerts": {"webhook_url": "http://x/hook"}})
    with pytest.raises(ValueError, match="webhook_url"):
        WebhookConfig.from_config({"alerts": {"webhook_url": "ftp://x", "webhook_secret": "s"}})
    monkeypatch.setenv("PLEDGEVAL_WEBHOOK_URL", "https://desk.example/hook")
    monkeypatch.setenv("PLEDGEVAL_WEBHOOK_SECRET", "from-env")
    config = WebhookConfig.from_config({"alerts": {"batch": 7}})
    assert (config.url, config.secret, config.batch) == ("https://desk.example/hook", "from-env", 7)
