"""The lending backtest and the learned haircut, on small histories where the answer is known by hand."""

import pickle
from datetime import date, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from typer.testing import CliRunner

from serving.cli import app
from valuation import backtest
from valuation.explain import every_probe
from valuation.recovery import (RecoveryModel, liquidate, market_snapshot, pseudo_pledges, sales_lines,
                                with_history)

T = datetime(2011, 5, 1)


def lines(rows):
    """(spu, days after T, quantity, price[, cancelled[, buyer]]) -> order lines."""
    return pl.DataFrame(
        {"order_id": [f"o{i}" for i in range(len(rows))], "spu_id": [r[0] for r in rows],
         "quantity": [r[2] for r in rows], "unit_price": [float(r[3]) for r in rows],
         "ordered_at": [T + timedelta(days=r[1], hours=10) for r in rows],
         "cancelled": [bool(r[4]) if len(r) > 4 else False for r in rows],
         "customer_id": [r[5] if len(r) > 5 else None for r in rows]},
        schema={"order_id": pl.String, "spu_id": pl.String, "quantity": pl.Int64, "unit_price": pl.Float64,
                "ordered_at": pl.Datetime("us"), "cancelled": pl.Boolean, "customer_id": pl.String})


def recover(rows, positions, horizon=60, salvage=0.25):
    book = pl.DataFrame(positions, schema={"spu_id": pl.String, "quantity": pl.Int64, "price": pl.Float64}, orient="row")
    return dict(liquidate(sales_lines(lines(rows)), book, T, horizon, salvage).select("spu_id", "recovery").iter_rows())


def test_stock_sold_on_day_one_recovers_the_market_price():
    assert recover([("A", 0, 10, 5.0)], [("A", 10, 5.0)])["A"] == pytest.approx(5.0)


def test_stock_that_never_sells_recovers_salvage():
    got = recover([("A", -3, 10, 5.0), ("A", 61, 10, 5.0)], [("A", 10, 4.0)])  # before t and after t + H only
    assert got["A"] == pytest.approx(0.25 * 4.0)


def test_cancellations_are_not_sales_and_lines_sell_in_time_order():
    rows = [("A", 0, 10, 100.0, True),            # cancelled: no one paid 100
            ("A", 5, 8, 3.0), ("A", 2, 6, 5.0)]   # in time order: 6 at 5, then 4 of 8 at 3
    assert recover(rows, [("A", 10, 5.0)])["A"] == pytest.approx((6 * 5 + 4 * 3) / 10)
    assert recover([("A", 1, 4, 5.0), ("A", 1, 0, 9.0), ("A", 2, 3, -1.0)], [("A", 10, 5.0)])["A"] == \
        pytest.approx((4 * 5 + 6 * 0.25 * 5) / 10)


def test_snapshot_reads_only_lines_before_the_pledge_date():
    history = lines([("A", -d, 1, 10.0) for d in range(1, 11)] + [("A", 0, 50, 99.0), ("A", 3, 50, 99.0)])
    snap = market_snapshot(sales_lines(history), T).row(0, named=True)
    assert snap["units_30"] == 10 and snap["price"] == 10.0 and snap["active_days_90"] == 10


def test_buyer_features_count_named_buyers_of_the_last_90_days_before_the_pledge():
    rows = [("A", -1, 5, 10.0, False, "x"), ("A", -2, 5, 10.0, False, "x"),  # x comes back on another day
            ("A", -40, 10, 10.0, False, "y"),                                   # y: within 90 days, not 30
            ("A", -3, 100, 10.0),                                               # a guest order names no one
            ("A", -100, 50, 10.0, False, "z"), ("A", 2, 50, 10.0, False, "w"),  # before the window, after t
            ("A", -5, 70, 10.0, True, "v"),                                     # cancelled: not a buyer
            ("B", -1, 3, 4.0), ("B", -2, 3, 4.0)]                               # guests only
    snap = {r["spu_id"]: r for r in market_snapshot(sales_lines(lines(rows)), T).iter_rows(named=True)}
    assert (snap["A"]["customers_30"], snap["A"]["customers_90"]) == (1.0, 2.0)
    assert snap["A"]["top_customer_share_90"] == pytest.approx(10 / 20)
    assert snap["A"]["repeat_customer_share_90"] == pytest.approx(1 / 2)
    # no named buyer is unknown, not "no buyers": the trees send it down their missing-value branch
    assert all(snap["B"][f] is None for f in ("customers_30", "customers_90", "top_customer_share_90",
                                              "repeat_customer_share_90"))
    # a catalogue without the column reads like one of guests only
    assert market_snapshot(sales_lines(lines(rows).drop("customer_id")), T).filter(pl.col("spu_id") == "A")[
        "customers_90"].item() is None


def test_pseudo_pledges_use_only_outcomes_closed_before_the_cutoff():
    rng = np.random.default_rng(0)
    rows = [(s, d, int(rng.integers(1, 5)), 10.0 + rng.normal()) for s in "ABC" for d in range(-150, 20)
            if rng.random() < 0.5]
    history = sales_lines(lines(rows))
    before = pseudo_pledges(history.filter(pl.col("ordered_at") < T), T, horizon_days=30, salvage=0.25)
    with_future = pseudo_pledges(history, T, horizon_days=30, salvage=0.25)
    assert before.height > 0 and (before["pledged_at"] + timedelta(days=30)).max() <= T
    assert_frame_equal(with_future, before, rel_tol=1e-9)  # lines on or after the cutoff change nothing


def test_history_features_see_only_closed_pledges():
    examples = pl.DataFrame({"spu_id": ["A", "A", "A", "B"], "multiple": [1.0] * 4,
                             "pledged_at": [T, T + timedelta(days=7), T + timedelta(days=40), T + timedelta(days=40)],
                             "recovery_ratio": [0.5, 0.9, 0.7, 0.3]})
    out = with_history(examples, pl.DataFrame({"spu_id": ["B"], "neighbour": ["A"]}), horizon_days=30)
    own = out["own_recovery"].to_list()
    assert own[0] is None and own[1] is None  # nothing of A had closed by then
    assert own[2] == pytest.approx(0.7)       # A's pledges of T and T+7 closed by T+40: (0.5 + 0.9) / 2
    assert out["comp_recovery"][3] == pytest.approx(0.7) and out["comp_recovery_n"][3] == 2


def test_recovery_bound_holds_at_its_confidence_and_tracks_the_risk():
    rng = np.random.default_rng(1)
    n = 6000
    risky = rng.random(n) < 0.5
    X = np.column_stack([risky.astype(float), rng.normal(size=n)])
    y = np.where(risky, rng.uniform(0.25, 1.0, n), rng.uniform(0.8, 1.1, n))
    order = np.repeat(np.arange(10), n // 10)
    model = RecoveryModel(confidence=0.95, max_iter=60).fit(X, y, order)
    Xt = np.column_stack([np.r_[np.ones(2000), np.zeros(2000)], rng.normal(size=4000)])
    yt = np.r_[rng.uniform(0.25, 1.0, 2000), rng.uniform(0.8, 1.1, 2000)]
    bound = model.lower(Xt)
    assert 0.93 <= np.mean(yt >= bound) <= 0.995
    assert bound[2000:].mean() > bound[:2000].mean() + 0.3  # the safe goods get a much smaller haircut
    p = model.breach_probability(Xt, bound)
    assert np.all(p <= 0.05 + 1e-9) and np.all(model.breach_probability(Xt, np.full(4000, 2.0)) == 1.0)
    drivers = model.drivers(Xt[:1], names=("risky", "noise"))[0]
    assert drivers[0]["feature"] == "risky" and drivers[0]["effect"] > 0.1  # it raised this one's haircut


def test_small_calls_answer_exactly_as_the_fitted_model_does_and_are_not_pickled():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(3000, 4))
    X[:, 1] = rng.random(3000) < 0.5  # two values: one split point, so its 16 probes collapse to two
    X[rng.random(X.shape) < 0.1] = np.nan  # the missing-value branches are taken too
    y = np.nan_to_num(X[:, 0]) + np.nan_to_num(X[:, 1]) + rng.normal(size=3000)
    model = RecoveryModel(confidence=0.9, max_iter=40, min_samples_leaf=20).fit(X, y, np.repeat(np.arange(6), 500))
    nodes = [tree.nodes for trees in model.quantile_._predictors for tree in trees]
    # a value on each split point and the next float above it: where a wrong comparison would show
    splits = [(n["feature_idx"][i], n["num_threshold"][i]) for n in nodes for i in np.flatnonzero(n["is_leaf"] == 0)]
    edges = np.repeat(X[:1], 2 * len(splits), axis=0)
    for k, (feature, threshold) in enumerate(splits):
        edges[2 * k, feature], edges[2 * k + 1, feature] = threshold, np.nextafter(threshold, np.inf)
    rows = np.vstack([X[:500], edges])
    assert model.lower(rows[:1]).shape == (1,) and model._small_calls is not None
    small = np.concatenate([model.lower(rows[i:i + 100]) for i in range(0, len(rows), 100)])
    assert np.array_equal(small, np.clip(model.quantile_.predict(rows) + model.shift_, 0, None))
    again = pickle.loads(pickle.dumps(model))
    assert not hasattr(again, "_small_calls") and np.array_equal(again.lower(rows[:100]), small[:100])
    # the explanation asks one probe per interval between split points (a two-valued column needs two)
    # and must say what asking all 16 typical values of every column says
    quantile, drivers = model.explain(rows[:40], names=("a", "b", "c", "d"))
    columns = model._probes[0]
    assert len(columns) < model.reference_.size and np.sum(columns == 1) <= 2
    model._probes = every_probe(model.reference_, np.arange(model.reference_.shape[1]))
    plain_quantile, plain_drivers = model.explain(rows[:40], names=("a", "b", "c", "d"))
    assert np.array_equal(quantile, plain_quantile) and any(drivers)
    for row, plain_row in zip(drivers, plain_drivers):
        assert [d["feature"] for d in row] == [d["feature"] for d in plain_row]
        assert [d["effect"] for d in row] == pytest.approx([d["effect"] for d in plain_row], abs=1e-9)


def test_kupiec_pof():
    assert backtest.kupiec_pof(1000, 10, 0.01) == pytest.approx(1.0)
    assert backtest.kupiec_pof(1000, 30, 0.01) < 0.001
    assert backtest.kupiec_pof(1000, 0, 0.01) < 0.01  # too few breaches is a mis-calibration too


def test_each_pledge_date_reports_its_own_kupiec_p_value():
    # a pooled 1% can hide one date at 2% and another at 0%: each date is tested on its own breaches
    rows = [(date(2011, 5, 1), 1, 20)] * 1000 + [(date(2011, 6, 1), 1, 0)] * 1000
    positions = pl.DataFrame(rows, schema=["pledge_date", "quantity", "breach"], orient="row").with_columns(
        pl.lit(10.0).alias("price"), pl.lit(5.0).alias("loan_per_unit"), pl.lit("accept").alias("decision"),
        pl.when(pl.int_range(pl.len()).over("pledge_date") < pl.col("breach")).then(4.0).otherwise(9.0).alias("recovery"))
    summary = backtest.summarize(positions, 0.99)
    assert summary["ours"]["breaches"] == 20 and summary["ours"]["kupiec_p"] == pytest.approx(1.0)
    may, june = summary["by_date"][date(2011, 5, 1)]["ours"], summary["by_date"][date(2011, 6, 1)]["ours"]
    assert (may["breaches"], june["breaches"]) == (20, 0)
    assert may["kupiec_p"] == pytest.approx(backtest.kupiec_pof(1000, 20, 0.01)) and may["kupiec_p"] < 0.01
    assert june["kupiec_p"] == pytest.approx(backtest.kupiec_pof(1000, 0, 0.01)) and june["kupiec_p"] < 0.01
    table = {row[0]: row for row in backtest.table_rows(summary)}
    assert all(len(row) == len(backtest.TABLE_HEADER) for row in table.values())
    assert table["ours, pledged 2011-05-01"][-1] == f"{may['kupiec_p']:.4f}"
    assert table["ours (pledge price)"][-1] == "1.0000" and table["flat50, pledged 2011-05-01"][-1] == ""
    assert (f"worst_date_breach_rate=0.0200 worst_date_kupiec_p={min(may['kupiec_p'], june['kupiec_p']):.4f}"
            in backtest.key_values(summary))


class _FixedModel:
    """Lends half the price seen in training; records the last order line it was trained on."""
    seen: list = []

    def __init__(self, tables):
        orders = tables["orders"]
        _FixedModel.seen.append(orders["ordered_at"].max())
        self.price_of = dict(orders.group_by("spu_id").agg(pl.col("unit_price").median()).iter_rows())

    def price(self, requests):
        ids = [r["spu_id"] for r in requests]
        return pl.DataFrame({"spu_id": ids, "value": [self.price_of[s] for s in ids],
                             "pledge_unit_price": [0.5 * self.price_of[s] for s in ids],
                             "decision": ["accept"] * len(ids), "haircut_source": ["rules"] * len(ids),
                             "breach_probability": [None] * len(ids), "error": [None] * len(ids)},
                            schema_overrides={"breach_probability": pl.Float64, "error": pl.String})


def as_online_retail(frame: pl.DataFrame, path):
    codes = {"A": "10001", "B": "10002"}
    frame.select(
        pl.when(pl.col("cancelled")).then(pl.lit("C")).otherwise(pl.lit("")).add(pl.col("order_id")).alias("InvoiceNo"),
        pl.col("spu_id").replace_strict(codes).alias("StockCode"), pl.col("spu_id").alias("Description"),
        pl.col("quantity").alias("Quantity"), pl.col("ordered_at").dt.to_string("%Y-%m-%d %H:%M:%S").alias("InvoiceDate"),
        pl.col("unit_price").alias("UnitPrice")).write_csv(path)
    return path


def test_walk_forward_trains_only_on_lines_before_each_pledge_date(tmp_path):
    # A sells one unit a day at 10 until T, then never again (the lender gets salvage); B sells throughout
    rows = [("A", d, 1, 10.0) for d in range(-120, 0)] + [("B", d, 1, 4.0) for d in range(-120, 70)]
    path = as_online_retail(lines(rows), tmp_path / "retail.csv")
    _FixedModel.seen = []
    summary, positions, _ = backtest.run_online_retail(
        path, date(2011, 4, 1), T.date(), horizon_days=30, salvage=0.25, confidence=0.99,
        train=lambda tables, log=None: _FixedModel(tables), log=None)
    assert len(_FixedModel.seen) == 2  # retrained at each date, never on a line of that day or later
    assert _FixedModel.seen[0] < datetime(2011, 4, 1) and _FixedModel.seen[1] < T
    assert _FixedModel.seen[1] >= T - timedelta(days=1)  # ... but on everything before it
    at_t = {r["spu_id"]: r for r in positions.filter(pl.col("pledge_date") == T.date()).iter_rows(named=True)}
    assert at_t["10001"]["quantity"] == 30 and at_t["10001"]["recovery"] == pytest.approx(2.5)
    assert at_t["10001"]["breach"] and at_t["10001"]["loan_per_unit"] == pytest.approx(5.0)
    assert at_t["10002"]["recovery"] == pytest.approx(4.0) and not at_t["10002"]["breach"]
    assert summary["flat30"]["advance_rate"] == pytest.approx(0.3)
    assert summary["ours"]["n"] == 4 and summary["ours"]["breaches"] == 1


def test_bad_windows_are_named(tmp_path):
    rows = [("A", d, 1, 10.0) for d in range(-120, 30)]
    orders = lines(rows)

    def run(dates, horizon=30):
        return backtest.run(lambda t: {"orders": orders.filter(pl.col("ordered_at") < t)}, orders, dates,
                            horizon_days=horizon, train=lambda tables, log=None: _FixedModel(tables), log=None)
    with pytest.raises(backtest.BacktestError, match="--horizon-days"):
        run([T.date()], horizon=60)  # the data ends 30 days after T
    with pytest.raises(backtest.BacktestError, match="no SPU is eligible"):
        run([date(2011, 1, 3)])  # two days after the first sale: no SPU has 5 days of sales
    assert backtest.month_starts(date(2011, 4, 15), date(2011, 7, 1)) == [date(2011, 5, 1), date(2011, 6, 1),
                                                                          date(2011, 7, 1)]


def test_cli_errors_name_the_field(tmp_path):
    csv = tmp_path / "retail.csv"
    pl.DataFrame({"InvoiceNo": ["1"], "StockCode": ["10001"], "Description": ["MUG"], "Quantity": [1],
                  "InvoiceDate": ["2011-01-03 10:00:00"], "Country": ["UK"]}).write_csv(csv)
    result = CliRunner().invoke(app, ["backtest", "--online-retail", str(csv)])
    assert result.exit_code == 2 and "UnitPrice" in result.output
    good = tmp_path / "good.csv"
    pl.DataFrame({"InvoiceNo": [str(i) for i in range(200)], "StockCode": ["10001"] * 200, "Description": ["MUG"] * 200,
                  "Quantity": [2] * 200, "UnitPrice": [1.5] * 200,
                  "InvoiceDate": [(datetime(2011, 1, 1) + timedelta(days=i // 2)).isoformat(sep=" ") for i in range(200)],
                  }).write_csv(good)
    result = CliRunner().invoke(app, ["backtest", "--online-retail", str(good), "--from", "2011-03-01",
                                      "--until", "2011-04-01", "--horizon-days", "60"])
    assert result.exit_code == 2 and "--horizon-days" in result.output
    result = CliRunner().invoke(app, ["backtest", "--online-retail", str(good), "--from", "2011-02-01",
                                      "--until", "2011-02-01", "--horizon-days", "30", "--retrain", "sometimes"])
    assert result.exit_code == 2 and "--retrain" in result.output


@pytest.fixture(scope="module")
def learned_model(small_catalog):
    from valuation.model import PledgeModel

    _, tables = small_catalog
    return PledgeModel.train(tables, log=None)


def test_spus_with_history_get_the_learned_haircut_new_ones_the_rules(learned_model, tmp_path):
    from valuation.model import PledgeModel
    from valuation.recovery import FEATURES

    model = learned_model
    assert model.recovery is not None and model.metrics["recovery_examples"] >= 300
    known = model.recovery.state["spu_id"][0]
    answers = model.price([{"spu_id": known, "quantity": 10}, {"spu_id": "NEW-1", "title": "Aurora AA-1 Gold Watch"}])
    learned, new = answers.row(0, named=True), answers.row(1, named=True)
    assert (learned["haircut_source"], new["haircut_source"]) == ("learned", "rules")
    assert learned["haircut_base"] is None and new["haircut_recovery"] is None and new["breach_probability"] is None
    h = learned["haircut"]
    assert learned["pledge_unit_price"] == pytest.approx(learned["value"] * (1 - h))
    if 0.05 < h < 0.90:  # not clipped to the policy's floor or cap: the learned parts add up
        assert h == pytest.approx(learned["haircut_recovery"] + learned["haircut_value_gap"])
    # the bound is a share of min(value, market price): never lends above what the market paid
    assert learned["pledge_unit_price"] <= learned["market_price"] * (1 - learned["haircut_recovery"]) + 1e-9
    assert learned["breach_probability"] <= 0.01 + 1e-9 and learned["decision"] in ("accept", "reject")
    assert learned["haircut_drivers"] and all(d["feature"] in FEATURES for d in learned["haircut_drivers"])
    # a new SPU by title alone is never accepted automatically: its wide interval sends it to review, or,
    # on this small catalogue, can pin its rule haircut at the cap (rejected)
    assert "no_history" not in learned["reasons"] and new["decision"] in ("review", "reject")
    assert "no_history" in new["reasons"]
    model.save(tmp_path / "m")
    again = PledgeModel.load(tmp_path / "m").price([{"spu_id": known, "quantity": 10}])
    assert again["pledge_unit_price"][0] == pytest.approx(learned["pledge_unit_price"])


def test_a_learned_haircut_past_the_cap_lends_the_bound_not_the_cap(learned_model):
    """A value far above the market price pushes the learned haircut past the policy's cap. Clipping it
    there would lend (1 - cap) x value, more than the recovery bound: the loan stays the bound, and the
    SPU is rejected as at cap."""
    import numpy as np

    from valuation.policy import HAIRCUT_PARTS

    recovery = learned_model.recovery
    spu = recovery.state["spu_id"][0]
    price = float(recovery.state["price"][0])
    value = 100 * price  # the bound x min(value, P) is at most P: under 1% of this value
    cols = {"matched_spu_id": [spu], "quantity": np.array([10.0]), "value": np.array([value]),
            "haircut": np.array([0.5]), "pledge_unit_price": np.array([value / 2]), "haircut_at_cap": np.array([False]),
            **{part: np.array([0.1]) for part in HAIRCUT_PARTS}}
    out = recovery.columns(cols, floor=0.05, cap=0.90)
    bound = 1 - out["haircut_recovery"][0]
    assert out["pledge_unit_price"][0] == pytest.approx(bound * price) and out["pledge_unit_price"][0] < 0.1 * value
    assert out["haircut"][0] > 0.90 and out["haircut_at_cap"][0]


def test_admission_of_a_learned_haircut_rests_on_the_breach_probability():
    from valuation.policy import AdmissionPolicy, load_policy

    rows = {"value": [10.0, 10.0, 10.0], "value_low": [1.0, 1.0, 1.0], "value_high": [40.0, 40.0, 40.0],
            "days_to_sell": [200.0, 200.0, 200.0], "daily_volatility": [0.2, 0.2, 0.2], "units_per_day": [1.0] * 3,
            "haircut_at_cap": [False] * 3, "matched": [True] * 3, "negativity": [0.9] * 3, "category": [None] * 3,
            "haircut_source": ["learned", "learned", "rules"], "breach_probability": [0.004, 0.2, None]}
    decided = AdmissionPolicy(load_policy()).apply(pl.DataFrame(rows, schema_overrides={"category": pl.String}))
    # slow, volatile, badly reviewed and widely uncertain alike: priced into a learned haircut, not into the rules
    assert decided["decision"].to_list() == ["accept", "review", "review"]
    assert decided["reasons"][0].to_list() == [] and decided["reasons"][1].to_list() == ["breach_risk"]
    assert {"slow_to_sell", "volatile", "negative_reviews", "wide_interval"} <= set(decided["reasons"][2])


def test_remembered_haircuts_of_known_spus_equal_the_models_own_answer(learned_model):
    """A known SPU's learned haircut is remembered per days-of-cover interval between the trees' split
    points: at every quantity it must equal what the model answers when asked afresh."""
    import numpy as np

    from valuation.recovery import COVER

    recovery = learned_model.recovery
    spus = recovery.state["spu_id"].to_list()[:6]
    quantities = [1, 2, 3, 7, 10, 25, 60, 150, 400, 1000, 5000, 20_000]
    items = [{"spu_id": s, "quantity": q} for s in spus for q in quantities]
    learned_model.price(items)  # fills the memory
    again = learned_model.price(items[::-1])[::-1]  # answered from it, in another order
    rows = np.array([recovery._row[s] for s in spus for _ in quantities])
    X = recovery._features[rows].copy()
    X[:, COVER] = np.array([q for _ in spus for q in quantities]) / recovery._per_day[rows]
    quantile, drivers = recovery.model.explain(X)
    ratio = recovery.model._bound(quantile)
    assert len(np.unique(ratio.round(9))) > len(spus)  # the bound does move with the quantity
    assert np.allclose(again["haircut_recovery"].to_numpy(), 1 - ratio, rtol=0, atol=1e-12)
    assert again["haircut_drivers"].to_list() == drivers
    assert len(recovery._explained) < len(items)  # quantities in one interval share an entry
