"""Adapter for the Myntra fashion catalogue layout: ``products.parquet`` (id, title, brand, article_type,
catalogue attributes, list and selling price, catalog_added) and ``images/<id>.jpg``.

It gives our ``spus`` table (id -> spu_id, article_type -> category, the image when the file exists) and,
per SPU, the selling price with the time it was listed, the shape the value heads train on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from data.loaders import DataFileError, Problem, read_raw, validate
from data.schemas import SPUS

COLUMNS = ("id", "title", "discounted_price")
ATTRIBUTE_COLUMNS = ("brand", "gender", "article_type", "base_colour", "usage", "season", "year")


@dataclass
class MyntraCatalog:
    spus: pl.DataFrame     # our spus table
    prices: pl.DataFrame   # spu_id, first_sold (listed at), price (selling), list_price
    text: pl.DataFrame     # spu_id, text: title + catalogue attributes, what a desk would type
    unpriced: int          # records without a positive selling price, left out


def read_myntra(folder: Path | str) -> MyntraCatalog:
    """Read a Myntra-layout folder; records without a positive, finite selling price are left out."""
    folder = Path(folder)
    source = folder / "products.parquet"
    if not source.is_file():
        raise DataFileError(source, "myntra", [Problem(None, None, "no products.parquet in folder")])
    raw = read_raw(source, "myntra")
    missing = [c for c in COLUMNS if c not in raw.columns]
    if missing:
        raise DataFileError(source, "myntra", [Problem(None, c, "missing required column of the Myntra layout")
                                               for c in missing])
    for name in ATTRIBUTE_COLUMNS + ("price", "catalog_added", "attributes"):
        if name not in raw.columns:
            raw = raw.with_columns(pl.lit(None).alias(name))

    price = pl.col("discounted_price").cast(pl.Float64, strict=False)
    priced = raw.filter((price > 0) & price.is_finite())
    ids = pl.col("id").cast(pl.String)
    # Relative to the folder: the loader resolves image paths against the data file's folder, so a
    # folder given as a relative path is not prefixed twice.
    image = pl.lit("images/") + ids + ".jpg"
    existing = {p.stem for p in (folder / "images").glob("*.jpg")} if (folder / "images").is_dir() else set()
    spus_raw = priced.select(
        ids.alias("spu_id"),
        pl.col("title").cast(pl.String),
        pl.col("article_type").cast(pl.String).alias("category"),
        pl.col("brand").cast(pl.String),
        pl.when(ids.is_in(list(existing))).then(pl.concat_list(image)).otherwise(pl.lit([], pl.List(pl.String)))
        .alias("images"),
    )
    spus = validate(spus_raw, SPUS, source=source).table
    prices = priced.select(
        ids.alias("spu_id"),
        pl.from_epoch(pl.col("catalog_added").cast(pl.Int64, strict=False).fill_null(0), time_unit="s")
        .alias("first_sold"),
        price.alias("price"),
        pl.col("price").cast(pl.Float64, strict=False).alias("list_price"),
    )
    text = priced.select(ids.alias("spu_id"), pl.struct(pl.all()).map_elements(_describe, return_dtype=pl.String)
                         .alias("text"))
    return MyntraCatalog(spus=spus, prices=prices, text=text, unpriced=raw.height - priced.height)


def _describe(record: dict) -> str:
    """Title, then the catalogue attributes a desk would also know ("Casual, Summer 2012, fabric Cotton")."""
    words = [str(record[c]) for c in ATTRIBUTE_COLUMNS if record.get(c) not in (None, "", "NA")]
    try:
        attributes = json.loads(record.get("attributes") or "{}")
    except (TypeError, ValueError):
        attributes = {}
    extra = [f"{k.lower()} {v}" for k, v in attributes.items() if isinstance(v, (str, int, float)) and str(v).strip()
             and str(v) != "NA"]
    return ". ".join(part for part in (record["title"] or "", " ".join(words), ", ".join(extra)) if part)
