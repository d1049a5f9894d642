"""The two public pricing recipes of issue 14, as baselines the benches run on the same rows as ours.

- Mercari Price Suggestion winners: small MLPs on binarised sparse TF-IDF views of the text (word and
  character n-grams), log-price target, blended by their mean.
- Amazon ML Challenge 2025 teams: gradient-boosted trees over the embeddings and kNN price statistics
  (mean, std, min, max, similarity-weighted mean of the neighbours' log prices), found by FAISS separately
  in each embedding space (text, image, combined).

Both take training rows in time order and choose their one hyperparameter on the last time-ordered fold.
"""

from __future__ import annotations

import warnings

import numpy as np
import polars as pl
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.model_selection import TimeSeriesSplit
from sklearn.neural_network import MLPRegressor

from embeddings import SpuIndex
from valuation.lexical import mlp_batch


def mercari_mlp(train_titles: list[str], y: np.ndarray, test_titles: list[str], seed: int = 0) -> np.ndarray:
    """Binarised sparse TF-IDF inputs, log-price target, one MLP on word n-grams and one on character
    n-grams, blended by their mean. The L2 penalty is chosen on the last time-ordered fold (rows come in
    time order), then each MLP is refit on all rows. scikit-learn's MLP has squared loss only (the
    winners used Huber in Keras)."""
    views = [TfidfVectorizer(analyzer="word", ngram_range=(1, 2), min_df=2, binary=True),
             TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), min_df=3, binary=True)]
    train_titles, test_titles = np.asarray(train_titles, dtype=object), np.asarray(test_titles, dtype=object)
    fit_rows, check_rows = list(TimeSeriesSplit(n_splits=4).split(train_titles))[-1]
    predictions = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for k, view in enumerate(views):
            def mlp(alpha):
                batch, step = mlp_batch(len(y))  # as our head's MLP; the winners' grew from 2k rows a batch
                return MLPRegressor(hidden_layer_sizes=(128, 32), alpha=alpha, batch_size=batch,
                                    learning_rate_init=step, max_iter=30, early_stopping=True,
                                    n_iter_no_change=4, random_state=seed + k)
            errors = {}
            X = view.fit_transform(train_titles[fit_rows])
            for alpha in (1e-4, 1e-2, 1.0):
                model = mlp(alpha).fit(X, y[fit_rows])
                errors[alpha] = np.abs(model.predict(view.transform(train_titles[check_rows])) - y[check_rows]).mean()
            best = min(errors, key=errors.get)
            model = mlp(best).fit(view.fit_transform(train_titles), y)
            predictions.append(model.predict(view.transform(test_titles)))
    return np.mean(predictions, axis=0)


def knn_price_features(index: SpuIndex, vectors: np.ndarray, prices: dict[str, float], k: int = 10,
                       exclude_self: list[str] | None = None, present: np.ndarray | None = None) -> np.ndarray:
    """Mean, std, min, max and similarity-weighted mean of the k nearest training SPUs' log prices, and
    the top similarity; a training SPU's own price is left out. Rows not ``present`` in this space (no
    image) get NaN, which the trees route on their own."""
    present = np.ones(len(vectors), dtype=bool) if present is None else present
    rows = np.full((len(vectors), 6), np.nan)
    wanted = np.flatnonzero(present)
    for i, hit in zip(wanted, index.search(vectors[wanted], k + 1) if len(wanted) else []):
        own = exclude_self[i] if exclude_self else None
        hit = hit.filter(pl.col("spu_id") != own).head(k) if own else hit.head(k)
        if not hit.height:
            continue
        logs = np.log([prices[s] for s in hit["spu_id"]])
        weights = np.clip(hit["score"].to_numpy(), 1e-3, None)
        rows[i] = [logs.mean(), logs.std(), logs.min(), logs.max(), float(np.average(logs, weights=weights)),
                   float(hit["score"][0])]
    return rows


def knn_boosted_trees(spaces: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], train_ids: list[str],
                      y: np.ndarray, embeddings: tuple[np.ndarray, np.ndarray], seed: int = 0) -> tuple[np.ndarray, str]:
    """``spaces``: per embedding space (train vectors, train present, test vectors, test present);
    ``embeddings``: (train, test) embedding columns the trees also see. Absolute-error loss on the log
    price (SMAPE is judged); the leaf count is chosen on the last time-ordered fold."""
    prices = dict(zip(train_ids, np.exp(y)))
    train_parts, test_parts = [], []
    for train_vectors, train_present, test_vectors, test_present in spaces:
        index = SpuIndex(train_vectors.shape[1], "recipe", "flat")
        rows = np.flatnonzero(train_present)
        index.add([train_ids[i] for i in rows], train_vectors[rows])
        train_parts.append(knn_price_features(index, train_vectors, prices, exclude_self=train_ids,
                                              present=train_present))
        test_parts.append(knn_price_features(index, test_vectors, prices, present=test_present))
    X = np.hstack(train_parts + [embeddings[0]])
    X_test = np.hstack(test_parts + [embeddings[1]])
    fit_rows, check_rows = list(TimeSeriesSplit(n_splits=4).split(X))[-1]

    def trees(leaves):
        return HistGradientBoostingRegressor(loss="absolute_error", max_leaf_nodes=leaves, learning_rate=0.05,
                                             max_iter=400, early_stopping=True, validation_fraction=0.15,
                                             random_state=seed)
    errors = {leaves: np.abs(trees(leaves).fit(X[fit_rows], y[fit_rows]).predict(X[check_rows]) - y[check_rows]).mean()
              for leaves in (7, 15, 31)}
    best = min(errors, key=errors.get)
    return trees(best).fit(X, y).predict(X_test), f"leaves={best}"
