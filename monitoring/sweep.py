"""Sweeps: score the book as of a date and store the results and alerts, safely.

- one sweep per as-of date (``sweep-<date>``); running it again changes nothing;
- results, alerts and the sweep row are written in one transaction: a sweep killed half way leaves
  nothing, and the next run completes it;
- a lock row in the store keeps two schedulers (service, cron, Airflow) from running sweeps at once; a
  lock whose holder died on this host, or whose time ran out, is taken over.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Callable

import polars as pl
import sqlalchemy as sa

from data import Store
from monitoring.health import load_config, score_book

LOCK_NAME = "sweep"
LOCK_TTL = timedelta(minutes=30)
ValueFn = Callable[[list[str]], pl.DataFrame]  # spu_ids -> spu_id, value, value_low, value_high


class SweepLocked(RuntimeError):
    pass


@dataclass
class SweepOutcome:
    sweep_id: str
    as_of: date
    created: bool             # False: the sweep already existed and nothing was written
    n_positions: int
    n_alerts: int
    summary: dict


def sweep_id_for(as_of: date) -> str:
    return f"sweep-{as_of.isoformat()}"


class Monitor:
    def __init__(self, store: Store, config: dict | None = None, value_fn: ValueFn | None = None, warning=None):
        """``warning``: a learned early warning (``monitoring.warning.WarningModel``); without one, actions
        come from the health-score rules."""
        self.store = store
        self.config = config or load_config()
        self.value_fn = value_fn
        self.warning = warning
        self.holder = f"{socket.gethostname()}:{os.getpid()}"

    # -- reading ------------------------------------------------------------------------------
    def latest_market_date(self) -> date | None:
        return self.market_dates()[1]

    def market_dates(self) -> tuple[date | None, date | None]:
        """First and last day of the market snapshots in the store (None, None when there are none)."""
        market = self.store.table("market")
        with self.store.engine.connect() as connection:
            return tuple(connection.execute(sa.select(sa.func.min(market.c.date), sa.func.max(market.c.date))).one())

    def check_as_of(self, as_of: date) -> None:
        """A sweep is as of a day that has come (a future one would score every position stale and stay
        the latest sweep for good) and that the market data reaches (an earlier one scores an empty book)."""
        first, _ = self.market_dates()
        if first is None:
            raise ValueError("no market data in the store: load market snapshots first")
        if not first <= as_of <= date.today():
            raise ValueError(f"as_of: {as_of} must be between the first market day {first} and today {date.today()}")

    def latest_sweep_id(self) -> str | None:
        sweeps = self.store.table("sweeps")
        with self.store.engine.connect() as connection:
            return connection.execute(sa.select(sweeps.c.sweep_id).order_by(sweeps.c.as_of.desc()).limit(1)).scalar()

    def get_sweep(self, sweep_id: str) -> dict | None:
        sweeps = self.store.table("sweeps")
        with self.store.engine.connect() as connection:
            row = connection.execute(sa.select(sweeps).where(sweeps.c.sweep_id == sweep_id)).mappings().first()
        return None if row is None else {**row, "summary": json.loads(row["summary"])}

    def results(self, sweep_id: str) -> pl.DataFrame:
        frame = self.store.read("sweep_results", self.store.table("sweep_results").c.sweep_id == sweep_id)
        return frame.with_columns(pl.col("reasons").str.json_decode(pl.List(pl.String)))

    def position_history(self, position_id: str) -> tuple[pl.DataFrame, pl.DataFrame]:
        """(results over time, alerts) of one position, oldest first."""
        results = self.store.table("sweep_results")
        sweeps = self.store.table("sweeps")
        query = (sa.select(sweeps.c.as_of, results).join(sweeps, sweeps.c.sweep_id == results.c.sweep_id)
                 .where(results.c.position_id == position_id).order_by(sweeps.c.as_of))
        with self.store.engine.connect() as connection:
            rows = [dict(r) for r in connection.execute(query).mappings()]
        alerts = self.store.read("alerts", self.store.table("alerts").c.position_id == position_id)
        return pl.DataFrame(rows, infer_schema_length=None), alerts.sort("as_of") if alerts.height else alerts

    def _previous_actions(self, as_of: date) -> pl.DataFrame | None:
        sweeps, results = self.store.table("sweeps"), self.store.table("sweep_results")
        with self.store.engine.connect() as connection:
            last = connection.execute(sa.select(sweeps.c.sweep_id).where(sweeps.c.as_of < as_of)
                                      .order_by(sweeps.c.as_of.desc()).limit(1)).scalar()
            if last is None:
                return None
            rows = connection.execute(sa.select(results.c.position_id, results.c.action)
                                      .where(results.c.sweep_id == last)).all()
        return pl.DataFrame(rows, schema={"position_id": pl.String, "action": pl.String}, orient="row")

    # -- sweeping -----------------------------------------------------------------------------
    def run_sweep(self, as_of: date | None = None, *, market: pl.DataFrame | None = None,
                  positions: pl.DataFrame | None = None) -> SweepOutcome:
        """Score every position as of ``as_of`` (default: the latest market date) and store it."""
        as_of = as_of or self.latest_market_date()
        if as_of is None:
            raise ValueError("no market data in the store: load market snapshots first")
        if market is None:  # a replay hands its own market, up to the day it sweeps
            self.check_as_of(as_of)
        sweep_id = sweep_id_for(as_of)
        existing = self.get_sweep(sweep_id)
        if existing is not None:
            return SweepOutcome(sweep_id, as_of, False, existing["n_positions"], existing["n_alerts"],
                                existing["summary"])
        self._acquire()
        try:
            existing = self.get_sweep(sweep_id)  # another scheduler may have finished it meanwhile
            if existing is not None:
                return SweepOutcome(sweep_id, as_of, False, existing["n_positions"], existing["n_alerts"],
                                    existing["summary"])
            started = datetime.now()
            positions = positions if positions is not None else self.store.read("positions")
            if market is None:
                market = self.store.read("market", self.store.table("market").c.date <= as_of)
            results = self.score(positions, market, as_of)
            summary = summarise(results)
            self._write(sweep_id, as_of, started, results, summary)
            return SweepOutcome(sweep_id, as_of, True, results.height, int(results["alert"].sum()), summary)
        finally:
            self._release()

    def score(self, positions: pl.DataFrame, market: pl.DataFrame, as_of: date) -> pl.DataFrame:
        model_values = None
        if self.value_fn is not None:
            stale = stale_spus(positions, market, as_of, self.config)
            if stale:
                model_values = self.value_fn(stale)
        return score_book(positions, market, as_of, self.config, model_values, self._previous_actions(as_of),
                          self.warning)

    def _write(self, sweep_id: str, as_of: date, started: datetime, results: pl.DataFrame, summary: dict) -> None:
        # reason codes are plain identifiers, so a JSON list is a join away (no per-row Python)
        as_json = (pl.when(pl.col("reasons").list.len() > 0)
                   .then(pl.lit('["') + pl.col("reasons").list.join('","') + pl.lit('"]')).otherwise(pl.lit("[]")))
        stored = results.select(pl.lit(sweep_id).alias("sweep_id"), "position_id", "spu_id", "unit_value",
                                "value_source", "value_low", "value_high", "collateral_value", "ltv", "price_change",
                                "velocity_trend", "volatility", "days_to_liquidate", "health", "grade", "action",
                                as_json.alias("reasons"), "p_loss")
        alerts = results.filter(pl.col("alert")).select(
            pl.lit(sweep_id).alias("sweep_id"), "position_id", pl.lit(as_of).alias("as_of"), "action",
            "previous_action", as_json.alias("reasons"))
        sweep = pl.DataFrame({"sweep_id": [sweep_id], "as_of": [as_of], "status": ["completed"],
                              "started_at": [started], "completed_at": [datetime.now()],
                              "n_positions": [results.height], "n_alerts": [alerts.height],
                              "summary": [json.dumps(summary, default=str)]})
        # One transaction: the sweep row is written last, so a sweep row always means complete results.
        self.store.upsert_many({"sweep_results": stored, "alerts": alerts, "sweeps": sweep})

    # -- the lock -----------------------------------------------------------------------------
    def _acquire(self) -> None:
        locks = self.store.table("locks")
        now = datetime.now()
        with self.store.engine.begin() as connection:
            row = connection.execute(sa.select(locks).where(locks.c.name == LOCK_NAME)).mappings().first()
            if row is not None and not _lock_is_dead(row, now):
                raise SweepLocked(f"another sweep is running ({row['holder']}, lock until {row['expires_at']})")
            if row is not None:
                connection.execute(sa.delete(locks).where(locks.c.name == LOCK_NAME)
                                   .where(locks.c.holder == row["holder"]))
            try:
                connection.execute(sa.insert(locks).values(name=LOCK_NAME, holder=self.holder,
                                                           expires_at=now + LOCK_TTL))
            except sa.exc.IntegrityError as exc:
                raise SweepLocked("another sweep took the lock just now") from exc

    def _release(self) -> None:
        locks = self.store.table("locks")
        with self.store.engine.begin() as connection:
            connection.execute(sa.delete(locks).where(locks.c.name == LOCK_NAME).where(locks.c.holder == self.holder))


def _lock_is_dead(row, now: datetime) -> bool:
    if row["expires_at"] < now:
        return True
    host, _, pid = row["holder"].rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
    return False


def stale_spus(positions: pl.DataFrame, market: pl.DataFrame, as_of: date, config: dict) -> list[str]:
    days = config["market"]["stale_days"]
    last = market.filter(pl.col("date") <= as_of).group_by("spu_id").agg(pl.col("date").max())
    book = positions.select("spu_id").unique().join(last, on="spu_id", how="left", maintain_order="left")
    return book.filter(pl.col("date").is_null() | ((pl.lit(as_of) - pl.col("date")).dt.total_days() > days))[
        "spu_id"].sort().to_list()


def summarise(results: pl.DataFrame) -> dict:
    return {
        "positions": results.height,
        "loan_amount": float(results["loan_amount"].sum()),
        "collateral_value": float(results["collateral_value"].fill_null(0).sum()),
        "grades": dict(results["grade"].value_counts().sort("grade").rows()),
        "actions": dict(results["action"].value_counts().sort("action").rows()),
        "alerts": int(results["alert"].sum()),
        "stale_prices": int(results["stale_price"].sum()),
    }
