"""Which features moved one row's prediction: each feature in turn is set to values typical of the training
data, and the row's prediction is compared with those. Model-agnostic and one model call for a whole batch
(a tree ensemble costs about as much for one row as for hundreds)."""

from __future__ import annotations

from typing import Callable

import numpy as np


def reference_quantiles(X: np.ndarray, n: int = 16) -> np.ndarray:
    """Each column's training distribution as ``n`` quantiles (NaN where a column is all missing)."""
    with np.errstate(all="ignore"):
        return np.nanquantile(X, (np.arange(n) + 0.5) / n, axis=0)


def every_probe(reference: np.ndarray, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(column, value, weight) of each probe that sets column ``columns[k]`` to each of its m typical
    values ``reference[:, k]``, each weighing 1/m of its column's mean."""
    m, k = reference.shape
    return np.repeat(np.asarray(columns, dtype=np.intp), m), reference.T.ravel(), np.full(m * k, 1 / m)


def probe(predict: Callable[[np.ndarray], np.ndarray], X: np.ndarray, columns: np.ndarray,
          values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``predict(X)`` (n,), and the probes' predictions (n, P): probe p is each row with column
    ``columns[p]`` set to ``values[p]``."""
    X = np.asarray(X, dtype=np.float64)
    n, f = X.shape
    P = len(columns)
    probes = np.repeat(X[:, None, :], P, axis=1)  # (n, P, f)
    probes[:, np.arange(P), columns] = values
    out = predict(np.concatenate([X, probes.reshape(n * P, f)]))
    return out[:n], out[n:].reshape(n, P)


def top_effects(effect: np.ndarray, X: np.ndarray, names, top: int = 3, minimum: float = 5e-4) -> list[list[dict]]:
    """Per row, the ``top`` features with the largest |effect| (at least ``minimum``), with their values."""
    out = []
    for i in range(len(effect)):
        picked = [j for j in np.argsort(-np.abs(effect[i]))[:top] if abs(effect[i, j]) > minimum]
        out.append([{"feature": names[j], "value": None if np.isnan(X[i, j]) else round(float(X[i, j]), 4),
                     "effect": round(float(effect[i, j]), 4)} for j in picked])
    return out
