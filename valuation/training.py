"""The value model: targets, comparables, features, the two heads and their conformal intervals.

Price features come from comparables found by title and, separately, by image, each in an index of the
priced SPUs (the catalogue's SPU index keys SPUs by content, a mix of both, whose neighbours and
similarities shift with whether an SPU has an image; the heads are trained mostly on SPUs without one).
The comparables shown to a desk stay the catalogue index's.

- **cold head**: SPUs without their own history (a new SPU: title and/or image, maybe reviews). Trained
  on each priced SPU's *launch price* (median unit price of its first 30 days), its own history hidden.
- **warm head**: SPUs with history. Trained to predict the median price of the next 30 days from
  features as of a date 30 days before the last order.
Both: time-aware model choice, split-conformal intervals normalised by difficulty.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import polars as pl

from embeddings import SpuIndex, SpuVectors
from valuation.features import Comparables, cold_matrix, find_comparables, warm_matrix
from valuation.head import ConformalValueModel, ValueHead
from valuation.lexical import LexicalPricer

LAUNCH_WINDOW_DAYS = 30
HORIZON_DAYS = 30
TITLE_COMPONENTS, IMAGE_COMPONENTS = 32, 16  # PCA components of each embedding block for the tree heads


def launch_prices(orders: pl.DataFrame, until: datetime | None = None) -> pl.DataFrame:
    """Per SPU: first sale day and the median unit price of its first 30 days (before ``until``)."""
    sold = orders.filter(~pl.col("cancelled"))
    if until is not None:
        sold = sold.filter(pl.col("ordered_at") < until)
    return (sold.with_columns(pl.col("ordered_at").min().over("spu_id").alias("first_sold"))
            .filter(pl.col("ordered_at") < pl.col("first_sold") + timedelta(days=LAUNCH_WINDOW_DAYS))
            .group_by("spu_id").agg(pl.col("first_sold").first(), pl.col("unit_price").median().alias("price"))
            .sort("spu_id"))


def forward_prices(orders: pl.DataFrame, as_of: datetime, days: int = HORIZON_DAYS) -> pl.DataFrame:
    """Median unit price per SPU over the ``days`` after ``as_of``: what a unit fetched next."""
    return (orders.filter(~pl.col("cancelled") & (pl.col("ordered_at") > as_of)
                          & (pl.col("ordered_at") <= as_of + timedelta(days=days)))
            .group_by("spu_id").agg(pl.col("unit_price").median().alias("price")).sort("spu_id"))


def difficulty_columns(dim: int) -> slice:
    """Everything after the two embedding blocks and the two flags: comparables, reviews, history."""
    return slice(2 * dim + 2, None)


def subset(vectors: SpuVectors, spu_ids: list[str]) -> SpuVectors:
    return vectors.take(spu_ids)


def _reference_index(catalog: SpuIndex, spu_ids: list[str], vectors: np.ndarray, present: np.ndarray) -> SpuIndex:
    index = SpuIndex(catalog.dim, catalog.fingerprint)
    rows = np.flatnonzero(present)
    if len(rows):
        index.add([spu_ids[i] for i in rows], vectors[rows])
    return index


@dataclass
class ValueModel:
    coverage: float = 0.9
    random_state: int = 0
    lexical: LexicalPricer | None = None
    cold: ConformalValueModel | None = None
    warm: ConformalValueModel | None = None
    reference: dict[str, float] = field(default_factory=dict)  # comparables' log launch prices
    by_title: SpuIndex | None = None   # priced SPUs by title vector
    by_image: SpuIndex | None = None   # priced SPUs that have an image, by image vector

    def _head(self, dim: int) -> ConformalValueModel:
        blocks = ((dim, TITLE_COMPONENTS), (dim, IMAGE_COMPONENTS))
        return ConformalValueModel(ValueHead(embed_blocks=blocks, random_state=self.random_state), coverage=self.coverage,
                                   difficulty_columns=difficulty_columns(dim), random_state=self.random_state)

    def _comparables(self, vectors: SpuVectors, exclude_self: list[str] | None) -> tuple[Comparables, Comparables]:
        return tuple(find_comparables(index, getattr(vectors, kind), self.reference, exclude_self=exclude_self,
                                      present=vectors.has[kind])
                     for kind, index in (("title", self.by_title), ("image", self.by_image)))

    def fit(self, index: SpuIndex, vectors: SpuVectors, titles: dict[str, str], launch: pl.DataFrame,
            forward: pl.DataFrame | None = None,
            history: SpuVectors | None = None) -> "ValueModel":
        """``launch``: spu_id, first_sold, price. ``forward`` (optional): spu_id, price over the horizon
        after the as-of date of ``history`` (vectors whose order features stop at that date)."""
        y = np.log(launch["price"].to_numpy())
        ids = launch["spu_id"].to_list()
        self.reference = dict(zip(ids, y.tolist()))
        self.lexical = LexicalPricer(random_state=self.random_state)
        lexical_oof = self.lexical.fit_out_of_fold([titles.get(s, "") for s in ids], y)
        sub = subset(vectors, ids)
        self.by_title, self.by_image = (_reference_index(index, ids, getattr(sub, kind), sub.has[kind])
                                        for kind in ("title", "image"))
        X = cold_matrix(sub, *self._comparables(sub, ids), lexical_oof)
        order = launch["first_sold"].dt.epoch("s").to_numpy()
        self.cold = self._head(index.dim).fit(X, y, order)

        self.warm = None
        if forward is not None and history is not None:
            forward = forward.filter(pl.col("spu_id").is_in(
                [s for s, h in zip(history.spu_ids, history.has["orders"]) if h]))
            if forward.height >= 60:
                fids = forward["spu_id"].to_list()
                fsub = subset(history, fids)
                lexical = self._lexical_for(fids, titles, lexical_oof, ids)
                Xw = warm_matrix(cold_matrix(fsub, *self._comparables(fsub, fids), lexical), fsub)
                # Every warm row shares one as-of date; the real time key is the SPU's first sale, so the
                # newest SPUs (shortest history, hardest) calibrate the interval.
                first_sold = dict(zip(ids, order.tolist()))
                self.warm = self._head(index.dim).fit(Xw, np.log(forward["price"].to_numpy()),
                                                      np.array([first_sold.get(s, order.max()) for s in fids]))
        return self

    def _lexical_for(self, spu_ids, titles, oof, oof_ids) -> np.ndarray:
        """Out-of-fold lexical predictions for SPUs the lexical model trained on, plain ones otherwise."""
        known = dict(zip(oof_ids, oof))
        plain = self.lexical.predict([titles.get(s, "") for s in spu_ids])
        return np.array([known.get(s, p) for s, p in zip(spu_ids, plain)])

    def predict(self, index: SpuIndex, vectors: SpuVectors, titles: list[str], exclude_self: bool = False) -> tuple[pl.DataFrame, Comparables]:
        """Log value and interval per SPU; the warm head where the SPU has history and one was fit.
        Also the comparables a desk is shown: the priced nearest neighbours in the catalogue's index."""
        own = vectors.spu_ids if exclude_self else None
        comparables = find_comparables(index, vectors.content, self.reference, exclude_self=own)
        X = cold_matrix(vectors, *self._comparables(vectors, own), self.lexical.predict(titles))
        mid, low, high = self.cold.predict_interval(X)
        head = np.array(["cold"] * len(mid), dtype=object)
        warm_rows = np.flatnonzero(vectors.has["orders"]) if self.warm is not None else np.array([], dtype=int)
        if len(warm_rows):
            Xw = warm_matrix(X[warm_rows], subset(vectors, [vectors.spu_ids[i] for i in warm_rows]))
            mid[warm_rows], low[warm_rows], high[warm_rows] = self.warm.predict_interval(Xw)
            head[warm_rows] = "warm"
        frame = pl.DataFrame({"spu_id": vectors.spu_ids, "log_value": mid, "log_low": low, "log_high": high,
                              "head": head.tolist()})
        return frame, comparables
