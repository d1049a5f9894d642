"""Embedding backfill: the same catalogue embedded in process and on a local Ray cluster, and a killed run
resumed.

The catalogue: the demo generator's SPUs (``--base`` of them, with their drawn photos), repeated to
``--spus`` rows with numbered titles, in shards of ``--shard-rows``; every row is embedded whole (one
title and one photo: the backfill has no cache, so a repeated photo costs what a new one does).

1. ``local``: ``pledgeval backfill --engine local`` in this process (torch on every core).
2. ``ray``: the same on a Ray cluster started here with ``num_cpus`` = this machine's cores, the actor
   pool sized by the backfill's rule (one actor per CPU, a CPU left to the reads).
3. resume: a subprocess runs the local backfill and is SIGKILLed once ``--kill-after`` shards are
   written; the rerun must redo only the rest.

Rates are SPUs per second (one title and one photo each), best of one run each, in the same process.

    python bench/backfill.py --spus 200000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import ROOT, print_table  # noqa: E402
from data import generate_demo_catalog  # noqa: E402
from embeddings.backfill import backfill  # noqa: E402

KILL = """
import os, signal, sys
from embeddings.backfill import backfill
after = int(sys.argv[3])
done = []
def stop(name):
    done.append(name)
    if len(done) == after:
        os.kill(os.getpid(), signal.SIGKILL)
backfill(sys.argv[1], sys.argv[2], log=None, on_shard=stop)
"""


def make_catalogue(folder: Path, n_spus: int, base: int, shard_rows: int, seed: int) -> int:
    demo = generate_demo_catalog(folder / "demo", n_spus=base, seed=seed)
    spus = demo.spus.select("title", "images")
    shards = folder / "shards"
    shards.mkdir()
    (shards / "images").symlink_to(folder / "demo" / "images")
    written = 0
    for k, start in enumerate(range(0, n_spus, shard_rows)):
        n = min(shard_rows, n_spus - start)
        rows = pl.int_range(start, start + n, eager=True)
        source = spus[(rows % base).to_list()]
        shard = pl.DataFrame({"spu_id": ("B" + rows.cast(pl.String).str.zfill(8)).to_list(),
                              "title": (source["title"] + " #" + rows.cast(pl.String)).to_list(),
                              "images": source["images"].to_list()})
        shard.write_parquet(shards / f"spus-{k:04d}.parquet")
        written += 1
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spus", type=int, default=200_000)
    parser.add_argument("--base", type=int, default=2000, help="distinct demo SPUs (photos) repeated")
    parser.add_argument("--shard-rows", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--kill-after", type=int, default=2, help="shards the killed run writes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import ray

    work = Path(tempfile.mkdtemp(prefix="bench-backfill-"))
    n_shards = make_catalogue(work, args.spus, args.base, args.shard_rows, args.seed)
    shards = work / "shards"
    print(f"catalogue: {args.spus:,} SPUs in {n_shards} shards under {shards}", flush=True)

    local = backfill(shards, work / "local", engine="local", batch_size=args.batch_size, log=None)
    print(f"local: {local.rows_per_s:,.0f} SPUs/s", flush=True)
    cpus = os.cpu_count()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        started = time.perf_counter()
        on_ray = backfill(shards, work / "ray", engine="ray", batch_size=args.batch_size, log=None)
        ray_wall = time.perf_counter() - started
    finally:
        ray.shutdown()
    print(f"ray: {on_ray.rows_per_s:,.0f} SPUs/s", flush=True)
    same = (pl.concat([pl.read_parquet(p) for p in sorted((work / "local").glob("vectors-*.parquet"))]).sort("spu_id")
            ["content"].to_numpy())
    other = (pl.concat([pl.read_parquet(p) for p in sorted((work / "ray").glob("vectors-*.parquet"))]).sort("spu_id")
             ["content"].to_numpy())
    max_diff = float(abs(same - other).max())

    script = work / "kill.py"
    script.write_text(KILL)
    killed = subprocess.run([sys.executable, str(script), str(shards), str(work / "resume"), str(args.kill_after)],
                            capture_output=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    before = len(json.loads((work / "resume" / "manifest.json").read_text())["shards"])
    resumed = backfill(shards, work / "resume", batch_size=args.batch_size, log=None)

    print_table("embedding backfill", ["run", "SPUs", "shards", "seconds", "SPUs/s"], [
        ["local (this process)", f"{local.rows:,}", str(local.done), f"{local.seconds:.1f}", f"{local.rows_per_s:,.0f}"],
        [f"ray (local cluster, {cpus} CPUs)", f"{on_ray.rows:,}", str(on_ray.done), f"{on_ray.seconds:.1f}",
         f"{on_ray.rows_per_s:,.0f}"],
        [f"killed after {before} shards (signal {-killed.returncode}), resumed", f"{resumed.rows:,}",
         f"{resumed.done} redone, {resumed.skipped} kept", f"{resumed.seconds:.1f}", f"{resumed.rows_per_s:,.0f}"],
    ])
    print(f"ray content vectors vs local: max |difference| {max_diff:.2e}; ray wall time with start-up {ray_wall:.1f} s")
    print(f"local_titles_per_s={local.rows_per_s:.1f} ray_titles_per_s={on_ray.rows_per_s:.1f} "
          f"ray_vs_local={on_ray.rows_per_s / local.rows_per_s:.2f} resumed_shards={resumed.done} "
          f"kept_shards={resumed.skipped} killed_signal={-killed.returncode} max_vector_diff={max_diff:.2e} "
          f"n_spus={args.spus} shards={n_shards} cpus={cpus}")


if __name__ == "__main__":
    main()
