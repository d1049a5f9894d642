"""The jobs a user or a scheduler runs, written once for the CLI and the service: load a catalogue into the
store, train and save the model bundle (value model + early warning), the demo job, a sweep with its
report, and the replay of the monitor on real history."""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import polars as pl

from data import Store, generate_demo_catalog, load_table
from data.health_log import HealthLog
from data.loaders import CATALOG_TABLES
from data.market import derive_market
from data.schemas import REFERENCES_SPUS
from monitoring.health import load_config
from monitoring.replay import TUNING_GRID, ReplayRun, ReplayScore, replay, tune_actions, warning_curve
from monitoring.report import write_replay_plot, write_report
from monitoring.sweep import Monitor, SweepOutcome
from monitoring.warning import title_comparables, train_warning, warning_for_model
from valuation.pipeline import MODEL_TAG, resolve_model, train_model, value_function
from valuation.policy import currency_of, load_policy

DEMO_DIR = Path("var/demo")
REPORTS = Path("var/reports")


def load_catalog_into(store: Store, folder: Path) -> dict[str, int]:
    """Upsert every table of a catalogue folder, SPUs first so that references are checked against them.
    Raises DataFileError (nothing of that table written) on a bad file."""
    counts = {}
    for table in CATALOG_TABLES:
        known = store.spu_ids() if table in REFERENCES_SPUS else None
        frame = load_table(folder / f"{table}.parquet", table, known_spus=known).table
        # market days go in as a market update's do, so that an update scored meanwhile sees them
        counts[table] = HealthLog(store).store_market(frame) if table == "market" else store.upsert(table, frame)
    return counts


def train_and_save(tables: dict[str, pl.DataFrame], source: str, *, log=print, **train_options):
    """Train the value model (``valuation.pipeline.train_model`` options) and the early warning on the same
    order history, save both as one BentoML model; returns (tag, model)."""
    model = train_model(tables, log=log, **train_options)
    log and log("learning the health monitor's early warning ...")
    model.warning = warning_for_model(model, tables["orders"], load_config())
    if model.warning is None:
        log and log("too few loss events in the order history for an early warning: sweeps use the rules")
    return model.save_to_store(labels={"source": source}), model


def demo_model(folder: Path = DEMO_DIR, log=print):
    """The model the demo prices with: ``MODEL_TAG`` if the store has it, else trained on the demo
    catalogue in ``folder`` (generated first when missing)."""
    try:
        return resolve_model(MODEL_TAG)
    except LookupError:
        pass
    if not (folder / "spus.parquet").is_file():
        generate_demo_catalog(folder)
    from data import load_catalog

    train_and_save(load_catalog(folder, ("spus", "reviews", "orders")), "catalog", log=log)
    return resolve_model(MODEL_TAG)


def price_book(model, store: Store) -> pl.DataFrame:
    """The pledged book at today's model value, per admission decision: positions, loan, value, lendable."""
    book = store.read("positions")
    answers = model.price(book.select("spu_id", "quantity"))
    priced = book.with_columns(answers.select("value", "pledge_unit_price", "decision"))
    return (priced.group_by("decision").agg(
        pl.len().alias("positions"), pl.col("loan_amount").sum().alias("loan_amount"),
        (pl.col("value") * pl.col("quantity")).sum().alias("model_value"),
        (pl.col("pledge_unit_price") * pl.col("quantity")).sum().alias("lendable")).sort("decision"))


def monitor_for(store: Store, model_ref: str | None = None, config_path: Path | None = None) -> Monitor:
    """A monitor over ``store`` with the model's values for stale prices and its early warning. Without a
    model reference, the default model is used where there is one (else rules and market prices only);
    a reference that does not load raises LookupError."""
    try:
        model = resolve_model(model_ref)
    except LookupError:
        if model_ref:
            raise
        model = None
    return Monitor(store, load_config(config_path), value_function(model) if model else None,
                   warning=model.warning if model else None)


def sweep_with_report(monitor: Monitor, as_of: date | None = None, reports: Path = REPORTS,
                      parts: int | None = None) -> tuple[SweepOutcome, Path]:
    """Run (or find) the sweep of ``as_of`` (in ``parts`` SPU ranges, if given) and write its HTML report."""
    outcome = monitor.run_sweep(as_of, parts=parts)
    store = monitor.store
    results = (monitor.results(outcome.sweep_id)
               .join(store.read("spus").select("spu_id", "title"), on="spu_id", how="left", maintain_order="left"))
    market = monitor.sweeps.market(until=outcome.as_of)
    return outcome, write_report(reports, monitor.get_sweep(outcome.sweep_id), results, market,
                                 currency_of(load_policy()))  # the policy the models are trained with


@dataclass
class ReplayReport:
    tuned: dict | None            # the rules' thresholds chosen on the earlier window ...
    tuned_score: ReplayScore | None   # ... and how they did there
    rules: ReplayRun              # the rules on the scored window (and the naive baseline)
    learned: ReplayRun | None     # the learned early warning on the same positions (None: too few events)
    warning: object | None
    curve: pl.DataFrame | None    # the learned warning at other thresholds
    plot: Path | None


def replay_job(orders: pl.DataFrame, spus: pl.DataFrame, pledge: date, until: date,
               tune: tuple[date, date] | None = (date(2011, 1, 1), date(2011, 4, 30)),
               reports: Path = REPORTS, log=print) -> ReplayReport:
    """The monitor replayed on real history: the rules (thresholds tuned on ``tune``, an earlier window,
    when given) and the early warning learned on the history before ``pledge``, on the same positions."""
    config = deepcopy(load_config())
    orders = orders.filter(pl.col("ordered_at").dt.date() <= until)
    tuned = tuned_score = None
    if tune:
        start, end = tune
        if end >= pledge:
            raise ValueError("--tune-until must be before --pledge-date: thresholds are chosen on earlier months")
        earlier = orders.filter(pl.col("ordered_at").dt.date() <= end)
        best, tuned_score, _ = tune_actions(earlier, derive_market(earlier), start, end, config)
        tuned = {k: best[k] for k in TUNING_GRID}
        config["actions"].update(tuned)
    rules = replay(orders, pledge, until, config)
    log and log(f"learning the early warning on history before {pledge} (comparables by title) ...")
    warning = train_warning(orders, derive_market(orders), pledge, config, neighbours=title_comparables(spus))
    if warning is None:
        return ReplayReport(tuned, tuned_score, rules, None, None, None, None)
    learned = replay(orders, pledge, until, config, warning=warning)
    actions = config["actions"]
    curve = warning_curve(learned, min(actions["topup_ltv"], actions["liquidate_ltv"]))
    plot = write_replay_plot(curve, {"rules": rules.score, "naive": rules.naive, "learned": learned.score},
                             Path(reports) / f"replay-{pledge}.png")
    return ReplayReport(tuned, tuned_score, rules, learned, warning, curve, plot)
