"""Same-SPU matching: when is the nearest known SPU *this* SPU, and when is the item new?

A query's top-1 hit is declared a match when its cosine score reaches the threshold. Calibration sees
queries whose true SPU is in the index (positives) and queries whose SPU is not (new SPUs):
- a true match is a declared match on the right SPU;
- a false match is a declared match on a new SPU's query, or on the wrong SPU;
- precision = true / declared; recall = true / positive queries.
The threshold is the lowest score that keeps precision at or above the target (fewest missed
matches at that precision), or the best F1 if no threshold reaches the target.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class MatchThreshold:
    threshold: float
    precision: float
    recall: float
    f1: float
    n_positive: int
    n_new: int
    target_precision: float

    def as_dict(self) -> dict:
        return asdict(self)

    def is_match(self, score: float) -> bool:
        return bool(score >= self.threshold)


def match_quality(scores: np.ndarray, correct: np.ndarray, positive: np.ndarray, threshold: float) -> dict:
    declared = scores >= threshold
    true = int((declared & correct & positive).sum())
    n_declared = int(declared.sum())
    precision = true / n_declared if n_declared else 1.0
    recall = true / max(int(positive.sum()), 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def calibrate_match_threshold(scores, correct, positive, target_precision: float = 0.95) -> MatchThreshold:
    """``scores``: top-1 cosine per query; ``correct``: top-1 is the query's own SPU; ``positive``: its
    SPU is in the index."""
    scores, correct, positive = (np.asarray(a) for a in (scores, correct, positive))
    correct = correct.astype(bool) & positive.astype(bool)
    positive = positive.astype(bool)
    candidates = np.unique(np.round(scores, 4))
    table = [(t, match_quality(scores, correct, positive, t)) for t in candidates]
    meeting = [(t, q) for t, q in table if q["precision"] >= target_precision and q["recall"] > 0]
    threshold, quality = min(meeting, key=lambda tq: tq[0]) if meeting else max(table, key=lambda tq: tq[1]["f1"])
    return MatchThreshold(threshold=float(threshold), n_positive=int(positive.sum()), n_new=int((~positive).sum()),
                          target_precision=target_precision, **quality)
