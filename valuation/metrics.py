"""Error measures on unit values, as a desk reads them."""

from __future__ import annotations

import numpy as np


def smape_per_row(actual, predicted) -> np.ndarray:
    actual, predicted = np.asarray(actual, float), np.asarray(predicted, float)
    return 2 * np.abs(predicted - actual) / (np.abs(actual) + np.abs(predicted))


def paired_smape_gain(actual, baseline, ours, draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of SMAPE(baseline) - SMAPE(ours), resampling the rows (paired: both priced
    the same rows); above zero means ours wins beyond the luck of which products were tested."""
    return gain_ci95(smape_per_row(actual, baseline) - smape_per_row(actual, ours), draws, seed)


def gain_ci95(gain, draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of the mean of per-row gains (e.g. each row's SMAPE gain averaged over
    several fits), resampling the rows."""
    gain = np.asarray(gain, float)
    picks = np.random.default_rng(seed).integers(0, len(gain), size=(draws, len(gain)))
    low, high = np.percentile(gain[picks].mean(axis=1), [2.5, 97.5])
    return float(low), float(high)


def value_metrics(actual, predicted, low=None, high=None) -> dict[str, float]:
    actual, predicted = np.asarray(actual, float), np.asarray(predicted, float)
    ape = np.abs(predicted - actual) / actual
    out = {
        "median_ape": float(np.median(ape)),
        "smape": float(np.mean(smape_per_row(actual, predicted))),
        "mae": float(np.mean(np.abs(predicted - actual))),
        "n": int(len(actual)),
    }
    if low is not None and high is not None:
        low, high = np.asarray(low, float), np.asarray(high, float)
        out["coverage90"] = float(np.mean((actual >= low) & (actual <= high)))
        out["median_width"] = float(np.median((high - low) / predicted))
    return out
