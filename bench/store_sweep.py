"""A sweep through the store, as ``pledgeval sweep --parts K`` runs it: the book's positions and market in the
store (SQLite by default, or PostgreSQL), read a range of SPUs at a time, scored, and every result, alert and
position state written back in the sweep's one transaction. bench/sweep.py times the scoring alone; this is
the same scoring with the store's reads and writes around it.

    python bench/store_sweep.py [--positions 1000000] [--spus 100000] [--days 120] [--parts 4]
    python bench/store_sweep.py --store postgresql+psycopg://postgres@127.0.0.1:5432/test

The synthetic book is bench/sweep.py's (same seed, same market). It is generated and loaded by a child
process, so that this process's peak memory is the sweep's own. With PostgreSQL the book goes into a
throw-away schema, dropped at the end. Prints where the sweep's time goes (reads, scoring, writes), its
positions/s beside the in-memory scoring of the same book in this process (the floor of what the store
adds), the process's peak resident memory, and a check that the stored results equal the in-memory ones.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import shutil
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import print_table  # noqa: E402
from bench.sweep import START, SyntheticMarket  # noqa: E402
from data.store import Store  # noqa: E402
from monitoring import Monitor, load_config, score_book  # noqa: E402


def open_store(url: str, schema: str | None) -> Store:
    if schema is None:
        return Store(url)
    return Store(url, engine_options={"connect_args": {"options": f"-csearch_path={schema}"}})


def load_book(url: str, schema: str | None, n_positions: int, n_spus: int, days: int, seed: int) -> dict:
    """In a child process: the synthetic book into a fresh store; how long the load took."""
    world = SyntheticMarket(n_spus, days, seed)
    positions = world.positions(n_positions, world.rng)
    store = open_store(url, schema)
    store.migrate()
    t0 = time.perf_counter()
    store.upsert_many({"market": world.market, "positions": positions})
    seconds = time.perf_counter() - t0
    store.close()
    return {"seconds": seconds, "market_rows": world.market.height}


def timed(owner, name: str, totals: dict) -> None:
    """Wrap ``owner.name`` so that its wall time adds up in ``totals[name]``."""
    inner = getattr(owner, name)

    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            totals[name] += time.perf_counter() - t0
    setattr(owner, name, wrapper)


READS = ("book_spus", "positions_between", "market_of", "latest_actions")
WRITES = ("write_results", "set_state", "add_alerts", "complete_sweep")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--positions", type=int, default=1_000_000)
    parser.add_argument("--spus", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--parts", type=int, default=4, help="SPU ranges the sweep reads, scores and writes in turn")
    parser.add_argument("--store", default=None, help="a PostgreSQL URL (default: an SQLite file in a temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="bench-store-sweep-"))
    url, schema, admin = args.store or f"sqlite:///{folder}/store.db", None, None
    if args.store:
        schema = f"bench_{uuid.uuid4().hex[:12]}"
        admin = sa.create_engine(args.store)
        with admin.begin() as connection:
            connection.execute(sa.text(f'create schema "{schema}"'))
    try:
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            loaded = pool.apply(load_book, (url, schema, args.positions, args.spus, args.days, args.seed))
        baseline_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        store = open_store(url, schema)
        monitor = Monitor(store)
        totals: dict[str, float] = defaultdict(float)
        for name in READS + WRITES:
            timed(monitor.sweeps if hasattr(monitor.sweeps, name) else monitor.log, name, totals)
        timed(monitor, "score", totals)
        as_of = START + timedelta(days=args.days - 1)
        t0 = time.perf_counter()
        outcome = monitor.run_sweep(as_of, parts=args.parts)
        seconds = time.perf_counter() - t0
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        # the floor, in this process: the same book scored in memory, no store (read outside the timing)
        positions, market = store.read("positions"), store.read("market")
        t0 = time.perf_counter()
        in_memory = score_book(positions, market, as_of, load_config())
        in_memory_s = time.perf_counter() - t0
        both = monitor.results(outcome.sweep_id).select("position_id", "health", "action").join(
            in_memory.select("position_id", "health", "action"), on="position_id", suffix="_in_memory")
        # to float noise: a group's sum runs in no fixed order, so a part's volatility may differ in the last ulp
        same = (both.height == in_memory.height == outcome.n_positions
                and (both["health"] - both["health_in_memory"]).abs().max() < 1e-9
                and (both["action"] == both["action_in_memory"]).all())
        store.close()
    finally:
        if admin is not None:
            with admin.begin() as connection:
                connection.execute(sa.text(f'drop schema "{schema}" cascade'))
            admin.dispose()
        shutil.rmtree(folder)

    reads, writes = sum(totals[n] for n in READS), sum(totals[n] for n in WRITES)
    rows = [[name, f"{totals[name]:.1f}", f"{totals[name] / seconds:.0%}"] for name in READS + ("score",) + WRITES]
    rows.append(["other (lock, gate, commit)", f"{seconds - reads - writes - totals['score']:.1f}",
                 f"{(seconds - reads - writes - totals['score']) / seconds:.0%}"])
    kind = sa.engine.make_url(url).get_backend_name()
    print_table(f"Sweep through the store ({kind}): {outcome.n_positions:,} positions over {args.spus:,} SPUs in "
                f"{args.parts} parts, {outcome.n_alerts:,} alerts; book loaded in {loaded['seconds']:.0f}s "
                f"({loaded['market_rows']:,} market rows)", ["step", "seconds", "share"], rows)
    per_s = outcome.n_positions / seconds
    print_table("Against the in-memory scoring of the same book (this process)",
                ["path", "seconds", "positions/s", "peak RSS MB", "same health and action"],
                [[f"store, {args.parts} parts", f"{seconds:.1f}", f"{per_s:,.0f}", f"{peak_mb:,.0f}", str(same)],
                 ["in memory, scoring only", f"{in_memory_s:.1f}", f"{outcome.n_positions / in_memory_s:,.0f}", "-", "-"]])
    print(f"store={kind} positions_per_s={per_s:.0f} in_memory_positions_per_s={outcome.n_positions / in_memory_s:.0f} "
          f"store_over_in_memory={in_memory_s / seconds:.3f} read_s={reads:.1f} score_s={totals['score']:.1f} "
          f"write_s={writes:.1f} seconds={seconds:.1f} peak_rss_mb={peak_mb:.0f} baseline_rss_mb={baseline_mb:.0f} "
          f"same_results={same} n_positions={outcome.n_positions} alerts={outcome.n_alerts} parts={args.parts} "
          f"n_spus={args.spus} load_seconds={loaded['seconds']:.0f}")


if __name__ == "__main__":
    main()
