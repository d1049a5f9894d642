"""The learned early warning on synthetic histories whose right answer is known by construction."""

from datetime import date, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from data import derive_market
from monitoring import load_config, score_book
from monitoring.events import pledge_book
from monitoring.warning import LEAD_DAYS, WarningModel, threshold_for, train_warning, training_examples

START = date(2024, 1, 1)
DAYS = 230
CUTOFF = START + timedelta(days=170)   # the model learns from before this day; the scored days start here


def families(n_families: int = 48, seed: int = 0):
    """Families of four SPUs that sell alike. In half of them three leaders stop selling on a day D and the
    fourth (the follower) a month later; the rest sell steadily throughout. A follower's own series shows
    nothing for a month after D: only its comparables (the rest of its family) tell what is coming.
    Returns (orders, neighbours, {family: D or None})."""
    rng = np.random.default_rng(seed)
    rows, pairs, stops = [], [], {}
    for f in range(n_families):
        members = [f"F{f:02d}-{m}" for m in range(4)]
        pairs += [(a, b) for a in members for b in members if a != b]
        # odd families sell steadily; even ones decline, on days spread over the training history, except
        # the last four, whose leaders stop just after the cutoff
        stop = None if f % 2 else 175 if f >= n_families - 8 else int(rng.integers(70, 118))
        stops[f] = stop
        for m, spu in enumerate(members):
            end = DAYS if stop is None else stop + (30 if m == 3 else 0)
            for day in range(DAYS):
                units = rng.poisson(3.0) if day < end else 0
                if units:
                    at = datetime.combine(START + timedelta(days=day), datetime.min.time()) + timedelta(hours=12)
                    rows.append({"order_id": f"{spu}-{day}:{spu}:0", "spu_id": spu, "quantity": int(units),
                                 "unit_price": 10.0, "ordered_at": at, "cancelled": False})
    neighbours = pl.DataFrame(pairs, schema={"spu_id": pl.String, "neighbour": pl.String}, orient="row")
    return pl.DataFrame(rows), neighbours, stops


@pytest.fixture(scope="module")
def history():
    orders, neighbours, stops = families()
    return orders, derive_market(orders), neighbours, stops


@pytest.fixture(scope="module")
def model(history):
    orders, market, neighbours, _ = history
    return train_warning(orders, market, CUTOFF, load_config(), neighbours=neighbours)


def test_threshold_warns_at_most_the_budget_of_quiet_positions():
    highest = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    assert np.mean(highest >= threshold_for(highest, 0.2)) == 0.2
    assert np.mean(highest >= threshold_for(highest, 0.25)) == 0.2   # 2.5 positions: two, not three
    assert threshold_for(highest, 0.0) > 0.9
    assert threshold_for(np.array([]), 0.1) == 1.0


def test_training_examples_never_read_on_or_after_the_cutoff(history):
    orders, market, neighbours, _ = history
    config = load_config()
    examples = training_examples(orders, market, CUTOFF, config, neighbours=neighbours)
    assert examples.height and examples["label"].any() and (~examples["label"]).any()
    # every example's outcome window closed before the first scored day
    assert (examples["day"].max() + timedelta(days=LEAD_DAYS[1])) < CUTOFF
    # what happens from the cutoff on cannot change them: wipe every later sale
    before = orders.filter(pl.col("ordered_at") < datetime.combine(CUTOFF, datetime.min.time()))
    changed = orders.with_columns(pl.when(pl.col("ordered_at") >= datetime.combine(CUTOFF, datetime.min.time()))
                                  .then(pl.col("quantity") * 50).otherwise(pl.col("quantity")))
    for other in (before, changed):
        again = training_examples(other, derive_market(other), CUTOFF, config, neighbours=neighbours)
        assert_frame_equal(again, examples)  # NaN ratios (0 / 0) compare equal here


def test_comparables_slowing_warn_before_the_spu_itself_slows(history, model):
    orders, market, neighbours, stops = history
    config = load_config()
    assert model is not None and 0 < model.threshold_ < 1
    # Scored 20 days after the leaders of the late families stopped: the followers still sell as before.
    scored = START + timedelta(days=195)
    late = [f for f, s in stops.items() if s == 175]
    steady = [f for f, s in stops.items() if s is None]
    followers = [f"F{f:02d}-3" for f in late]
    calm = [f"F{f:02d}-3" for f in steady]
    pledge = START + timedelta(days=160)
    book = pledge_book(orders, market, pledge).filter(pl.col("spu_id").is_in(followers + calm))
    assert book.height == len(followers) + len(calm)
    seen = market.filter(pl.col("date") <= scored)
    own = seen.filter(pl.col("spu_id").is_in(followers) & (pl.col("date") > scored - timedelta(days=14)))
    assert own["units_sold"].sum() > 0  # the followers' own sales have not stopped yet
    results = score_book(book, seen, scored, config, warning=model)
    p = dict(results.select("spu_id", "p_loss").iter_rows())
    assert min(p[s] for s in followers) >= model.threshold_
    assert max(p[s] for s in calm) < model.threshold_
    warned = results.filter(pl.col("spu_id").is_in(followers))
    assert warned["action"].is_in(["watch", "top-up", "liquidate"]).all()
    reasons = warned["reasons"].explode().to_list()
    assert "early_warning" in reasons
    assert any(r.startswith("early_warning:comparables_") for r in reasons)  # the desk reads why

    # Without comparables the same followers look like any steady SPU: the signal is the comparables'.
    alone = train_warning(orders, market, CUTOFF, config)
    p_alone = dict(score_book(book, seen, scored, config, warning=alone).select("spu_id", "p_loss").iter_rows())
    assert max(p_alone[s] for s in followers) < alone.threshold_


def test_stale_or_missing_market_data_scores_from_what_is_known(history, model):
    orders, market, neighbours, _ = history
    config = load_config()
    scored = START + timedelta(days=200)
    pledge = START + timedelta(days=120)
    book = pledge_book(orders, market, pledge).head(3)
    stale_spu, missing_spu = book["spu_id"][0], "NO-MARKET"
    book = pl.concat([book, book.head(1).with_columns(pl.lit(missing_spu).alias("spu_id"),
                                                      pl.lit("R-missing").alias("position_id"))])
    # the stale SPU's last 30 days of sales are gone; the missing one never had any
    seen = market.filter((pl.col("date") <= scored)
                         & ~((pl.col("spu_id") == stale_spu) & (pl.col("date") > scored - timedelta(days=30))))
    results = score_book(book, seen, scored, config, warning=model)
    assert results.height == 4 and results["p_loss"].is_not_null().all()
    stale = results.filter(pl.col("spu_id") == stale_spu).row(0, named=True)
    assert "stale_price" in stale["reasons"]
    assert "stale_price" in results.filter(pl.col("spu_id") == missing_spu)["reasons"][0].to_list()


def test_without_a_model_the_rules_decide_and_p_loss_is_empty(history):
    orders, market, _, _ = history
    book = pledge_book(orders, market, START + timedelta(days=120)).head(5)
    results = score_book(book, market, START + timedelta(days=140), load_config())
    assert results["p_loss"].is_null().all()


def test_too_few_loss_events_give_no_model(history):
    orders, market, neighbours, _ = history
    steady = orders.filter(pl.col("spu_id").str.ends_with("-0") & pl.col("spu_id").str.starts_with("F01"))
    assert train_warning(steady, derive_market(steady), CUTOFF, load_config()) is None


def test_model_predicts_one_probability_per_row():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(400, 19))
    y = X[:, 0] > 0.5
    model = WarningModel(n_splits=2).fit(X, y, np.arange(400) % 40, np.arange(400) % 100, ~y)
    p = model.predict_proba(X)
    assert p.shape == (400,) and ((p >= 0) & (p <= 1)).all()
    assert p[y].mean() > p[~y].mean() + 0.5


def test_sweeps_store_p_loss_and_alert_with_the_reasons(history, model, store):
    from monitoring import Monitor

    orders, market, _, stops = history
    config = load_config()
    pledge = START + timedelta(days=160)
    book = pledge_book(orders, market, pledge)
    monitor = Monitor(store, config, warning=model)
    scored = START + timedelta(days=195)
    outcome = monitor.run_sweep(scored, market=market.filter(pl.col("date") <= scored), positions=book)
    results = store.read("sweep_results")
    assert results.height == book.height and results["p_loss"].is_not_null().all()
    alerts = store.read("alerts")
    assert outcome.n_alerts == alerts.height > 0
    followers = {f"R-F{f:02d}-3" for f, s in stops.items() if s == 175}
    alerted = alerts.filter(pl.col("position_id").is_in(list(followers)))
    assert alerted.height == len(followers) and alerted["reasons"].str.contains("early_warning:").all()


def test_a_market_update_explains_its_alerts_as_the_sweep_of_that_day_would(history, model, store):
    """The event path scores without explaining, decides its alerts in the gate, then explains just those:
    the same reasons, drivers included, as score_book gives against the same previous actions."""
    import json

    from monitoring import Monitor
    from monitoring.market_updates import apply_market_updates

    orders, market, _, stops = history
    config = load_config()
    book = pledge_book(orders, market, START + timedelta(days=160))
    swept, before, scored = (START + timedelta(days=d) for d in (180, 194, 195))
    store.upsert("spus", book.select("spu_id").unique().with_columns(pl.col("spu_id").alias("title")))
    store.upsert("positions", book)
    store.upsert("market", market.filter(pl.col("date") <= before))
    monitor = Monitor(store, config, warning=model)
    monitor.run_sweep(swept)  # before the late followers' comparables had slowed for long
    previous = store.read("sweep_results").select("position_id", "action")

    moved = sorted({f"F{f:02d}-{m}" for f, s in stops.items() if s in (175, None) for m in (0, 3)})
    day = market.filter((pl.col("date") == scored) & pl.col("spu_id").is_in(moved))
    outcome = apply_market_updates(monitor, [{"spu_id": r["spu_id"], "date": scored.isoformat(), "price": r["price"],
                                              "units": r["units_sold"]} for r in day.iter_rows(named=True)])
    assert outcome.applied == day.height

    seen = pl.concat([market.filter(pl.col("date") <= before), day])
    expected = score_book(book.filter(pl.col("spu_id").is_in(day["spu_id"].implode())), seen, scored, config,
                          previous=previous, warning=model)
    events = store.read("health_events")
    assert sorted(events["position_id"]) == sorted(expected["position_id"])
    got = {p: json.loads(r) for p, r in zip(events["position_id"], events["reasons"])}
    alerted = set(expected.filter(pl.col("alert"))["position_id"])
    explained = {p for p, r in got.items() if any(c.startswith("early_warning:") for c in r)}
    assert outcome.alerts == len(alerted) > 0 and set(store.read("alert_outbox").filter(pl.col("trigger") == "market")["position_id"]) == alerted
    assert explained and explained <= alerted  # only alerts are explained
    for position, reasons in zip(expected["position_id"], expected["reasons"].to_list()):
        assert got[position] == reasons, position
