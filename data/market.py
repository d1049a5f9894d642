"""Daily market snapshots per SPU, derived from order lines."""

from __future__ import annotations

import polars as pl

from data.schemas import MARKET


def derive_market(orders: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """One row per SPU and day with sales: median unit price of the day's lines and units sold.

    Cancelled lines are left out: a cancelled sale is not a price the market paid.
    """
    return (
        orders.lazy()
        .filter(~pl.col("cancelled"))
        .group_by("spu_id", pl.col("ordered_at").dt.date().alias("date"))
        .agg(pl.col("unit_price").median().alias("price"), pl.col("quantity").sum().alias("units_sold"))
        .sort("spu_id", "date")
        .select(MARKET.column_names)
        .cast(MARKET.polars_schema)
        .collect()
    )


def weekly_volatility(sales: pl.LazyFrame, when: str, price: str) -> pl.LazyFrame:
    """Per SPU: the daily volatility of its price, as the standard deviation of week-to-week log changes
    of its weekly median ``price`` (by ``when``), divided by sqrt(7). Null with fewer than three weeks of
    sales: each caller says what it assumes then. The one definition for the haircut and the monitor."""
    # The weekly median as the middle of each sorted (SPU, week) run: a group-by median over a million
    # SPU-weeks took 0.65 s, this 0.38 s, and its weeks come out in order for the second pass.
    middle = pl.col(price).count().cast(pl.Int64)  # the non-null prices come first in each run (all null: the answer is null)
    low, high = pl.col(price).get(((middle - 1) // 2).clip(0)), pl.col(price).get(middle // 2)
    return (sales.select("spu_id", pl.col(when).dt.truncate("1w").alias("_week"), price)
            .sort("spu_id", "_week", price, nulls_last=True)
            .group_by("spu_id", "_week", maintain_order=True)
            .agg((low + (high - low) * 0.5).alias("_price"))  # as polars interpolates a median: the same floats
            .group_by("spu_id", maintain_order=True)
            .agg((pl.col("_price").log().diff().std() / 7 ** 0.5).alias("volatility")))
