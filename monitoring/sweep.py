"""Sweeps: score the book as of a date and store the results and alerts, safely.

- one sweep per as-of date (``sweep-<date>``); running it again changes nothing;
- results, alerts (also into the alert outbox), each position's state and the sweep row are written in
  one transaction: a sweep killed half way leaves nothing, and the next run completes it;
- alerts are de-duplicated against each position's latest record, a sweep's or a market update's
  (``monitoring.market_updates``), read and written inside the alert writers' gate;
- a lock row in the store keeps two schedulers (service, cron, Airflow) from running sweeps at once; a
  lock whose holder died on this host, or whose time ran out, is taken over.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Callable

import polars as pl

from data import Store
from data.health_log import HealthLog
from data.sweeps import SweepStore
from monitoring.health import load_config, score_book, spu_ranges, with_comparables

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
        self.sweeps = SweepStore(store)
        self.log = HealthLog(store)
        self.holder = f"{socket.gethostname()}:{os.getpid()}"

    # -- reading ------------------------------------------------------------------------------
    def latest_market_date(self) -> date | None:
        return self.sweeps.market_dates()[1]

    def check_as_of(self, as_of: date) -> None:
        """A sweep is as of a day that has come (a future one would score every position stale and stay
        the latest sweep for good) and that the market data reaches (an earlier one scores an empty book)."""
        first, _ = self.sweeps.market_dates()
        if first is None:
            raise ValueError("no market data in the store: load market snapshots first")
        if not first <= as_of <= date.today():
            raise ValueError(f"as_of: {as_of} must be between the first market day {first} and today {date.today()}")

    def latest_sweep_id(self) -> str | None:
        return self.sweeps.latest_sweep_id()

    def get_sweep(self, sweep_id: str) -> dict | None:
        return self.sweeps.get_sweep(sweep_id)

    def results(self, sweep_id: str) -> pl.DataFrame:
        return self.sweeps.results(sweep_id)

    def position_history(self, position_id: str) -> tuple[pl.DataFrame, pl.DataFrame]:
        """(results over time, alerts) of one position, oldest first."""
        return self.sweeps.position_history(position_id)

    def status(self, sweep_id: str) -> dict | None:
        """What every worker sees of a sweep: the stored sweep when complete, else its run (running,
        waiting for the lock, or failed with the error); None when nobody asked for it."""
        stored = self.sweeps.get_sweep(sweep_id)
        if stored is not None:
            return stored
        run = self.sweeps.get_run(sweep_id)
        if run is None:
            # the run may have completed between the two reads: the sweep row and the run's removal are
            # one transaction, so with the run gone the sweep is there (or nobody asked for it)
            return self.sweeps.get_sweep(sweep_id)
        return {"sweep_id": sweep_id, "status": run["status"], "since": run["started_at"], "error": run["error"]}

    # -- asked-for sweeps (the service's POST /sweep) ------------------------------------------
    def request_sweep(self, as_of: date) -> tuple[str, bool]:
        """(sweep_id, whether this process must run it): True for exactly one of any number of concurrent
        requests across processes, while the sweep is neither complete nor running elsewhere."""
        sweep_id = sweep_id_for(as_of)
        return sweep_id, self.sweeps.claim_run(sweep_id, self.holder, datetime.now(), _run_is_dead)

    def run_requested(self, as_of: date, retry_every: float = 2.0) -> None:
        """Run a sweep this process claimed, recording its state in the store for every worker: waiting
        while another scheduler holds the lock (up to LOCK_TTL), failed with the error if it fails."""
        sweep_id = sweep_id_for(as_of)
        deadline = datetime.now() + LOCK_TTL
        while True:
            try:
                if not self.run_sweep(as_of).created:
                    self.sweeps.finish_run(sweep_id, self.holder)
                return
            except SweepLocked as exc:
                if datetime.now() > deadline:
                    self.sweeps.set_run(sweep_id, self.holder, "failed", f"the sweep lock stayed taken: {exc}")
                    return
                self.sweeps.set_run(sweep_id, self.holder, "waiting", str(exc))
                time.sleep(retry_every)
            except Exception as exc:
                self.sweeps.set_run(sweep_id, self.holder, "failed", f"{type(exc).__name__}: {exc}")
                raise

    # -- sweeping -----------------------------------------------------------------------------
    def run_sweep(self, as_of: date | None = None, *, market: pl.DataFrame | None = None,
                  positions: pl.DataFrame | None = None, parts: int | None = None) -> SweepOutcome:
        """Score every position as of ``as_of`` (default: the latest market date) and store it. ``parts``: read,
        score and write the book a range of SPUs at a time from the store (``_score_parts``), for a book
        bigger than memory; still one transaction, so the sweep is all or nothing. Default: ``[sweep] parts``
        of the config."""
        if parts is None:
            parts = self.config.get("sweep", {}).get("parts", 1)
        parts = parts if parts and parts > 1 else None
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
            # read and scored inside the alert writers' gate: neither the market nor what an alert is
            # de-duplicated against (each position's last sweep or market event) can change meanwhile; market
            # updates wait for the sweep (seconds), and their re-scores then start from it
            with self.log.gate() as connection:
                if parts and positions is None and market is None:
                    summaries = [self._write_results(connection, sweep_id, as_of, results)
                                 for results in self._score_parts(connection, as_of, parts)]
                    summary = merge_summaries(summaries)
                else:
                    positions = positions if positions is not None else self.store.read("positions")
                    if market is None:
                        market = self.sweeps.market(until=as_of)
                    previous = self.log.latest_actions(connection, as_of, same_day=False)
                    summary = self._write_results(connection, sweep_id, as_of, self.score(positions, market, as_of,
                                                                                          previous))
                self._complete(connection, sweep_id, as_of, started, summary)
            return SweepOutcome(sweep_id, as_of, True, summary["positions"], summary["alerts"], summary)
        finally:
            self._release()

    def score(self, positions: pl.DataFrame, market: pl.DataFrame, as_of: date,
              previous: pl.DataFrame | None, *, explain: bool = True) -> pl.DataFrame:
        """The one scoring path of sweeps and market events: score_book with the model's values for the
        SPUs whose market price is stale. ``previous``: position_id, action (what alerts compare with);
        ``explain``: see score_book."""
        model_values = None
        if self.value_fn is not None:
            stale = stale_spus(positions, market, as_of, self.config)
            if stale:
                model_values = self.value_fn(stale)
        return score_book(positions, market, as_of, self.config, model_values, previous, self.warning, explain=explain)

    def _score_parts(self, connection, as_of: date, parts: int):
        """Each SPU range's results: its positions, its SPUs' market (and their comparables'), and what its
        alerts compare with, read from the store one range at a time."""
        for low, high in spu_ranges(self.sweeps.book_spus(connection), parts):
            positions = self.sweeps.positions_between(connection, low, high)
            spus = with_comparables(positions["spu_id"].unique().to_list(), self.warning)
            market = self.log.market_of(connection, spus, until=as_of)
            previous = self.log.latest_actions(connection, as_of, same_day=False,
                                               position_ids=positions["position_id"].to_list())
            yield self.score(positions, market, as_of, previous)

    def _write_results(self, connection, sweep_id: str, as_of: date, results: pl.DataFrame) -> dict:
        """A sweep's (or a part's) results, alerts, outbox rows and position states; returns its summary."""
        stored = results.select(pl.lit(sweep_id).alias("sweep_id"), "position_id", "spu_id", "unit_value",
                                "value_source", "value_low", "value_high", "collateral_value", "ltv", "price_change",
                                "velocity_trend", "volatility", "days_to_liquidate", "health", "grade", "action",
                                reasons_json().alias("reasons"), "p_loss")
        alerts = results.filter(pl.col("alert")).select(
            pl.lit(sweep_id).alias("sweep_id"), "position_id", pl.lit(as_of).alias("as_of"), "action",
            "previous_action", reasons_json().alias("reasons"))
        self.sweeps.write_results(stored, alerts, connection)
        self.log.set_state(connection, results, as_of)
        self.log.add_alerts(connection, outbox_rows(results.filter(pl.col("alert")), "sweep", sweep_id, as_of))
        return summarise(results)

    def _complete(self, connection, sweep_id: str, as_of: date, started: datetime, summary: dict) -> None:
        sweep = pl.DataFrame({"sweep_id": [sweep_id], "as_of": [as_of], "status": ["completed"],
                              "started_at": [started], "completed_at": [datetime.now()],
                              "n_positions": [summary["positions"]], "n_alerts": [summary["alerts"]],
                              "summary": [json.dumps(summary, default=str)]})
        self.sweeps.complete_sweep(sweep, connection)

    # -- the lock -----------------------------------------------------------------------------
    def _acquire(self) -> None:
        held = self.sweeps.acquire_lock(LOCK_NAME, self.holder, datetime.now() + LOCK_TTL, _lock_is_dead)
        if held is not None:
            raise SweepLocked(f"another sweep is running ({held})")

    def _release(self) -> None:
        self.sweeps.release_lock(LOCK_NAME, self.holder)


def _holder_is_dead(holder: str) -> bool:
    """A holder (host:pid) on this host whose process is gone."""
    host, _, pid = holder.rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
    return False


def _lock_is_dead(row: dict) -> bool:
    return row["expires_at"] < datetime.now() or _holder_is_dead(row["holder"])


def _run_is_dead(row: dict) -> bool:
    return row["updated_at"] < datetime.now() - LOCK_TTL or _holder_is_dead(row["holder"])


def stale_spus(positions: pl.DataFrame, market: pl.DataFrame, as_of: date, config: dict) -> list[str]:
    days = config["market"]["stale_days"]
    last = market.filter(pl.col("date") <= as_of).group_by("spu_id").agg(pl.col("date").max())
    book = positions.select("spu_id").unique().join(last, on="spu_id", how="left", maintain_order="left")
    return book.filter(pl.col("date").is_null() | ((pl.lit(as_of) - pl.col("date")).dt.total_days() > days))[
        "spu_id"].sort().to_list()


def reasons_json() -> pl.Expr:
    """The reason codes as a JSON list: they are plain identifiers, so a join is enough (no per-row Python)."""
    return (pl.when(pl.col("reasons").list.len() > 0)
            .then(pl.lit('["') + pl.col("reasons").list.join('","') + pl.lit('"]')).otherwise(pl.lit("[]")))


def outbox_rows(alerts: pl.DataFrame, trigger: str, source_id: str, as_of: date,
                observation: pl.Expr | None = None) -> pl.DataFrame:
    """Scored rows that raise an alert, as alert_outbox rows; the key (source, position) is what a webhook
    receiver de-duplicates redeliveries by."""
    return alerts.select(
        (pl.lit(f"{source_id}:") + pl.col("position_id")).alias("alert_key"), "position_id", "spu_id",
        pl.lit(trigger).alias("trigger"), pl.lit(source_id).alias("source_id"), pl.lit(as_of).alias("as_of"),
        "action", "previous_action", reasons_json().alias("reasons"),
        (observation if observation is not None else pl.lit(None, dtype=pl.String)).alias("observation"),
        pl.lit(datetime.now()).alias("created_at"))


def merge_summaries(parts: list[dict]) -> dict:
    """The summary of a sweep written in parts: what ``summarise`` gives for all their results at once."""
    merged = {"positions": 0, "loan_amount": 0.0, "collateral_value": 0.0, "grades": {}, "actions": {}, "alerts": 0,
              "stale_prices": 0}
    for part in parts:
        for key in ("positions", "loan_amount", "collateral_value", "alerts", "stale_prices"):
            merged[key] += part[key]
        for key in ("grades", "actions"):
            for name, n in part[key].items():
                merged[key][name] = merged[key].get(name, 0) + n
    merged["grades"] = dict(sorted(merged["grades"].items()))
    merged["actions"] = dict(sorted(merged["actions"].items()))
    return merged


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
