import numpy as np
import polars as pl

from embeddings import calibrate_match_threshold
from embeddings.matching import best_candidate, match_quality, title_conflict


def test_threshold_is_lowest_meeting_target_precision():
    scores = np.array([0.99, 0.95, 0.93, 0.90, 0.85, 0.80])
    correct = np.array([1, 1, 0, 1, 1, 0], bool)
    positive = np.array([1, 1, 0, 1, 1, 1], bool)  # the 0.93 query is a new SPU
    chosen = calibrate_match_threshold(scores, correct, positive, target_precision=0.75)
    assert chosen.threshold == 0.85  # 4 right of 5 declared = 0.8 precision, recall 4/5
    assert abs(chosen.precision - 0.8) < 1e-9 and abs(chosen.recall - 0.8) < 1e-9
    strict = calibrate_match_threshold(scores, correct, positive, target_precision=1.0)
    assert strict.threshold == 0.95 and strict.recall == 0.4


def test_wrong_spu_hit_counts_against_precision():
    q = match_quality(np.array([0.9, 0.9]), np.array([True, False]), np.array([True, True]), 0.5)
    assert q["precision"] == 0.5 and q["recall"] == 0.5


def test_facet_conflicts():
    assert title_conflict("PINK CHERRY LIGHTS", "WHITE CHERRY LIGHTS")
    assert title_conflict("NUMBER TILE COTTAGE GARDEN 1", "NUMBER TILE COTTAGE GARDEN 4")
    assert not title_conflict("POPCORN HOLDER", "SMALL POPCORN HOLDER")
    assert not title_conflict("Children's spaceboy mug", "CHILDRENS SPACEBOY MUG")


def test_best_candidate_skips_conflicting_siblings():
    hits = pl.DataFrame({"spu_id": ["W", "P"], "score": [0.95, 0.90],
                         "title": ["WHITE CHERRY LIGHTS", "PINK CHERRY LIGHTS"]})
    assert best_candidate("PINK CHERRY LIGHTS", hits)[0] == "P"
    assert best_candidate("BLUE CHERRY LIGHTS", hits) == ("W", 0.0)
    assert best_candidate(None, hits)[0] == "W"
