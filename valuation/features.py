"""Feature rows for the value heads, from SPU vectors, comparables and history.

Two views of an SPU:
- **cold**: what a new SPU has (title and image vectors, review signals, the prices of its nearest
  priced comparables by title and, separately, by image); no price history of its own;
- **warm**: cold + its own recent order features (price level, volatility, velocity, cancel rate).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from embeddings import SpuIndex, SpuVectors
from embeddings.features import ORDER_FEATURES

N_COMPARABLES = 10
COMPARABLE_FEATURES = ("comp_mean_log_price", "comp_top1_log_price", "comp_top1_similarity", "comp_std_log_price",
                       "comp_mean_similarity", "comp_min_log_price", "comp_max_log_price")


@dataclass
class Comparables:
    """Top priced comparables per SPU: ids, similarities and log prices, best first."""
    spu_ids: list[list[str]]
    similarity: list[np.ndarray]
    log_price: list[np.ndarray]

    def features(self) -> np.ndarray:
        rows = []
        for sims, prices in zip(self.similarity, self.log_price):
            if len(prices) == 0:
                rows.append([np.nan] * len(COMPARABLE_FEATURES))
                continue
            weights = np.exp(8.0 * (sims - sims.max()))  # softmax over similarity: the closest count most
            mean = float((weights * prices).sum() / weights.sum())
            rows.append([mean, float(prices[0]), float(sims[0]), float(prices.std()), float(sims.mean()),
                         float(prices.min()), float(prices.max())])
        return np.asarray(rows, dtype=np.float64)


def find_comparables(index: SpuIndex, content: np.ndarray, reference: dict[str, float], *,
                     exclude_self: list[str] | None = None, k: int = N_COMPARABLES,
                     present: np.ndarray | None = None) -> Comparables:
    """Nearest SPUs that have a reference log price; an SPU is never its own comparable. ``present``:
    the rows that have this kind of vector; the others get no comparables (a zero vector finds noise)."""
    rows = np.arange(len(content)) if present is None else np.flatnonzero(present)
    fetch = min(len(index), max(4 * k, 40))
    found = dict(zip(rows.tolist(), index.search(content[rows], fetch))) if len(rows) and fetch else {}
    empty = pl.DataFrame(schema={"spu_id": pl.String, "score": pl.Float32})
    ids, sims, prices = [], [], []
    for row in range(len(content)):
        hits = found.get(row, empty)
        own = exclude_self[row] if exclude_self else None
        picked = [(s, sc) for s, sc in hits.iter_rows() if s != own and s in reference][:k]
        ids.append([s for s, _ in picked])
        sims.append(np.array([sc for _, sc in picked], dtype=np.float64))
        prices.append(np.array([reference[s] for s, _ in picked], dtype=np.float64))
    return Comparables(ids, sims, prices)


def cold_matrix(vectors: SpuVectors, by_title: Comparables, by_image: Comparables, lexical: np.ndarray,
                attributes: np.ndarray | None = None) -> np.ndarray:
    """``by_title`` / ``by_image``: priced comparables found by title vector and by image vector;
    ``lexical``: the sparse title models' log prices per SPU, one column per view (out-of-fold when training);
    ``attributes``: the catalogue attributes' encoded log prices (valuation.attributes), none without them."""
    blocks = [
        vectors.title, vectors.image, vectors.has["image"].astype(float), vectors.has["title"].astype(float),
        by_title.features(), by_image.features(), np.asarray(lexical, dtype=np.float64), vectors.negativity,
        vectors.rating, np.log1p(vectors.n_reviews),
    ]
    if attributes is not None and attributes.shape[1]:
        blocks.append(np.asarray(attributes, dtype=np.float64))
    return np.column_stack(blocks).astype(np.float64)


def warm_matrix(cold: np.ndarray, vectors: SpuVectors) -> np.ndarray:
    history = vectors.order_features.select(ORDER_FEATURES).to_numpy().astype(np.float64)
    return np.column_stack([cold, history])

