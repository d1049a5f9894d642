"""Loss events of pledged positions on real history, and the replay's book: what an early warning must foresee.

One position is pledged on every SPU on sale at the pledge date (at least 4 invoices in the 8 weeks
before; quantity = 4 weeks of its pre-pledge sales; loan = pledge value at 70% of the pre-pledge median
price).

A **loss event** for an SPU is the first day d >= pledge + 28 on which its units sold in the 28 days
up to d fall below 25% of its average 28-day units in the 8 weeks before the pledge, or the median
unit price in those 28 days falls below 70% of its pre-pledge median.
"""

from __future__ import annotations

import warnings
from datetime import date, timedelta

import numpy as np
import polars as pl

PRE_WEEKS = 8
EVENT_WINDOW = 28


def pledge_book(orders: pl.DataFrame, market: pl.DataFrame, pledge: date) -> pl.DataFrame:
    start = pledge - timedelta(weeks=PRE_WEEKS)
    pre = orders.filter(~pl.col("cancelled") & (pl.col("ordered_at").dt.date() >= start)
                        & (pl.col("ordered_at").dt.date() < pledge))
    invoices = (pre.with_columns(pl.col("order_id").str.split(":").list.first().alias("invoice"))
                .group_by("spu_id").agg(pl.col("invoice").n_unique().alias("invoices"),
                                        pl.col("quantity").sum().alias("units")))
    prices = (market.filter((pl.col("date") >= start) & (pl.col("date") < pledge))
              .group_by("spu_id").agg(pl.col("price").median().alias("pre_price")))
    eligible = invoices.filter(pl.col("invoices") >= 4).join(prices, on="spu_id").sort("spu_id")
    quantity = (eligible["units"] / 2).round().clip(lower_bound=1).cast(pl.Int64)  # 4 weeks of sales
    pledge_unit_price = eligible["pre_price"] * 0.7
    return pl.DataFrame({
        "position_id": "R-" + eligible["spu_id"], "loan_id": "RL-" + eligible["spu_id"],
        "borrower": ["replay"] * eligible.height, "spu_id": eligible["spu_id"], "quantity": quantity,
        "warehouse": ["replay"] * eligible.height, "pledged_at": [pledge] * eligible.height,
        "loan_amount": quantity * pledge_unit_price, "pledge_unit_price": pledge_unit_price,
    })


def daily_matrix(market: pl.DataFrame, spus: list[str], start: date, until: date) -> tuple[np.ndarray, np.ndarray]:
    """Units sold and median price per SPU (rows, in ``spus`` order) and day (columns, ``start`` to ``until``);
    0 / NaN on days without a sale."""
    n = (until - start).days + 1
    units, prices = np.zeros((len(spus), n)), np.full((len(spus), n), np.nan)
    rows = (market.filter((pl.col("date") >= start) & (pl.col("date") <= until))
            .join(pl.DataFrame({"spu_id": spus}, schema={"spu_id": pl.String}).with_row_index("_row"), on="spu_id")
            .select("_row", (pl.col("date") - pl.lit(start)).dt.total_days().alias("_day"), "units_sold", "price"))
    row, day = rows["_row"].to_numpy(), rows["_day"].to_numpy()
    units[row, day], prices[row, day] = rows["units_sold"].to_numpy(), rows["price"].to_numpy()
    return units, prices


def first_loss_offsets(units: np.ndarray, prices: np.ndarray, pledge: int) -> np.ndarray:
    """Per row of a daily matrix whose column ``pledge`` is the pledge day (and which holds the 8 weeks before
    it): the column of the first loss-event day, or -1 when there is none in the matrix."""
    pre = slice(pledge - PRE_WEEKS * 7, pledge)
    base_units = units[:, pre].sum(axis=1) / (PRE_WEEKS * 7 / EVENT_WINDOW)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows: no price, so no price event
        base_price = np.nanmedian(prices[:, pre], axis=1)
        first_day = pledge + EVENT_WINDOW
        if first_day >= units.shape[1]:
            return np.full(len(units), -1)
        summed = np.cumsum(units, axis=1)
        window_units = summed[:, first_day:] - summed[:, first_day - EVENT_WINDOW:-EVENT_WINDOW]
        window_prices = np.lib.stride_tricks.sliding_window_view(prices, EVENT_WINDOW, axis=1)[:, first_day - EVENT_WINDOW + 1:]
        median = np.concatenate([np.nanmedian(window_prices[i:i + 512], axis=2) for i in range(0, len(units), 512)])
        event = (window_units < 0.25 * base_units[:, None]) | (median < 0.7 * base_price[:, None])
    return np.where(event.any(axis=1), first_day + event.argmax(axis=1), -1)


def loss_events(market: pl.DataFrame, book: pl.DataFrame, pledge: date, until: date) -> dict[str, date]:
    """First loss-event day per SPU of the book up to ``until`` (SPUs without an event are absent)."""
    start = pledge - timedelta(weeks=PRE_WEEKS)
    spus = book["spu_id"].to_list()
    units, prices = daily_matrix(market, spus, start, until)
    offsets = first_loss_offsets(units, prices, (pledge - start).days)
    return {s: start + timedelta(days=int(o)) for s, o in zip(spus, offsets) if o >= 0}
