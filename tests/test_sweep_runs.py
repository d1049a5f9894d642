"""Sweep runs live in the store: every worker sees them, and one claim wins however many ask at once."""

from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timedelta

import polars as pl

from data.sweeps import SweepStore
from monitoring import Monitor, load_config


def alive(_row) -> bool:
    return False


def test_one_of_many_concurrent_claims_wins(store):
    sweeps = SweepStore(store)
    now = datetime(2024, 5, 1, 6)
    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(lambda i: sweeps.claim_run("sweep-2024-04-30", f"host:{i}", now, alive), range(16)))
    assert sum(won) == 1
    assert sweeps.get_run("sweep-2024-04-30")["status"] == "running"


def test_a_failed_or_dead_run_is_taken_over_and_a_live_one_is_not(store):
    sweeps = SweepStore(store)
    now = datetime(2024, 5, 1, 6)
    assert sweeps.claim_run("sweep-2024-04-30", "host:1", now, alive)
    assert not sweeps.claim_run("sweep-2024-04-30", "host:2", now, alive)
    assert sweeps.claim_run("sweep-2024-04-30", "host:2", now, lambda row: row["holder"] == "host:1")  # died
    sweeps.set_run("sweep-2024-04-30", "host:2", "failed", "RuntimeError: boom")
    assert sweeps.get_run("sweep-2024-04-30")["error"] == "RuntimeError: boom"
    assert sweeps.claim_run("sweep-2024-04-30", "host:3", now, alive)  # a failed run may be asked for again
    assert sweeps.get_run("sweep-2024-04-30")["holder"] == "host:3"


def test_a_second_process_sees_the_run_of_the_first_and_its_completion(store):
    """Two monitors over one store stand for two workers: status comes from the store, not memory."""
    today = date.today()
    market = pl.DataFrame({"spu_id": ["A"] * 30, "date": [today - timedelta(days=i) for i in range(30)],
                           "price": [10.0] * 30, "units_sold": [3] * 30})
    positions = pl.DataFrame([{"position_id": "P1", "loan_id": "L1", "borrower": "B", "spu_id": "A", "quantity": 10,
                               "warehouse": "W", "pledged_at": today - timedelta(days=10), "loan_amount": 50.0,
                               "pledge_unit_price": 5.0}])
    store.upsert("spus", pl.DataFrame({"spu_id": ["A"], "title": ["a thing"]}))
    store.upsert("market", market)
    store.upsert("positions", positions)
    first, second = Monitor(store, load_config()), Monitor(store, load_config())
    second.holder = "elsewhere:1"  # another process
    sweep_id, mine = first.request_sweep(today)
    assert mine and second.status(sweep_id)["status"] == "running"
    assert second.request_sweep(today) == (sweep_id, False)
    first.run_requested(today)
    assert second.status(sweep_id)["status"] == "completed" and second.status(sweep_id)["n_positions"] == 1
    assert second.request_sweep(today) == (sweep_id, False)  # complete: nothing to run again
    assert SweepStore(store).get_run(sweep_id) is None


def test_a_failing_sweep_is_reported_failed_to_everyone(store, monkeypatch):
    today = date.today()
    store.upsert("spus", pl.DataFrame({"spu_id": ["A"], "title": ["a thing"]}))
    store.upsert("market", pl.DataFrame({"spu_id": ["A"], "date": [today], "price": [10.0], "units_sold": [1]}))
    first, second = Monitor(store, load_config()), Monitor(store, load_config())
    sweep_id, mine = first.request_sweep(today)

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")
    monkeypatch.setattr(first, "score", broken)
    try:
        first.run_requested(today)
    except RuntimeError:
        pass
    status = second.status(sweep_id)
    assert status["status"] == "failed" and "disk full" in status["error"]
