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
