"""Sweep throughput: score a book of N positions in one call, as a sweep does, against the straightforward
way: a Python loop that scores one position at a time (same scoring code, each position with its own
SPU's market rows), on ``--loop-positions`` of the same book; and the same book scored with the learned early
warning (``p_loss`` for every position, its features including ten comparables per SPU), first as a book's first
sweep (every warned position raises an alert and is explained) and then as the next day's (only changed actions
alert). All timed best of ``--repeats``.

The book is synthetic and seeded, at the scale a sweep meets: ``--spus`` SPUs, each with ``--days`` of
daily market history (lognormal price levels, a random walk, sales on a share of days, some SPUs gone
stale, some taking a lasting price drop), positions over every SPU, and pledge dates spread over the
window, so market lookups and pledge prices grow with the book instead of staying a few hundred.

    python bench/sweep.py [--positions 1000000] [--spus 100000] [--days 120] [--loop-positions 2000]
    python bench/sweep.py --positions 20000000 --streaming   # a book bigger than the in-memory sweep's budget

``--streaming`` writes the book as parquet (positions in chunks of a million, each sorted by SPU, from a
child process, so that this one never holds it), then scores it as a sweep over a book bigger than
memory does: ``monitoring.health.score_book_in_parts`` over ``pl.scan_parquet``, a range of SPUs at a
time, each part's results written to parquet as it comes. It prints positions/s and this process's peak
resident memory.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import print_table  # noqa: E402
from data.schemas import MARKET, POSITIONS  # noqa: E402
from monitoring import load_config, score_book  # noqa: E402
from monitoring.health import position_frame, score_book_in_parts, warning_matrix  # noqa: E402
from monitoring.warning import WarningModel  # noqa: E402

START = date(2024, 1, 1)
WAREHOUSES = ("Felixstowe", "Tilbury", "Daventry", "Rotterdam", "Leipzig")


def synthetic_book(n_positions: int, n_spus: int, days: int, seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(market, positions): one market row per SPU and day with a sale; positions over all SPUs."""
    world = SyntheticMarket(n_spus, days, seed)
    return world.market, world.positions(n_positions, world.rng)


class SyntheticMarket:
    """The market of the synthetic book; ``positions`` draws books over it (several, for a book written in
    chunks: a fresh generator and an id offset per chunk)."""

    def __init__(self, n_spus: int, days: int, seed: int):
        rng = self.rng = np.random.default_rng(seed)
        self.n_spus, self.days = n_spus, days
        day = np.arange(days)
        ids = self.ids = _labels("S", np.arange(n_spus), width=6)  # zero-padded: sorted ids are sorted numbers

        level = self.level = np.exp(rng.normal(np.log(30), 1.0, n_spus))  # typical price: from about £4 to a few hundred
        vol = np.exp(rng.normal(np.log(0.015), 0.5, n_spus))  # daily log-price volatility
        log_path = np.cumsum(rng.standard_normal((n_spus, days)) * vol[:, None], axis=1)
        log_path += rng.normal(0, 0.001, n_spus)[:, None] * day
        # A share of SPUs take a lasting price drop (and sell at half the rate after it) ...
        dropped = rng.random(n_spus) < 0.12
        after_drop = dropped[:, None] & (day >= rng.integers(days // 3, days, n_spus)[:, None])
        log_path += np.where(after_drop, np.log(rng.uniform(0.55, 0.85, n_spus))[:, None], 0.0)
        self.log_path = log_path
        # ... and a share stop selling at some point (stale by as-of: no sale in the last 15+ days).
        stops = np.where(rng.random(n_spus) < 0.08, rng.integers(days // 2, days - 15, n_spus), days)
        rate = self.rate = np.exp(rng.normal(np.log(0.6), 0.9, n_spus))  # units a day: some daily sellers, many slow ones
        units = rng.poisson(rate[:, None] * np.where(after_drop, 0.5, 1.0) * (day < stops[:, None]))
        spu_idx, day_idx = np.nonzero(units)  # row-major: sorted by SPU, then day
        price = level[spu_idx] * np.exp(log_path[spu_idx, day_idx] + rng.normal(0, 0.03, spu_idx.size))
        self.market = pl.DataFrame({
            "spu_id": ids.gather(spu_idx),
            "date": pl.Series(day_idx + (START - date(1970, 1, 1)).days, dtype=pl.Int32).cast(pl.Date),
            "price": np.maximum(np.round(price, 2), 0.01),
            "units_sold": units[spu_idx, day_idx],
        }).cast(MARKET.polars_schema)

    def positions(self, n_positions: int, rng: np.random.Generator, offset: int = 0) -> pl.DataFrame:
        # Loans of a few positions each, pledged on any day with a full pledge window of history before it;
        # every SPU is pledged at least once, the rest go to SPUs by how well they sell.
        n_spus, days, rate, level, log_path = self.n_spus, self.days, self.rate, self.level, self.log_path
        n_loans = max(1, n_positions // 8)
        window = load_config()["market"]["pledge_window_days"]
        loan_day = rng.integers(min(window, days - 1), days, n_loans)
        loan_of = rng.integers(0, n_loans, n_positions)
        every = rng.permutation(n_spus)[:n_positions]
        spu = np.concatenate([every, rng.choice(n_spus, n_positions - every.size, p=rate ** 0.5 / (rate ** 0.5).sum())])
        pledge_day = loan_day[loan_of]
        quantity = np.maximum(10, np.round(rate[spu] * rng.uniform(15, 120, n_positions))).astype(np.int64)
        pledge_unit_price = np.round(level[spu] * np.exp(log_path[spu, pledge_day]) * 0.7, 2)
        return pl.DataFrame({
            "position_id": _labels("B", np.arange(n_positions) + offset),
            "loan_id": _labels("L", loan_of + offset),
            "borrower": _labels("BR", loan_of % 2000),
            "spu_id": self.ids.gather(spu),
            "quantity": quantity,
            "warehouse": pl.Series(WAREHOUSES).gather(rng.integers(0, len(WAREHOUSES), n_positions)),
            "pledged_at": pl.Series(pledge_day + (START - date(1970, 1, 1)).days, dtype=pl.Int32).cast(pl.Date),
            "loan_amount": np.round(quantity * pledge_unit_price * rng.uniform(0.8, 1.0, n_positions), 2),
            "pledge_unit_price": np.maximum(pledge_unit_price, 0.01),
        }).cast(POSITIONS.polars_schema)


def bench_warning(market: pl.DataFrame, book: pl.DataFrame, as_of: date, neighbours: pl.DataFrame,
                  seed: int) -> WarningModel:
    """An early-warning model of the served shape for this synthetic book: fitted on a sample of it scored
    40 days before ``as_of``, labelled by whether the SPU's sales over the next 7 to 35 days fell under a
    quarter of its pledge-time rate. What is timed is scoring with it, not what it knows."""
    config = load_config()
    then = as_of - timedelta(days=40)
    sample = book.sample(min(200_000, book.height), seed=seed)
    frame = position_frame(sample, market, then, config, features=True, neighbours=neighbours).collect()
    later = (market.filter((pl.col("date") > then + timedelta(days=7)) & (pl.col("date") <= then + timedelta(days=35)))
             .group_by("spu_id").agg((pl.col("units_sold").sum() / 28).alias("later_rate")))
    frame = frame.join(later, on="spu_id", how="left", maintain_order="left")
    label = (frame["later_rate"].fill_null(0.0) < 0.25 * frame["pledge_rate"].fill_null(0.0)).to_numpy()
    model = WarningModel(n_splits=2, neighbours=neighbours)
    return model.fit(warning_matrix(frame), label, frame["spu_id"].to_numpy(), frame["position_id"].to_numpy(), ~label)


def _labels(prefix: str, numbers: np.ndarray, width: int = 0) -> pl.Series:
    return pl.select(pl.lit(prefix) + pl.Series(numbers).cast(pl.String).str.zfill(width)).to_series()


def best_of(fn, repeats: int) -> tuple[float, object]:
    """Best wall time of ``repeats`` calls, and the last call's result."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


CHUNK = 1_000_000


def write_book(folder: Path, n_positions: int, n_spus: int, days: int, seed: int) -> int:
    """The market and the positions as parquet, one chunk of positions in memory at a time."""
    world = SyntheticMarket(n_spus, days, seed)
    world.market.write_parquet(folder / "market.parquet")
    chunks = 0
    for k, start in enumerate(range(0, n_positions, CHUNK)):
        chunk = world.positions(min(CHUNK, n_positions - start), np.random.default_rng([seed, k]), offset=start)
        chunk.sort("spu_id").write_parquet(folder / f"positions-{k:04d}.parquet", row_group_size=100_000)
        chunks += 1
    return chunks


def streaming(args) -> None:
    import multiprocessing
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="bench-sweep-stream-"))
    t0 = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        chunks = pool.apply(write_book, (folder, args.positions, args.spus, args.days, args.seed))
    t_write = time.perf_counter() - t0
    baseline_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    market = pl.read_parquet(folder / "market.parquet")
    positions = pl.scan_parquet(folder / "positions-*.parquet")
    as_of = START + timedelta(days=args.days - 1)
    parts = args.parts or max(1, args.positions // CHUNK)
    out = folder / "results"
    out.mkdir()
    scored, actions = 0, {}
    t0 = time.perf_counter()
    for k, results in enumerate(score_book_in_parts(positions, market, as_of, parts=parts)):
        results.drop("reasons").write_parquet(out / f"results-{k:04d}.parquet")
        scored += results.height
        for action, n in results["action"].value_counts().rows():
            actions[action] = actions.get(action, 0) + n
    seconds = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    per_s = scored / seconds
    # the baseline, in the same process: the in-memory sweep of one chunk (a million positions, every SPU)
    first = pl.read_parquet(folder / "positions-0000.parquet")
    t0 = time.perf_counter()
    score_book(first, market, as_of)
    in_memory_per_s = first.height / (time.perf_counter() - t0)
    print_table(f"Streaming sweep: {scored:,} positions in {chunks} parquet chunks over {args.spus:,} SPUs "
                f"({market.height:,} market rows), {parts} parts by SPU range; book written in {t_write:.0f}s",
                ["positions", "seconds", "positions/s", "peak RSS MB (process)", "RSS before scoring MB", "actions"],
                [[f"{scored:,}", f"{seconds:.1f}", f"{per_s:,.0f}", f"{peak_mb:,.0f}", f"{baseline_mb:,.0f}",
                  ", ".join(f"{a}={n}" for a, n in sorted(actions.items()))],
                 [f"{first.height:,} in memory (baseline)", "-", f"{in_memory_per_s:,.0f}", "-", "-", "-"]])
    print(f"positions_per_s={per_s:.0f} in_memory_positions_per_s={in_memory_per_s:.0f} "
          f"streaming_over_in_memory={per_s / in_memory_per_s:.2f} peak_rss_mb={peak_mb:.0f} baseline_rss_mb={baseline_mb:.0f} "
          f"seconds={seconds:.1f} n_positions={scored} parts={parts} n_spus={args.spus} market_rows={market.height}")
    shutil.rmtree(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--positions", type=int, default=1_000_000)
    parser.add_argument("--spus", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=120, help="days of market history per SPU")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loop-positions", type=int, default=2_000,
                        help="positions scored one at a time (a random sample of the same book)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--streaming", action="store_true", help="score a parquet book part by part (see above)")
    parser.add_argument("--parts", type=int, default=None, help="--streaming: SPU ranges (default: a part per "
                                                                 "million positions)")
    args = parser.parse_args()
    if args.streaming:
        streaming(args)
        return

    t0 = time.perf_counter()
    market, book = synthetic_book(args.positions, args.spus, args.days, args.seed)
    t_build = time.perf_counter() - t0
    as_of = START + timedelta(days=args.days - 1)
    n_spus, n_dates = book["spu_id"].n_unique(), book["pledged_at"].n_unique()
    n_pairs = book.select("spu_id", "pledged_at").n_unique()
    stale = market.group_by("spu_id").agg(pl.col("date").max()).filter(
        pl.col("date") < as_of - timedelta(days=load_config()["market"]["stale_days"])).height

    small = book.head(1000)
    t_small, _ = best_of(lambda: score_book(small, market, as_of), args.repeats)
    best, result = best_of(lambda: score_book(book, market, as_of), args.repeats)
    per_s = book.height / best
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    spu_ids = market["spu_id"].unique().sort()
    rng = np.random.default_rng(args.seed)
    neighbours = pl.DataFrame({"spu_id": spu_ids.gather(np.repeat(np.arange(len(spu_ids)), 10)),
                               "neighbour": spu_ids.gather(rng.integers(0, len(spu_ids), 10 * len(spu_ids)))})
    warning = bench_warning(market, book, as_of, neighbours, args.seed)
    t_warned, warned = best_of(lambda: score_book(book, market, as_of, warning=warning), args.repeats)
    warned_per_s = book.height / t_warned
    # a daily sweep after the first: last sweep's actions known, so only changes raise (and explain) alerts
    previous = warned.select("position_id", "action")
    t_daily, daily = best_of(lambda: score_book(book, market, as_of, warning=warning, previous=previous), args.repeats)
    daily_per_s = book.height / t_daily

    looped = book.sample(min(args.loop_positions, book.height), seed=args.seed)
    wanted = market.filter(pl.col("spu_id").is_in(looped["spu_id"].unique().implode()))
    by_spu = {spu: rows for (spu,), rows in wanted.partition_by("spu_id", as_dict=True).items()}
    empty = market.clear()

    def loop():
        return pl.concat([score_book(looped[i:i + 1], by_spu.get(spu, empty), as_of)
                          for i, spu in enumerate(looped["spu_id"].to_list())])

    t_loop, loop_frame = best_of(loop, args.repeats)
    both = loop_frame.select("position_id", "health").join(result.select("position_id", "health"),
                                                          on="position_id", suffix="_vectorised")
    same = both.height == looped.height and (both["health"] - both["health_vectorised"]).abs().max() < 1e-9
    loop_per_s = looped.height / t_loop

    print_table(f"Synthetic book: {book.height:,} positions over {n_spus:,} SPUs, {n_dates} pledge dates "
                f"({n_pairs:,} SPU x pledge-date pairs); {market.height:,} market rows over {args.days} days, "
                f"{stale:,} SPUs stale at {as_of}; built in {t_build:.1f}s",
                ["positions", f"seconds (best of {args.repeats})", "positions/s", "actions"],
                [[f"{small.height:,}", f"{t_small:.3f}", f"{small.height / t_small:,.0f}", "-"],
                 [f"{book.height:,}", f"{best:.3f}", f"{per_s:,.0f}",
                  ", ".join(f"{a}={n}" for a, n in result["action"].value_counts().sort("action").rows())],
                 [f"{book.height:,} with the early warning", f"{t_warned:.3f}", f"{warned_per_s:,.0f}",
                  ", ".join(f"{a}={n}" for a, n in warned["action"].value_counts().sort("action").rows())],
                 [f"{book.height:,} with the early warning, next day", f"{t_daily:.3f}", f"{daily_per_s:,.0f}",
                  f"alerts={int(daily['alert'].sum())}"],
                 [f"{looped.height:,} (loop)", f"{t_loop:.3f}", f"{loop_per_s:,.0f}",
                  f"same health as vectorised: {same}"]])
    print(f"positions_per_s={per_s:.0f} warning_positions_per_s={warned_per_s:.0f} "
          f"warning_over_rules={warned_per_s / per_s:.2f} warning_daily_positions_per_s={daily_per_s:.0f} "
          f"warning_daily_over_rules={daily_per_s / per_s:.2f} peak_rss_mb={peak_rss_mb:.0f} speedup_vs_loop={per_s / loop_per_s:.0f} "
          f"loop_positions_per_s={loop_per_s:.0f} seconds={best:.3f} loop_seconds={t_loop:.3f} "
          f"n_loop_positions={looped.height} n_positions={book.height} n_spus={n_spus} "
          f"n_pledge_dates={n_dates} n_spu_pledge_pairs={n_pairs} market_rows={market.height} "
          f"scale_ratio_vs_1k={best / t_small:.1f}")


if __name__ == "__main__":
    main()
