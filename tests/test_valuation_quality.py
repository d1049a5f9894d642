"""Valuation quality on the demo catalogue: new SPUs valued against the noise-free price its truth.parquet keeps.

A seeded quarter of the SPUs is held out (never-sold ones included); the value model is fit on the launch
prices of the rest and values the held-out SPUs from what a new SPU has: title, image and reviews (the
image tower is the untrained default, so this is a floor). Baselines on the same rows: the training
SPUs' median price, and TF-IDF character n-grams of the title + Ridge with its alpha chosen by
time-ordered CV. Error: mean absolute log error against ``true_price``. The 90% interval is checked
against what it promises, the held-out SPUs' launch prices (the noise-free price is inside it more often).
"""

import numpy as np
import polars as pl
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import Ridge
from sklearn.model_selection import GridSearchCV, TimeSeriesSplit
from sklearn.pipeline import make_pipeline
from threadpoolctl import threadpool_limits

from data import generate_demo_catalog, load_catalog
from embeddings import SpuEmbedder, SpuIndex
from valuation.training import ValueModel, launch_prices, subset

N_SPUS, SEED, HELD_OUT = 600, 0, 0.25


@pytest.fixture(scope="module")
def held_out(encoder, tmp_path_factory):
    folder = tmp_path_factory.mktemp("quality")
    generate_demo_catalog(folder, n_spus=N_SPUS, seed=SEED)
    tables = load_catalog(folder, ("spus", "reviews", "orders"))
    truth = pl.read_parquet(folder / "truth.parquet")
    test_ids = truth["spu_id"].filter(pl.Series(np.random.default_rng(SEED).random(truth.height) < HELD_OUT))
    train = launch_prices(tables["orders"]).filter(~pl.col("spu_id").is_in(test_ids.implode())).sort("first_sold")
    test = truth.filter(pl.col("spu_id").is_in(test_ids.implode()))
    launched = launch_prices(tables["orders"]).filter(pl.col("spu_id").is_in(test_ids.implode()))

    with threadpool_limits(1):  # histogram sums in another thread count split the trees differently
        return _fit_and_value(encoder, tables, train, test, launched)


def _fit_and_value(encoder, tables, train, test, launched):
    embedder = SpuEmbedder(encoder)
    vectors = embedder.embed(tables["spus"], tables["reviews"])
    index = SpuIndex(encoder.dim, encoder.fingerprint, "flat")
    index.add(train["spu_id"].to_list(), subset(vectors, train["spu_id"].to_list()).content)
    titles = dict(zip(tables["spus"]["spu_id"], tables["spus"]["title"]))
    model = ValueModel().fit(index, vectors, titles, train)
    values, _ = model.predict(index, subset(vectors, test["spu_id"].to_list()), [titles[s] for s in test["spu_id"]])

    y_train = np.log(train["price"].to_numpy())
    tfidf = GridSearchCV(make_pipeline(TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=2,
                                                       sublinear_tf=True), Ridge()),
                         {"ridge__alpha": [0.1, 0.3, 1.0, 3.0, 10.0]}, cv=TimeSeriesSplit(4),
                         scoring="neg_mean_absolute_error").fit([titles[s] for s in train["spu_id"]], y_train)
    return {"truth": np.log(test["true_price"].to_numpy()), "ours": values,
            "launched": values.join(launched.select("spu_id", pl.col("price").log().alias("log_price")), on="spu_id"),
            "median": np.full(test.height, np.median(y_train)),
            "tfidf": tfidf.predict([titles[s] for s in test["spu_id"]]), "n_train": train.height}


def test_held_out_error_beats_median_and_tfidf_by_a_margin(held_out):
    truth = held_out["truth"]
    assert len(truth) > 120 and held_out["n_train"] > 300  # enough rows that trees are candidates too
    error = {name: float(np.abs(held_out[name] - truth).mean()) for name in ("median", "tfidf")}
    error["ours"] = float(np.abs(held_out["ours"]["log_value"].to_numpy() - truth).mean())
    print(error)
    # observed at 600 SPUs, seeds 0-3: ours/median 0.56-0.61, ours/TF-IDF 0.87-0.94 (seed 0: 0.57, 0.87);
    # from the title alone (no images) ours only ties TF-IDF, so the margin here is the image's
    assert error["ours"] < 0.7 * error["median"], error
    assert error["ours"] < 0.95 * error["tfidf"], error


def test_ninety_percent_interval_covers_held_out_launch_prices(held_out):
    launched = held_out["launched"]
    assert launched.height > 100
    covered = launched.select(pl.col("log_price").is_between("log_low", "log_high").mean()).item()
    truth, values = held_out["truth"], held_out["ours"]
    print(f"coverage of launch prices {covered:.3f}, of true prices "
          f"{np.mean((truth >= values['log_low'].to_numpy()) & (truth <= values['log_high'].to_numpy())):.3f}")
    # observed, seeds 0-3: 0.89-0.97 (seed 0: 0.967 = 117 of 121 in one thread; two threads gave 118 of 121,
    # over the bound: the interval, calibrated on the latest launches, is wide for random held-out SPUs)
    assert 0.8 <= covered <= 0.97, covered
