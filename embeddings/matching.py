"""Same-SPU matching: when is the nearest known SPU *this* SPU, and when is the item new?

A query's top-1 hit is declared a match when its cosine score reaches the threshold. Calibration sees
queries whose true SPU is in the index (positives) and queries whose SPU is not (new SPUs):
- a true match is a declared match on the right SPU;
- a false match is a declared match on a new SPU's query, or on the wrong SPU;
- precision = true / declared; recall = true / positive queries.
The threshold is the lowest score that keeps precision at or above the target (fewest missed
matches at that precision), or the best F1 if no threshold reaches the target.

Sentence encoders place "PINK CHERRY LIGHTS" next to "WHITE CHERRY LIGHTS" (cosine ~0.9): the same
family, but another SPU. Before the threshold, candidates whose titles name a *different* colour,
number or size than the query's are passed over (a facet one title lacks is no conflict: "POPCORN
HOLDER" and "SMALL POPCORN HOLDER" can be one SPU).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np
import polars as pl

COLOUR_WORDS = frozenset("""RED PINK BLUE GREEN WHITE BLACK IVORY PURPLE YELLOW ORANGE GOLD SILVER BROWN GREY GRAY
TURQUOISE CREAM LILAC AMETHYST NAVY BEIGE TEAL MIDNIGHT CLEAR COPPER BRONZE""".split())
SIZE_WORDS = frozenset("SMALL LARGE MEDIUM MINI JUMBO XL XXL BIG GIANT".split())


def _facets(title: str) -> tuple[set, set, set]:
    tokens = re.findall(r"[A-Z]+|\d+", (title or "").upper())
    return ({t for t in tokens if t in COLOUR_WORDS}, {t for t in tokens if t.isdigit()},
            {t for t in tokens if t in SIZE_WORDS})


def title_conflict(a: str, b: str) -> bool:
    """True when both titles name a colour, number or size and they differ."""
    return any(x and y and x != y for x, y in zip(_facets(a), _facets(b)))


def best_candidate(query_title: str | None, hits: pl.DataFrame) -> tuple[str | None, float]:
    """The best-scoring hit (spu_id, score, title) that does not conflict with the query's title; if
    every hit conflicts, the top hit with score 0 (never a match)."""
    if hits.height == 0:
        return None, 0.0
    for spu_id, score, title in hits.select("spu_id", "score", "title").iter_rows():
        if not query_title or not title_conflict(query_title, title or ""):
            return spu_id, float(score)
    return hits["spu_id"][0], 0.0


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
