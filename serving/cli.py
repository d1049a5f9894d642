"""The `pledgeval` command: what desks, cron jobs and our own checks run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import polars as pl
import typer
from rich.console import Console
from rich.table import Table

from data import DataFileError, Store, generate_demo_catalog, load_table, read_online_retail
from data.schemas import REFERENCES_SPUS, TABLES
from data.store import redact

app = typer.Typer(help="Multimodal collateral valuation and monitoring for warehouse financing.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
console = Console()
errors = Console(stderr=True)

DbOption = Annotated[Optional[str], typer.Option("--db", help="Database URL (default: $PLEDGEVAL_DB_URL or "
                                                               "sqlite:///var/pledgeval.db).")]
LOAD_ORDER = ("spus", "reviews", "orders", "market", "positions")


def _fail(message: str, code: int = 2) -> None:
    errors.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


@app.command("demo-data")
def demo_data(
    out: Annotated[Path, typer.Option(help="Folder to write the demo catalogue into.")],
    spus: Annotated[int, typer.Option(min=12, help="Number of SPUs.")] = 2000,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives byte-identical files.")] = 0,
) -> None:
    """Generate the deterministic demo catalogue (tables as parquet + product images)."""
    catalog = generate_demo_catalog(out, n_spus=spus, seed=seed)
    _print_counts(f"demo catalogue in {out}", {name: getattr(catalog, name).height for name in catalog.TABLES})


@app.command("load")
def load(
    table: Annotated[str, typer.Argument(help=f"One of: {', '.join(TABLES)}.")],
    file: Annotated[Path, typer.Argument(help="A .parquet, .csv or .jsonl file.")],
    skip_bad_rows: Annotated[bool, typer.Option(help="Load the good rows and write the rejects beside the file.")] = False,
    rejects: Annotated[Optional[Path], typer.Option(help="Where to write rejects (default: FILE.rejects.csv).")] = None,
    db: DbOption = None,
) -> None:
    """Check a file against its table's schema and upsert it into the store (all or nothing)."""
    if table not in TABLES:
        _fail(f"unknown table '{table}' (known: {', '.join(TABLES)})")
    store = Store(db)
    known = store.spu_ids() if table in REFERENCES_SPUS else None
    try:
        result = load_table(file, table, skip_bad_rows=skip_bad_rows, known_spus=known)
    except DataFileError as exc:
        _fail(f"{exc}\n(nothing was written; --skip-bad-rows loads the good rows and writes the rejects)")
    written = store.upsert(table, result.table)
    console.print(f"{table}: {written} rows upserted into {redact(store.url)}")
    if result.rejects.height:
        path = result.write_rejects(rejects or file.with_name(file.name + ".rejects.csv"))
        errors.print(f"[yellow]{result.rejects['row'].n_unique()} bad rows skipped; reasons in {path}[/]")


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
        _fail(str(exc))
    store = Store(db)
    counts = {name: store.upsert(name, getattr(retail, name)) for name in ("spus", "orders", "market")}
    _print_counts(f"Online Retail -> {redact(store.url)}", counts)
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
) -> None:
    """The main job on the embedded default: build the demo catalogue once, load it, report the book."""
    if not (folder / "positions.parquet").is_file():
        console.print(f"building the demo catalogue in {folder} ({spus} SPUs, seed {seed}) ...")
        generate_demo_catalog(folder, n_spus=spus, seed=seed)
    store = Store(db)
    counts = {}
    for table in LOAD_ORDER:
        known = store.spu_ids() if table in REFERENCES_SPUS else None
        try:
            counts[table] = store.upsert(table, load_table(folder / f"{table}.parquet", table, known_spus=known).table)
        except DataFileError as exc:
            _fail(str(exc))
    _print_counts(f"demo catalogue {folder} -> {redact(store.url)}", counts)
    _print_book(store)


def _print_counts(title: str, counts: dict[str, int]) -> None:
    table = Table(title=title)
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, n in counts.items():
        table.add_row(name, f"{n:,}")
    console.print(table)


def _print_book(store: Store) -> None:
    book = (store.read("positions")
            .group_by("borrower")
            .agg(pl.len().alias("positions"), pl.col("loan_id").n_unique().alias("loans"),
                 pl.col("loan_amount").sum().alias("loan_amount"),
                 (pl.col("quantity") * pl.col("pledge_unit_price")).sum().alias("pledged_value"))
            .sort("loan_amount", descending=True))
    table = Table(title="pledged book by borrower")
    for column in ("borrower", "positions", "loans", "loan amount", "pledged value", "LTV"):
        table.add_column(column, justify="left" if column == "borrower" else "right")
    for row in book.iter_rows(named=True):
        table.add_row(row["borrower"], str(row["positions"]), str(row["loans"]), f"{row['loan_amount']:,.0f}",
                      f"{row['pledged_value']:,.0f}", f"{row['loan_amount'] / row['pledged_value']:.2f}")
    console.print(table)


def main() -> None:  # pragma: no cover - console entry point
    app()
