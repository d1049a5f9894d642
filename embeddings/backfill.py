"""Embedding backfill: a catalogue in parquet shards to vector shards, in this process or on a Ray cluster.

Input: a folder of SPU shards (``spus*.parquet``, or ``spus/*.parquet``), one row per SPU: ``spu_id``,
``title``, optional ``images`` (paths, relative to the shard's folder or absolute), ``image_bytes``
(encoded images), ``reviews`` (review texts) and ``review_ratings``, and the order features
(``embeddings.features.ORDER_FEATURES``) passed through as they are.

Output: one vector shard per input shard (``vectors-<shard>.parquet``: spu_id, the content vector and the
title, image and review vectors, what each SPU has, review negativity and rating, the order features,
and the encoder fingerprint), the rows that could not be embedded with their reasons
(``rejects-<shard>.parquet``), and ``manifest.json``, rewritten atomically after each shard: a shard is
done when the manifest says so. A run stopped at any point is finished by running it again, which
redoes only the shards the manifest lacks; vectors written by another encoder are refused.

The two engines run the same ``ShardEmbedder`` over the same batches: ``local`` in this process, ``ray``
as a Ray Data pipeline (``read_parquet`` -> ``map_batches`` on an actor pool, one encoder per actor,
loaded once), its results streamed back and written here shard by shard.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data.files import atomic_path, write_atomic
from embeddings.encoder import EncoderConfig, ImageError, config_fingerprint, load_image
from embeddings.features import ORDER_FEATURES

VECTOR_COLUMNS = ("content", "title", "image", "reviews")
FLAG_COLUMNS = ("has_title", "has_image", "has_reviews")
REQUIRED = ("spu_id", "title")
MANIFEST = "manifest.json"
SHARD_COLUMN = "_shard"


class BackfillError(ValueError):
    """A catalogue or vectors folder that cannot be backfilled as asked (the message says why)."""


@dataclass
class BackfillResult:
    engine: str
    fingerprint: str
    shards: int                 # in the catalogue
    done: int                   # embedded by this run
    skipped: int                # already in the manifest
    rows: int = 0               # embedded by this run
    rejects: int = 0            # rows of this run that could not be embedded
    seconds: float = 0.0
    written: list[str] = field(default_factory=list)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def catalog_shards(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    shards = sorted(folder.glob("spus*.parquet")) + sorted((folder / "spus").glob("*.parquet"))
    if not shards:
        raise BackfillError(f"{folder}: no SPU shards (spus*.parquet or spus/*.parquet)")
    names = [s.name for s in shards]
    if len(set(names)) != len(names):
        raise BackfillError(f"{folder}: two shards share a file name; each shard's name must be unique")
    for shard in shards:
        columns = pq.read_schema(shard).names
        missing = [c for c in REQUIRED if c not in columns]
        if missing:
            raise BackfillError(f"{shard}: missing column(s) {', '.join(missing)} (a shard needs spu_id and title)")
    return shards


def encoder_config(config: str | Path | EncoderConfig, checkpoint: str | Path | None) -> EncoderConfig:
    config = config if isinstance(config, EncoderConfig) else EncoderConfig.load(config)
    return config.with_checkpoint(checkpoint) if checkpoint is not None else config


class ShardEmbedder:
    """Embeds batches of shard rows (pyarrow tables with the shard's name in ``_shard``): the callable
    both engines run, one per process or Ray actor, holding its encoder."""

    def __init__(self, config: EncoderConfig, folders: dict[str, str], batch_size: int = 256,
                 torch_threads: int | None = None):
        import torch

        from embeddings.encoder import create_encoder
        from embeddings.spu import SpuEmbedder

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.embedder = SpuEmbedder(create_encoder(config), batch_size=batch_size)
        self.folders = {name: Path(folder) for name, folder in folders.items()}
        self.dim = self.embedder.encoder.dim

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = pl.from_arrow(batch)
        ids, titles, images = self._inputs(rows)
        errors: list[str | None] = [None] * len(ids)
        seen: dict[str, int] = {}
        for i, spu_id in enumerate(ids):
            if not spu_id or not spu_id.strip():
                errors[i] = "spu_id: blank"
            elif spu_id in seen:
                errors[i] = f"spu_id: also in row {seen[spu_id]} of this batch"
            else:
                seen[spu_id] = i
        try:
            vectors = self._embed(rows, ids, titles, images, errors)
        except ImageError:
            # a photo that cannot be read rejects its row, not the batch; the photos are opened one by one
            # only here, so a clean batch is decoded once
            for i, row_images in enumerate(images):
                for k, image in enumerate(row_images):
                    try:
                        load_image(image, f"images[{k}]")
                    except ImageError as exc:
                        errors[i] = errors[i] or str(exc)
                        break
            vectors = self._embed(rows, ids, titles, images, errors)
        return self._table(rows, errors, vectors)

    def _inputs(self, rows: pl.DataFrame) -> tuple[list[str], list[str], list[list]]:
        """spu_ids, titles, and each row's images: paths resolved against its shard's folder, then bytes."""
        ids = rows["spu_id"].to_list()
        titles = [t or "" for t in rows["title"].to_list()]
        folders = [self.folders[name] for name in rows[SHARD_COLUMN].to_list()]
        paths = rows["images"].to_list() if "images" in rows.columns else [None] * len(ids)
        images = [[p if os.path.isabs(p) else str(folder / p) for p in (ps or [])] for ps, folder in zip(paths, folders)]
        if "image_bytes" in rows.columns:
            images = [ps + list(bs or []) for ps, bs in zip(images, rows["image_bytes"].to_list())]
        return ids, titles, images

    def _embed(self, rows: pl.DataFrame, ids: list[str], titles: list[str], images: list[list],
               errors: list[str | None]) -> dict[str, np.ndarray]:
        keep = [i for i, e in enumerate(errors) if e is None]
        kept_ids = [ids[i] for i in keep]
        title, image, content, has_title, has_image = self.embedder.content_part(
            [titles[i] for i in keep], [images[i] for i in keep])
        reviews = None
        if "reviews" in rows.columns and keep:
            mine = rows[keep]
            ratings = (pl.col("review_ratings") if "review_ratings" in rows.columns
                       else pl.col("reviews").list.eval(pl.lit(None, dtype=pl.Int64)))
            reviews = (mine.select("spu_id", pl.col("reviews").alias("text"), ratings.alias("rating"))
                       .explode("text", "rating").drop_nulls("text"))
        review, negativity, rating, has_reviews, _ = self.embedder.review_part(kept_ids, reviews)
        return {"content": content, "title": title, "image": image, "reviews": review, "has_title": has_title,
                "has_image": has_image, "has_reviews": has_reviews, "negativity": negativity, "rating": rating}

    def _table(self, rows: pl.DataFrame, errors: list[str | None], vectors: dict[str, np.ndarray]) -> pa.Table:
        keep = [i for i, e in enumerate(errors) if e is None]
        kept = rows[keep]
        out = {"spu_id": kept["spu_id"], SHARD_COLUMN: kept[SHARD_COLUMN]}
        for name in VECTOR_COLUMNS:
            out[name] = pl.Series(name, vectors[name], dtype=pl.Array(pl.Float32, self.dim))
        for name in FLAG_COLUMNS:
            out[name] = pl.Series(name, vectors[name], dtype=pl.Boolean)
        out["negativity"] = pl.Series("negativity", vectors["negativity"], dtype=pl.Float32)
        out["rating"] = pl.Series("rating", vectors["rating"], dtype=pl.Float64)
        for name in ORDER_FEATURES:
            out[name] = (kept[name].cast(pl.Float64) if name in kept.columns
                         else pl.Series(name, [None] * len(keep), dtype=pl.Float64))
        out["error"] = pl.Series("error", [None] * len(keep), dtype=pl.String)
        rejected = [i for i, e in enumerate(errors) if e is not None]
        rejects = pl.DataFrame({"spu_id": rows["spu_id"].gather(rejected), SHARD_COLUMN: rows[SHARD_COLUMN].gather(rejected),
                                "error": [errors[i] for i in rejected]}, schema={"spu_id": pl.String, SHARD_COLUMN: pl.String,
                                                                                  "error": pl.String})
        return pl.concat([pl.DataFrame(out), rejects], how="diagonal_relaxed").to_arrow()


# -- the manifest -------------------------------------------------------------------------------
def _read_manifest(out: Path, fingerprint: str, config_name: str) -> dict:
    path = out / MANIFEST
    if not path.is_file():
        return {"fingerprint": fingerprint, "encoder": config_name, "shards": {}}
    manifest = json.loads(path.read_text())
    if manifest.get("fingerprint") != fingerprint:
        raise BackfillError(f"{out}: its vectors were written by encoder {manifest.get('fingerprint')} "
                            f"({manifest.get('encoder')}); this run's encoder is {fingerprint} ({config_name}). "
                            "Write to another --out, or remove this one to embed everything again")
    for name, entry in manifest["shards"].items():
        vectors = out / entry["vectors"]
        if vectors.is_file():
            written = pq.read_table(vectors, columns=["fingerprint"]).column(0).unique().to_pylist()
            if any(f != fingerprint for f in written):
                raise BackfillError(f"{vectors}: written by encoder {written}, not {fingerprint}: refused")
    return manifest


def _write_shard(out: Path, manifest: dict, shard: str, table: pa.Table, fingerprint: str) -> tuple[int, int]:
    """The shard's vectors and rejects, then the manifest naming them: each file atomically, the manifest
    last, so a shard is in the manifest only once its files are whole."""
    frame = pl.from_arrow(table).sort("spu_id")
    rejects = frame.filter(pl.col("error").is_not_null()).select("spu_id", "error")
    vectors = (frame.filter(pl.col("error").is_null()).drop("error", SHARD_COLUMN)
               .with_columns(pl.lit(fingerprint).alias("fingerprint")))
    stem = Path(shard).stem
    with atomic_path(out / f"vectors-{stem}.parquet") as tmp:
        vectors.write_parquet(tmp)
    with atomic_path(out / f"rejects-{stem}.parquet") as tmp:
        rejects.write_parquet(tmp)
    manifest["shards"][shard] = {"vectors": f"vectors-{stem}.parquet", "rejects": f"rejects-{stem}.parquet",
                                 "rows": vectors.height, "rejected": rejects.height}
    write_atomic(out / MANIFEST, json.dumps(manifest, indent=1))
    return vectors.height, rejects.height


def vector_shards(folder: str | Path) -> list[Path]:
    """The vector shards a backfill completed (those its manifest names), in shard order."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise BackfillError(f"{folder}: no backfill manifest ({MANIFEST}); run pledgeval backfill first")
    manifest = json.loads(path.read_text())
    return [folder / entry["vectors"] for _, entry in sorted(manifest["shards"].items())]


# -- the run ------------------------------------------------------------------------------------
def backfill(catalog: str | Path, out: str | Path, *, config: str | Path | EncoderConfig = "minilm-rn-tiny",
             checkpoint: str | Path | None = None, engine: str = "local", ray_address: str | None = None,
             actors: int | None = None, batch_size: int = 256, on_shard: Callable[[str], None] | None = None,
             log: Callable[[str], None] | None = print) -> BackfillResult:
    """Embed every shard of ``catalog`` the manifest in ``out`` lacks. ``on_shard`` is called after each
    shard is written (a progress hook; tests stop a run there)."""
    if engine not in ("local", "ray"):
        raise BackfillError(f"engine: 'local' or 'ray', not {engine!r}")
    if batch_size < 1:
        raise BackfillError(f"batch_size: must be >= 1, got {batch_size}")
    catalog, out = Path(catalog).resolve(), Path(out).resolve()
    shards = catalog_shards(catalog)
    encoder = encoder_config(config, checkpoint)
    fingerprint = config_fingerprint(encoder)
    out.mkdir(parents=True, exist_ok=True)
    manifest = _read_manifest(out, fingerprint, encoder.name)
    todo = [s for s in shards if s.name not in manifest["shards"]]
    result = BackfillResult(engine, fingerprint, len(shards), 0, len(shards) - len(todo))
    if log and result.skipped:
        log(f"{result.skipped} of {len(shards)} shards already embedded (manifest): {len(todo)} to do")
    if not todo:
        return result
    started = time.perf_counter()
    folders = {s.name: str(s.parent) for s in todo}

    def finish(name: str, table: pa.Table) -> None:
        rows, rejected = _write_shard(out, manifest, name, table, fingerprint)
        result.done, result.rows, result.rejects = result.done + 1, result.rows + rows, result.rejects + rejected
        result.written.append(name)
        if log:
            log(f"{name}: {rows} SPUs embedded" + (f", {rejected} rejected (see rejects-{Path(name).stem}.parquet)"
                                                     if rejected else ""))
        if on_shard:
            on_shard(name)

    if engine == "local":
        embedder = ShardEmbedder(encoder, folders, batch_size)
        for shard in todo:
            table = _with_shard(pq.read_table(shard), shard.name)
            parts = [embedder(table.slice(i, batch_size)) for i in range(0, table.num_rows, batch_size)]
            finish(shard.name, pa.concat_tables(parts) if parts else table.slice(0, 0))
    else:
        _run_on_ray(todo, folders, encoder, batch_size, ray_address, actors, finish)
    result.seconds = time.perf_counter() - started
    return result


def _with_shard(table: pa.Table, name: str) -> pa.Table:
    return table.append_column(SHARD_COLUMN, pa.array([name] * table.num_rows, pa.string()))


def _run_on_ray(todo: list[Path], folders: dict[str, str], encoder: EncoderConfig, batch_size: int,
                address: str | None, actors: int | None, finish: Callable[[str, pa.Table], None]) -> None:
    """Ray Data: read the shards, embed on an actor pool, stream the results back; a shard is written as
    soon as all its rows are back. Actors get a fraction of a CPU each so that the read tasks always
    have one: a pool that takes every CPU (or all but half of one) starves the reads and stalls."""
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        if address:
            _check_reachable(address)
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False,
                     **({} if address else {"num_cpus": os.cpu_count()}))
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise BackfillError(f"--ray-address {address}: cannot join the Ray cluster ({exc})") from exc
    try:
        cpus = max(1.0, float(ray.cluster_resources().get("CPU", 1)))
        size = actors or max(1, int(cpus))
        # one CPU stays free for the file listing and read tasks (each asks for a whole one); the actors
        # share the rest, each running torch on one thread
        per_actor = max(0.05, min(1.0, (cpus - 1) / size)) if cpus > 1 else 0.5
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        expected = {s.name: pq.ParquetFile(s).metadata.num_rows for s in todo}
        # blocks of a few batches (a streaming repartition): the reader may hand over every small file as
        # one block, and one block is embedded by one actor while the others wait
        dataset = (ray.data.read_parquet([str(s) for s in todo], include_paths=True)
                   .repartition(target_num_rows_per_block=4 * batch_size)
                   .map_batches(_ShardEmbedderActor, fn_constructor_kwargs={"config": encoder, "folders": folders,
                                                                          "batch_size": batch_size},
                                batch_size=batch_size, batch_format="pyarrow", num_cpus=per_actor,
                                compute=ray.data.ActorPoolStrategy(size=size)))
        pending: dict[str, list[pa.Table]] = defaultdict(list)
        seen: dict[str, int] = defaultdict(int)
        for empty in [n for n, rows in expected.items() if rows == 0]:
            finish(empty, pa.table({"spu_id": pa.array([], pa.string()), "error": pa.array([], pa.string()),
                                    SHARD_COLUMN: pa.array([], pa.string())}))
        for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
            for name in set(batch.column(SHARD_COLUMN).to_pylist()):
                part = batch.filter(pc.equal(batch.column(SHARD_COLUMN), name))
                pending[name].append(part)
                seen[name] += part.num_rows
                if seen[name] == expected[name]:
                    finish(name, pa.concat_tables(pending.pop(name), promote_options="default"))
        unfinished = [n for n in expected if n in pending]
        if unfinished:
            raise BackfillError(f"the Ray pipeline ended with shards incomplete: {unfinished}")
    finally:
        if started_here:
            ray.shutdown()


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds on an address nobody answers at: ray.init itself waits minutes for a missing head."""
    import socket

    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise BackfillError(f"--ray-address {address}: expected host:port (the head's GCS port, 6379 by default), "
                            "ray://host:port or auto")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise BackfillError(f"--ray-address {address}: nothing answers there ({exc}); start the head with "
                            "`ray start --head` and give its address") from exc


class _ShardEmbedderActor(ShardEmbedder):
    """The Ray actor: Ray Data hands it batches with ``path`` (the shard file); the shard's name is kept."""

    def __init__(self, config: EncoderConfig, folders: dict[str, str], batch_size: int):
        super().__init__(config, folders, batch_size, torch_threads=1)

    def __call__(self, batch: pa.Table) -> pa.Table:
        names = [Path(p).name for p in batch.column("path").to_pylist()]
        batch = batch.drop_columns(["path"]).append_column(SHARD_COLUMN, pa.array(names, pa.string()))
        return super().__call__(batch)
