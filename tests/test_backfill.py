"""The embedding backfill (embeddings.backfill): in process and on a real local Ray cluster, resumable, and
the index built from its shards."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from embeddings import SpuEmbedder, SpuIndex, create_encoder
from embeddings.backfill import BackfillError, backfill, vector_shards
from serving.cli import app


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """A tiny demo catalogue as three shards: reviews as a list column in one, a corrupt photo in another."""
    from data import generate_demo_catalog

    root = tmp_path_factory.mktemp("backfill")
    catalog = generate_demo_catalog(root / "demo", n_spus=24, seed=7)
    folder = root / "shards"
    folder.mkdir()
    shutil.copytree(root / "demo" / "images", folder / "images")
    (folder / "images" / "broken.png").write_bytes(b"\x89PNG not really")
    spus = catalog.spus.select("spu_id", "title", "images")
    reviews = catalog.reviews.group_by("spu_id").agg(pl.col("text").alias("reviews"),
                                                     pl.col("rating").alias("review_ratings"))
    spus[:8].join(reviews, on="spu_id", how="left", maintain_order="left").write_parquet(folder / "spus-0.parquet")
    broken = spus[8:16].with_columns(pl.when(pl.col("spu_id") == spus["spu_id"][9]).then(pl.lit(["images/broken.png"]))
                                     .otherwise(pl.col("images")).alias("images"))
    broken.write_parquet(folder / "spus-1.parquet")
    spus[16:].write_parquet(folder / "spus-2.parquet")
    return folder, catalog, spus["spu_id"][9]


def vectors(out: Path) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(p) for p in vector_shards(out)]).sort("spu_id")


def test_local_backfill_equals_the_embedder_and_rejects_only_the_row_with_a_bad_photo(shards, tmp_path):
    folder, catalog, broken = shards
    result = backfill(folder, tmp_path / "out", engine="local", batch_size=5, log=None)
    assert (result.done, result.skipped, result.rows, result.rejects) == (3, 0, 23, 1)
    rejects = pl.read_parquet(tmp_path / "out" / "rejects-spus-1.parquet")
    assert rejects["spu_id"].to_list() == [broken] and "images[0]" in rejects["error"][0]
    got = vectors(tmp_path / "out")
    assert broken not in got["spu_id"].to_list() and set(got["fingerprint"]) == {result.fingerprint}

    embedder = SpuEmbedder(create_encoder())
    spus = catalog.spus.filter(pl.col("spu_id") != broken).sort("spu_id").with_columns(
        pl.col("images").list.eval(pl.lit(str(folder) + "/") + pl.element()))
    expected = embedder.embed(spus, catalog.reviews)
    for name in ("content", "title", "image"):
        assert np.abs(np.stack(got[name].to_numpy()) - getattr(expected, name)).max() < 1e-5, name
    with_reviews = got.filter(pl.col("has_reviews"))
    assert with_reviews.height and with_reviews["spu_id"].is_in(catalog.reviews["spu_id"]).all()
    rows = expected.take(with_reviews["spu_id"].to_list())
    assert np.allclose(with_reviews["negativity"].to_numpy(), rows.negativity, atol=1e-5)


def test_ray_backfill_on_a_local_cluster_equals_the_local_one(shards, tmp_path):
    ray = pytest.importorskip("ray")
    folder, _, _ = shards
    local = backfill(folder, tmp_path / "local", engine="local", log=None)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = backfill(folder, tmp_path / "ray", engine="ray", batch_size=4, log=None)
    finally:
        ray.shutdown()
    assert (on_ray.done, on_ray.rows, on_ray.rejects) == (local.done, local.rows, local.rejects)
    a, b = vectors(tmp_path / "local"), vectors(tmp_path / "ray")
    assert a["spu_id"].to_list() == b["spu_id"].to_list()
    for name in ("content", "title", "image", "reviews"):
        assert np.abs(np.stack(a[name].to_numpy()) - np.stack(b[name].to_numpy())).max() < 1e-5, name


KILL = """
import os, signal, sys
from embeddings.backfill import backfill
backfill(sys.argv[1], sys.argv[2], log=None, on_shard=lambda name: os.kill(os.getpid(), signal.SIGKILL))
"""


def test_a_killed_backfill_resumes_with_only_the_missing_shards(shards, tmp_path):
    folder, _, _ = shards
    script = tmp_path / "kill.py"
    script.write_text(KILL)
    killed = subprocess.run([sys.executable, str(script), str(folder), str(tmp_path / "out")], capture_output=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-800:]
    assert list(json.loads((tmp_path / "out" / "manifest.json").read_text())["shards"]) == ["spus-0.parquet"]
    resumed = backfill(folder, tmp_path / "out", log=None)
    assert (resumed.skipped, resumed.done, resumed.written) == (1, 2, ["spus-1.parquet", "spus-2.parquet"])
    whole = backfill(folder, tmp_path / "whole", log=None)
    a, b = vectors(tmp_path / "out"), vectors(tmp_path / "whole")
    assert a["spu_id"].to_list() == b["spu_id"].to_list() and whole.rows == a.height
    assert np.abs(np.stack(a["content"].to_numpy()) - np.stack(b["content"].to_numpy())).max() < 1e-6


def test_vectors_of_another_encoder_are_refused(shards, tmp_path):
    folder, _, _ = shards
    out = tmp_path / "out"
    backfill(folder, out, log=None)
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "fingerprint": "0123456789abcdef"}))
    with pytest.raises(BackfillError, match="written by encoder 0123456789abcdef"):
        backfill(folder, out, log=None)
    (out / "manifest.json").write_text(json.dumps(manifest))
    shard = out / "vectors-spus-2.parquet"
    pl.read_parquet(shard).with_columns(pl.lit("0123456789abcdef").alias("fingerprint")).write_parquet(shard)
    with pytest.raises(BackfillError, match="vectors-spus-2.parquet: written by encoder"):
        backfill(folder, out, log=None)


def test_bad_catalogues_and_addresses_are_clear_errors(shards, tmp_path):
    folder, _, _ = shards
    bad = tmp_path / "bad"
    bad.mkdir()
    pl.DataFrame({"spu_id": ["A"]}).write_parquet(bad / "spus-0.parquet")
    with pytest.raises(BackfillError, match="spus-0.parquet: missing column\\(s\\) title"):
        backfill(bad, tmp_path / "out", log=None)
    with pytest.raises(BackfillError, match="no SPU shards"):
        backfill(tmp_path, tmp_path / "out", log=None)
    with pytest.raises(BackfillError, match="nothing answers there"):
        backfill(folder, tmp_path / "out", engine="ray", ray_address="127.0.0.1:9", log=None)


def test_the_index_built_from_shards_finds_every_spu_and_saves_atomically(shards, tmp_path):
    folder, _, _ = shards
    result = backfill(folder, tmp_path / "out", log=None)
    index = SpuIndex.from_shards(vector_shards(tmp_path / "out"), result.fingerprint, "flat")
    assert len(index) == result.rows and index.recall_against_exact(vector_shards(tmp_path / "out")) == 1.0
    got = vectors(tmp_path / "out")
    hits = index.search(np.stack(got["content"].to_numpy()), k=1)
    assert [h["spu_id"][0] for h in hits] == got["spu_id"].to_list()
    index.save(tmp_path / "index")
    assert len(SpuIndex.load(tmp_path / "index", result.fingerprint)) == result.rows


def test_index_build_from_vectors_in_parts_through_the_cli(shards, tmp_path):
    folder, _, _ = shards
    result = backfill(folder, tmp_path / "out", log=None)
    runner = CliRunner()
    built = runner.invoke(app, ["index", "build", "--vectors", str(tmp_path / "out"), "--out", str(tmp_path / "idx"),
                                "--kind", "ivfsq", "--parts", "2"])
    assert built.exit_code == 0, built.output
    assert "in 2 parts" in built.output and "recall@10" in built.output
    index = SpuIndex.load(tmp_path / "idx", result.fingerprint)
    assert index.parts == 2 and len(index) == result.rows
    too_many = runner.invoke(app, ["index", "build", "--vectors", str(tmp_path / "out"), "--out", str(tmp_path / "x"),
                                   "--parts", "4"])
    assert too_many.exit_code != 0 and "at most one part a shard" in too_many.output
    assert not (tmp_path / "x").exists()
