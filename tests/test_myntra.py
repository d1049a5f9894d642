"""The Myntra catalogue adapter, on a few real records copied to a temp folder."""

import shutil
from pathlib import Path

import polars as pl
import pytest

from data import DataFileError, read_myntra


@pytest.fixture
def sample(tmp_path, myntra_path):
    products = pl.read_parquet(myntra_path / "products.parquet")
    with_image = products.filter(pl.col("has_image")).head(3)
    without = products.filter(~pl.col("has_image")).head(2)
    unpriced = products.head(1).with_columns(pl.lit(0.0).alias("discounted_price"), pl.lit(-1, dtype=pl.Int64).alias("id"))
    (tmp_path / "images").mkdir()
    for spu in with_image["id"]:
        shutil.copy(myntra_path / "images" / f"{spu}.jpg", tmp_path / "images" / f"{spu}.jpg")
    pl.concat([with_image, without, unpriced]).write_parquet(tmp_path / "products.parquet")
    return tmp_path, with_image, without


def test_reads_real_records_into_our_tables(sample):
    folder, with_image, without = sample
    catalog = read_myntra(folder)
    assert catalog.unpriced == 1  # selling price 0: left out, and counted
    spus = catalog.spus.sort("spu_id")
    assert spus.height == 5 and spus.schema["spu_id"] == pl.String
    first = with_image.row(0, named=True)
    row = spus.filter(pl.col("spu_id") == str(first["id"])).row(0, named=True)
    assert row["title"] == first["title"] and row["category"] == first["article_type"]
    assert row["brand"] == first["brand"] and Path(row["images"][0]).is_file()
    assert spus.filter(pl.col("spu_id").is_in([str(i) for i in without["id"]]))["images"].list.len().to_list() == [0, 0]
    prices = catalog.prices.filter(pl.col("spu_id") == str(first["id"])).row(0, named=True)
    assert prices["price"] == first["discounted_price"] and prices["list_price"] == first["price"]
    assert prices["first_sold"].timestamp() == pytest.approx(first["catalog_added"], abs=1)
    text = catalog.text.filter(pl.col("spu_id") == str(first["id"]))["text"][0]
    assert text.startswith(first["title"]) and first["article_type"] in text and first["base_colour"] in text


def test_a_relative_folder_finds_every_image(sample, monkeypatch):
    # once, each image path was the folder joined twice ("../x/../x/images/1.jpg"): every image "not found"
    folder, with_image, _ = sample
    monkeypatch.chdir(folder.parent)
    spus = read_myntra(Path(folder.name)).spus
    paths = [p for ps in spus["images"].to_list() for p in ps]
    assert len(paths) == with_image.height and all(Path(p).is_file() for p in paths)


def test_bad_folders_name_the_file_and_field(sample, tmp_path_factory):
    folder, _, _ = sample
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(DataFileError, match="no products.parquet"):
        read_myntra(empty)
    pl.read_parquet(folder / "products.parquet").drop("discounted_price").write_parquet(folder / "products.parquet")
    with pytest.raises(DataFileError, match="discounted_price"):
        read_myntra(folder)
