import os
import signal
import subprocess
import sys
from datetime import date, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from data import Store
from monitoring import Monitor, SweepLocked, load_config, score_book
from monitoring.replay import score_alerts
from monitoring.report import render_report

AS_OF = date(2024, 3, 31)


def book(**overrides):
    row = {"position_id": "P1", "loan_id": "L1", "borrower": "B", "spu_id": "A", "quantity": 100, "warehouse": "W",
           "pledged_at": date(2024, 2, 1), "loan_amount": 700.0, "pledge_unit_price": 7.0}
    row.update(overrides)
    return pl.DataFrame([row])


def steady_market(spu="A", price=10.0, units=5, start=date(2023, 12, 1), end=AS_OF, every=1):
    days = [start + timedelta(days=i) for i in range(0, (end - start).days + 1, every)]
    return pl.DataFrame({"spu_id": [spu] * len(days), "date": days, "price": [price] * len(days),
                         "units_sold": [units] * len(days)})


def test_healthy_position_is_ok_and_ltv_is_loan_over_collateral():
    r = score_book(book(), steady_market(), AS_OF).row(0, named=True)
    assert r["value_source"] == "market" and r["unit_value"] == 10.0
    assert r["ltv"] == pytest.approx(700 / (100 * 10.0)) and r["price_change"] == pytest.approx(0.0)
    assert r["action"] == "ok" and r["grade"] == "A" and not r["alert"]


@pytest.mark.parametrize("loan, action", [(849.0, "ok"), (851.0, "top-up"), (999.0, "top-up"), (1000.0, "liquidate")])
def test_ltv_threshold_edges(loan, action):
    config = load_config()
    config["actions"]["watch_score"] = 0  # isolate the LTV rules
    config["actions"]["topup_score"] = config["actions"]["liquidate_score"] = 0
    r = score_book(book(loan_amount=loan), steady_market(), AS_OF, config).row(0, named=True)
    assert r["action"] == action


def test_price_fall_and_sales_slowdown_are_reasons():
    falling = steady_market().with_columns(
        pl.when(pl.col("date") > date(2024, 3, 10)).then(6.0).otherwise(10.0).alias("price"),
        pl.when(pl.col("date") > date(2024, 3, 10)).then(1).otherwise(5).alias("units_sold"))
    r = score_book(book(), falling, AS_OF).row(0, named=True)
    assert r["price_change"] == pytest.approx(-0.4)
    assert {"price_drop", "sales_slowing", "ltv_high"} <= set(r["reasons"]) and r["action"] != "ok"


def test_stale_price_uses_model_value_with_reason():
    old = steady_market(end=AS_OF - timedelta(days=30))
    model = pl.DataFrame({"spu_id": ["A"], "value": [8.0], "value_low": [6.0], "value_high": [11.0]})
    r = score_book(book(), old, AS_OF, model_values=model).row(0, named=True)
    assert r["stale_price"] and r["value_source"] == "model" and r["unit_value"] == 8.0
    assert (r["value_low"], r["value_high"]) == (6.0, 11.0) and "stale_price" in r["reasons"]
    without = score_book(book(), old, AS_OF).row(0, named=True)
    assert without["value_source"] == "last_price" and "stale_price" in without["reasons"]


def test_future_positions_and_days_are_not_seen():
    market = steady_market().vstack(pl.DataFrame({"spu_id": ["A"], "date": [AS_OF + timedelta(days=1)],
                                                  "price": [1.0], "units_sold": [999]}))
    r = score_book(book().vstack(book(position_id="P2", pledged_at=AS_OF + timedelta(days=5))), market, AS_OF)
    assert r["position_id"].to_list() == ["P1"] and r["unit_value"][0] == 10.0


@pytest.fixture()
def monitor(store):
    store.upsert("spus", pl.DataFrame({"spu_id": ["A", "B"], "title": ["a", "b"]}))
    store.upsert("positions", book().vstack(book(position_id="P2", spu_id="B", loan_amount=800.0)))
    falling_b = steady_market("B").with_columns(
        pl.when(pl.col("date") > date(2024, 3, 20)).then(5.0).otherwise(10.0).alias("price"))
    store.upsert("market", steady_market("A").vstack(falling_b))
    return Monitor(store)


def test_sweep_is_idempotent_and_alerts_deduplicated(monitor):
    first = monitor.run_sweep(AS_OF)
    assert first.created and first.n_positions == 2 and first.n_alerts == 1
    again = monitor.run_sweep(AS_OF)
    assert not again.created and monitor.store.count("sweep_results") == 2 and monitor.store.count("alerts") == 1
    later = monitor.run_sweep(AS_OF + timedelta(days=1))  # same bad state next day: no repeated alarm
    assert later.created and later.n_alerts == 0
    results = monitor.results(later.sweep_id)
    assert results.filter(pl.col("position_id") == "P2")["action"][0] != "ok"
    history, alerts = monitor.position_history("P2")
    assert history.height == 2 and alerts.height == 1


def test_a_sweep_that_completes_between_the_status_reads_is_reported_complete(monitor, monkeypatch):
    """GET /sweeps/{id} reads the stored sweep, then its run; a run that completes in between (the sweep row
    written and the run removed in one transaction) must read as complete, never as unknown."""
    sweep_id, mine = monitor.request_sweep(AS_OF)
    assert mine and monitor.status(sweep_id)["status"] == "running"
    read_sweep = monitor.sweeps.get_sweep
    calls = []

    def sweep_completing_after_first_read(asked):
        calls.append(asked)
        if len(calls) == 1:
            monitor.run_requested(AS_OF)  # completes now, after the status read found no sweep
            return None
        return read_sweep(asked)

    monkeypatch.setattr(monitor.sweeps, "get_sweep", sweep_completing_after_first_read)
    assert monitor.status(sweep_id)["status"] == "completed"


def test_lock_keeps_two_schedulers_apart(monitor):
    other = Monitor(monitor.store)
    other.holder = "another-host:1"
    other._acquire()
    with pytest.raises(SweepLocked, match="another-host"):
        monitor.run_sweep(AS_OF)
    other._release()
    assert monitor.run_sweep(AS_OF).created


KILL = """
import os, signal, sys
from datetime import date
from data import Store
from monitoring import Monitor
store = Store(sys.argv[1])
monitor = Monitor(store)
real = monitor.sweeps.write_results
def die_mid_write(results, alerts, connection):
    real(results, alerts, connection)     # the results are in the transaction ...
    os.kill(os.getpid(), signal.SIGKILL)  # ... when the process dies, before the states and the sweep row
monitor.sweeps.write_results = die_mid_write
monitor.run_sweep(date(2024, 3, 31))
"""


def test_killed_sweep_leaves_nothing_and_next_run_completes(tmp_path):
    url = f"sqlite:///{tmp_path}/k.db"
    store = Store(url)
    store.upsert("spus", pl.DataFrame({"spu_id": ["A"], "title": ["a"]}))
    store.upsert("positions", book())
    store.upsert("market", steady_market())
    script = tmp_path / "kill.py"
    script.write_text(KILL)
    result = subprocess.run([sys.executable, str(script), url], capture_output=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()[-800:]
    assert store.count("sweep_results") == 0 and store.count("sweeps") == 0
    outcome = Monitor(store).run_sweep(AS_OF)  # the dead holder's lock is taken over
    assert outcome.created and store.count("sweep_results") == 1 and store.count("sweeps") == 1


def test_report_renders(monitor):
    outcome = monitor.run_sweep(AS_OF)
    results = monitor.results(outcome.sweep_id).join(monitor.store.read("positions").select(
        "position_id", "loan_amount"), on="position_id")
    results = results.with_columns(pl.col("spu_id").replace({"A": "Alpha mug", "B": "Beta vase"}).alias("title"))
    page = render_report(monitor.get_sweep(outcome.sweep_id), results, monitor.store.read("market"), "GBP")
    assert "Health sweep 2024-03-31" in page and "P2" in page
    assert page.count("data:image/png;base64") == 3  # the LTV spread, and one trend per listed product
    assert "Beta vase (B)" in page and "GBP 800.00" in page and "160%" in page  # loan, LTV in per cent
    assert "price_drop" not in page and "Its price has fallen since the pledge." in page


def test_replay_scoring_rules():
    d = date(2024, 6, 1)
    score = score_alerts({"A": d, "B": d, "C": d}, {"A": d + timedelta(days=7), "B": d + timedelta(days=6),
                                                   "D": d}, ["A", "B", "C", "D", "E"])
    assert (score.caught, score.late, score.missed, score.false_alarms, score.quiet_ok) == (1, 1, 1, 1, 1)
    assert score.flag_recall == pytest.approx(1 / 3) and score.false_alarm_rate == pytest.approx(0.5)


@pytest.mark.parametrize("as_of", [date(2999, 1, 1), date(1900, 1, 1)])
def test_a_sweep_as_of_a_future_day_or_before_the_market_is_refused_and_stores_nothing(monitor, as_of):
    with pytest.raises(ValueError, match="as_of"):
        monitor.run_sweep(as_of)
    assert monitor.store.count("sweeps") == 0 and monitor.latest_sweep_id() is None


def test_every_reason_code_a_sweep_gives_has_a_sentence():
    """A book where every health penalty fires (a falling, volatile, slowing and then silent market, a
    thin-selling second SPU, a high loan): each reason code it gives reads as a sentence."""
    from monitoring.health import WARNING_FEATURES
    from monitoring.reasons import REASON_TEXT, reason_text
    from valuation.policy import REASON_TEXT as ADMISSION_TEXT

    config = load_config()
    config["score"]["volatility_ok"], config["score"]["liquidation_days_ok"] = 0.0, 0.0
    falling = steady_market(end=AS_OF - timedelta(days=20)).with_columns(
        (10.0 - pl.int_range(pl.len()) % 7 * (pl.col("date") > date(2024, 2, 20))).alias("price"),
        pl.when(pl.col("date") > date(2024, 2, 20)).then(1).otherwise(5).alias("units_sold"))
    scored = score_book(book(loan_amount=990.0), falling, AS_OF, config)
    codes = set(scored["reasons"].explode().drop_nulls().to_list())
    assert codes == {"ltv_high", "price_drop", "sales_slowing", "slow_liquidation", "volatile", "stale_price"}, codes
    assert all(code in REASON_TEXT and reason_text(code).endswith(".") for code in codes)
    assert set(ADMISSION_TEXT) <= set(REASON_TEXT)
    assert all("_" not in reason_text(f"early_warning:{f}") for f in WARNING_FEATURES)
    assert reason_text("something_new") == "something_new"  # shown as itself, never dropped


def test_a_sweep_in_parts_stores_what_the_whole_book_at_once_does(tmp_path):
    """A book bigger than memory is swept a range of SPUs at a time; the results, alerts and totals are
    those of the sweep that holds the whole book."""
    outcomes, results = [], []
    for parts in (None, 3):
        store = Store(f"sqlite:///{tmp_path}/parts-{parts}.db")
        spus = ["A", "B", "C", "D", "E"]
        store.upsert("spus", pl.DataFrame({"spu_id": spus, "title": spus}))
        market = pl.concat([steady_market(s, price=10.0 + i, units=5 - i % 3) for i, s in enumerate(spus)]).with_columns(
            pl.when((pl.col("spu_id") == "C") & (pl.col("date") > date(2024, 3, 10))).then(4.0)
            .otherwise(pl.col("price")).alias("price"))
        store.upsert("market", market)
        store.upsert("positions", pl.concat([book(position_id=f"P{i}", spu_id=s, loan_amount=500.0 + 100 * i)
                                             for i, s in enumerate(spus * 2)]))
        config = load_config()
        config["sweep"]["parts"] = parts or 1  # the service's sweeps take it from monitor.toml
        monitor = Monitor(store, config)
        ranges = []
        real = monitor._score_parts
        monitor._score_parts = lambda *a: (ranges.append(r) or r for r in real(*a))
        outcome = monitor.run_sweep(AS_OF)
        assert len(ranges) == (parts or 0)  # the parts were scored one at a time
        outcomes.append(outcome)
        results.append(store.read("sweep_results").drop("sweep_id").sort("position_id"))
        assert store.count("alert_outbox") == outcome.n_alerts == store.count("alerts")
        store.close()
    assert outcomes[0].summary == outcomes[1].summary and outcomes[0].n_alerts > 0
    from polars.testing import assert_frame_equal

    assert_frame_equal(results[0], results[1], check_exact=False)  # a std summed in another order: last bits


def test_pledge_prices_are_the_window_before_each_pledge_as_defined():
    """The calendar-and-rolling-window computation against the definition, read straight: every market
    day of the SPU in [pledged_at - window, pledged_at), on a market with gaps, zero-unit days, a pledge
    before any history and an SPU with no market at all."""
    import numpy as np

    from monitoring.health import pledge_prices

    config = load_config()
    window = config["market"]["pledge_window_days"]
    rng = np.random.default_rng(3)
    start = date(2024, 1, 1)
    days = [(spu, start + timedelta(days=d)) for spu in ("A", "B", "C") for d in range(90) if rng.random() < 0.4]
    market = pl.DataFrame({"spu_id": [s for s, _ in days], "date": [d for _, d in days],
                           "price": np.round(rng.uniform(5, 15, len(days)), 2),
                           "units_sold": rng.integers(0, 4, len(days))})  # some days sold nothing at a quoted price
    pledges = [("A", start + timedelta(days=d)) for d in (0, 3, 29, 30, 31, 60, 89)] + \
              [("B", start + timedelta(days=d)) for d in (10, 45, 45, 80)] + [("C", start - timedelta(days=9)), ("Z", start)]
    positions = pl.DataFrame({"spu_id": [s for s, _ in pledges], "pledged_at": [d for _, d in pledges]})

    got = pledge_prices(market, positions, config).collect()
    by_pair = {(r["spu_id"], r["pledged_at"]): r for r in got.iter_rows(named=True)}
    for spu, at in set(pledges):
        inside = market.filter((pl.col("spu_id") == spu) & (pl.col("date") >= at - timedelta(days=window))
                               & (pl.col("date") < at))
        row = by_pair.get((spu, at), {})
        if inside.height == 0:
            assert row.get("pledge_market_price") is None and row.get("pledge_rate") is None
            continue
        units = inside["units_sold"]
        assert row["pledge_market_price"] == pytest.approx(inside["price"].median())
        assert row["pledge_rate"] == pytest.approx(units.sum() / window)
        assert row["pledge_active_share"] == pytest.approx(inside.height / window)
        if units.sum():
            assert row["pledge_top_day_share"] == pytest.approx(units.max() / units.sum())


def test_comparables_features_do_not_depend_on_the_order_rows_arrive_in():
    """Means of the same comparables summed in another order differ in the last bits; a tree split between
    two such values would move p_loss from one sweep of the same data to the next."""
    import numpy as np

    from monitoring.health import position_frame

    rng = np.random.default_rng(5)
    spus = [f"S{i:03d}" for i in range(150)]
    market = pl.concat([steady_market(s, price=float(rng.uniform(5, 50)), units=int(rng.integers(1, 9)),
                                      every=int(rng.integers(1, 4))) for s in spus])
    positions = pl.concat([book(position_id=f"P{i}", spu_id=s) for i, s in enumerate(spus)])
    neighbours = pl.DataFrame({"spu_id": np.repeat(spus, 10), "neighbour": rng.choice(spus, 10 * len(spus))})
    columns = ["comparables_sales_4w_vs_12w", "comparables_price_4w_vs_12w", "comparables_active_share_4w"]

    def features(neighbour_rows: pl.DataFrame) -> pl.DataFrame:
        frame = position_frame(positions, market, AS_OF, load_config(), features=True, neighbours=neighbour_rows)
        return frame.collect().sort("position_id").select("position_id", *columns)

    first = features(neighbours)
    for seed in range(3):
        assert features(neighbours.sample(fraction=1.0, shuffle=True, seed=seed)).equals(first)


def test_weekly_volatility_is_the_std_of_weekly_median_log_changes_as_defined():
    """Read straight: weekly medians by polars' own median, in week order, their log changes' std / sqrt 7.
    Unsorted lines, even and odd counts, a missing price, an all-missing week, an SPU with two weeks."""
    from data.market import weekly_volatility

    rng = np.random.default_rng(3)
    n = 4000
    lines = pl.DataFrame({
        "spu_id": rng.choice(["A", "B", "C"], n),
        "ordered_at": [datetime(2024, 1, 1) + timedelta(hours=int(h)) for h in rng.integers(0, 24 * 120, n)],
        "unit_price": pl.Series(np.round(rng.uniform(0.5, 9.5, n), 2)).scatter(np.flatnonzero(rng.random(n) < 0.1), None),
    })
    lines = pl.concat([lines, pl.DataFrame({"spu_id": ["D"] * 4 + ["E"] * 2,
                                            "ordered_at": [datetime(2024, 1, 1), datetime(2024, 1, 9), datetime(2024, 1, 10),
                                                           datetime(2024, 1, 16), datetime(2024, 1, 1), datetime(2024, 1, 8)],
                                            "unit_price": [None, 2.0, 2.5, 3.0, 1.0, 2.0]})])
    got = dict(weekly_volatility(lines.lazy(), "ordered_at", "unit_price").collect().iter_rows())
    expected = {}
    for spu, part in lines.partition_by("spu_id", as_dict=True).items():
        weeks = (part.group_by(pl.col("ordered_at").dt.truncate("1w").alias("week"))
                 .agg(pl.col("unit_price").median()).sort("week"))
        expected[spu[0]] = weeks.select(pl.col("unit_price").log().diff().std() / 7 ** 0.5).item()
    assert got.keys() == expected.keys() and got["D"] is None and got["E"] is None  # under three weeks with a price
    for spu in "ABC":
        assert got[spu] == pytest.approx(expected[spu], rel=1e-12), spu  # a grouped std sums in its own order
