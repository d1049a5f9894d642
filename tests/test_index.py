import json
import os
import signal
import subprocess
import sys

import numpy as np
import polars as pl
import pytest

from embeddings import IndexMismatchError, SpuIndex, UnknownSpuError


def clustered(n, dim=32, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(2, n // 50), dim))
    x = centres[rng.integers(0, len(centres), n)] + 0.3 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_add_search_update_remove_round_trip(kind, tmp_path):
    x = clustered(600)
    ids = [f"S{i}" for i in range(600)]
    index = SpuIndex(32, "fp1", kind)
    index.add(ids, x, pl.DataFrame({"spu_id": ids, "title": [f"t{i}" for i in range(600)]}))
    hits = index.search(x[:20], k=3)
    found = np.mean([h["spu_id"][0] == ids[i] for i, h in enumerate(hits)])
    assert found >= (0.9 if kind == "ivfpq" else 1.0)

    index.remove(["S1", "S2"])
    assert len(index) == 598
    assert all("S1" not in h["spu_id"].to_list() for h in index.search(x[:5], k=10))
    index.add(["S3"], x[[100]])  # update keeps the id, moves the vector
    assert index.meta.filter(pl.col("spu_id") == "S3")["id"].item() == 3 and len(index) == 598
    assert index.search(x[[100]], k=2)[0]["spu_id"].to_list()[:2] in (["S3", "S100"], ["S100", "S3"])

    index.save(tmp_path / "idx")
    loaded = SpuIndex.load(tmp_path / "idx", fingerprint="fp1")
    assert len(loaded) == 598
    assert loaded.search(x[10:11], k=1)[0]["spu_id"][0] == index.search(x[10:11], k=1)[0]["spu_id"][0]
    assert loaded.meta.filter(pl.col("spu_id") == "S9")["title"].item() == "t9"
    loaded.add(["NEW"], x[[0]])
    assert loaded.meta["id"].max() == 600  # ids stay stable and are never reused


def test_exclude_and_errors():
    index = SpuIndex(32, "fp", "flat")
    index.add(["a", "b", "c"], clustered(3))
    assert "a" not in index.search(clustered(3)[:1], k=3, exclude=["a"])[0]["spu_id"].to_list()
    with pytest.raises(UnknownSpuError, match="unknown spu_id: zz"):
        index.remove(["zz"])
    with pytest.raises(ValueError, match="shape"):
        index.add(["d"], np.zeros((1, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="NaN"):
        index.add(["d"], np.full((1, 32), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="duplicate"):
        index.add(["d", "d"], clustered(2))
    with pytest.raises(ValueError, match="kind"):
        SpuIndex(32, "fp", "annoy")


def test_auto_kind_by_size():
    index = SpuIndex(8, "fp")
    assert index.resolved_kind(10) == "flat" and index.resolved_kind(10_000_000) == "hnsw"


def test_fingerprint_mismatch_refused(tmp_path):
    index = SpuIndex(32, "encoder-a", "flat")
    index.add(["a"], clustered(1))
    index.save(tmp_path / "idx")
    with pytest.raises(IndexMismatchError, match="encoder-a.*encoder-b"):
        SpuIndex.load(tmp_path / "idx", fingerprint="encoder-b")
    with pytest.raises(FileNotFoundError, match="manifest"):
        SpuIndex.load(tmp_path / "missing")


KILL_MID_SAVE = """
import os, signal, sys
import numpy as np
import faiss
import embeddings.index as mod
from embeddings import SpuIndex

folder, where = sys.argv[1], sys.argv[2]
index = SpuIndex.load(folder)
rng = np.random.default_rng(1)
x = rng.normal(size=(500, 32)).astype(np.float32)
index.add([f"N{i}" for i in range(500)], x / np.linalg.norm(x, axis=1, keepdims=True))
die = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
if where == "data":          # killed while writing the new index file
    real = faiss.write_index
    def partial(idx, path):
        open(path, "wb").write(b"half a faiss file")
        die()
    mod.faiss.write_index = partial
else:                        # killed after the new files, before the manifest swap
    mod._atomic_write_text = die
index.save(folder)
"""


@pytest.mark.parametrize("where", ["data", "manifest"])
def test_kill_mid_save_leaves_old_index_loadable(tmp_path, where):
    index = SpuIndex(32, "fp", "flat")
    index.add([f"S{i}" for i in range(50)], clustered(50))
    index.save(tmp_path / "idx")
    before = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    script = tmp_path / "kill.py"
    script.write_text(KILL_MID_SAVE)
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "idx"), where], capture_output=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()[-500:]
    assert json.loads((tmp_path / "idx" / "manifest.json").read_text()) == before
    loaded = SpuIndex.load(tmp_path / "idx", fingerprint="fp")
    assert len(loaded) == 50
    assert loaded.search(clustered(50)[:1], k=1)[0]["spu_id"][0] == "S0"


def vector_shard_files(folder, x, per_shard):
    paths = []
    for k, start in enumerate(range(0, len(x), per_shard)):
        part = x[start:start + per_shard]
        path = folder / f"vectors-{k}.parquet"
        pl.DataFrame({"spu_id": [f"S{i}" for i in range(start, start + len(part))],
                      "content": pl.Series(part, dtype=pl.Array(pl.Float32, x.shape[1]))}).write_parquet(path)
        paths.append(path)
    return paths


def top_ids(index, queries, k=10):
    return [h["spu_id"].to_list() for h in index.search(queries, k=k)]


@pytest.mark.parametrize("kind", ["ivfsq", "ivfpq"])
def test_an_index_in_parts_answers_as_the_whole_and_each_part_loads_alone(kind, tmp_path):
    x = clustered(1600)
    shards = vector_shard_files(tmp_path, x, 400)
    whole = SpuIndex.from_shards(shards, "fp1", kind)
    parted = SpuIndex.from_shards(shards, "fp1", kind, parts=3)
    assert (whole.parts, parted.parts, len(parted)) == (1, 3, 1600)
    # one trained quantiser: every part probes the lists the whole index probes, so the merged top k is its top k
    queries = x[::37]
    assert top_ids(parted, queries) == top_ids(whole, queries)
    assert parted.recall_against_exact(shards) == whole.recall_against_exact(shards)

    parted.save(tmp_path / "idx")
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert len(manifest["part_files"]) == 3 and manifest["part_starts"] == [0, 800, 1200]
    loaded = SpuIndex.load(tmp_path / "idx", fingerprint="fp1")
    assert loaded.parts == 3 and top_ids(loaded, queries) == top_ids(whole, queries)
    # a machine that holds only the second part: shards 2 (ids 800..1199), nothing else
    second = SpuIndex.load(tmp_path / "idx", parts=[1])
    assert second.meta["spu_id"].to_list() == [f"S{i}" for i in range(800, 1200)]
    assert {s for ids in top_ids(second, x[800:1200:40]) for s in ids} <= set(second.meta["spu_id"])
    assert top_ids(second, x[[900]], k=1) == [["S900"]]
    with pytest.raises(ValueError, match="only some of its parts"):  # S5 lives in a part not loaded here
        second.add(["S5"], x[[5]])


def test_an_index_in_parts_adds_updates_removes_and_pickles(tmp_path):
    import pickle

    x = clustered(1200)
    shards = vector_shard_files(tmp_path, x, 300)
    whole, index = (SpuIndex.from_shards(shards, "fp1", "ivfsq", parts=p) for p in (1, 2))
    extra = clustered(3, seed=5)
    for each in (whole, index):
        each.add(["NEW"], extra[[0]])  # a new SPU: the last part
        each.add(["S5"], extra[[1]])   # an update keeps its id, in the first part
        each.remove(["S700"])
    assert len(index) == 1200 and index.meta.filter(pl.col("spu_id") == "S5")["id"].item() == 5
    assert top_ids(index, extra[:2], k=1) == [["NEW"], ["S5"]]
    assert np.array_equal(index.vectors(np.array([5, 1200, 3])), whole.vectors(np.array([5, 1200, 3])))
    assert "S700" not in {s for ids in top_ids(index, x[[700]]) for s in ids}
    assert top_ids(index, x[::50]) == top_ids(whole, x[::50])
    again = pickle.loads(pickle.dumps(index))
    assert again.parts == 2 and top_ids(again, x[::50]) == top_ids(index, x[::50])
    index.save(tmp_path / "idx")
    assert top_ids(SpuIndex.load(tmp_path / "idx"), x[::50]) == top_ids(index, x[::50])


def test_parts_are_refused_where_they_cannot_work(tmp_path):
    x = clustered(800)
    shards = vector_shard_files(tmp_path, x, 400)
    with pytest.raises(ValueError, match="needs an IVF kind"):
        SpuIndex.from_shards(shards, "fp1", "flat", parts=2)
    with pytest.raises(ValueError, match="at most one part a shard"):
        SpuIndex.from_shards(shards, "fp1", "ivfsq", parts=3)
    SpuIndex.from_shards(shards, "fp1", "ivfsq", parts=2).save(tmp_path / "parted")
    with pytest.raises(ValueError, match="has parts 0 to 1"):
        SpuIndex.load(tmp_path / "parted", parts=[2])
    SpuIndex.from_shards(shards, "fp1", "ivfsq").save(tmp_path / "whole")
    with pytest.raises(ValueError, match="not in parts"):
        SpuIndex.load(tmp_path / "whole", parts=[0])
    manifest = json.loads((tmp_path / "parted" / "manifest.json").read_text())
    (tmp_path / "parted" / "manifest.json").write_text(json.dumps({**manifest, "format": 9}))
    with pytest.raises(ValueError, match="format 9"):
        SpuIndex.load(tmp_path / "parted")
