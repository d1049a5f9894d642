"""Replay real history through the monitor and score its early warnings honestly.

One position is pledged on every SPU on sale at the pledge date (at least 4 invoices in the 8 weeks
before; quantity = 4 weeks of its pre-pledge sales; loan = pledge value at 70% of the pre-pledge median
price). Each later day is fed to the monitor only once it has happened, and the book is swept daily.

A **loss event** for an SPU is the first day d >= pledge + 28 on which its units sold in the 28 days
up to d fall below 25% of its average 28-day units in the 8 weeks before the pledge, or the median
unit price in those 28 days falls below 70% of its pre-pledge median. An event is **caught** when the
position's first alert came at least 7 days before it; a **false alarm** is an alert on an SPU with
no event up to the end of the replay.
"""

from __future__ import annotations

import itertools
import tempfile
from copy import deepcopy
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from data import Store
from data.market import derive_market
from monitoring.events import PRE_WEEKS, daily_matrix, loss_events, pledge_book
from monitoring.health import load_config, score_book, with_comparables
from monitoring.sweep import Monitor

MIN_LEAD_DAYS = 7
TUNING_GRID = {
    "watch_velocity_ratio": [0.2, 0.3, 0.4, 0.5, 0.6],
    "watch_price_change": [-0.1, -0.15, -0.2, -0.3, -1.0],
    "watch_score": [30, 40, 50, 60, 70],
}


@dataclass
class ReplayScore:
    n_positions: int
    n_events: int
    caught: int
    late: int            # alerted, but less than 7 days before the event (or after it)
    missed: int          # event, never alerted
    false_alarms: int
    quiet_ok: int        # no event, no alert
    median_lead_days: float

    @property
    def flag_recall(self) -> float:
        return self.caught / self.n_events if self.n_events else 0.0

    @property
    def false_alarm_rate(self) -> float:
        no_event = self.false_alarms + self.quiet_ok
        return self.false_alarms / no_event if no_event else 0.0


NAIVE_WINDOW = 14


def naive_alerts(market: pl.DataFrame, book: pl.DataFrame, pledge: date, until: date) -> dict[str, date]:
    """The baseline a reader should compare the monitor with: alert on the first day after the pledge on
    which the units sold in the last 14 days fall below half the pre-pledge rate (per 14 days). The loss
    event reads the same sales series, so part of any monitor's recall is mechanical; this shows how much."""
    start = pledge - timedelta(weeks=PRE_WEEKS)
    alerts = {}
    spus = book["spu_id"].to_list()
    for spu, units in zip(spus, daily_matrix(market, spus, start, until)[0]):
        pre_days = (pledge - start).days
        base = units[:pre_days].sum() * NAIVE_WINDOW / pre_days
        rolling = np.convolve(units, np.ones(NAIVE_WINDOW), mode="full")[:len(units)]  # units in the 14 days to d
        low = np.flatnonzero(rolling[pre_days + 1:] < 0.5 * base)
        if low.size:
            alerts[spu] = pledge + timedelta(days=int(low[0]) + 1)
    return alerts


def score_alerts(first_alert: dict[str, date], events: dict[str, date], spus: list[str]) -> ReplayScore:
    caught = late = missed = false_alarms = quiet = 0
    leads = []
    for spu in spus:
        alert, event = first_alert.get(spu), events.get(spu)
        if event is not None:
            if alert is None:
                missed += 1
            elif (event - alert).days >= MIN_LEAD_DAYS:
                caught += 1
                leads.append((event - alert).days)
            else:
                late += 1
        elif alert is not None:
            false_alarms += 1
        else:
            quiet += 1
    return ReplayScore(len(spus), len(events), caught, late, missed, false_alarms, quiet,
                       float(np.median(leads)) if leads else float("nan"))


def daily_scores(orders_market: pl.DataFrame, book: pl.DataFrame, pledge: date, until: date,
                 config: dict) -> pl.DataFrame:
    """Score the book every day (no alerts state): the raw material for tuning action thresholds."""
    frames = []
    for i in range(1, (until - pledge).days + 1):
        d = pledge + timedelta(days=i)
        seen = orders_market.filter(pl.col("date") <= d)
        frames.append(score_book(book, seen, d, config).select(
            pl.lit(d).alias("day"), "spu_id", "ltv", "health", "velocity_trend", "price_change"))
    return pl.concat(frames)


def first_alerts(scores: pl.DataFrame, actions: dict) -> dict[str, date]:
    """First day each SPU's action is worse than ok, under these action thresholds."""
    a = actions
    # the same rule as monitoring.health: any of these makes the action worse than ok
    worst_score = max(a["watch_score"], a["topup_score"], a["liquidate_score"])
    flagged = scores.filter((pl.col("ltv") >= min(a["topup_ltv"], a["liquidate_ltv"]))
                            | (pl.col("health") < worst_score)
                            | (pl.col("velocity_trend") < a["watch_velocity_ratio"])
                            | (pl.col("price_change") < a["watch_price_change"]))
    return dict(flagged.group_by("spu_id").agg(pl.col("day").min()).iter_rows())


def tune_actions(orders: pl.DataFrame, market: pl.DataFrame, pledge: date, until: date, config: dict,
                 max_false_alarm_rate: float = 0.25) -> tuple[dict, ReplayScore, pl.DataFrame]:
    """Choose the watch thresholds on an earlier window: the best recall at a false-alarm rate within
    the bound (ties: fewer false alarms)."""
    book = pledge_book(orders, market, pledge)
    events = loss_events(market, book, pledge, until)
    scores = daily_scores(market, book, pledge, until, config)
    spus = book["spu_id"].to_list()
    trials = []
    for values in itertools.product(*TUNING_GRID.values()):
        actions = {**config["actions"], **dict(zip(TUNING_GRID, values))}
        result = score_alerts(first_alerts(scores, actions), events, spus)
        trials.append((actions, result))
    table = pl.DataFrame([{**{k: a[k] for k in TUNING_GRID}, "flag_recall": r.flag_recall,
                           "false_alarm_rate": r.false_alarm_rate} for a, r in trials])
    allowed = [t for t in trials if t[1].false_alarm_rate <= max_false_alarm_rate] or trials
    best = max(allowed, key=lambda t: (t[1].flag_recall, -t[1].false_alarm_rate))
    return best[0], best[1], table


@dataclass
class ReplayRun:
    score: ReplayScore      # the monitor's alerts
    naive: ReplayScore      # the naive baseline on the same positions and events
    book: pl.DataFrame
    events: dict[str, date]
    daily: pl.DataFrame     # every daily sweep's result: spu_id, as_of, ltv, p_loss, action


def replay(orders: pl.DataFrame, pledge: date, until: date, config: dict | None = None,
           store_url: str | None = None, warning=None) -> ReplayRun:
    """Run the monitor day by day over real history and score its alerts. ``warning``: a learned early
    warning (``monitoring.warning``) the sweeps use instead of the health-score rules; it must have been
    trained on history before ``pledge``."""
    config = deepcopy(config or load_config())
    market = derive_market(orders)
    book = pledge_book(orders, market, pledge)
    events = loss_events(market, book, pledge, until)
    spus = book["spu_id"].to_list()
    # comparables need their own market rows; without them only the book's SPUs are read
    relevant = market.filter(pl.col("spu_id").is_in(with_comparables(spus, warning)))
    with tempfile.TemporaryDirectory() as folder:
        store = Store(store_url or f"sqlite:///{Path(folder) / 'replay.db'}")
        monitor = Monitor(store, config, warning=warning)
        for i in range(1, (until - pledge).days + 1):
            d = pledge + timedelta(days=i)
            # the monitor is handed only what has happened by the end of day d
            monitor.run_sweep(d, market=relevant.filter(pl.col("date") <= d), positions=book)
        alerts = store.read("alerts")
        daily = store.read("sweep_results").select(
            pl.col("position_id").str.strip_prefix("R-").alias("spu_id"),
            pl.col("sweep_id").str.strip_prefix("sweep-").str.to_date().alias("as_of"), "ltv", "p_loss", "action")
        store.close()
    first = dict(alerts.group_by("position_id").agg(pl.col("as_of").min())
                 .with_columns(pl.col("position_id").str.strip_prefix("R-")).iter_rows())
    naive = score_alerts(naive_alerts(market, book, pledge, until), events, spus)
    return ReplayRun(score_alerts(first, events, spus), naive, book, events, daily)


def warning_curve(run: ReplayRun, alert_ltv: float, thresholds=None) -> pl.DataFrame:
    """Flag recall and false-alarm rate of a learned warning at other thresholds, on the same daily
    sweeps: a position is first alerted on the first day its p_loss reaches the threshold or its LTV
    reaches ``alert_ltv`` (the LTV rule alerts whatever the score)."""
    thresholds = np.linspace(0.05, 0.95, 19) if thresholds is None else thresholds
    spus = run.book["spu_id"].to_list()
    rows = []
    for threshold in thresholds:
        flagged = run.daily.filter((pl.col("p_loss") >= threshold) | (pl.col("ltv") >= alert_ltv))
        first = dict(flagged.group_by("spu_id").agg(pl.col("as_of").min()).iter_rows())
        result = score_alerts(first, run.events, spus)
        rows.append({"threshold": float(threshold), "flag_recall": result.flag_recall,
                     "false_alarm_rate": result.false_alarm_rate, "median_lead_days": result.median_lead_days})
    return pl.DataFrame(rows)
