"""Score the whole pledged book as of a date: polars expressions over all positions at once.

For every position: current unit value (the market's where fresh, the model's where stale), collateral
value, LTV, price change since pledge, sales-velocity trend (4-week vs 12-week rate), volatility, days
to liquidate, review trend; then a health score 0-100, a grade and an action (ok / watch / top-up /
liquidate) with the reasons behind it. Thresholds come from ``monitor.toml``.
"""

from __future__ import annotations

import tomllib
from datetime import date
from pathlib import Path

import polars as pl

DEFAULT_CONFIG = Path(__file__).with_name("monitor.toml")
ACTIONS = ("ok", "watch", "top-up", "liquidate")  # in order of severity
ACTION_RANK = {a: i for i, a in enumerate(ACTIONS)}


def load_config(path: str | Path | None = None) -> dict:
    with open(path or DEFAULT_CONFIG, "rb") as handle:
        return tomllib.load(handle)


def spu_market_state(market: pl.LazyFrame | pl.DataFrame, as_of: date, config: dict) -> pl.LazyFrame:
    """Per SPU, from daily snapshots up to ``as_of`` only: last sale, current price, rates, volatility."""
    m = config["market"]
    d = pl.lit(as_of)
    seen = market.lazy().filter(pl.col("date") <= d)
    days_ago = (d - pl.col("date")).dt.total_days()
    weekly = (seen.filter(days_ago < 84)
              .group_by("spu_id", pl.col("date").dt.truncate("1w").alias("week"))
              .agg(pl.col("price").median()).sort("spu_id", "week")
              .group_by("spu_id").agg((pl.col("price").log().diff().std() / 7 ** 0.5).alias("volatility")))
    return (seen.group_by("spu_id").agg(
        pl.col("date").max().alias("last_sale"),
        pl.col("price").filter(days_ago < m["price_window_days"]).median().alias("recent_price"),
        pl.col("price").sort_by("date").last().alias("last_price"),
        (pl.col("units_sold").filter(days_ago < 28).sum() / 28).alias("rate_4w"),
        (pl.col("units_sold").filter(days_ago < 84).sum() / 84).alias("rate_12w"),
    ).join(weekly, on="spu_id", how="left", maintain_order="left"))


def pledge_prices(market: pl.LazyFrame | pl.DataFrame, positions: pl.LazyFrame | pl.DataFrame,
                  config: dict) -> pl.LazyFrame:
    """Market price of each position's SPU at its pledge: median over the days before pledged_at."""
    window = config["market"]["pledge_window_days"]
    pairs = positions.lazy().select("spu_id", "pledged_at").unique()
    return (pairs.join(market.lazy(), on="spu_id")
            .filter((pl.col("date") < pl.col("pledged_at"))
                    & (pl.col("date") >= pl.col("pledged_at") - pl.duration(days=window)))
            .group_by("spu_id", "pledged_at").agg(pl.col("price").median().alias("pledge_market_price")))


def score_book(positions: pl.DataFrame | pl.LazyFrame, market: pl.DataFrame | pl.LazyFrame, as_of: date,
               config: dict | None = None, model_values: pl.DataFrame | None = None,
               previous: pl.DataFrame | None = None) -> pl.DataFrame:
    """One row per position pledged on or before ``as_of``.

    ``model_values``: spu_id, value, value_low, value_high (the model's, for stale or unseen SPUs).
    ``previous``: position_id, action of the last completed sweep (for alerts)."""
    config = config or load_config()
    s, a, g = config["score"], config["actions"], config["grades"]
    book = positions.lazy().filter(pl.col("pledged_at") <= as_of)
    state = spu_market_state(market, as_of, config)
    frame = (book.join(state, on="spu_id", how="left", maintain_order="left")
             .join(pledge_prices(market, book, config), on=["spu_id", "pledged_at"], how="left", maintain_order="left"))
    if model_values is not None:
        frame = frame.join(model_values.lazy().select("spu_id", pl.col("value").alias("model_value"),
                                                      pl.col("value_low").alias("model_low"),
                                                      pl.col("value_high").alias("model_high")),
                           on="spu_id", how="left", maintain_order="left")
    else:
        frame = frame.with_columns(pl.lit(None, dtype=pl.Float64).alias(c)
                                   for c in ("model_value", "model_low", "model_high"))

    stale = (pl.col("last_sale").is_null()
             | ((pl.lit(as_of) - pl.col("last_sale")).dt.total_days() > config["market"]["stale_days"]))
    market_price = pl.coalesce("recent_price", "last_price")
    # Stale: the model's value if there is one, else the last price seen (still flagged stale).
    unit_value = pl.when(stale).then(pl.coalesce("model_value", "last_price")).otherwise(market_price)
    frame = frame.with_columns(
        stale.alias("stale_price"),
        unit_value.alias("unit_value"),
        pl.when(stale & pl.col("model_value").is_not_null()).then(pl.lit("model"))
        .when(stale).then(pl.lit("last_price")).otherwise(pl.lit("market")).alias("value_source"),
        pl.when(stale).then(pl.col("model_low")).otherwise(None).alias("value_low"),
        pl.when(stale).then(pl.col("model_high")).otherwise(None).alias("value_high"),
    ).with_columns(
        (pl.col("quantity") * pl.col("unit_value")).alias("collateral_value"),
    ).with_columns(
        (pl.col("loan_amount") / pl.col("collateral_value")).alias("ltv"),
        (pl.col("unit_value") / pl.coalesce("pledge_market_price", pl.col("pledge_unit_price")) - 1)
        .alias("price_change"),
        pl.when(pl.col("rate_12w") > 0).then(pl.col("rate_4w") / pl.col("rate_12w")).alias("velocity_trend"),
        pl.when(pl.col("rate_4w") > 0).then(pl.col("quantity") / pl.col("rate_4w")).alias("days_to_liquidate"),
    )

    def ramp(value: pl.Expr, ok: float, bad: float, penalty: float) -> pl.Expr:
        return ((value - ok) / (bad - ok)).clip(0, 1).fill_nan(None).fill_null(0) * penalty

    penalties = {
        "ltv_high": ramp(pl.col("ltv"), s["ltv_ok"], s["ltv_bad"], s["ltv_penalty"])
        + (pl.col("ltv") - s["ltv_bad"]).clip(0, None).fill_nan(None).fill_null(0) * 100,
        "price_drop": ramp(-pl.col("price_change"), 0, s["price_drop_bad"], s["price_penalty"]),
        "sales_slowing": ramp(1 - pl.col("velocity_trend").fill_null(0).clip(0, 1), 0, s["velocity_drop_bad"],
                              s["velocity_penalty"]),
        "slow_liquidation": pl.when(pl.col("days_to_liquidate").is_null()).then(s["liquidation_penalty"])
        .otherwise(ramp(pl.col("days_to_liquidate"), s["liquidation_days_ok"], s["liquidation_days_bad"],
                        s["liquidation_penalty"])),
        "volatile": ramp(pl.col("volatility"), s["volatility_ok"], s["volatility_bad"], s["volatility_penalty"]),
        "stale_price": pl.when(pl.col("stale_price")).then(s["stale_penalty"]).otherwise(0),
    }
    frame = frame.with_columns(**{f"_p_{k}": v.cast(pl.Float64) for k, v in penalties.items()})
    score = (100 - pl.sum_horizontal(*[pl.col(f"_p_{k}") for k in penalties])).clip(0, 100)
    frame = frame.with_columns(score.alias("health"))
    grade = (pl.when(pl.col("health") >= g["A"]).then(pl.lit("A")).when(pl.col("health") >= g["B"]).then(pl.lit("B"))
             .when(pl.col("health") >= g["C"]).then(pl.lit("C")).when(pl.col("health") >= g["D"]).then(pl.lit("D"))
             .otherwise(pl.lit("E")))
    action = (pl.when((pl.col("ltv") >= a["liquidate_ltv"]) | (pl.col("health") < a["liquidate_score"]))
              .then(pl.lit("liquidate"))
              .when((pl.col("ltv") >= a["topup_ltv"]) | (pl.col("health") < a["topup_score"])).then(pl.lit("top-up"))
              .when((pl.col("health") < a["watch_score"]) | (pl.col("velocity_trend") < a["watch_velocity_ratio"])
                    | (pl.col("price_change") < a["watch_price_change"])).then(pl.lit("watch"))
              .otherwise(pl.lit("ok")))
    reasons = pl.concat_list([pl.when(pl.col(f"_p_{k}") > 0).then(pl.lit(k)).otherwise(pl.lit(None, dtype=pl.String))
                              for k in penalties]).list.drop_nulls()
    frame = frame.with_columns(grade.alias("grade"), action.alias("action"), reasons.alias("reasons"))
    if previous is not None:
        frame = frame.join(previous.lazy().select("position_id", pl.col("action").alias("previous_action")),
                           on="position_id", how="left", maintain_order="left")
    else:
        frame = frame.with_columns(pl.lit(None, dtype=pl.String).alias("previous_action"))
    # An alert only when the action worsens (a first non-ok action counts): no repeated alarms.
    rank = {k: v for k, v in ACTION_RANK.items()}
    frame = frame.with_columns(
        (pl.col("action").replace_strict(rank, return_dtype=pl.Int8)
         > pl.col("previous_action").fill_null("ok").replace_strict(rank, return_dtype=pl.Int8)).alias("alert"))
    return frame.select(RESULT_COLUMNS).collect()


RESULT_COLUMNS = ["position_id", "loan_id", "borrower", "spu_id", "quantity", "loan_amount", "pledged_at",
                  "unit_value", "value_source", "value_low", "value_high", "collateral_value", "ltv", "price_change",
                  "velocity_trend", "volatility", "days_to_liquidate", "stale_price", "health", "grade", "action",
                  "reasons", "previous_action", "alert"]


