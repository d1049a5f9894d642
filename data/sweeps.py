"""The health monitor's tables behind methods: sweeps, their per-position results and alerts, the
scheduler lock, and sweep runs (a sweep asked for and not complete yet). Every SQL statement the monitor
needs is here, so the monitor and the service never build queries of their own.

    sweeps         sweep_id, as_of (unique), status, started_at, completed_at, n_positions, n_alerts, summary
    sweep_results  sweep_id + position_id, spu_id, unit_value, value_source, value_low/high, collateral_value,
                   ltv, price_change, velocity_trend, volatility, days_to_liquidate, health, grade, action,
                   reasons (JSON list), p_loss
    alerts         sweep_id + position_id, as_of, action, previous_action, reasons (JSON list)
    locks          name, holder, expires_at
    sweep_runs     sweep_id, status (running | waiting | failed), holder, started_at, updated_at, error
"""

from __future__ import annotations

import json
from datetime import date, datetime
from typing import Callable

import polars as pl
import sqlalchemy as sa

from data.store import Store, bulk_insert, upsert_clause


class SweepStore:
    def __init__(self, store: Store):
        self.store = store

    def _table(self, name: str) -> sa.Table:
        return self.store.table(name)

    # -- market and book ----------------------------------------------------------------------
    def market_dates(self) -> tuple[date | None, date | None]:
        """First and last day of the market snapshots (None, None when there are none)."""
        market = self._table("market")
        with self.store.engine.connect() as connection:
            return tuple(connection.execute(sa.select(sa.func.min(market.c.date), sa.func.max(market.c.date))).one())

    def market(self, until: date | None = None, spu_id: str | None = None) -> pl.DataFrame:
        """Market snapshots up to ``until`` (inclusive), of one SPU if given."""
        market = self._table("market")
        where = sa.true()
        if until is not None:
            where = sa.and_(where, market.c.date <= until)
        if spu_id is not None:
            where = sa.and_(where, market.c.spu_id == spu_id)
        return self.store.read("market", where)

    def book_spus(self, connection: sa.Connection) -> pl.Series:
        """The SPUs with a position, sorted."""
        positions = self._table("positions")
        rows = connection.execute(sa.select(positions.c.spu_id).distinct().order_by(positions.c.spu_id)).scalars().all()
        return pl.Series("spu_id", rows, dtype=pl.String)

    def positions_between(self, connection: sa.Connection, low: str, high: str | None) -> pl.DataFrame:
        """The positions on SPUs from ``low`` up to (not including) ``high``; to the end without ``high``. Read
        in the sweep's transaction, straight through the driver (see ``read_rows``)."""
        positions = self._table("positions")
        where = positions.c.spu_id >= low
        if high is not None:
            where = sa.and_(where, positions.c.spu_id < high)
        return self.store.read("positions", where, connection)

    def position(self, position_id: str) -> pl.DataFrame:
        return self.store.read("positions", self._table("positions").c.position_id == position_id)

    # -- sweeps -------------------------------------------------------------------------------
    def latest_sweep_id(self) -> str | None:
        sweeps = self._table("sweeps")
        with self.store.engine.connect() as connection:
            return connection.execute(sa.select(sweeps.c.sweep_id).order_by(sweeps.c.as_of.desc()).limit(1)).scalar()

    def get_sweep(self, sweep_id: str) -> dict | None:
        sweeps = self._table("sweeps")
        with self.store.engine.connect() as connection:
            row = connection.execute(sa.select(sweeps).where(sweeps.c.sweep_id == sweep_id)).mappings().first()
        return None if row is None else {**row, "summary": json.loads(row["summary"])}

    def results(self, sweep_id: str) -> pl.DataFrame:
        frame = self.store.read("sweep_results", self._table("sweep_results").c.sweep_id == sweep_id)
        return frame.with_columns(pl.col("reasons").str.json_decode(pl.List(pl.String)))

    def position_history(self, position_id: str) -> tuple[pl.DataFrame, pl.DataFrame]:
        """(results over time with their as_of, alerts) of one position, oldest first."""
        results, sweeps = self._table("sweep_results"), self._table("sweeps")
        query = (sa.select(sweeps.c.as_of, sweeps.c.completed_at, results).join(sweeps, sweeps.c.sweep_id == results.c.sweep_id)
                 .where(results.c.position_id == position_id).order_by(sweeps.c.as_of))
        with self.store.engine.connect() as connection:
            rows = [dict(r) for r in connection.execute(query).mappings()]
        alerts = self.store.read("alerts", self._table("alerts").c.position_id == position_id)
        return pl.DataFrame(rows, infer_schema_length=None), alerts.sort("as_of") if alerts.height else alerts

    def write_results(self, results: pl.DataFrame, alerts: pl.DataFrame, connection: sa.Connection) -> None:
        """A sweep's results and alerts (all of them, or one part's), in the caller's transaction: upserts
        straight through the driver (``bulk_insert``). Through SQLAlchemy's upsert, writing them was 39% of
        a sweep of a million positions through SQLite (41.7 of 107 s); this way 18.5 s."""
        for name, frame in (("sweep_results", results), ("alerts", alerts)):
            table = self._table(name)
            bulk_insert(connection, table, frame, upsert_clause(table, frame.columns))

    def complete_sweep(self, sweep: pl.DataFrame, connection: sa.Connection) -> None:
        """The sweep row, after every result, in the same transaction: a sweep row always means complete
        results. Its run, if any, is done with."""
        runs = self._table("sweep_runs")
        self.store.upsert_many({"sweeps": sweep}, connection)
        connection.execute(sa.delete(runs).where(runs.c.sweep_id == sweep["sweep_id"][0]))

    # -- the scheduler lock -------------------------------------------------------------------
    def acquire_lock(self, name: str, holder: str, expires_at: datetime, is_dead: Callable[[dict], bool]) -> str | None:
        """Take the lock ``name`` for ``holder``; a lock whose holder ``is_dead`` is taken over. Returns None
        when taken, else a description of who holds it."""
        locks = self._table("locks")
        with self.store.engine.begin() as connection:
            row = connection.execute(sa.select(locks).where(locks.c.name == name)).mappings().first()
            if row is not None and not is_dead(dict(row)):
                return f"{row['holder']}, lock until {row['expires_at']}"
            if row is not None:
                connection.execute(sa.delete(locks).where(locks.c.name == name).where(locks.c.holder == row["holder"]))
            try:
                connection.execute(sa.insert(locks).values(name=name, holder=holder, expires_at=expires_at))
            except sa.exc.IntegrityError:
                return "another holder, who took it just now"
        return None

    def release_lock(self, name: str, holder: str) -> None:
        locks = self._table("locks")
        with self.store.engine.begin() as connection:
            connection.execute(sa.delete(locks).where(locks.c.name == name).where(locks.c.holder == holder))

    # -- sweep runs ---------------------------------------------------------------------------
    def claim_run(self, sweep_id: str, holder: str, now: datetime, is_dead: Callable[[dict], bool]) -> bool:
        """Record that ``holder`` runs ``sweep_id`` now, unless the sweep is complete or a live run of it
        exists (a failed run, or one whose holder ``is_dead``, is taken over). Atomic across processes:
        of many concurrent claims one returns True. Each step's first statement is a write, so SQLite
        takes its write lock at once and two claimers queue instead of deadlocking."""
        runs = self._table("sweep_runs")
        if self.get_sweep(sweep_id) is not None:
            return False
        try:
            with self.store.engine.begin() as connection:
                connection.execute(sa.insert(runs).values(sweep_id=sweep_id, status="running", holder=holder,
                                                          started_at=now, updated_at=now, error=None))
            return True
        except sa.exc.IntegrityError:
            pass
        row = self.get_run(sweep_id)
        if row is None or (row["status"] != "failed" and not is_dead(row)):
            return False
        with self.store.engine.begin() as connection:  # take over only if nobody touched it since we read it
            taken = connection.execute(
                sa.update(runs).where(runs.c.sweep_id == sweep_id).where(runs.c.holder == row["holder"])
                .where(runs.c.updated_at == row["updated_at"])
                .values(status="running", holder=holder, started_at=now, updated_at=now, error=None))
        return taken.rowcount == 1

    def finish_run(self, sweep_id: str, holder: str) -> None:
        """The run of ``holder`` is over without writing the sweep (someone else completed it)."""
        runs = self._table("sweep_runs")
        with self.store.engine.begin() as connection:
            connection.execute(sa.delete(runs).where(runs.c.sweep_id == sweep_id).where(runs.c.holder == holder))

    def set_run(self, sweep_id: str, holder: str, status: str, error: str | None = None) -> None:
        runs = self._table("sweep_runs")
        with self.store.engine.begin() as connection:
            connection.execute(sa.update(runs).where(runs.c.sweep_id == sweep_id).where(runs.c.holder == holder)
                               .values(status=status, error=error, updated_at=datetime.now()))

    def get_run(self, sweep_id: str) -> dict | None:
        runs = self._table("sweep_runs")
        with self.store.engine.connect() as connection:
            row = connection.execute(sa.select(runs).where(runs.c.sweep_id == sweep_id)).mappings().first()
        return None if row is None else dict(row)
