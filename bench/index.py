"""SPU index: recall@10 against exact search, single-query latency, build time.

    python bench/index.py --quick          # 100k clustered vectors
    python bench/index.py --n 1000000
    python bench/index.py --from-shards --spus 2000000   # built from vector shards; peak memory

``--from-shards`` writes the vectors as backfill shards of 100,000 (in a child process, so that this one
never holds them), builds ``SpuIndex.from_shards`` of ``--kind`` (default ivfsq), the same in ``--parts``
parts (searched together through faiss.IndexShards), and ivfpq, and measures recall@10 against exact
search over the shards, single-query latency, and the peak resident memory of this process
(``ru_maxrss``). The index in parts is saved, and a fresh child process loads one part, then another the
whole index: the memory a machine that serves one part needs, against the whole.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import print_table  # noqa: E402
from embeddings import SpuIndex  # noqa: E402


def clustered(n: int, dim: int, rng: np.random.Generator, n_clusters: int) -> np.ndarray:
    """Random but clustered like product vectors: a few thousand product families, spread within."""
    centres = rng.normal(size=(n_clusters, dim)).astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        out[start:stop] = centres[rng.integers(0, n_clusters, stop - start)] \
            + 0.6 * rng.normal(size=(stop - start, dim)).astype(np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


SHARD_ROWS = 100_000


def write_shards(folder: Path, n: int, dim: int, seed: int) -> list[Path]:
    """Clustered vectors as backfill-style shards (spu_id, content), one shard in memory at a time."""
    import polars as pl

    rng = np.random.default_rng(seed)
    n_clusters = max(100, n // 50)
    centres = rng.normal(size=(n_clusters, dim)).astype(np.float32)
    paths = []
    for k, start in enumerate(range(0, n, SHARD_ROWS)):
        stop = min(n, start + SHARD_ROWS)
        part = centres[rng.integers(0, n_clusters, stop - start)] + 0.6 * rng.normal(size=(stop - start, dim)).astype(np.float32)
        part /= np.linalg.norm(part, axis=1, keepdims=True)
        path = folder / f"vectors-{k:04d}.parquet"
        pl.DataFrame({"spu_id": [f"S{i:08d}" for i in range(start, stop)],
                      "content": pl.Series(part, dtype=pl.Array(pl.Float32, dim))}).write_parquet(path)
        paths.append(path)
    return paths


def load_rss_mb(folder: Path, parts: list[int] | None) -> float:
    """In a fresh process: resident memory that loading the index (or only ``parts``) adds."""
    import psutil  # BentoML's dependency, as bench/soak.py uses it

    process = psutil.Process()
    before = process.memory_info().rss
    index = SpuIndex.load(folder, parts=parts)
    assert len(index)
    return (process.memory_info().rss - before) / 2**20


def from_shards(args) -> None:
    import multiprocessing
    import resource
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="bench-index-shards-"))
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        shards = pool.apply(write_shards, (folder, args.spus, args.dim, 0))
    baseline_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the libraries, before any index
    print(f"{len(shards)} shards of {args.dim}-dim vectors in {folder}; this process holds {baseline_mb:,.0f} MB "
          "before building", flush=True)
    rows, main_kind = [], args.kind if args.kind != "auto" else "ivfsq"
    builds = [(main_kind, 1), (main_kind, args.parts), ("ivfpq", 1)]
    for kind, parts in dict.fromkeys(builds):
        t0 = time.perf_counter()
        index = SpuIndex.from_shards(shards, "bench", kind, parts=parts)
        build_s = time.perf_counter() - t0
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t0 = time.perf_counter()
        recall = index.recall_against_exact(shards, queries=args.queries if args.queries < 1000 else 200)
        recall_s = time.perf_counter() - t0
        faiss.omp_set_num_threads(1)
        probe = np.stack([index.vectors(np.array([i]))[0] for i in np.random.default_rng(2).integers(0, len(index), 500)])
        latencies = []
        for q in probe:
            t = time.perf_counter()
            index.search_arrays(q[None, :], 10)
            latencies.append((time.perf_counter() - t) * 1000)
        faiss.omp_set_num_threads(0)
        p50, p99 = np.percentile(latencies, [50, 99])
        label = f"{kind} in {parts} parts" if parts > 1 else kind
        rows.append([label, f"{build_s:.0f}", f"{recall:.4f}", f"{p50:.2f}", f"{p99:.2f}", f"{rss_mb:,.0f}",
                     f"{recall_s:.0f}"])
        print(f"{label}: recall@10 {recall:.4f}, peak RSS so far {rss_mb:,.0f} MB", flush=True)
        if (kind, parts) == builds[0]:
            first = (recall, p99, rss_mb, build_s, kind)
        if (kind, parts) == builds[1] and parts > 1:
            in_parts = (recall, p99)
            index.save(folder / "parted")
        del index
    print_table(f"SPU index from {len(shards)} shards, {args.spus:,} vectors of {args.dim} dims",
                ["index", "build s", "recall@10 vs exact", "p50 ms", "p99 ms", "peak RSS MB (process)",
                 "exact check s"], rows)
    recall, p99, rss_mb, build_s, kind = first
    parted = ""
    if args.parts > 1:
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            part_mb = pool.apply(load_rss_mb, (folder / "parted", [0]))
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            whole_mb = pool.apply(load_rss_mb, (folder / "parted", None))
        print(f"loading the saved index in {args.parts} parts in a fresh process: one part adds {part_mb:,.0f} MB, "
              f"all of them {whole_mb:,.0f} MB")
        parted = (f"parts={args.parts} parts_recall_at_10={in_parts[0]:.4f} parts_p99_ms={in_parts[1]:.2f} "
                  f"parts_over_whole_p99={in_parts[1] / p99:.2f} one_part_load_mb={part_mb:.0f} "
                  f"all_parts_load_mb={whole_mb:.0f} ")
        shutil.rmtree(folder / "parted")
    print(f"recall_at_10={recall:.4f} p99_ms={p99:.2f} peak_rss_mb={rss_mb:.0f} build_s={build_s:.0f} kind={kind} "
          f"ivfpq_recall_at_10={float(rows[-1][2]):.4f} {parted}baseline_rss_mb={baseline_mb:.0f} n={args.spus} "
          f"shards={len(shards)}")
    for path in shards:
        path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--from-shards", action="store_true", help="build from vector shards (see above)")
    parser.add_argument("--spus", type=int, default=2_000_000, help="--from-shards: vectors")
    parser.add_argument("--quick", action="store_true", help="100k vectors")
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--dim", type=int, default=384, help="the default encoder's dimension")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--kind", default="auto")
    parser.add_argument("--parts", type=int, default=4, help="--from-shards: also build the index in this many parts")
    args = parser.parse_args()
    if args.from_shards:
        from_shards(args)
        return
    n = args.n or 100_000
    rng = np.random.default_rng(0)
    data = clustered(n, args.dim, rng, n_clusters=max(100, n // 50))
    queries = data[rng.integers(0, n, args.queries)] + 0.05 * rng.normal(size=(args.queries, args.dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    ids = [f"S{i}" for i in range(n)]

    exact = faiss.IndexFlatIP(args.dim)
    exact.add(data)
    t0 = time.perf_counter()
    _, truth = exact.search(queries, 10)
    exact_ms = (time.perf_counter() - t0) / args.queries * 1000

    index = SpuIndex(args.dim, "bench", args.kind)
    t0 = time.perf_counter()
    index.add(ids, data)
    build_s = time.perf_counter() - t0
    _, found = index.search_arrays(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found.tolist(), truth.tolist())])

    faiss.omp_set_num_threads(1)  # a request is one query: time one at a time, one thread, as served
    latencies = []
    for q in queries:
        t = time.perf_counter()
        index.search_arrays(q[None, :], 10)
        latencies.append((time.perf_counter() - t) * 1000)
    api = []
    for q in queries[:200]:  # the public call: spu_ids and scores for one query
        t = time.perf_counter()
        index.search(q[None, :], 10)
        api.append((time.perf_counter() - t) * 1000)
    api_ms = float(np.percentile(api, 99))
    p50, p99 = np.percentile(latencies, [50, 99])

    kind = index.resolved_kind(n)
    print_table(f"SPU index, {n:,} clustered vectors of {args.dim} dims, {args.queries} queries",
                ["index", "build s", "recall@10 vs exact", "p50 ms", "p99 ms", "exact ms/query (batched)",
                 "search() p99 ms (with spu_ids)"],
                [[kind, f"{build_s:.1f}", f"{recall:.4f}", f"{p50:.3f}", f"{p99:.3f}", f"{exact_ms:.3f}",
                  f"{api_ms:.3f}"]])
    print(f"recall_at_10={recall:.4f} p50_ms={p50:.3f} p99_ms={p99:.3f} build_s={build_s:.1f} n={n} kind={kind} "
          f"exact_ms={exact_ms:.3f}")


if __name__ == "__main__":
    main()
