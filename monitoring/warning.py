"""A learned early warning: the probability ``p_loss`` that a pledged position's loss event
(``monitoring/events.py``) comes 7 to 35 days after the day a sweep scores it, from what the sweep knows
that day (``health.WARNING_FEATURES``: its sales and price against the pledge and against their own
recent past, days since the last sale, age, LTV, days of cover, and the same trends among its nearest
comparables in the SPU index).

Training examples are pseudo-pledges of earlier weeks (the replay's book at each of them), scored every
other day, whose outcome window closed before ``cutoff``: nothing the model learns from happened on or
after the first day it will score. Probabilities are calibrated (isotonic) on predictions for SPUs held
out of each fit, and the watch threshold is the lowest at which at most ``false_alarm_budget`` of the
training positions that never had a loss event were ever warned.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

import numpy as np
import polars as pl
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.isotonic import IsotonicRegression
from sklearn.model_selection import GroupKFold, cross_val_predict

from data.market import derive_market
from monitoring.events import PRE_WEEKS, daily_matrix, first_loss_offsets, pledge_book
from monitoring.health import WARNING_FEATURES, position_frame, warning_matrix
from valuation.explain import every_probe, probe, reference_quantiles, top_effects

LEAD_DAYS = (7, 35)      # an event this many days ahead is what a warning must foresee
MIN_POSITIVES = 20       # fewer loss events in the training history: no model


class WarningModel(BaseEstimator, ClassifierMixin):
    """Calibrated gradient-boosted classifier of a loss event within LEAD_DAYS, with its watch threshold.

    ``fit(X, y, groups, positions, quiet)``: ``groups`` (the SPU) keeps an SPU's examples in one fold;
    ``positions`` names each example's position and ``quiet`` says whether that position never had a loss
    event: the threshold is chosen on those positions' highest held-out p_loss."""

    def __init__(self, false_alarm_budget: float = 0.10, n_splits: int = 4, max_iter: int = 150,
                 min_samples_leaf: int = 40, random_state: int = 0, neighbours: pl.DataFrame | None = None):
        self.false_alarm_budget = false_alarm_budget
        self.n_splits = n_splits
        self.max_iter = max_iter
        self.min_samples_leaf = min_samples_leaf
        self.random_state = random_state
        self.neighbours = neighbours  # spu_id, neighbour: the comparables the sweep averages over

    def _classifier(self) -> HistGradientBoostingClassifier:
        return HistGradientBoostingClassifier(max_iter=self.max_iter, learning_rate=0.05,
                                              min_samples_leaf=self.min_samples_leaf, l2_regularization=1.0,
                                              random_state=self.random_state)

    def fit(self, X, y, groups, positions, quiet):
        X, y = np.asarray(X, dtype=np.float64), np.asarray(y, dtype=bool)
        # a feature no example has (comparables, when there is no SPU index) carries nothing
        self.keep_ = ~np.all(np.isnan(X), axis=0)
        X = X[:, self.keep_]
        folds = GroupKFold(n_splits=min(self.n_splits, len(np.unique(groups))))
        held_out = cross_val_predict(self._classifier(), X, y, groups=groups, cv=folds, method="predict_proba")[:, 1]
        self.calibrator_ = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(held_out, y)
        self.classifier_ = self._classifier().fit(X, y)
        calibrated = self.calibrator_.predict(held_out)
        highest = (pl.DataFrame({"position": positions, "p": calibrated, "quiet": quiet})
                   .filter(pl.col("quiet")).group_by("position").agg(pl.col("p").max())["p"].to_numpy())
        self.threshold_ = threshold_for(highest, self.false_alarm_budget)
        # one reference per feature, its median: a sweep's first run may explain tens of thousands of alerts
        self.reference_ = reference_quantiles(X, 1)
        self.n_examples_, self.n_positives_ = len(y), int(y.sum())
        self.training_false_alarm_rate_ = float(np.mean(highest >= self.threshold_)) if len(highest) else 0.0
        return self

    def predict_proba(self, X) -> np.ndarray:
        """p_loss per row (a vector: the event's probability, not sklearn's two columns)."""
        X = np.asarray(X, dtype=np.float64)
        if len(X) == 0:
            return np.zeros(0)
        return self._calibrated(X[:, self.keep_])

    def _calibrated(self, kept: np.ndarray) -> np.ndarray:
        return self.calibrator_.predict(self.classifier_.predict_proba(kept)[:, 1])

    def drivers(self, X, top: int = 3) -> list[list[dict]]:
        """Per row, the features that raised its p_loss most: ``effect`` is how much of p_loss the row's own
        value adds against that feature at its training median."""
        X = np.asarray(X, dtype=np.float64)
        kept = np.flatnonzero(self.keep_)
        columns, values, _ = every_probe(self.reference_, kept)  # one typical value (the median) per column
        p, probes = probe(lambda rows: self._calibrated(rows[:, self.keep_]), X, columns, values)
        effect = np.zeros(X.shape)
        effect[:, kept] = p[:, None] - probes
        return top_effects(np.clip(effect, 0, None), X, WARNING_FEATURES, top, minimum=0.01)


def threshold_for(highest: np.ndarray, budget: float) -> float:
    """The lowest threshold that warns at most ``budget`` of the positions whose highest p_loss is ``highest``."""
    if len(highest) == 0:
        return 1.0
    ranked = np.sort(highest)[::-1]
    allowed = int(np.floor(budget * len(ranked)))
    if allowed >= len(ranked):
        return float(ranked[-1])
    return float(np.nextafter(ranked[allowed], np.inf))  # strictly above the first position over budget


def training_examples(orders: pl.DataFrame, market: pl.DataFrame, cutoff: date, config: dict, *,
                      every_days: int = 7, step_days: int = 2, neighbours: pl.DataFrame | None = None) -> pl.DataFrame:
    """(position, day) examples from pseudo-pledges every ``every_days`` before ``cutoff``: WARNING_FEATURES,
    spu_id, position, day, label (a loss event 7 to 35 days after ``day``) and quiet (the position had no
    event up to ``cutoff``). Only order lines and market days before ``cutoff`` are read, and only days
    whose outcome window closed before it are examples."""
    orders = orders.filter(pl.col("ordered_at") < datetime.combine(cutoff, datetime.min.time()))
    market = market.filter(pl.col("date") < cutoff)
    if market.height == 0:
        return pl.DataFrame()
    last_known = cutoff - timedelta(days=1)
    last_example = last_known - timedelta(days=LEAD_DAYS[1])
    pledge = market["date"].min() + timedelta(weeks=PRE_WEEKS)
    frames = []
    while pledge < last_example:
        book = pledge_book(orders, market, pledge)
        if book.height:
            start = pledge - timedelta(weeks=PRE_WEEKS)
            units, prices = daily_matrix(market, book["spu_id"].to_list(), start, last_known)
            offsets = first_loss_offsets(units, prices, (pledge - start).days)
            events = pl.Series("event_day", [start + timedelta(days=int(o)) if o >= 0 else None for o in offsets],
                               dtype=pl.Date)
            book = book.with_columns(events)
            day = pledge + timedelta(days=1)
            while day <= last_example:
                frame = position_frame(book, market, day, config, features=True,
                                       neighbours=neighbours).collect(engine="in-memory")
                ahead = (pl.col("event_day") - pl.lit(day)).dt.total_days()
                frames.append(frame.select(
                    *WARNING_FEATURES, "spu_id", (pl.lit(f"{pledge}:") + pl.col("spu_id")).alias("position"),
                    pl.lit(day).alias("day"), ahead.is_between(*LEAD_DAYS).fill_null(False).alias("label"),
                    pl.col("event_day").is_null().alias("quiet"), ahead.alias("_ahead"))
                    # an event already past, or under 7 days away, is neither a warning to learn nor a quiet day
                    .filter(pl.col("_ahead").is_null() | (pl.col("_ahead") >= LEAD_DAYS[0])).drop("_ahead"))
                day += timedelta(days=step_days)
        pledge += timedelta(days=every_days)
    return pl.concat(frames) if frames else pl.DataFrame()


def train_warning(orders: pl.DataFrame, market: pl.DataFrame, cutoff: date, config: dict,
                  neighbours: pl.DataFrame | None = None) -> WarningModel | None:
    """The early warning trained on history before ``cutoff``; None when it holds too few loss events."""
    examples = training_examples(orders, market, cutoff, config, neighbours=neighbours)
    if examples.height == 0 or int(examples["label"].sum()) < MIN_POSITIVES:
        return None
    return WarningModel(false_alarm_budget=config["warning"]["false_alarm_budget"], neighbours=neighbours).fit(
        warning_matrix(examples), examples["label"].to_numpy(), examples["spu_id"].to_numpy(),
        examples["position"].to_numpy(), examples["quiet"].to_numpy())


def title_comparables(spus: pl.DataFrame, k: int = 10, encoder=None) -> pl.DataFrame:
    """spu_id -> its ``k`` nearest other SPUs by title in an SPU index of the offline text encoder: the
    comparables where there are titles but no trained model (a replay)."""
    from embeddings.encoder import create_encoder
    from embeddings.index import SpuIndex
    from valuation.recovery import neighbours_from

    encoder = encoder or create_encoder()
    spu_ids = spus["spu_id"].to_list()
    vectors = encoder.encode_texts(spus["title"].fill_null("").to_list())
    index = SpuIndex(vectors.shape[1], encoder.fingerprint)
    index.add(spu_ids, vectors)
    return neighbours_from(spu_ids, index.search(vectors, min(len(index), k + 1)), k)


def warning_for_model(model, orders: pl.DataFrame, config: dict, neighbours: int = 10) -> WarningModel | None:
    """The early warning for a trained ``valuation.model.PledgeModel``: trained on the same order history
    (up to its last day), with comparables from the model's SPU index."""
    market = derive_market(orders)
    if market.height == 0:
        return None
    cutoff = market["date"].max() + timedelta(days=1)
    return train_warning(orders, market, cutoff, config, neighbours=model.comparables(neighbours))
