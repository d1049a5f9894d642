"""What happens to positions between sweeps, and every alert on its way out: the SQL of the event path.

    health_events   one row per position re-scored because its SPU's market moved (trigger=market)
    position_state  each position's latest record (sweep or event): the action the next alert is
                    de-duplicated against
    alert_outbox    every alert, sweep or event, in one sequence: polled by ``seq`` (GET /alerts?since=)
                    and delivered to the webhook from here, at least once, until marked delivered
    write_gate      see ``HealthLog.gate``
    market_turns    the gate turn that last changed each SPU's market (``HealthLog.touched_since``)

Writers of alerts go through ``gate()``: one transaction at a time, so de-duplication reads what the last
writer wrote, and outbox sequence numbers commit in order (a poller never skips one).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from datetime import date, datetime
from typing import Iterator

import polars as pl
import sqlalchemy as sa

from data.schemas import POSITIONS
from data.store import Store, bulk_insert, chunks, read_rows

EVENT_COLUMNS = ("event_id", "position_id", "spu_id", "as_of", "trigger", "observation", "unit_value",
                 "value_source", "value_low", "value_high", "collateral_value", "ltv", "price_change", "velocity_trend",
                 "days_to_liquidate", "health", "grade", "action", "previous_action", "reasons", "p_loss", "changed",
                 "created_at")
ALERT_COLUMNS = ("alert_key", "position_id", "spu_id", "trigger", "source_id", "as_of", "action", "previous_action",
                 "reasons", "observation", "created_at")
FEED_COLUMNS = ("seq",) + ALERT_COLUMNS + ("attempts", "delivered_at", "last_error")
MARKET_SCHEMA = {"spu_id": pl.String, "date": pl.Date, "price": pl.Float64, "units_sold": pl.Int64}


class HealthLog:
    def __init__(self, store: Store):
        self.store = store

    def _table(self, name: str) -> sa.Table:
        return self.store.table(name)

    # -- the gate -----------------------------------------------------------------------------
    @contextmanager
    def gate(self) -> Iterator[sa.Connection]:
        """A transaction that holds the alert writers' gate from its first statement: a write, so SQLite
        takes its write lock at once and PostgreSQL a row lock; every other writer of alerts waits."""
        gate = self._table("write_gate")
        with self.store.engine.begin() as connection:
            connection.execute(sa.update(gate).where(gate.c.name == "alerts").values(turns=gate.c.turns + 1))
            yield connection

    def turn(self, connection: sa.Connection | None = None) -> int:
        """The gate's turn count: inside the gate, this transaction's own turn."""
        gate = self._table("write_gate")
        with self.store.reading(connection) as reading:
            return reading.execute(sa.select(gate.c.turns).where(gate.c.name == "alerts")).scalar_one()

    def touched_since(self, connection: sa.Connection, spu_ids: list[str], turn: int) -> list[str]:
        """Of these SPUs, those whose market a transaction after ``turn`` changed."""
        table = self._table("market_turns")
        query = sa.select(table.c.spu_id).where(table.c.turn > turn)
        return read_rows(connection, query, table.c.spu_id, spu_ids, {"spu_id": pl.String})["spu_id"].to_list()

    def mark_touched(self, connection: sa.Connection, spu_ids: list[str], turn: int) -> None:
        bulk_insert(connection, self._table("market_turns"),
                    pl.DataFrame({"spu_id": sorted(set(spu_ids)), "turn": turn}, schema={"spu_id": pl.String,
                                                                                         "turn": pl.Int64}),
                    'ON CONFLICT ("spu_id") DO UPDATE SET "turn" = excluded."turn"')

    # -- market observations ------------------------------------------------------------------
    def store_market(self, frame: pl.DataFrame, connection: sa.Connection | None = None) -> int:
        """Upsert market days and mark their SPUs touched at this turn, inside the gate (the caller's, or
        one taken here), so that a market update scored meanwhile from older rows reads them again."""
        if connection is None:
            with self.gate() as connection:
                return self.store_market(frame, connection)
        written = self.store.upsert_many({"market": frame}, connection)["market"]
        self.mark_touched(connection, frame["spu_id"].unique().to_list(), self.turn(connection))
        return written

    def market_of(self, connection: sa.Connection | None, spu_ids: list[str], until: date | None = None) -> pl.DataFrame:
        """spu_id, date, price, units_sold of these SPUs' market days (up to ``until``); outside a
        transaction when ``connection`` is None."""
        market = self._table("market")
        query = sa.select(market.c.spu_id, market.c.date, market.c.price, market.c.units_sold)
        if until is not None:
            query = query.where(market.c.date <= until)
        with self.store.reading(connection) as reading:
            return read_rows(reading, query, market.c.spu_id, spu_ids, MARKET_SCHEMA)

    def first_market_dates(self, spu_ids: list[str]) -> dict[str, date]:
        market = self._table("market")
        query = sa.select(market.c.spu_id, sa.func.min(market.c.date)).group_by(market.c.spu_id)
        with self.store.reading(None) as reading:
            first = read_rows(reading, query, market.c.spu_id, spu_ids, {"spu_id": pl.String, "first": pl.Date})
        return dict(first.iter_rows())

    def known_spus(self, spu_ids: list[str]) -> set[str]:
        spus = self._table("spus")
        with self.store.reading(None) as reading:
            known = read_rows(reading, sa.select(spus.c.spu_id), spus.c.spu_id, spu_ids, {"spu_id": pl.String})
        return set(known["spu_id"].to_list())

    def last_market_date(self, connection: sa.Connection | None = None) -> date | None:
        market = self._table("market")
        with self.store.reading(connection) as reading:
            return reading.execute(sa.select(sa.func.max(market.c.date))).scalar()

    def positions_on(self, connection: sa.Connection | None, spu_ids: list[str]) -> pl.DataFrame:
        positions = self._table("positions")
        query = sa.select(*[positions.c[c] for c in POSITIONS.column_names])
        with self.store.reading(connection) as reading:
            return read_rows(reading, query, positions.c.spu_id, spu_ids, POSITIONS.polars_schema).sort("position_id")

    # -- what alerts are de-duplicated against ------------------------------------------------
    def latest_actions(self, connection: sa.Connection, as_of: date, *, same_day: bool,
                       position_ids: list[str] | None = None) -> pl.DataFrame:
        """position_id, grade, action of each position's latest record as of ``as_of``: its state where the
        state is not newer than ``as_of``, else (a sweep of an earlier day, or a store from before the
        event path) the latest sweep before ``as_of`` (or on it, with ``same_day``)."""
        state, sweeps, results = self._table("position_state"), self._table("sweeps"), self._table("sweep_results")
        schema = {"position_id": pl.String, "grade": pl.String, "action": pl.String}
        query = sa.select(state.c.position_id, state.c.grade, state.c.action).where(state.c.as_of <= as_of)
        latest = read_rows(connection, query, state.c.position_id, position_ids, schema)
        if position_ids is not None and latest.height == len(set(position_ids)):
            return latest  # every position has a state: no sweep needs reading
        day = sweeps.c.as_of <= as_of if same_day else sweeps.c.as_of < as_of
        last = connection.execute(sa.select(sweeps.c.sweep_id).where(day).order_by(sweeps.c.as_of.desc()).limit(1)).scalar()
        if last is None:
            return latest
        query = (sa.select(results.c.position_id, results.c.grade, results.c.action)
                 .where(results.c.sweep_id == last))
        swept = read_rows(connection, query, results.c.position_id, position_ids, schema)
        return pl.concat([latest, swept.join(latest, on="position_id", how="anti")])

    def set_state(self, connection: sa.Connection, results: pl.DataFrame, as_of: date) -> None:
        """Each scored position's grade and action as of ``as_of`` become its state, which moves forward only
        (a sweep of an earlier day leaves a newer state as it is)."""
        if results.height == 0:
            return
        bulk_insert(connection, self._table("position_state"),
                    results.select("position_id", pl.lit(as_of).alias("as_of"), "grade", "action",
                                   pl.lit(datetime.now()).alias("updated_at")),
                    'ON CONFLICT ("position_id") DO UPDATE SET "as_of" = excluded."as_of", "grade" = excluded."grade", '
                    '"action" = excluded."action", "updated_at" = excluded."updated_at" '
                    'WHERE position_state."as_of" <= excluded."as_of"')

    # -- writing ------------------------------------------------------------------------------
    def add_events(self, connection: sa.Connection, frame: pl.DataFrame) -> None:
        bulk_insert(connection, self._table("health_events"), frame.select(EVENT_COLUMNS))

    def add_alerts(self, connection: sa.Connection, frame: pl.DataFrame) -> None:
        """Alerts into the outbox, due now; an alert_key already there is left as it is."""
        if frame.height == 0:
            return
        frame = frame.select(ALERT_COLUMNS).with_columns(pl.lit(0).alias("attempts"),
                                                          pl.lit(datetime.now()).alias("next_attempt_at"))
        bulk_insert(connection, self._table("alert_outbox"), frame, 'ON CONFLICT ("alert_key") DO NOTHING')

    # -- reading the feeds --------------------------------------------------------------------
    def alerts_since(self, seq: int = 0, *, created_after: datetime | None = None, limit: int = 500) -> list[dict]:
        table = self._table("alert_outbox")
        query = sa.select(*[table.c[c] for c in FEED_COLUMNS]).where(table.c.seq > seq)
        if created_after is not None:
            query = query.where(table.c.created_at > created_after)
        with self.store.engine.connect() as connection:
            rows = connection.execute(query.order_by(table.c.seq).limit(limit)).mappings().all()
        return [_decoded(dict(r)) for r in rows]

    def changes_since(self, seq: int = 0, *, created_after: datetime | None = None, limit: int = 500) -> list[dict]:
        """Event records that changed a position's grade or action, oldest first."""
        table = self._table("health_events")
        columns = ("seq", "event_id", "position_id", "spu_id", "as_of", "unit_value", "value_source", "value_low",
                   "value_high", "collateral_value", "ltv", "health", "grade", "action", "previous_action", "reasons",
                   "p_loss", "created_at")
        query = sa.select(*[table.c[c] for c in columns]).where(table.c.seq > seq).where(table.c.changed)
        if created_after is not None:
            query = query.where(table.c.created_at > created_after)
        query = query.order_by(table.c.seq).limit(limit)
        with self.store.engine.connect() as connection:
            rows = connection.execute(query).mappings().all()
        return [_decoded(dict(r)) for r in rows]

    def events_of(self, position_id: str) -> pl.DataFrame:
        frame = self.store.read("health_events", self._table("health_events").c.position_id == position_id)
        return frame.sort("seq") if frame.height else frame

    def alerts_of(self, position_id: str) -> list[dict]:
        table = self._table("alert_outbox")
        query = (sa.select(*[table.c[c] for c in FEED_COLUMNS]).where(table.c.position_id == position_id)
                 .order_by(table.c.seq))
        with self.store.engine.connect() as connection:
            return [_decoded(dict(r)) for r in connection.execute(query).mappings().all()]

    # -- delivery -----------------------------------------------------------------------------
    def claim_due(self, claim: str, now: datetime, until: datetime, limit: int) -> list[dict]:
        """Mark up to ``limit`` undelivered alerts that are due and not claimed by a live claim as claimed
        by ``claim`` until ``until``, and return them. The outer conditions are repeated so that PostgreSQL
        re-checks them on a row another claimer updated first: two workers never hold one alert."""
        table = self._table("alert_outbox")
        free = sa.and_(table.c.delivered_at.is_(None), table.c.next_attempt_at <= now,
                       sa.or_(table.c.claimed_until.is_(None), table.c.claimed_until < now))
        due = sa.select(table.c.seq).where(free).order_by(table.c.seq).limit(limit)
        with self.store.engine.begin() as connection:
            connection.execute(sa.update(table).where(table.c.seq.in_(due.scalar_subquery())).where(free)
                               .values(claimed_by=claim, claimed_until=until))
            rows = connection.execute(sa.select(*[table.c[c] for c in FEED_COLUMNS])
                                      .where(table.c.claimed_by == claim).where(table.c.delivered_at.is_(None))
                                      .order_by(table.c.seq)).mappings().all()
        return [_decoded(dict(r)) for r in rows]

    def mark_delivered(self, claim: str, seqs: list[int], when: datetime) -> None:
        table = self._table("alert_outbox")
        with self.store.engine.begin() as connection:
            for part in chunks(seqs):
                connection.execute(sa.update(table).where(table.c.seq.in_(part)).where(table.c.claimed_by == claim)
                                   .values(delivered_at=when, attempts=table.c.attempts + 1, claimed_until=None,
                                           last_error=None))

    def mark_failed(self, claim: str, seqs: list[int], error: str, retry_at: datetime) -> None:
        table = self._table("alert_outbox")
        with self.store.engine.begin() as connection:
            for part in chunks(seqs):
                connection.execute(sa.update(table).where(table.c.seq.in_(part)).where(table.c.claimed_by == claim)
                                   .values(attempts=table.c.attempts + 1, next_attempt_at=retry_at,
                                           claimed_until=None, last_error=error[:2000]))

    def outbox_counts(self) -> dict[str, int]:
        table = self._table("alert_outbox")
        with self.store.engine.connect() as connection:
            total, pending = connection.execute(sa.select(
                sa.func.count(), sa.func.count().filter(table.c.delivered_at.is_(None)))).one()
        return {"alerts": total, "undelivered": pending}


def _decoded(row: dict) -> dict:
    for column in ("reasons", "observation"):
        if isinstance(row.get(column), str):
            row[column] = json.loads(row[column])
    return row
