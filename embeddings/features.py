"""Non-visual SPU signals: order features and the review negative-feedback index."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import polars as pl

from data.market import weekly_volatility

ORDER_FEATURES = ("price_level", "volatility", "sales_velocity", "cancel_rate")

# Anchors for the zero-shot negative-feedback direction: review vectors near the first set and far
# from the second read as complaints. Evaluated on real labelled reviews by bench/embeddings.py.
NEGATIVE_ANCHORS = ("terrible product, poor quality, it broke, I want a refund",
                    "awful and disappointing, do not buy this", "arrived damaged and stopped working, returned it",
                    "tastes bad, stale and disgusting, waste of money")
POSITIVE_ANCHORS = ("great product, excellent quality, I love it", "works perfectly, would buy again, highly recommend",
                    "delicious and fresh, my favourite, five stars", "well made and exactly as described, very happy")
NEGATIVITY_SCALE = 12.0  # logistic slope on the cosine difference; sets how sharp 0..1 is


def order_features(orders: pl.DataFrame | pl.LazyFrame, as_of: datetime | None = None,
                   window_days: int = 90) -> pl.DataFrame:
    """Raw order features per SPU over the ``window_days`` before ``as_of`` (default: the last order).

    price_level: log of the median unit price; volatility: std of week-to-week log changes of the weekly
    median price, per day (/ sqrt 7); sales_velocity: log(1 + units per day); cancel_rate: cancelled
    lines / all lines.
    """
    lazy = orders.lazy()
    if as_of is None:
        as_of = lazy.select(pl.col("ordered_at").max()).collect().item()
    if as_of is None:
        return pl.DataFrame(schema={"spu_id": pl.String, **{f: pl.Float64 for f in ORDER_FEATURES}})
    start = as_of - timedelta(days=window_days)
    window = lazy.filter((pl.col("ordered_at") > start) & (pl.col("ordered_at") <= as_of))
    sold = window.filter(~pl.col("cancelled"))
    # Volatility from week-to-week moves of the weekly median price, as a daily figure (/ sqrt 7): daily
    # medians of a few noisy order lines would read line-to-line price scatter as market risk.
    # an SPU with under three weeks of sales shows no measurable volatility yet: 0 in its order vector
    weekly = weekly_volatility(sold, "ordered_at", "unit_price").with_columns(pl.col("volatility").fill_null(0.0))
    volatility = (sold.group_by("spu_id").agg(
        pl.col("unit_price").median().log().alias("price_level"),
        (pl.col("quantity").sum() / window_days).log1p().alias("sales_velocity"),
    ).join(weekly, on="spu_id", how="left", maintain_order="left"))
    cancels = window.group_by("spu_id").agg(pl.col("cancelled").mean().cast(pl.Float64).alias("cancel_rate"))
    return (volatility.join(cancels, on="spu_id", how="full", coalesce=True)
            .with_columns(pl.col("cancel_rate").fill_null(0.0))
            .select("spu_id", *ORDER_FEATURES).sort("spu_id").collect())


class OrderScaler:
    """Standardises order features with the catalogue's mean and spread (fit once, saved with the index)."""

    def fit(self, features: pl.DataFrame) -> "OrderScaler":
        values = features.select(ORDER_FEATURES).to_numpy().astype(np.float64)
        values = values[np.isfinite(values).all(axis=1)]
        self.mean_ = values.mean(axis=0) if len(values) else np.zeros(len(ORDER_FEATURES))
        scale = values.std(axis=0) if len(values) else np.ones(len(ORDER_FEATURES))
        self.scale_ = np.where(scale > 1e-9, scale, 1.0)
        return self

    def transform(self, features: pl.DataFrame) -> np.ndarray:
        values = features.select(ORDER_FEATURES).to_numpy().astype(np.float64)
        return np.nan_to_num((values - self.mean_) / self.scale_).astype(np.float32)

    def to_dict(self) -> dict:
        return {"mean": self.mean_.tolist(), "scale": self.scale_.tolist()}

    @classmethod
    def from_dict(cls, state: dict) -> "OrderScaler":
        scaler = cls()
        scaler.mean_, scaler.scale_ = np.asarray(state["mean"]), np.asarray(state["scale"])
        return scaler


def negativity_direction(encode_texts) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors of the negative and positive anchor centroids, from the encoder's text tower."""
    neg = encode_texts(list(NEGATIVE_ANCHORS)).mean(axis=0)
    pos = encode_texts(list(POSITIVE_ANCHORS)).mean(axis=0)
    return neg / np.linalg.norm(neg), pos / np.linalg.norm(pos)


def review_negativity(review_vectors: np.ndarray, negative: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """0 (praise) .. 1 (complaint) per review vector."""
    margin = review_vectors @ negative - review_vectors @ positive
    return 1.0 / (1.0 + np.exp(-NEGATIVITY_SCALE * margin))
