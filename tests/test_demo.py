import hashlib

import numpy as np
import polars as pl
import pytest

from data import DemoCatalog, generate_demo_catalog, load_table


def digests(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    return generate_demo_catalog(tmp_path_factory.mktemp("demo") / "a", n_spus=240, seed=7)


def test_same_seed_gives_byte_identical_files(catalog, tmp_path):
    again = generate_demo_catalog(tmp_path / "b", n_spus=240, seed=7)
    assert digests(catalog.root) == digests(again.root)
    other = generate_demo_catalog(tmp_path / "c", n_spus=240, seed=8)
    assert digests(other.root)["spus.parquet"] != digests(catalog.root)["spus.parquet"]


def test_tables_pass_their_schemas(catalog):
    known = set(catalog.spus["spu_id"])
    for name in ("spus", "reviews", "orders", "market", "positions"):
        loaded = load_table(catalog.root / f"{name}.parquet", name, known_spus=known).table
        assert loaded.height == getattr(catalog, name).height > 0
    images = load_table(catalog.root / "spus.parquet", "spus").table["images"]
    assert all(len(paths) == 1 and (catalog.root / "images").joinpath(paths[0].split("/")[-1]).is_file()
               for paths in images)


def test_every_category_and_some_new_spus(catalog):
    assert catalog.spus["category"].n_unique() == 12
    with_orders = set(catalog.orders["spu_id"])
    assert 0 < catalog.spus.height - len(with_orders) < catalog.spus.height * 0.3


def test_price_follows_latents_that_images_and_titles_show(catalog):
    """Observed market prices carry the latent signal: material and size move price in the right order."""
    observed = (catalog.market.group_by("spu_id").agg(pl.col("price").median())
                .join(catalog.truth, on="spu_id"))
    by_material = observed.group_by("material").agg(pl.col("price").log().mean()).sort("price")
    assert by_material["material"][0] == "plastic" and by_material["material"][-1] == "gold"
    by_size = observed.group_by("size").agg((pl.col("price") / pl.col("true_price")).log().mean(),
                                            pl.col("price").log().mean().alias("log_price"))
    order = by_size.sort("log_price")["size"].to_list()
    assert order.index("S") < order.index("XL")
    # the market price tracks the latent price closely (noise, drift and shocks on top)
    corr = np.corrcoef(np.log(observed["price"]), np.log(observed["true_price"]))[0, 1]
    assert corr > 0.9


def test_review_tone_follows_quality(catalog):
    joined = catalog.reviews.join(catalog.truth, on="spu_id")
    assert np.corrcoef(joined["rating"], joined["quality"])[0, 1] > 0.5
    negative = joined.filter(pl.col("rating") <= 2)["text"]
    assert negative.str.contains("(?i)poor|terrible|disappointed|awful").all()


def test_positions_reference_known_spus_with_sane_ltv(catalog):
    book = catalog.positions
    assert set(book["spu_id"]) <= set(catalog.spus["spu_id"])
    ltv = book["loan_amount"] / (book["quantity"] * book["pledge_unit_price"])
    assert ltv.min() >= 0.79 and ltv.max() <= 1.0


def test_too_few_spus_refused(tmp_path):
    with pytest.raises(ValueError, match="n_spus"):
        generate_demo_catalog(tmp_path, n_spus=3)


def test_catalog_lists_its_tables():
    assert DemoCatalog.TABLES[:5] == ("spus", "reviews", "orders", "market", "positions")
