"""Sweep throughput: score a book of N positions (demo SPUs and market) in one call, as a sweep does.

    python bench/monitoring.py [--positions 1000000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import print_table  # noqa: E402
from data import generate_demo_catalog, load_catalog  # noqa: E402
from monitoring import score_book  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--positions", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--demo-dir", type=Path, default=Path("var/bench-demo"))
    args = parser.parse_args()
    if not (args.demo_dir / "positions.parquet").is_file():
        generate_demo_catalog(args.demo_dir, n_spus=2000, seed=0)
    tables = load_catalog(args.demo_dir, ("spus", "market", "positions"))
    market, base = tables["market"], tables["positions"]
    as_of = market["date"].max()
    rng = np.random.default_rng(0)
    pick = rng.integers(0, base.height, args.positions)
    book = base[pick].with_columns(pl.format("B{}", pl.int_range(pl.len())).alias("position_id"),
                                   (pl.col("loan_amount") * rng.uniform(0.7, 1.3, args.positions)).alias("loan_amount"))
    small = book.head(1000)
    t_small = min(_timed(lambda: score_book(small, market, as_of)) for _ in range(args.repeats))
    times = [_timed(lambda: score_book(book, market, as_of)) for _ in range(args.repeats)]
    best = min(times)
    result = score_book(book, market, as_of)
    per_s = args.positions / best
    print_table(f"Sweep scoring, {args.positions:,} positions over {market['spu_id'].n_unique()} SPUs "
                f"({market.height:,} market rows), best of {args.repeats}",
                ["positions", "seconds", "positions/s", "actions"],
                [[f"{1000:,}", f"{t_small:.3f}", f"{1000 / t_small:,.0f}", "-"],
                 [f"{args.positions:,}", f"{best:.3f}", f"{per_s:,.0f}",
                  ", ".join(f"{a}={n}" for a, n in result["action"].value_counts().sort("action").rows())]])
    print(f"positions_per_s={per_s:.0f} seconds={best:.3f} n_positions={args.positions} "
          f"scale_ratio_vs_1k={best / t_small:.1f}")


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
