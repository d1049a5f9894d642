"""Error measures on unit values, as a desk reads them."""

from __future__ import annotations

import numpy as np


def value_metrics(actual, predicted, low=None, high=None) -> dict[str, float]:
    actual, predicted = np.asarray(actual, float), np.asarray(predicted, float)
    ape = np.abs(predicted - actual) / actual
    out = {
        "median_ape": float(np.median(ape)),
        "smape": float(np.mean(2 * np.abs(predicted - actual) / (np.abs(actual) + np.abs(predicted)))),
        "mae": float(np.mean(np.abs(predicted - actual))),
        "n": int(len(actual)),
    }
    if low is not None and high is not None:
        low, high = np.asarray(low, float), np.asarray(high, float)
        out["coverage90"] = float(np.mean((actual >= low) & (actual <= high)))
        out["median_width"] = float(np.median((high - low) / predicted))
    return out
