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
