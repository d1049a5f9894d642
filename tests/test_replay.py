"""The replay's parts on small hand-made histories whose answers are worked out by hand."""

import itertools
from copy import deepcopy
from datetime import date, datetime, timedelta

import polars as pl
import pytest

from data import derive_market
from monitoring import load_config, score_book
from monitoring.replay import (
    TUNING_GRID,
    daily_scores,
    first_alerts,
    loss_events,
    naive_alerts,
    pledge_book,
    score_alerts,
    tune_actions,
)

PLEDGE = date(2024, 3, 1)
START = PLEDGE - timedelta(weeks=8)  # the pre-pledge window: [START, PLEDGE)
UNTIL = PLEDGE + timedelta(days=50)


def day(offset: int) -> date:
    """A day counted from the pledge date."""
    return PLEDGE + timedelta(days=offset)


def lines(spu: str, days: list[date], quantity=2, price=10.0, invoice=None, cancelled=False) -> list[dict]:
    """One order line per day, each its own invoice unless ``invoice`` names one; ``price``: one for all
    lines or one per line."""
    prices = price if isinstance(price, list) else [price] * len(days)
    return [{"order_id": f"{invoice or f'{spu}-{d}'}:{spu}:{i}", "spu_id": spu, "quantity": quantity,
             "unit_price": float(p), "ordered_at": datetime(d.year, d.month, d.day, 12), "cancelled": cancelled}
            for i, (d, p) in enumerate(zip(days, prices))]


def test_pledge_book_takes_spus_with_four_invoices_before_the_pledge():
    rows = (
        # A: 5 invoices in the window, 40 units, daily prices 10 12 14 12 12 -> median 12; a line on the
        # pledge day and one the day before the window are not pre-pledge sales
        lines("A", [day(-50 + 7 * i) for i in range(5)], quantity=8, price=[10, 12, 14, 12, 12])
        + lines("A", [day(0)], quantity=500, price=99.0) + lines("A", [START - timedelta(days=1)], 500, 99.0)
        # B: 6 lines but only 3 invoices
        + [line for i in range(3) for line in lines("B", [day(-30 + i), day(-30 + i)], invoice=f"B{i}")]
        # C: 4 invoices, one of them cancelled
        + lines("C", [day(-9), day(-8), day(-7)]) + lines("C", [day(-6)], cancelled=True)
        # D: 4 invoices, the first on the window's first day (inclusive)
        + lines("D", [START, day(-20), day(-10), day(-1)], quantity=3, price=5.0)
        # E: 4 invoices, the first the day before the window
        + lines("E", [START - timedelta(days=1), day(-20), day(-10), day(-1)])
    )
    orders = pl.DataFrame(rows)
    book = pledge_book(orders, derive_market(orders), PLEDGE)
    assert book["spu_id"].to_list() == ["A", "D"]
    a, d = book.rows(named=True)
    assert (a["position_id"], a["loan_id"], a["pledged_at"]) == ("R-A", "RL-A", PLEDGE)
    assert a["quantity"] == 20  # 4 weeks of its 8 weeks' sales
    assert a["pledge_unit_price"] == pytest.approx(0.7 * 12) and a["loan_amount"] == pytest.approx(20 * 0.7 * 12)
    assert d["quantity"] == 6 and d["pledge_unit_price"] == pytest.approx(3.5) and d["loan_amount"] == pytest.approx(21)


def market_rows(spu: str, first: int, last: int, units=2, price=10.0) -> pl.DataFrame:
    """Daily market snapshots from day(first) to day(last), days without a sale left out as in
    ``derive_market``; ``units`` / ``price`` may be functions of the day's offset from the pledge."""
    rows = [{"spu_id": spu, "date": day(k), "price": float(price(k) if callable(price) else price),
             "units_sold": int(units(k) if callable(units) else units)} for k in range(first, last + 1)]
    return pl.DataFrame([r for r in rows if r["units_sold"] > 0])


PRE = -(PLEDGE - START).days  # offset of the window's first day


@pytest.fixture(scope="module")
def market():
    return pl.concat([
        market_rows("steady", PRE, 50),
        # sales stop after day 10: the 28 days to day 32 hold 6 sale days = 12 units < 25% of 56
        market_rows("dies", PRE, 10),
        # sales stop at the pledge: nothing sells, but no event before 28 days have passed
        market_rows("early_death", PRE, -1),
        # price 10 -> 6 from day 21: the 28-day median is below 7 once 15 of the 28 days are at 6 (day 35)
        market_rows("price_drop", PRE, 50, price=lambda k: 6.0 if k >= 21 else 10.0),
        # a 28% fall and half the sales: worse, but inside both loss thresholds (14 units and 7.0)
        market_rows("mild", PRE, 50, units=lambda k: 1 if k > 0 else 2, price=lambda k: 7.2 if k > 0 else 10.0),
        market_rows("not_in_book", PRE, 5)])


def test_loss_events_are_the_first_day_a_rule_is_broken(market):
    book = pl.DataFrame({"spu_id": ["steady", "dies", "early_death", "price_drop", "mild"]})
    assert loss_events(market, book, PLEDGE, UNTIL) == {"dies": day(32), "early_death": day(28),
                                                         "price_drop": day(35)}
    assert loss_events(market, book, PLEDGE, day(31)) == {"early_death": day(28)}  # nothing after ``until``


def test_naive_baseline_alerts_when_14_day_units_halve(market):
    # pre-pledge: 2 units a day = 28 per 14 days; the alert needs fewer than 14 in the 14 days to a day
    book = pl.DataFrame({"spu_id": ["steady", "dies", "early_death", "price_drop", "mild"]})
    assert naive_alerts(market, book, PLEDGE, UNTIL) == {
        "dies": day(18),         # last sale day 10: the 14 days to day 18 hold days 5..10, 12 units
        "early_death": day(7),   # last sale day -1: the 14 days to day 7 hold days -6..-1, 12 units
    }                            # mild sells 1 a day: exactly 14 in any 14 days after the pledge, not fewer


def book_of(spus: list[str], loan_share: dict[str, float] | None = None) -> pl.DataFrame:
    """Positions of 30 units pledged at 7.0 on each SPU; loan = share x 30 x 10 (LTV at the pledge price)."""
    loan_share = loan_share or {}
    return pl.DataFrame({
        "position_id": [f"R-{s}" for s in spus], "loan_id": [f"RL-{s}" for s in spus], "borrower": "replay",
        "spu_id": spus, "quantity": 30, "warehouse": "W", "pledged_at": PLEDGE,
        "loan_amount": [loan_share.get(s, 0.5) * 300.0 for s in spus], "pledge_unit_price": 7.0})


def test_first_alerts_is_the_first_day_score_book_says_other_than_ok(market):
    spus = ["steady", "dies", "early_death", "price_drop", "mild"]
    book = book_of(spus + ["levered"], {"levered": 0.9})  # LTV 0.9 from the start: a top-up at once
    config = load_config()
    market = market.vstack(market_rows("levered", PRE, 50))
    scores = daily_scores(market, book, PLEDGE, UNTIL, config)
    answers = []
    for grid_point in ({}, {"watch_velocity_ratio": 0.2, "watch_price_change": -0.3, "watch_score": 30},
                       {"watch_velocity_ratio": 0.6, "watch_price_change": -0.1, "watch_score": 70}):
        tried = deepcopy(config)
        tried["actions"].update(grid_point)
        expected = {}
        for k in range(1, (UNTIL - PLEDGE).days + 1):
            flagged = score_book(book, market, day(k), tried).filter(pl.col("action") != "ok")
            for spu in flagged["spu_id"]:
                expected.setdefault(spu, day(k))
        assert first_alerts(scores, tried["actions"]) == expected, grid_point
        answers.append(expected)
    assert answers[0]["levered"] == day(1) and "steady" not in answers[0]
    assert len({tuple(sorted(a.items())) for a in answers}) == 3  # the thresholds change the answer


def orders_from(market: pl.DataFrame) -> pl.DataFrame:
    """One order line (its own invoice) per market day: the market derived from it is the same."""
    return pl.DataFrame([
        {"order_id": f"{r['spu_id']}-{r['date']}:1", "spu_id": r["spu_id"], "quantity": r["units_sold"],
         "unit_price": r["price"], "ordered_at": datetime.combine(r["date"], datetime.min.time()),
         "cancelled": False} for r in market.iter_rows(named=True)])


def test_tune_actions_picks_the_best_recall_within_the_false_alarm_bound(market):
    market = market.filter(~pl.col("spu_id").is_in(["not_in_book", "mild"])).vstack(pl.concat([
        # no loss event for either, so any alert on them is false: prices 12% down from day 5 ...
        market_rows("dip", PRE, 50, price=lambda k: 8.8 if k >= 5 else 10.0),
        # ... and sales at 45% of the pre-pledge rate: a 4-week rate ~0.55 of the 12-week one from day 26
        market_rows("slowdown", PRE, 50, units=lambda k: 2 if k <= 0 else int(k % 10 != 0)),
    ]))  # ("mild" is left out: its 28% fall takes the LTV past the top-up line whatever the watch thresholds)
    orders = orders_from(market)
    assert derive_market(orders).sort("spu_id", "date").equals(market.sort("spu_id", "date"))
    config = load_config()
    book = pledge_book(orders, market, PLEDGE)
    spus = book["spu_id"].to_list()
    assert sorted(spus) == ["dies", "dip", "early_death", "price_drop", "slowdown", "steady"]
    events = loss_events(market, book, PLEDGE, UNTIL)
    assert set(events) == {"dies", "early_death", "price_drop"}
    scores = daily_scores(market, book, PLEDGE, UNTIL, config)

    # By hand: only a 4-week rate below 60% of the 12-week one flags "dies" (sales stop after day 10) 7
    # days before its event on day 32, and that trigger also flags "slowdown"; a 10% price trigger flags "dip".
    tight, tight_score, table = tune_actions(orders, market, PLEDGE, UNTIL, config, max_false_alarm_rate=0.0)
    loose, loose_score, _ = tune_actions(orders, market, PLEDGE, UNTIL, config, max_false_alarm_rate=1.0)
    assert (tight_score.caught, tight_score.late, tight_score.false_alarms) == (2, 1, 0)
    assert tight["watch_velocity_ratio"] <= 0.5 and tight["watch_price_change"] < -0.12
    assert (loose_score.caught, loose_score.false_alarms) == (3, 1)  # the best recall costs one false alarm
    assert loose["watch_velocity_ratio"] == 0.6 and loose["watch_price_change"] < -0.12  # not two

    assert table.height == len(list(itertools.product(*TUNING_GRID.values())))
    for chosen, score, bound in ((tight, tight_score, 0.0), (loose, loose_score, 1.0)):
        # the score it reports is the score of its thresholds on this window, within the bound, and no
        # grid point within the bound catches more
        assert score == score_alerts(first_alerts(scores, chosen), events, spus)
        assert score.false_alarm_rate <= bound
        assert score.flag_recall == table.filter(pl.col("false_alarm_rate") <= bound)["flag_recall"].max()
        assert {k: v for k, v in chosen.items() if k not in TUNING_GRID} == \
            {k: v for k, v in config["actions"].items() if k not in TUNING_GRID}
