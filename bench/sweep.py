"""Sweep throughput: score a book of N positions (demo SPUs and market) in one call, as a sweep does,
against the straightforward way: a Python loop that scores one position at a time (same scoring code,
each position with its own SPU's market rows), on ``--loop-positions`` of the same book.

    python bench/sweep.py [--positions 1000000] [--loop-positions 10000]
"""

from __future__ import annotations

import argparse
import resource
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
    parser.add_argument("--loop-positions", type=int, default=10_000)
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
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    looped = book.head(args.loop_positions)
    by_spu = {spu: rows for (spu,), rows in market.partition_by("spu_id", as_dict=True).items()}
    empty = market.clear()
    start = time.perf_counter()
    rows = [score_book(looped[i:i + 1], by_spu.get(spu, empty), as_of)
            for i, spu in enumerate(looped["spu_id"].to_list())]
    t_loop = time.perf_counter() - start
    loop_frame = pl.concat(rows)
    both = loop_frame.select("position_id", "health").join(result.select("position_id", "health"),
                                                          on="position_id", suffix="_vectorised")
    same = both.height == looped.height and (both["health"] - both["health_vectorised"]).abs().max() < 1e-9
    loop_per_s = looped.height / t_loop
    print_table(f"Sweep scoring, {args.positions:,} positions over {market['spu_id'].n_unique()} SPUs "
                f"({market.height:,} market rows), best of {args.repeats}",
                ["positions", "seconds", "positions/s", "actions"],
                [[f"{1000:,}", f"{t_small:.3f}", f"{1000 / t_small:,.0f}", "-"],
                 [f"{args.positions:,}", f"{best:.3f}", f"{per_s:,.0f}",
                  ", ".join(f"{a}={n}" for a, n in result["action"].value_counts().sort("action").rows())],
                 [f"{looped.height:,} (loop)", f"{t_loop:.3f}", f"{loop_per_s:,.0f}",
                  f"same health as vectorised: {same}"]])
    print(f"positions_per_s={per_s:.0f} peak_rss_mb={peak_rss_mb:.0f} speedup_vs_loop={per_s / loop_per_s:.0f} "
          f"loop_positions_per_s={loop_per_s:.0f} seconds={best:.3f} n_positions={args.positions} "
          f"scale_ratio_vs_1k={best / t_small:.1f}")


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
