"""The model: train the image tower, build and search the SPU index, train the model, price SPUs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import polars as pl
import typer

from data import DataFileError, load_catalog
from serving.cli._common import (DEFAULT_CACHE, DEFAULT_ENCODER, CacheOption, ConfigOption, app, console,
                                     embed_app, errors, fail, index_app)
from valuation.pipeline import DEFAULT_INDEX, DEFAULT_TOWER, MODEL_TAG, TOWER_EPOCHS


@embed_app.command("train")
def embed_train(
    catalog: Annotated[Path, typer.Option(help="Catalogue folder with spus (+ images).")],
    out: Annotated[Path, typer.Option(help="Where to save the image-tower checkpoint.")] = DEFAULT_TOWER,
    config: ConfigOption = DEFAULT_ENCODER,
    epochs: int = TOWER_EPOCHS,
    batch_size: int = 128,
    seed: int = 0,
    time_budget: Annotated[Optional[float], typer.Option(help="Stop after the epoch that passes this many "
                                                             "seconds.")] = None,
) -> None:
    """Train the image tower against the locked text tower (open_clip ClipLoss) on (image, title) pairs."""
    from valuation.pipeline import train_tower

    try:
        spus = load_catalog(catalog, ("spus",))["spus"]
        report = train_tower(spus, out, config, epochs=epochs, batch_size=batch_size, seed=seed,
                             time_budget=time_budget, log=console.print)
    except (DataFileError, ValueError) as exc:
        fail(f"{catalog}: {exc}")
    console.print(f"held-out image->title recall@1 {report.recall_at_1:.3f}  @5 {report.recall_at_5:.3f}  "
                  f"@10 {report.recall_at_10:.3f}  (chance@5 {report.chance_at_5:.3f}, {report.n_test} SPUs); "
                  f"{report.seconds:.0f}s; saved {out}")


@index_app.command("build")
def index_build(
    catalog: Annotated[Optional[Path], typer.Option(help="Catalogue folder (spus, reviews, orders).")] = None,
    online_retail: Annotated[Optional[Path], typer.Option(help="Online Retail order lines instead.")] = None,
    vectors: Annotated[Optional[Path], typer.Option(help="Vector shards of `pledgeval backfill` instead: added "
                                                         "shard by shard, never all in memory.")] = None,
    out: Annotated[Path, typer.Option(help="Index folder.")] = DEFAULT_INDEX,
    config: ConfigOption = DEFAULT_ENCODER,
    checkpoint: Annotated[Optional[Path], typer.Option(help="Trained tower weights (default: "
                                                            f"{DEFAULT_TOWER} when it exists).")] = None,
    kind: Annotated[str, typer.Option(help="auto | flat | hnsw | ivfsq | ivfpq (auto: flat or hnsw by size; "
                                           "ivfsq from --vectors).")] = "auto",
    cache: CacheOption = DEFAULT_CACHE,
    sample: Annotated[int, typer.Option(help="--vectors: vectors drawn to train the IVF lists and quantiser.")]
    = 100_000,
    parts: Annotated[int, typer.Option(min=1, help="--vectors with an IVF kind: split the index into this many "
                                                   "parts (one file each, searched together; a machine can "
                                                   "load only some).")] = 1,
) -> None:
    """Embed every SPU (or take the backfilled vectors) and write the FAISS SPU index (atomically)."""
    if sum(x is not None for x in (catalog, online_retail, vectors)) != 1:
        fail("give one of --catalog, --online-retail or --vectors")
    if vectors is not None:
        _index_from_shards(vectors, out, kind, sample, parts)
        return
    if parts != 1:
        fail("--parts: only an index built from --vectors can be split into parts")
    from embeddings import SpuEmbedder
    from embeddings.catalog import build_spu_index
    from valuation.pipeline import encoder_for, training_tables

    try:
        tables = training_tables(catalog, online_retail)
        encoder = encoder_for(config, checkpoint)
    except (DataFileError, ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    embedder = SpuEmbedder(encoder, cache_path=cache, progress=True)
    index, _ = build_spu_index(embedder, tables["spus"], tables.get("reviews"), tables.get("orders"), kind=kind)
    index.save(out)
    console.print(f"indexed {len(index)} SPUs ({index.resolved_kind(len(index))}, encoder "
                  f"{index.fingerprint}) -> {out}")


def _index_from_shards(vectors: Path, out: Path, kind: str, sample: int, parts: int) -> None:
    import json

    from embeddings import SpuIndex
    from embeddings.backfill import MANIFEST, BackfillError, vector_shards

    try:
        shards = vector_shards(vectors)
        fingerprint = json.loads((vectors / MANIFEST).read_text())["fingerprint"]
        started = time.perf_counter()
        index = SpuIndex.from_shards(shards, fingerprint, "ivfsq" if kind == "auto" else kind, sample=sample,
                                     parts=parts)
    except (BackfillError, ValueError) as exc:
        fail(str(exc))
    build_s = time.perf_counter() - started
    recall = index.recall_against_exact(shards)
    index.save(out)
    in_parts = f" in {index.parts} parts" if index.parts > 1 else ""
    console.print(f"indexed {len(index)} SPUs from {len(shards)} shards{in_parts} ({index.resolved_kind(len(index))}, encoder "
                  f"{fingerprint}) in {build_s:.0f}s -> {out}; recall@10 against exact search on 200 of its "
                  f"vectors: {recall:.3f}")


@app.command("backfill")
def backfill_command(
    catalog: Annotated[Path, typer.Option(help="Folder of SPU shards: spus*.parquet or spus/*.parquet.")],
    out: Annotated[Path, typer.Option(help="Folder for the vector shards and their manifest.")],
    engine: Annotated[str, typer.Option(help="local (this process) | ray (a Ray cluster).")] = "local",
    ray_address: Annotated[Optional[str], typer.Option(help="Ray cluster to join (default: start a local one "
                                                             "on this machine's CPUs).")] = None,
    actors: Annotated[Optional[int], typer.Option(min=1, help="Encoder actors (default: one per CPU).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="SPUs per encoder call.")] = 256,
    config: ConfigOption = DEFAULT_ENCODER,
    checkpoint: Annotated[Optional[Path], typer.Option(help="Trained tower weights (default: "
                                                            f"{DEFAULT_TOWER} when it exists).")] = None,
) -> None:
    """Embed a catalogue's SPU shards into vector shards, resumably: a second run redoes only the shards
    the manifest lacks. Then `pledgeval index build --vectors OUT`."""
    from embeddings.backfill import BackfillError, backfill
    from valuation.pipeline import default_checkpoint

    try:
        result = backfill(catalog, out, config=config, checkpoint=default_checkpoint(config, checkpoint),
                          engine=engine, ray_address=ray_address, actors=actors, batch_size=batch_size,
                          log=console.print)
    except (BackfillError, FileNotFoundError) as exc:
        fail(str(exc))
    console.print(f"{result.done} shards embedded ({result.rows} SPUs, {result.rejects} rejected) and "
                  f"{result.skipped} already done, in {result.seconds:.0f}s on {result.engine}; encoder "
                  f"{result.fingerprint} -> {out}")


@index_app.command("search")
def index_search(
    title: Annotated[Optional[str], typer.Option(help="Search by title.")] = None,
    image: Annotated[Optional[Path], typer.Option(help="Search by image file.")] = None,
    index: Annotated[Path, typer.Option(help="Index folder.")] = DEFAULT_INDEX,
    k: int = 5,
    config: ConfigOption = DEFAULT_ENCODER,
    checkpoint: Optional[Path] = None,
) -> None:
    """Top-k known SPUs for a title and/or an image."""
    from rich.table import Table

    from embeddings import ImageError, IndexMismatchError, SpuEmbedder, SpuIndex
    from valuation.pipeline import encoder_for

    try:
        encoder = encoder_for(config, checkpoint)
        spu_index = SpuIndex.load(index, fingerprint=encoder.fingerprint)
        query = SpuEmbedder(encoder).query(title, [image] if image else [])
    except (IndexMismatchError, FileNotFoundError, ImageError, ValueError) as exc:
        fail(str(exc))
    hits = spu_index.search(query, k)[0].join(spu_index.meta.select("spu_id", "title"), on="spu_id", how="left",
                                              maintain_order="left")
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
    config: ConfigOption = DEFAULT_ENCODER,
    checkpoint: Annotated[Optional[Path], typer.Option(help="Trained image tower; default: train one on the "
                                                            "catalogue's images (or reuse var/models/).")] = None,
    tower_epochs: int = TOWER_EPOCHS,
    cache: CacheOption = DEFAULT_CACHE,
) -> None:
    """Train encoder tower + SPU index + value heads + calibration + early warning; save as BentoML model
    pledgeval:<version>."""
    from monitoring.jobs import train_and_save
    from valuation.pipeline import training_tables

    try:
        tables = training_tables(catalog, online_retail, until)
        tag, model = train_and_save(tables, "catalog" if catalog else "online_retail", config=config,
                                    checkpoint=checkpoint, tower_epochs=tower_epochs, cache=cache, log=console.print)
    except (DataFileError, ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    m = model.metrics
    console.print(f"saved BentoML model [bold]{tag}[/] ({m['n_spus']} SPUs, {m['n_priced']} priced; cold head "
                  f"{m['cold_head']}, warm head {m['warm_head']}; {m['train_seconds']}s)")


@app.command("price")
def price(
    input: Annotated[Path, typer.Option("--input", help="Requests: spu_id, title?, images?, reviews?, quantity?, "
                                                    "category?, brand?")],
    output: Annotated[Path, typer.Option("--output", help="Answers (.parquet, .csv or .jsonl).")],
    model: Annotated[str, typer.Option("--model", help="BentoML model tag or a saved model folder.")] = MODEL_TAG,
) -> None:
    """Value, interval, haircut, pledge price, decision and comparables for each requested SPU."""
    from data.loaders import read_raw
    from valuation.model import PricingError
    from valuation.pipeline import resolve_model

    try:
        requests = read_raw(input, "price requests")
    except DataFileError as exc:
        fail(str(exc))
    for column in ("images", "reviews"):
        if column in requests.columns and requests.schema[column] == pl.String:
            requests = requests.with_columns(pl.col(column).str.split("|"))
    # CSV cells are read as text already; a JSONL or parquet file may hold a brand of digits as a number
    requests = requests.with_columns(pl.col(c).cast(pl.String) for c in ("category", "brand") if c in requests.columns)
    if "quantity" in requests.columns and requests.schema["quantity"] == pl.String:
        requests = requests.with_columns(pl.col("quantity").str.strip_chars().cast(pl.Int64, strict=False))
    try:
        pledge_model = resolve_model(model)
    except LookupError as exc:
        fail(str(exc))
    started = time.monotonic()
    try:
        answers = pledge_model.price(requests)
    except PricingError as exc:
        fail(str(exc))
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
