"""Getting data in: the demo catalogue, loading files into the store, Online Retail, and the demo job."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import polars as pl
import typer

from data import DataFileError, Store, generate_demo_catalog, load_table, read_online_retail
from data.loaders import LoadResult
from data.schemas import REFERENCES_SPUS, TABLES
from data.store import redact
from serving.cli._common import DbOption, app, console, errors, fail, open_store, print_counts, print_rows


@app.command("demo-data")
def demo_data(
    out: Annotated[Path, typer.Option(help="Folder to write the demo catalogue into.")],
    spus: Annotated[int, typer.Option(min=12, help="Number of SPUs.")] = 2000,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives byte-identical files.")] = 0,
) -> None:
    """Generate the deterministic demo catalogue (tables as parquet + product images)."""
    catalog = generate_demo_catalog(out, n_spus=spus, seed=seed)
    print_counts(f"demo catalogue in {out}", {name: getattr(catalog, name).height for name in catalog.TABLES})


@app.command("load")
def load(
    table: Annotated[str, typer.Argument(help=f"One of: {', '.join(TABLES)}.")],
    file: Annotated[Path, typer.Argument(help="A .parquet, .csv or .jsonl file.")],
    skip_bad_rows: Annotated[bool, typer.Option(help="Load the good rows and write the rejects beside the file.")] = False,
    rejects: Annotated[Optional[Path], typer.Option(help="Where to write rejects (default: FILE.rejects.csv).")] = None,
    db: DbOption = None,
    model: Annotated[Optional[str], typer.Option("--model", help="market only: the model for stale prices and the "
                                                                 "early warning (default: pledgeval:latest if present)."
                                                 )] = None,
) -> None:
    """Check a file against its table's schema and upsert it into the store (all or nothing). Market
    observations also re-score the positions on the SPUs they move, as POST /market does, in batches of
    5,000 (each all or nothing; a run stopped half way is finished by running it again)."""
    if table not in TABLES:
        fail(f"unknown table '{table}' (known: {', '.join(TABLES)})")
    store = open_store(db)
    known = store.spu_ids() if table in REFERENCES_SPUS else None
    try:
        result = load_table(file, table, skip_bad_rows=skip_bad_rows, known_spus=known)
    except DataFileError as exc:
        # skipping rows helps only where the problems are in rows, not in the file (missing column, unreadable)
        row_level = any(p.row is not None for p in exc.problems)
        fail(f"{exc}\n(nothing was written" + ("; --skip-bad-rows loads the good rows and writes the rejects)"
                                               if row_level and not skip_bad_rows else ")"))
    if result.rejects.height:  # first: a rejects path that cannot be written stops the load before it writes
        try:
            path = result.write_rejects(rejects or file.with_name(file.name + ".rejects.csv"))
        except OSError as exc:
            fail(f"--rejects: cannot write {exc.filename or rejects}: {exc.strerror or exc} (nothing was written)")
        errors.print(f"[yellow]{result.rejects['row'].n_unique()} bad rows skipped; reasons in {path}[/]")
    if table == "market":
        _apply_market(store, result, file, model)
    else:
        written = store.upsert(table, result.given_columns())
        console.print(f"{table}: {written} rows upserted into {redact(store.url)}")


def _apply_market(store: Store, loaded: LoadResult, file: Path, model: str | None) -> None:
    from monitoring.jobs import monitor_for
    from monitoring.market_updates import MAX_OBSERVATIONS, apply_market_updates, file_observations

    try:
        monitor = monitor_for(store, model)
    except LookupError as exc:
        fail(str(exc))
    observations = file_observations(loaded.table, f"file:{file.name}")
    totals = {"applied": 0, "unchanged": 0, "positions_rescored": 0, "alerts": 0}
    problems = []
    for start in range(0, observations.height, MAX_OBSERVATIONS):
        outcome = apply_market_updates(monitor, observations.slice(start, MAX_OBSERVATIONS))
        for key in totals:
            totals[key] += getattr(outcome, key)
        problems += [{**e, "item": e["item"] + start} for e in outcome.errors]
    console.print(f"market: {totals['applied']} observations applied, {totals['unchanged']} already stored, into "
                  f"{redact(store.url)}; {totals['positions_rescored']} positions re-scored, {totals['alerts']} alerts")
    if problems:
        # named as in the file: its row (rows the loader skipped are not counted out) and its column
        rows, column = loaded.rows.to_list(), {"units": "units_sold"}
        shown = "\n".join(f"  row {rows[p['item']]}, field '{column.get(p['field'], p['field'])}': {p['error']}"
                           for p in problems[:20])
        errors.print(f"[yellow]{len({p['item'] for p in problems})} observations refused (the others are "
                     f"applied):[/]\n{shown}")
        raise typer.Exit(1)


@app.command("import-online-retail")
def import_online_retail(
    path: Annotated[Path, typer.Argument(help="Online Retail order lines (file or folder).")],
    until: Annotated[Optional[str], typer.Option(help="Only lines before this ISO date.")] = None,
    db: DbOption = None,
) -> None:
    """Read the UCI Online Retail format into spus, orders and market."""
    try:
        retail = read_online_retail(path, until=until)
    except DataFileError as exc:
        fail(str(exc))
    store = open_store(db)
    counts = {name: store.upsert(name, getattr(retail, name)) for name in ("spus", "orders", "market")}
    print_counts(f"Online Retail -> {redact(store.url)}", counts)
    for reason, n in retail.dropped.items():
        if n:
            console.print(f"  left out {n} order lines: {reason}")


@app.command("demo")
def demo(
    folder: Annotated[Path, typer.Option("--dir", help="Where the demo catalogue lives (made if missing).")] =
    Path("var/demo"),
    spus: Annotated[int, typer.Option(min=12)] = 2000,
    seed: int = 0,
    db: DbOption = None,
    train_model: Annotated[bool, typer.Option("--train/--no-train", help="Train (once) and price the book.")] = True,
) -> None:
    """The main job on the embedded default: demo catalogue, store, model (trained once), priced book."""
    from monitoring.jobs import demo_model, load_catalog_into, monitor_for, price_book, sweep_with_report

    if not (folder / "positions.parquet").is_file():
        console.print(f"building the demo catalogue in {folder} ({spus} SPUs, seed {seed}) ...")
        generate_demo_catalog(folder, n_spus=spus, seed=seed)
    store = open_store(db)
    try:
        counts = load_catalog_into(store, folder)
    except DataFileError as exc:
        fail(str(exc))
    print_counts(f"demo catalogue {folder} -> {redact(store.url)}", counts)
    _print_book(store)
    if not train_model:
        return
    model = demo_model(folder, log=console.print)
    console.print(f"model {model.metrics.get('n_spus')} SPUs")
    print_rows("the pledged book at today's model value",
               ["decision", "positions", "loan amount", "model value", "lendable (pledge price)", "LTV on value"],
               [[str(r["decision"]), str(r["positions"]), f"{r['loan_amount']:,.0f}", f"{r['model_value']:,.0f}",
                 f"{r['lendable']:,.0f}", f"{r['loan_amount'] / r['model_value']:.2f}"]
                for r in price_book(model, store).iter_rows(named=True)])
    outcome, path = sweep_with_report(monitor_for(store))
    console.print(f"{outcome.sweep_id}: {outcome.n_positions} positions, {outcome.n_alerts} alerts; "
                  f"actions {outcome.summary['actions']}; report {path}")


def _print_book(store: Store) -> None:
    book = (store.read("positions")
            .group_by("borrower")
            .agg(pl.len().alias("positions"), pl.col("loan_id").n_unique().alias("loans"),
                 pl.col("loan_amount").sum().alias("loan_amount"),
                 (pl.col("quantity") * pl.col("pledge_unit_price")).sum().alias("pledged_value"))
            .sort("loan_amount", descending=True))
    print_rows("pledged book by borrower", ["borrower", "positions", "loans", "loan amount", "pledged value", "LTV"],
               [[r["borrower"], str(r["positions"]), str(r["loans"]), f"{r['loan_amount']:,.0f}",
                 f"{r['pledged_value']:,.0f}", f"{r['loan_amount'] / r['pledged_value']:.2f}"]
                for r in book.iter_rows(named=True)])
