"""Haircut and admission: from a value with its interval to a pledge price and a decision, with reasons.

``HaircutPolicy`` and ``AdmissionPolicy`` take their parameters from ``policy.toml`` (or a dict) and
work on whole frames with polars expressions, one row per priced SPU.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import polars as pl

DEFAULT_POLICY = Path(__file__).with_name("policy.toml")
HAIRCUT_PARTS = ("haircut_base", "haircut_market", "haircut_liquidity", "haircut_uncertainty")


def load_policy(path: str | Path | None = None) -> dict:
    with open(path or DEFAULT_POLICY, "rb") as handle:
        return tomllib.load(handle)


class HaircutPolicy:
    """Adds the haircut parts, the haircut and the pledge unit price.

    Needs columns: category, value, value_low, quantity, daily_volatility (null if unknown),
    units_per_day (null if unknown)."""

    def __init__(self, policy: dict | None = None):
        self.config = (policy or load_policy())["haircut"]

    def apply(self, frame: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame | pl.LazyFrame:
        c = self.config
        # a catalogue without categories gives an all-null column, whose type would refuse the mapping
        base = pl.col("category").cast(pl.String).replace_strict(c.get("base", {}), default=c["default_base"],
                                                  return_dtype=pl.Float64)
        vol = pl.col("daily_volatility").fill_null(c["default_daily_volatility"])
        market = c["var_z"] * vol * (c["horizon_days"] ** 0.5)
        days_to_sell = pl.col("quantity") / pl.col("units_per_day")
        liquidity = (pl.when(pl.col("units_per_day").is_null() | (pl.col("units_per_day") <= 0))
                     .then(pl.lit(c["unknown_liquidity"]))
                     .otherwise(((days_to_sell - c["free_sell_days"]).clip(lower_bound=0) / 30
                                 * c["liquidity_per_30_days"]).clip(upper_bound=c["liquidity_cap"])))
        uncertainty = c["uncertainty_weight"] * (1 - pl.col("value_low") / pl.col("value")).clip(0, 1)
        out = frame.with_columns(
            base.alias("haircut_base"), market.alias("haircut_market"), liquidity.alias("haircut_liquidity"),
            uncertainty.alias("haircut_uncertainty"),
            pl.when(pl.col("units_per_day") > 0).then(days_to_sell).alias("days_to_sell"),
        )
        total = pl.sum_horizontal(*HAIRCUT_PARTS).clip(c["floor"], c["cap"])
        return out.with_columns(total.alias("haircut")).with_columns(
            (pl.col("value") * (1 - pl.col("haircut"))).alias("pledge_unit_price"),
            (pl.col("haircut") >= c["cap"]).alias("haircut_at_cap"))


class AdmissionPolicy:
    """accept / review / reject with machine-readable reasons (a list of codes per row).

    reject: category_not_financeable, illiquid, haircut_at_cap; review: novel (no same-SPU match and a
    wide interval), slow_to_sell, volatile, negative_reviews, no_history, wide_interval."""

    REJECT = ("category_not_financeable", "illiquid", "haircut_at_cap")

    def __init__(self, policy: dict | None = None):
        self.config = (policy or load_policy())["admission"]

    def apply(self, frame: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame | pl.LazyFrame:
        c = self.config
        width = (pl.col("value_high") - pl.col("value_low")) / pl.col("value")
        wide = width > c["max_relative_width"]
        checks = {
            "category_not_financeable": pl.col("category").cast(pl.String).is_in(c["not_financeable"]).fill_null(False),
            "illiquid": (pl.col("days_to_sell") > c["max_days_to_sell"]).fill_null(False),
            "haircut_at_cap": pl.col("haircut_at_cap") & pl.lit(bool(c["reject_at_haircut_cap"])),
            "novel": (~pl.col("matched") & wide).fill_null(False),
            "slow_to_sell": pl.col("days_to_sell").is_between(c["review_days_to_sell"], c["max_days_to_sell"],
                                                             closed="right").fill_null(False),
            "volatile": (pl.col("daily_volatility") > c["max_daily_volatility"]).fill_null(False),
            "negative_reviews": (pl.col("negativity") > c["max_negativity"]).fill_null(False),
            "no_history": pl.col("daily_volatility").is_null() & pl.col("units_per_day").is_null(),
            "wide_interval": wide.fill_null(True),
        }
        reasons = pl.concat_list([pl.when(expr).then(pl.lit(name)).otherwise(pl.lit(None, dtype=pl.String))
                                  for name, expr in checks.items()]).list.drop_nulls()
        out = frame.with_columns(reasons.alias("reasons"))
        rejected = pl.col("reasons").list.eval(pl.element().is_in(list(self.REJECT))).list.any()
        return out.with_columns(
            pl.when(rejected).then(pl.lit("reject"))
            .when(pl.col("reasons").list.len() > 0).then(pl.lit("review"))
            .otherwise(pl.lit("accept")).alias("decision"))
