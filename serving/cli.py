"""The `pledgeval` command: what desks, cron jobs and our own checks run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import polars as pl
import typer
from rich.console import Console
from rich.table import Table

from data import DataFileError, Store, generate_demo_catalog, load_catalog, load_table, read_online_retail
from data.schemas import REFERENCES_SPUS, TABLES
from data.store import redact

app = typer.Typer(help="Multimodal collateral valuation and monitoring for warehouse financing.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
console = Console()
errors = Console(stderr=True)

DbOption = Annotated[Optional[str], typer.Option("--db", help="Database URL (default: $PLEDGEVAL_DB_URL or "
                                                               "sqlite:///var/pledgeval.db).")]
LOAD_ORDER = ("spus", "reviews", "orders", "market", "positions")
DEFAULT_TOWER = Path("var/models/image-tower.pt")
DEFAULT_INDEX = Path("var/index")

embed_app = typer.Typer(help="Encoders: train the in-domain image tower.", no_args_is_help=True)
index_app = typer.Typer(help="The FAISS SPU index: build it, search it.", no_args_is_help=True)
app.add_typer(embed_app, name="embed")
app.add_typer(index_app, name="index")
ConfigOption = Annotated[str, typer.Option("--config", help="Encoder config: a name in embeddings/configs or a "
                                                             "JSON path.")]


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
    train_model: Annotated[bool, typer.Option("--train/--no-train", help="Train (once) and price the book.")] = True,
) -> None:
    """The main job on the embedded default: demo catalogue, store, model (trained once), priced book."""
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
    if train_model:
        _demo_model_and_prices(folder, store)


def _demo_model_and_prices(folder: Path, store: Store) -> None:
    """Train the demo model once (image tower, index, heads) and price the pledged book with it."""
    from valuation.model import PledgeModel

    try:
        model = PledgeModel.load_from_store("pledgeval:latest")
        console.print(f"using model pledgeval:latest ({model.metrics.get('n_spus')} SPUs)")
    except Exception:  # no model in the store yet: build the demo one
        train(catalog=folder, online_retail=None, until=None, config="minilm-rn-tiny", checkpoint=None,
              tower_epochs=20, cache=Path("var/cache/vectors.db"))
        model = PledgeModel.load_from_store("pledgeval:latest")
    book = store.read("positions")
    answers = model.price(book.select("spu_id", "quantity"))
    priced = book.with_columns(answers.select("value", "pledge_unit_price", "decision"))
    table = Table(title="the pledged book at today's model value")
    for column in ("decision", "positions", "loan amount", "model value", "lendable (pledge price)", "LTV on value"):
        table.add_column(column, justify="left" if column == "decision" else "right")
    summary = (priced.group_by("decision").agg(
        pl.len().alias("n"), pl.col("loan_amount").sum().alias("loan"),
        (pl.col("value") * pl.col("quantity")).sum().alias("value"),
        (pl.col("pledge_unit_price") * pl.col("quantity")).sum().alias("lendable")).sort("decision"))
    for row in summary.iter_rows(named=True):
        table.add_row(str(row["decision"]), str(row["n"]), f"{row['loan']:,.0f}", f"{row['value']:,.0f}",
                      f"{row['lendable']:,.0f}", f"{row['loan'] / row['value']:.2f}")
    console.print(table)
    sweep(as_of=None, db=str(store.url), model=None, reports=Path("var/reports"), config=None)


@embed_app.command("train")
def embed_train(
    catalog: Annotated[Path, typer.Option(help="Catalogue folder with spus (+ images).")],
    out: Annotated[Path, typer.Option(help="Where to save the image-tower checkpoint.")] = DEFAULT_TOWER,
    config: ConfigOption = "minilm-rn-tiny",
    epochs: int = 20,
    batch_size: int = 128,
    seed: int = 0,
    time_budget: Annotated[Optional[float], typer.Option(help="Stop after the epoch that passes this many "
                                                             "seconds.")] = None,
) -> None:
    """Train the image tower against the locked text tower (open_clip ClipLoss) on (image, title) pairs."""
    from embeddings import create_encoder, train_image_tower

    spus = _catalog(catalog, ("spus",))["spus"].filter(pl.col("images").list.len() > 0)
    if spus.height < 20:
        _fail(f"{catalog}: only {spus.height} SPUs with images; training needs at least 20")
    encoder = create_encoder(config)
    console.print(f"training the image tower of '{config}' on {spus.height} (image, title) pairs ...")
    report = train_image_tower(encoder, spus["title"].to_list(), spus["images"].list.first().to_list(),
                               epochs=epochs, batch_size=batch_size, seed=seed, time_budget_s=time_budget,
                               checkpoint=out, log=console.print)
    console.print(f"held-out image->title recall@1 {report.recall_at_1:.3f}  @5 {report.recall_at_5:.3f}  "
                  f"@10 {report.recall_at_10:.3f}  (chance@5 {report.chance_at_5:.3f}, {report.n_test} SPUs); "
                  f"{report.seconds:.0f}s; saved {out}")


@index_app.command("build")
def index_build(
    catalog: Annotated[Optional[Path], typer.Option(help="Catalogue folder (spus, reviews, orders).")] = None,
    online_retail: Annotated[Optional[Path], typer.Option(help="Online Retail order lines instead.")] = None,
    out: Annotated[Path, typer.Option(help="Index folder.")] = DEFAULT_INDEX,
    config: ConfigOption = "minilm-rn-tiny",
    checkpoint: Annotated[Optional[Path], typer.Option(help="Trained tower weights (default: "
                                                            f"{DEFAULT_TOWER} when it exists).")] = None,
    kind: Annotated[str, typer.Option(help="auto | flat | hnsw | ivfpq")] = "auto",
    cache: Annotated[Path, typer.Option(help="Vector cache file.")] = Path("var/cache/vectors.db"),
) -> None:
    """Embed every SPU and write the FAISS SPU index (atomically)."""
    from embeddings import SpuEmbedder
    from embeddings.catalog import build_spu_index

    if (catalog is None) == (online_retail is None):
        _fail("give exactly one of --catalog or --online-retail")
    if online_retail is not None:
        retail = read_online_retail(online_retail)
        tables = {"spus": retail.spus, "orders": retail.orders}
    else:
        tables = _catalog(catalog, ("spus", "reviews", "orders"))
    embedder = SpuEmbedder(_encoder(config, checkpoint), cache_path=cache, progress=True)
    index, _ = build_spu_index(embedder, tables["spus"], tables.get("reviews"), tables.get("orders"), kind=kind)
    index.save(out)
    console.print(f"indexed {len(index)} SPUs ({index.resolved_kind(len(index))}, encoder "
                  f"{index.fingerprint}) -> {out}")


@index_app.command("search")
def index_search(
    title: Annotated[Optional[str], typer.Option(help="Search by title.")] = None,
    image: Annotated[Optional[Path], typer.Option(help="Search by image file.")] = None,
    index: Annotated[Path, typer.Option(help="Index folder.")] = DEFAULT_INDEX,
    k: int = 5,
    config: ConfigOption = "minilm-rn-tiny",
    checkpoint: Optional[Path] = None,
) -> None:
    """Top-k known SPUs for a title and/or an image."""
    from embeddings import ImageError, IndexMismatchError, SpuEmbedder, SpuIndex

    encoder = _encoder(config, checkpoint)
    try:
        spu_index = SpuIndex.load(index, fingerprint=encoder.fingerprint)
        query = SpuEmbedder(encoder).query(title, [image] if image else [])
    except (IndexMismatchError, FileNotFoundError, ImageError, ValueError) as exc:
        _fail(str(exc))
    hits = spu_index.search(query, k)[0].join(spu_index.meta.select("spu_id", "title"), on="spu_id", how="left", maintain_order="left")
    table = Table(title=f"top {k} for {title or image}")
    for column in ("spu_id", "score", "title"):
        table.add_column(column)
    for row in hits.iter_rows(named=True):
        table.add_row(row["spu_id"], f"{row['score']:.3f}", row["title"] or "")
    console.print(table)


@app.command("train")
def train(
    catalog: Annotated[Optional[Path], typer.Option(help="Catalogue folder (spus + images, reviews, orders).")] = None,
    online_retail: Annotated[Optional[Path], typer.Option(help="Online Retail order lines instead.")] = None,
    until: Annotated[Optional[str], typer.Option(help="Online Retail: only order lines before this ISO date.")] = None,
    config: ConfigOption = "minilm-rn-tiny",
    checkpoint: Annotated[Optional[Path], typer.Option(help="Trained image tower; default: train one on the "
                                                            "catalogue's images (or reuse var/models/).")] = None,
    tower_epochs: int = 20,
    cache: Annotated[Path, typer.Option(help="Vector cache file.")] = Path("var/cache/vectors.db"),
) -> None:
    """Train encoder tower + SPU index + value heads + calibration; save as BentoML model pledgeval:<version>."""
    from valuation.model import PledgeModel

    if (catalog is None) == (online_retail is None):
        _fail("give exactly one of --catalog or --online-retail")
    if online_retail is not None:
        try:
            retail = read_online_retail(online_retail, until=until)
        except DataFileError as exc:
            _fail(str(exc))
        tables = {"spus": retail.spus, "orders": retail.orders}
    else:
        tables = _catalog(catalog, ("spus", "reviews", "orders"))
        with_images = tables["spus"].filter(pl.col("images").list.len() > 0)
        if checkpoint is None and with_images.height >= 20 and config == "minilm-rn-tiny":
            checkpoint = DEFAULT_TOWER
            if not checkpoint.is_file():
                embed_train(catalog=catalog, out=checkpoint, config=config, epochs=tower_epochs, batch_size=128,
                            seed=0, time_budget=None)
    if checkpoint is not None and not checkpoint.is_file():
        _fail(f"checkpoint not found: {checkpoint}")
    try:
        model = PledgeModel.train(tables, encoder_config=config, checkpoint=checkpoint, cache_path=cache,
                                  log=console.print)
    except ValueError as exc:
        _fail(str(exc))
    from monitoring import load_config
    from monitoring.warning import warning_for_model

    console.print("learning the health monitor's early warning ...")
    model.warning = warning_for_model(model, tables["orders"], load_config())
    if model.warning is None:
        console.print("too few loss events in the order history for an early warning: sweeps use the rules")
    tag = model.save_to_store(labels={"source": "catalog" if catalog else "online_retail"})
    console.print(f"saved BentoML model [bold]{tag}[/] ({model.metrics['n_spus']} SPUs, "
                  f"{model.metrics['n_priced']} priced; cold head {model.metrics['cold_head']}, warm head "
                  f"{model.metrics['warm_head']}; {model.metrics['train_seconds']}s)")


@app.command("price")
def price(
    input: Annotated[Path, typer.Option("--input", help="Requests: spu_id, title?, images?, reviews?, quantity?")],
    output: Annotated[Path, typer.Option("--output", help="Answers (.parquet, .csv or .jsonl).")],
    model: Annotated[str, typer.Option("--model", help="BentoML model tag or a saved model folder.")] =
    "pledgeval:latest",
) -> None:
    """Value, interval, haircut, pledge price, decision and comparables for each requested SPU."""
    from data.loaders import read_raw
    from valuation.model import PricingError

    try:
        requests = read_raw(input, "price requests")
    except DataFileError as exc:
        _fail(str(exc))
    for column in ("images", "reviews"):
        if column in requests.columns and requests.schema[column] == pl.String:
            requests = requests.with_columns(pl.col(column).str.split("|"))
    if "quantity" in requests.columns and requests.schema["quantity"] == pl.String:
        requests = requests.with_columns(pl.col("quantity").str.strip_chars().cast(pl.Int64, strict=False))
    pledge_model = _load_model(model)
    started = time.monotonic()
    try:
        answers = pledge_model.price(requests)
    except PricingError as exc:
        _fail(str(exc))
    seconds = time.monotonic() - started
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix == ".csv":
        answers.with_columns(pl.col("reasons").list.join("|"),
                             pl.col("comparables").list.eval(pl.element().struct.field("spu_id")).list.join("|")
                             ).write_csv(output)
    elif output.suffix in (".jsonl", ".ndjson"):
        answers.write_ndjson(output)
    else:
        answers.write_parquet(output)
    counts = answers["decision"].value_counts().sort("decision").rows()
    bad = answers["error"].is_not_null().sum()
    console.print(f"priced {answers.height - bad} of {answers.height} SPUs in {seconds:.2f}s -> {output}; "
                  f"decisions: {', '.join(f'{d}={n}' for d, n in counts if d)}")
    if bad:
        for row in answers.filter(pl.col("error").is_not_null()).head(10).iter_rows(named=True):
            errors.print(f"[yellow]{row['spu_id']}: {row['error']}[/]")
        raise typer.Exit(1)


@app.command("sweep")
def sweep(
    as_of: Annotated[Optional[str], typer.Option("--as-of", help="ISO date (default: the latest market date).")] = None,
    db: DbOption = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Model for stale prices (default: "
                                                                 "pledgeval:latest if present).")] = None,
    reports: Annotated[Path, typer.Option(help="Folder for the HTML report.")] = Path("var/reports"),
    config: Annotated[Optional[Path], typer.Option(help="Monitor thresholds (default monitoring/monitor.toml).")]
    = None,
) -> None:
    """Re-score every open position as of a date, store results and alerts, write the HTML report.
    Safe for cron/Airflow: the same as-of twice changes nothing; a lock keeps two runs apart."""
    from datetime import date as _date

    from monitoring import Monitor, SweepLocked, load_config
    from monitoring.report import write_report

    store = Store(db)
    try:
        when = _date.fromisoformat(as_of) if as_of else None
    except ValueError:
        _fail(f"--as-of: not an ISO date: {as_of!r}")
    value_fn, warning = _model_for_sweep(model)
    monitor = Monitor(store, load_config(config), value_fn, warning=warning)
    try:
        outcome = monitor.run_sweep(when)
    except (SweepLocked, ValueError) as exc:
        _fail(str(exc))
    sweep_row = monitor.get_sweep(outcome.sweep_id)
    results = monitor.results(outcome.sweep_id).join(
        store.read("positions").select("position_id", "loan_amount"), on="position_id", how="left", maintain_order="left")
    market = store.read("market", store.table("market").c.date <= outcome.as_of)
    path = write_report(reports, sweep_row, results, market)
    verb = "swept" if outcome.created else "already swept (nothing changed)"
    console.print(f"{outcome.sweep_id}: {verb}; {outcome.n_positions} positions, {outcome.n_alerts} alerts; "
                  f"actions {outcome.summary['actions']}; report {path}")


@app.command("replay")
def replay_command(
    online_retail: Annotated[Path, typer.Option(help="Online Retail order lines.")],
    pledge_date: Annotated[str, typer.Option(help="ISO date the book is pledged.")] = "2011-05-01",
    until: Annotated[str, typer.Option(help="ISO date the replay ends.")] = "2011-08-31",
    tune_pledge_date: Annotated[Optional[str], typer.Option(help="Choose the watch thresholds on an earlier "
                                                                 "window starting here ...")] = "2011-01-01",
    tune_until: Annotated[Optional[str], typer.Option(help="... and ending here (must end before --pledge-date)."
                                                      )] = "2011-04-30",
    reports: Annotated[Path, typer.Option(help="Folder for the recall / false-alarm plot.")] = Path("var/reports"),
) -> None:
    """Replay real history day by day through the monitor and score its early warnings: the rules, and the
    learned early warning trained on the history before the pledge date."""
    from datetime import date as _date

    from monitoring.health import load_config
    from monitoring.replay import TUNING_GRID, replay, tune_actions, warning_curve
    from monitoring.report import write_replay_plot

    pledge, end = _date.fromisoformat(pledge_date), _date.fromisoformat(until)
    retail = read_online_retail(online_retail)
    config = load_config()
    if tune_pledge_date:
        t0, t1 = _date.fromisoformat(tune_pledge_date), _date.fromisoformat(tune_until)
        if t1 >= pledge:
            _fail("--tune-until must be before --pledge-date: thresholds are chosen on earlier months")
        from data.market import derive_market
        best, tuned, _ = tune_actions(retail.orders.filter(pl.col("ordered_at").dt.date() <= t1),
                                      derive_market(retail.orders.filter(pl.col("ordered_at").dt.date() <= t1)),
                                      t0, t1, config)
        config["actions"].update({k: best[k] for k in TUNING_GRID})
        console.print(f"thresholds chosen on {t0}..{t1}: " + ", ".join(f"{k}={best[k]}" for k in TUNING_GRID)
                      + f" (there: flag_recall {tuned.flag_recall:.3f}, false_alarm_rate {tuned.false_alarm_rate:.3f})")
    orders = retail.orders.filter(pl.col("ordered_at").dt.date() <= end)
    rules = replay(orders, pledge, end, config)
    console.print(f"learning the early warning on history before {pledge} (comparables by title) ...")
    from data.market import derive_market
    from monitoring.warning import title_comparables, train_warning
    warning = train_warning(orders, derive_market(orders), pledge, config,
                            neighbours=title_comparables(retail.spus))
    learned = replay(orders, pledge, end, config, warning=warning) if warning is not None else None
    runs = [("rules (today's thresholds)", rules.score), ("naive baseline: 14-day units < half the pre-pledge "
                                                          "rate", rules.naive)]
    if learned is not None:
        runs.insert(0, (f"learned early warning (threshold {warning.threshold_:.3f})", learned.score))
    for name, result in runs:
        table = Table(title=f"replay, {name}: {result.n_positions} positions pledged {pledge}, swept daily to {end}")
        for column in ("", "alert >= 7 days before", "alert later", "no alert", "total"):
            table.add_column(column, justify="right")
        table.add_row("loss event", str(result.caught), str(result.late), str(result.missed), str(result.n_events))
        table.add_row("no event", str(result.false_alarms), "-", str(result.quiet_ok),
                      str(result.false_alarms + result.quiet_ok))
        console.print(table)
    if learned is None:
        _fail(f"too few loss events before {pledge} to learn an early warning; the rules' figures are above")
    actions = config["actions"]
    curve = warning_curve(learned, min(actions["topup_ltv"], actions["liquidate_ltv"]))
    table = Table(title="learned early warning at other thresholds (same positions and sweeps)")
    for column in curve.columns:
        table.add_column(column, justify="right")
    for row in curve.iter_rows():
        table.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row])
    console.print(table)
    plot = write_replay_plot(curve, {"rules": rules.score, "naive": rules.naive, "learned": learned.score},
                             Path(reports) / f"replay-{pledge}.png")
    console.print(f"plot: {plot}")
    score = learned.score
    print(f"flag_recall={score.flag_recall:.4f} false_alarm_rate={score.false_alarm_rate:.4f} "
          f"median_lead_days={score.median_lead_days:.1f} threshold={warning.threshold_:.4f} "
          f"training_false_alarm_rate={warning.training_false_alarm_rate_:.4f} "
          f"rules_flag_recall={rules.score.flag_recall:.4f} rules_false_alarm_rate={rules.score.false_alarm_rate:.4f} "
          f"rules_median_lead_days={rules.score.median_lead_days:.1f} naive_flag_recall={rules.naive.flag_recall:.4f} "
          f"naive_false_alarm_rate={rules.naive.false_alarm_rate:.4f} n_events={score.n_events} "
          f"n_positions={score.n_positions}")


@app.command("backtest")
def backtest_command(
    online_retail: Annotated[Path, typer.Option(help="Online Retail order lines (file or folder).")],
    start: Annotated[str, typer.Option("--from", help="ISO date: the first pledge date is the first day of a "
                                                      "month on or after it.")] = "2011-05-01",
    until: Annotated[str, typer.Option(help="ISO date: the last pledge date is on or before it.")] = "2011-07-01",
    horizon_days: Annotated[int, typer.Option(min=1, help="Days to sell the stock after a default.")] = 60,
    salvage: Annotated[float, typer.Option(help="Share of P that units unsold by then fetch.")] = 0.25,
    retrain: Annotated[str, typer.Option(help="'each': train before every pledge date on the lines before it; "
                                              "'once': train at the first date only.")] = "each",
    report: Annotated[Optional[Path], typer.Option(help="HTML report to write.")] = Path("var/reports/backtest.html"),
    out: Annotated[Optional[Path], typer.Option(help="Write every position (parquet).")] = None,
) -> None:
    """Walk-forward lending backtest: lend the pledge price, sell at the prices the market paid, count breaches."""
    from valuation import backtest

    summary, positions, seconds = _run_backtest(online_retail, start, until, horizon_days, salvage, retrain)
    _print_backtest(summary, positions, retrain, seconds)
    if out:
        positions.write_parquet(out)
    if report:
        from valuation.backtest_report import write_report

        console.print(f"report: {write_report(positions, summary, report, 'Lending backtest, Online Retail')}")
    print(backtest.key_values(summary))


def _run_backtest(path: Path, start: str, until: str, horizon_days: int, salvage: float, retrain: str):
    from datetime import date as _date

    from valuation import backtest

    try:
        first, last = _date.fromisoformat(start), _date.fromisoformat(until)
    except ValueError as exc:
        _fail(f"--from/--until: not an ISO date ({exc})")
    try:
        return backtest.run_online_retail(path, first, last, horizon_days=horizon_days, salvage=salvage,
                                          retrain=retrain, log=console.print)
    except (DataFileError, backtest.BacktestError) as exc:
        _fail(str(exc))


def _print_backtest(summary: dict, positions: pl.DataFrame, retrain: str, seconds: float) -> None:
    from valuation import backtest

    table = Table(title=f"lending backtest: {summary['ours']['n']} positions, model retrained {retrain}, "
                        f"{seconds:.0f} s")
    for column in backtest.TABLE_HEADER:
        table.add_column(column, justify="left" if column == "lender" else "right")
    for row in backtest.table_rows(summary):
        table.add_row(*row)
    console.print(table)
    console.print(f"decisions: {dict(positions['decision'].value_counts().iter_rows())}; haircut: "
                  f"{dict(positions['haircut_source'].value_counts().iter_rows())}")


def _model_for_sweep(model: Optional[str]):
    """(spu_ids -> model values, the learned early warning) from the BentoML model; (None, None) when there
    is none and none was asked for."""
    from valuation.model import PledgeModel

    try:
        pledge_model = PledgeModel.load(model) if model and Path(model).is_dir() else \
            PledgeModel.load_from_store(model or "pledgeval:latest")
    except Exception as exc:
        if model:
            _fail(f"cannot load model '{model}': {exc}")
        return None, None
    known = set(pledge_model.catalog.spu_ids)

    def values(spu_ids: list[str]) -> pl.DataFrame:
        answers = pledge_model.price([{"spu_id": s} for s in spu_ids if s in known])
        return answers.select("spu_id", "value", "value_low", "value_high").drop_nulls("value") if answers.height \
            else pl.DataFrame(schema={"spu_id": pl.String, "value": pl.Float64, "value_low": pl.Float64,
                                      "value_high": pl.Float64})
    return values, pledge_model.warning


def _load_model(model: str):
    from valuation.model import PledgeModel

    try:
        return PledgeModel.load(model) if Path(model).is_dir() else PledgeModel.load_from_store(model)
    except Exception as exc:  # bentoml raises its own NotFound; the user needs the tag and a next step
        _fail(f"cannot load model '{model}': {exc}. Train one first: pledgeval train --catalog DIR")


def _encoder(config: str, checkpoint: Optional[Path]):
    from embeddings import create_encoder

    if checkpoint is None and DEFAULT_TOWER.is_file() and config == "minilm-rn-tiny":
        checkpoint = DEFAULT_TOWER
    if checkpoint is not None and not checkpoint.is_file():
        _fail(f"checkpoint not found: {checkpoint}")
    return create_encoder(config, checkpoint=checkpoint)


def _catalog(folder: Path, tables) -> dict[str, pl.DataFrame]:
    try:
        return load_catalog(folder, tables)
    except DataFileError as exc:
        _fail(str(exc))


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
