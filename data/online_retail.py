"""Adapter for the UCI Online Retail order-line format (InvoiceNo, StockCode, Description, Quantity,
InvoiceDate, UnitPrice, CustomerID, Country) into our ``spus``, ``orders`` and ``market`` tables."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from data.loaders import DataFileError, Problem, read_raw, validate
from data.market import derive_market
from data.schemas import ORDERS, SPUS

COLUMNS = ("InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice")
# Real products carry a 5-digit code with an optional variant suffix; POST, DOT, M, BANK CHARGES,
# AMAZONFEE, gift vouchers and the like are fees and adjustments, not goods a lender can hold.
PRODUCT_CODE = r"^\d{5}[A-Za-z]{0,3}$"


@dataclass
class OnlineRetail:
    spus: pl.DataFrame
    orders: pl.DataFrame
    market: pl.DataFrame
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> order lines left out


def read_online_retail(path: Path | str, *, until: str | None = None) -> OnlineRetail:
    """Read an Online Retail file (parquet/CSV/JSONL); ``until`` (ISO date) keeps lines before that day."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.parquet")) or sorted(path.glob("*.csv"))
        if not files:
            raise DataFileError(path, "online_retail", [Problem(None, None, "no .parquet or .csv file in folder")])
        raw = pl.concat([read_raw(f, "online_retail") for f in files], how="diagonal_relaxed")
    else:
        raw = read_raw(path, "online_retail")
    missing = [c for c in COLUMNS if c not in raw.columns]
    if missing:
        raise DataFileError(path, "online_retail",
                            [Problem(None, c, "missing required column of the Online Retail format") for c in missing])

    lines = raw.select(
        pl.col("InvoiceNo").cast(pl.String).str.strip_chars(),
        pl.col("StockCode").cast(pl.String).str.strip_chars().str.to_uppercase(),
        pl.col("Description").cast(pl.String).str.strip_chars(),
        pl.col("Quantity").cast(pl.Int64, strict=False),
        _as_datetime(pl.col("InvoiceDate"), raw.schema["InvoiceDate"]),
        pl.col("UnitPrice").cast(pl.Float64, strict=False),
        _customer(raw),
    )
    if until is not None:
        lines = lines.filter(pl.col("InvoiceDate") < pl.lit(until).str.to_datetime())

    reasons = {
        "not a product code (fees, postage, adjustments)": ~pl.col("StockCode").str.contains(PRODUCT_CODE),
        "no price (UnitPrice <= 0, missing or NaN)": ~(pl.col("UnitPrice") > 0) | pl.col("UnitPrice").is_nan(),
        "zero or missing quantity": pl.col("Quantity").fill_null(0) == 0,
        "stock adjustment (negative quantity on a sales invoice)":
            (pl.col("Quantity") < 0) & ~pl.col("InvoiceNo").str.starts_with("C"),
        "missing invoice, date or description":
            pl.any_horizontal(pl.col("InvoiceNo", "InvoiceDate", "Description").is_null()),
    }
    dropped, keep = {}, pl.lit(True)
    for reason, bad in reasons.items():
        bad = bad.fill_null(True) & keep
        dropped[reason] = int(lines.select(bad.sum()).item())
        keep = keep & ~bad
    lines = lines.filter(keep)

    orders_raw = lines.select(
        (pl.col("InvoiceNo") + ":" + pl.int_range(pl.len()).over("InvoiceNo").cast(pl.String)).alias("order_id"),
        pl.col("StockCode").alias("spu_id"),
        pl.col("Quantity").abs().alias("quantity"),
        pl.col("UnitPrice").alias("unit_price"),
        pl.col("InvoiceDate").alias("ordered_at"),
        pl.col("InvoiceNo").str.starts_with("C").alias("cancelled"),
        pl.col("CustomerID").alias("customer_id"),
    )
    # The most used spelling of a code is its title; ties go to the first seen, so the result is stable.
    spus_raw = (
        lines.group_by("StockCode", "Description", maintain_order=True).len()
        .sort("len", descending=True, maintain_order=True)
        .group_by("StockCode", maintain_order=True).first()
        .select(pl.col("StockCode").alias("spu_id"), pl.col("Description").alias("title"))
        .sort("spu_id")
    )
    spus = validate(spus_raw, SPUS, source=path).table
    orders = validate(orders_raw, ORDERS, source=path).table
    return OnlineRetail(spus=spus, orders=orders, market=derive_market(orders), dropped=dropped)


def title_variants(path: Path | str) -> pl.DataFrame:
    """Every distinct (spu_id, title) spelling: codes with several are same-SPU positive pairs."""
    raw = read_raw(Path(path), "online_retail")
    return (
        # zero-price lines are stock adjustments whose "descriptions" are notes ("damaged", "check")
        raw.filter(pl.col("UnitPrice").cast(pl.Float64, strict=False) > 0)
        .select(pl.col("StockCode").cast(pl.String).str.strip_chars().str.to_uppercase().alias("spu_id"),
                pl.col("Description").cast(pl.String).str.strip_chars().alias("title"))
        .filter(pl.col("spu_id").str.contains(PRODUCT_CODE) & pl.col("title").is_not_null())
        .unique(maintain_order=True)
        .sort("spu_id", "title")
    )


def _customer(raw: pl.DataFrame) -> pl.Expr:
    """CustomerID as text ("17850", also where a CSV read it as 17850.0); null for guest orders or
    where the file has no such column."""
    if "CustomerID" not in raw.columns:
        return pl.lit(None, dtype=pl.String).alias("CustomerID")
    column = pl.col("CustomerID")
    if raw.schema["CustomerID"].is_numeric():
        column = column.cast(pl.Int64, strict=False)
    return column.cast(pl.String).str.strip_chars().str.strip_suffix(".0").alias("CustomerID")


def _as_datetime(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    if isinstance(dtype, pl.Datetime):
        return expr.cast(pl.Datetime("us"))
    return expr.cast(pl.String).str.to_datetime(strict=False, time_unit="us")
