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

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import numpy as np
import polars as pl

from embeddings import SpuIndex, SpuVectors
from valuation.attributes import ATTRIBUTES, AttributePricer, attribute_frame
from valuation.features import Comparables, cold_matrix, find_comparables, warm_matrix
from valuation.head import ConformalValueModel, ValueHead
from valuation.lexical import LexicalPricer

LAUNCH_WINDOW_DAYS = 30
HORIZON_DAYS = 30
TITLE_COMPONENTS, IMAGE_COMPONENTS = 32, 16  # PCA components of each embedding block for the tree heads
# A cold head that trained on SPUs with a photo saw a missing photo's zero vector nowhere near its data and,
# with an untrained image tower, extrapolated: on a demo catalogue (every SPU with a photo), held-out SPUs priced
# by title alone were valued at 1e-7 of their price (SMAPE 2.0). Where under this share of the training SPUs
# lack a photo, a head is also trained on every SPU with its photo removed (SMAPE 0.40 there, 94% of prices
# inside the 90% interval) and kept for requests without one where it prices better (see fit).
MIN_TITLE_ONLY_SHARE = 0.2
MIN_TITLE_ONLY_ROWS = 40  # the fewest rows a head fits and calibrates on


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
    attributes: AttributePricer | None = None  # None: a model from before attributes, or fitted without them
    attributes_of: dict[str, dict] = field(default_factory=dict)  # priced SPUs' attributes (fill a request's gaps)
    cold_title_only: ConformalValueModel | None = None  # for requests without a photo, where few trained without one
    title_only_mae_: dict[str, float] | None = None  # why: each head's error on the newest SPUs, photo removed
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
            forward: pl.DataFrame | None = None, history: SpuVectors | None = None,
            attributes: dict[str, dict] | None = None) -> "ValueModel":
        """``launch``: spu_id, first_sold, price. ``forward`` (optional): spu_id, price over the horizon
        after the as-of date of ``history`` (vectors whose order features stop at that date).
        ``attributes`` (optional): spu_id -> its catalogue attributes (ATTRIBUTES: category, brand)."""
        y = np.log(launch["price"].to_numpy())
        ids = launch["spu_id"].to_list()
        self.reference = dict(zip(ids, y.tolist()))
        self.lexical = LexicalPricer(random_state=self.random_state)
        lexical_oof = self.lexical.fit_out_of_fold([titles.get(s, "") for s in ids], y)
        attributes = attributes or {}
        self.attributes_of = {s: attributes[s] for s in ids if s in attributes}
        self.attributes = AttributePricer(random_state=self.random_state)
        attribute_oof = self.attributes.fit_out_of_fold(attribute_frame(ids, self.attributes_of), y)
        sub = subset(vectors, ids)
        self.by_title, self.by_image = (_reference_index(index, ids, getattr(sub, kind), sub.has[kind])
                                        for kind in ("title", "image"))
        X = cold_matrix(sub, *self._comparables(sub, ids), lexical_oof, attribute_oof)
        order = launch["first_sold"].dt.epoch("s").to_numpy()
        self.cold = self._head(index.dim).fit(X, y, order)
        self.cold_title_only, self.title_only_mae_ = None, None
        rows = self._title_only_rows(sub)
        if rows is not None:
            Xt = self._without_image(subset(sub, [ids[i] for i in rows]), lexical_oof[rows], attribute_oof[rows])
            title_only = self._head(index.dim).fit(Xt, y[rows], order[rows])
            # kept only where it prices the newest SPUs, photo removed, better than the cold head does: neither
            # fitted on them (both calibrate on the newest rows). With a trained image tower the cold head
            # often copes (the demo model's); with an untrained one it does not.
            newest = np.argsort(order[rows], kind="stable")[-title_only.n_calibration_:]
            errors = [np.abs(head.predict(Xt[newest]) - y[rows][newest]).mean() for head in (self.cold, title_only)]
            self.title_only_mae_ = {"cold": float(errors[0]), "title_only": float(errors[1])}
            self.cold_title_only = title_only if errors[1] < errors[0] else None

        self.warm = None
        if forward is not None and history is not None:
            forward = forward.filter(pl.col("spu_id").is_in(
                [s for s, h in zip(history.spu_ids, history.has["orders"]) if h]))
            if forward.height >= 60:
                fids = forward["spu_id"].to_list()
                fsub = subset(history, fids)
                lexical = _out_of_fold_for(fids, dict(zip(ids, lexical_oof)),
                                           self.lexical.predict([titles.get(s, "") for s in fids]))
                encoded = _out_of_fold_for(fids, dict(zip(ids, attribute_oof)),
                                           self.attributes.predict(attribute_frame(fids, attributes)))
                Xw = warm_matrix(cold_matrix(fsub, *self._comparables(fsub, fids), lexical, encoded), fsub)
                # Every warm row shares one as-of date; the real time key is the SPU's first sale, so the
                # newest SPUs (shortest history, hardest) calibrate the interval.
                first_sold = dict(zip(ids, order.tolist()))
                self.warm = self._head(index.dim).fit(Xw, np.log(forward["price"].to_numpy()),
                                                      np.array([first_sold.get(s, order.max()) for s in fids]))
        return self

    @staticmethod
    def _title_only_rows(sub: SpuVectors) -> np.ndarray | None:
        """The training rows of a head for requests without a photo: every SPU with a title. None where
        the cold head already trained on enough SPUs without a photo (MIN_TITLE_ONLY_SHARE), or too few
        have one for it to matter."""
        alone, both = sub.has["title"] & ~sub.has["image"], sub.has["title"] & sub.has["image"]
        if alone.sum() >= MIN_TITLE_ONLY_SHARE * len(sub.spu_ids) or both.sum() < MIN_TITLE_ONLY_ROWS:
            return None
        return np.flatnonzero(sub.has["title"])

    def _without_image(self, part: SpuVectors, lexical: np.ndarray, encoded: np.ndarray) -> np.ndarray:
        """The cold head's rows of ``part`` as requests without a photo would have them."""
        part = replace(part, image=np.zeros_like(part.image), has={**part.has, "image": np.zeros(len(part.spu_ids), dtype=bool)})
        return cold_matrix(part, *self._comparables(part, part.spu_ids), lexical, encoded)

    def predict(self, index: SpuIndex, vectors: SpuVectors, titles: list[str], exclude_self: bool = False,
                attributes: list[dict] | None = None) -> tuple[pl.DataFrame, Comparables]:
        """Log value and interval per SPU; the warm head where the SPU has history and one was fit.
        Also the comparables a desk is shown: the priced nearest neighbours in the catalogue's index.
        ``attributes``: each SPU's catalogue attributes (a dict per row, None or a missing key where unknown)."""
        own = vectors.spu_ids if exclude_self else None
        comparables = find_comparables(index, vectors.content, self.reference, exclude_self=own)
        encoded = None
        if getattr(self, "attributes", None) is not None:
            encoded = self.attributes.predict(self._attribute_rows(vectors.spu_ids, attributes, comparables))
        X = cold_matrix(vectors, *self._comparables(vectors, own), self.lexical.predict(titles), encoded)
        mid, low, high = self.cold.predict_interval(X)
        title_only = np.flatnonzero(vectors.has["title"] & ~vectors.has["image"])
        if getattr(self, "cold_title_only", None) is not None and len(title_only):
            mid[title_only], low[title_only], high[title_only] = self.cold_title_only.predict_interval(X[title_only])
        head = np.array(["cold"] * len(mid), dtype=object)
        warm_rows = np.flatnonzero(vectors.has["orders"]) if self.warm is not None else np.array([], dtype=int)
        if len(warm_rows):
            Xw = warm_matrix(X[warm_rows], subset(vectors, [vectors.spu_ids[i] for i in warm_rows]))
            mid[warm_rows], low[warm_rows], high[warm_rows] = self.warm.predict_interval(Xw)
            head[warm_rows] = "warm"
        frame = pl.DataFrame({"spu_id": vectors.spu_ids, "log_value": mid, "log_low": low, "log_high": high,
                              "head": head.tolist()})
        return frame, comparables

    def _attribute_rows(self, spu_ids: list[str], given: list[dict] | None, comparables: Comparables) -> pl.DataFrame:
        """The rows' attributes; one a row lacks is its nearest priced comparable's (the first that has it)."""
        rows = attribute_frame(spu_ids, {}, given).to_dicts()
        for row, nearest in zip(rows, comparables.spu_ids):
            for name in ATTRIBUTES:
                if row[name] is None:
                    row[name] = next((self.attributes_of[s][name] for s in nearest
                                      if (self.attributes_of.get(s) or {}).get(name) is not None), None)
        return pl.DataFrame(rows, schema={name: pl.String for name in ATTRIBUTES}, orient="row")


def _out_of_fold_for(spu_ids: list[str], oof: dict[str, np.ndarray], plain: np.ndarray) -> np.ndarray:
    """Out-of-fold predictions for SPUs a stacked model trained on, its plain ones otherwise."""
    return np.array([oof.get(s, p) for s, p in zip(spu_ids, plain)], dtype=np.float64).reshape(plain.shape)
