"""Market updates between sweeps: upsert observations and re-score only the positions on the SPUs that moved.

One function takes every update, from ``POST /market`` and from ``pledgeval load market FILE``:

- each observation is checked on its own (a known SPU, an ISO date not in the future and not before the
  SPU's first observation, a finite price > 0, units >= 0, no second observation of the same SPU and day
  in the batch); a bad one is answered with its item number, field and reason, the others are applied;
- the good ones are applied in one transaction: the observations that change the store are upserted
  (the same observation twice changes nothing and re-scores nothing), the positions on the SPUs they
  moved are re-scored by the sweep's own scoring (``Monitor.score``) as of the newest market day, each
  re-score is kept as a health record with ``trigger=market`` and the observations behind it, and alerts
  go to the outbox, de-duplicated against each position's last sweep or event. A crash half way leaves
  nothing, and the same batch sent again applies it whole.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime

import polars as pl

from data.loaders import ISO_DATE
from data.schemas import MARKET
from monitoring.health import realert, with_comparables
from monitoring.sweep import Monitor, outbox_rows, reasons_json

MAX_OBSERVATIONS = 5_000  # per call: a bigger feed is sent in several batches
MAX_SOURCE_CHARS = 64
# a day's units and unit price beyond any feed's: past them a position's collateral value (quantity x price)
# overflowed to infinity and scored as healthy
MAX_UNITS = 1_000_000_000
MAX_PRICE = 1e12
INPUT_SCHEMA = {"spu_id": pl.String, "date": pl.String, "price": pl.Float64, "units": pl.Int64, "source": pl.String}


class BatchTooLarge(ValueError):
    pass


@dataclass
class MarketUpdate:
    received: int
    applied: int = 0              # observations that changed the store
    unchanged: int = 0            # already stored as sent
    errors: list[dict] = field(default_factory=list)  # item (0-based), field, error
    event_id: str | None = None   # None when nothing moved
    as_of: date | None = None
    positions_rescored: int = 0
    alerts: int = 0

    def as_dict(self) -> dict:
        return {"event_id": self.event_id, "as_of": self.as_of.isoformat() if self.as_of else None,
                "received": self.received, "applied": self.applied, "unchanged": self.unchanged,
                "rejected": len({e["item"] for e in self.errors}), "errors": self.errors,
                "positions_rescored": self.positions_rescored, "alerts": self.alerts}


def observations_frame(items: list[dict]) -> pl.DataFrame:
    """Observations as sent (``units`` may be named ``units_sold``, as in the market table's files)."""
    rows = [{"spu_id": i.get("spu_id"), "date": None if i.get("date") is None else str(i.get("date")),
             "price": i.get("price"), "units": i.get("units", i.get("units_sold")), "source": i.get("source")}
            for i in items]
    return pl.DataFrame(rows, schema=INPUT_SCHEMA)


def file_observations(market: pl.DataFrame, source: str) -> pl.DataFrame:
    """Rows of the market table (as ``data.load_table`` reads a file) as observations from ``source``."""
    return market.select(pl.col("spu_id"), pl.col("date").cast(pl.String), pl.col("price"),
                         pl.col("units_sold").alias("units"), pl.lit(source[:MAX_SOURCE_CHARS]).alias("source")
                         ).cast(INPUT_SCHEMA)


def check_observations(frame: pl.DataFrame, known_spus: set[str], first_dates: dict[str, date],
                       today: date) -> tuple[pl.DataFrame, list[dict]]:
    """(the good observations as market rows with their source, one error per bad field). Vectorised."""
    # the pattern first: on its own, the parser also took "2024-4-9", " 2024-04-29" and "+2024-04-29"
    iso = pl.col("date").str.contains(ISO_DATE)
    frame = frame.with_row_index("item").with_columns(
        pl.when(iso).then(pl.col("date").str.to_date("%Y-%m-%d", strict=False)).alias("_day"))
    first = pl.DataFrame({"spu_id": list(first_dates), "_first": list(first_dates.values())},
                         schema={"spu_id": pl.String, "_first": pl.Date})
    frame = frame.join(first, on="spu_id", how="left", maintain_order="left")
    price, units = pl.col("price"), pl.col("units")
    checks = [
        ("spu_id", pl.col("spu_id").is_null() | (pl.col("spu_id").str.strip_chars() == ""), pl.lit("must not be blank")),
        ("spu_id", pl.col("spu_id").is_not_null() & ~pl.col("spu_id").is_in(list(known_spus)),
         pl.format("unknown SPU '{}'", pl.col("spu_id"))),
        ("date", pl.col("_day").is_null(), pl.format("not an ISO date (YYYY-MM-DD): '{}'", pl.col("date").fill_null(""))),
        ("date", pl.col("_day") > today, pl.format("{} is in the future (today is {})", pl.col("_day"), pl.lit(today))),
        ("date", pl.col("_day") < pl.col("_first"),
         pl.format("{} is before the SPU's first market observation ({})", pl.col("_day"), pl.col("_first"))),
        ("price", price.is_null() | price.is_nan() | price.is_infinite() | (price <= 0) | (price > MAX_PRICE),
         pl.format(f"must be a finite number > 0 and at most {MAX_PRICE:.0e} (got {{}})",
                   price.cast(pl.String).fill_null("nothing"))),
        ("units", units.is_null() | (units < 0) | (units > MAX_UNITS),
         pl.format(f"must be an integer from 0 to {MAX_UNITS:,} (got {{}})",
                   units.cast(pl.String).fill_null("nothing"))),
        ("source", pl.col("source").str.len_chars() > MAX_SOURCE_CHARS, pl.lit(f"at most {MAX_SOURCE_CHARS} characters")),
    ]
    bad = pl.concat([frame.filter(is_bad.fill_null(False)).select("item", pl.lit(name).alias("field"), reason.alias("error"))
                     for name, is_bad, reason in checks])
    # of two good observations of one SPU and day, the first is applied: which one a feed meant is not ours to guess
    twice = (frame.join(bad.select("item"), on="item", how="anti")
             .with_columns(pl.col("item").min().over("spu_id", "_day").alias("_first_item"))
             .filter(pl.col("item") != pl.col("_first_item"))
             .select("item", pl.lit("date").alias("field"),
                     pl.format("a second observation of this SPU and day in the batch (first: item {})",
                               pl.col("_first_item")).alias("error")))
    bad = pl.concat([bad, twice])
    errors = bad.sort("item", maintain_order=True).to_dicts()
    good = (frame.join(bad.select("item").unique(), on="item", how="anti")
            .select("spu_id", pl.col("_day").alias("date"), "price", pl.col("units").alias("units_sold"), "source"))
    return good, errors


def apply_market_updates(monitor: Monitor, items: list[dict] | pl.DataFrame, *, today: date | None = None) -> MarketUpdate:
    """Check, upsert and re-score (see the module docstring). Raises BatchTooLarge over MAX_OBSERVATIONS.

    The reading and scoring happen before the alert gate is taken, so that two workers score at once; in
    the gate, the SPUs whose market another update changed since (``market_turns``) are read and scored
    again, and the alerts are decided against each position's latest record."""
    frame = items if isinstance(items, pl.DataFrame) else observations_frame(items)
    if frame.height > MAX_OBSERVATIONS:
        raise BatchTooLarge(f"{frame.height} observations in one batch; at most {MAX_OBSERVATIONS} (send several)")
    log, today = monitor.log, today or date.today()
    spu_ids = [s for s in frame["spu_id"].unique().to_list() if s]
    good, errors = check_observations(frame, log.known_spus(spu_ids), log.first_market_dates(spu_ids), today)
    outcome = MarketUpdate(received=frame.height, errors=errors)
    if good.height == 0:
        return outcome
    read_spus = with_comparables(good["spu_id"].unique().to_list(), monitor.warning)
    turn = log.turn()
    update = _Update(monitor, good, log.market_of(None, read_spus), log.last_market_date(), today)
    if update.changed.height == 0:
        outcome.unchanged = good.height
        return outcome
    update.score(log.positions_on(None, update.moved))
    with log.gate() as connection:
        mine = log.turn(connection)
        stale = log.touched_since(connection, read_spus, turn) if mine != turn + 1 else []
        last_day = log.last_market_date(connection)
        if stale or last_day != update.last_day:
            update.refresh(connection, stale, last_day)
        outcome.applied, outcome.unchanged = update.changed.height, good.height - update.changed.height
        if update.changed.height == 0:
            return outcome
        log.store_market(update.changed.select(MARKET.column_names), connection)
        results = update.results
        previous = log.latest_actions(connection, update.as_of, same_day=True,
                                      position_ids=results["position_id"].to_list())
        results = realert(results, previous, monitor.warning)
        event_id = f"market-{datetime.now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        outcome.event_id, outcome.as_of, outcome.positions_rescored = event_id, update.as_of, results.height
        if results.height == 0:
            return outcome
        _write_event(log, connection, event_id, update, results, previous)
        outcome.alerts = int(results["alert"].sum())
    return outcome


class _Update:
    """One batch's changed observations and the re-score of the positions they move, as read from the
    store; ``refresh`` brings the SPUs another update changed meanwhile up to date."""

    def __init__(self, monitor: Monitor, good: pl.DataFrame, stored: pl.DataFrame, last_day: date | None, today: date):
        self.monitor, self.good, self.stored, self.today = monitor, good, stored, today
        self.results = pl.DataFrame()
        self._diff(last_day)

    def _diff(self, last_day: date | None) -> None:
        stored = self.stored.rename({"price": "_price", "units_sold": "_units"})
        self.changed = (self.good.join(stored, on=["spu_id", "date"], how="left", maintain_order="left")
                        .filter(pl.col("_price").is_null() | (pl.col("_price") != pl.col("price"))
                                | (pl.col("_units") != pl.col("units_sold"))).drop("_price", "_units"))
        self.moved = self.changed["spu_id"].unique().sort().to_list()
        self.market = (pl.concat([self.stored.join(self.changed, on=["spu_id", "date"], how="anti"),
                                  self.changed.select(MARKET.column_names)]).sort("spu_id", "date"))
        self.last_day = last_day
        # scored as of the newest market day once these observations are in, never past today
        newest = max([d for d in (last_day, self.changed["date"].max()) if d is not None], default=self.today)
        self.as_of = min(newest, self.today)

    def score(self, positions: pl.DataFrame, spus: list[str] | None = None) -> None:
        """Score the positions on ``spus`` (default: every moved SPU), replacing their earlier scores."""
        spus = self.moved if spus is None else spus
        fresh = self.monitor.score(positions.filter(pl.col("spu_id").is_in(spus)),
                                   self.market.filter(pl.col("date") <= self.as_of), self.as_of, None, explain=False)
        kept = self.results.filter(pl.col("spu_id").is_in(self.moved) & ~pl.col("spu_id").is_in(spus)) \
            if self.results.height else fresh.clear()
        self.results = pl.concat([kept, fresh])

    def refresh(self, connection, stale: list[str], last_day: date | None) -> None:
        log = self.monitor.log
        fresh = log.market_of(connection, stale)
        self.stored = pl.concat([self.stored.filter(~pl.col("spu_id").is_in(stale)), fresh])
        as_of = self.as_of
        self._diff(last_day)
        if not self.moved:
            return
        positions = log.positions_on(connection, self.moved)
        if self.as_of != as_of:
            self.results = pl.DataFrame()
            self.score(positions)
            return
        neighbours = getattr(self.monitor.warning, "neighbours", None)
        touched = set(stale)
        if neighbours is not None:  # a comparable that moved changes the early warning's features
            touched |= set(neighbours.filter(pl.col("neighbour").is_in(stale))["spu_id"].to_list())
        self.score(positions, [s for s in self.moved if s in touched])


def _write_event(log, connection, event_id: str, update: _Update, results: pl.DataFrame,
                 previous: pl.DataFrame) -> None:
    results = (results.join(_observations_json(update.changed), on="spu_id", how="left", maintain_order="left")
               .join(previous.select("position_id", pl.col("grade").alias("_previous_grade")), on="position_id",
                     how="left", maintain_order="left"))
    as_of = update.as_of
    log.add_events(connection, results.select(
        pl.lit(event_id).alias("event_id"), "position_id", "spu_id", pl.lit(as_of).alias("as_of"),
        pl.lit("market").alias("trigger"), "observation", "unit_value", "value_source", "value_low", "value_high",
        "collateral_value", "ltv", "price_change", "velocity_trend", "days_to_liquidate", "health", "grade", "action",
        "previous_action", reasons_json().alias("reasons"), "p_loss",
        ((pl.col("grade") != pl.col("_previous_grade")).fill_null(True)
         | (pl.col("action") != pl.col("previous_action")).fill_null(True)).alias("changed"),
        pl.lit(datetime.now()).alias("created_at")))
    log.set_state(connection, results, as_of)
    log.add_alerts(connection, outbox_rows(results.filter(pl.col("alert")), "market", event_id, as_of,
                                           pl.col("observation")))


def _observations_json(changed: pl.DataFrame) -> pl.DataFrame:
    """spu_id, observation: the SPU's applied observations of this event as a JSON list."""
    rows: dict[str, list] = {}
    for row in changed.sort("spu_id", "date").iter_rows(named=True):
        rows.setdefault(row["spu_id"], []).append({"date": row["date"].isoformat(), "price": row["price"],
                                                   "units": row["units_sold"], "source": row["source"]})
    return pl.DataFrame({"spu_id": list(rows), "observation": [json.dumps(v) for v in rows.values()]},
                        schema={"spu_id": pl.String, "observation": pl.String})
