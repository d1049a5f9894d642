import polars as pl

from data import read_online_retail
from data.loaders import read_raw
from data.online_retail import title_variants


def test_adapter_on_real_file(online_retail_path):
    retail = read_online_retail(online_retail_path)
    raw = read_raw(online_retail_path, "online_retail")
    assert retail.spus.height > 3000
    assert retail.spus["spu_id"].is_unique().all()
    assert retail.spus["spu_id"].str.contains(r"^\d{5}").all()  # fees and postage left out
    assert retail.orders["order_id"].is_unique().all()
    assert (retail.orders["quantity"] > 0).all() and (retail.orders["unit_price"] > 0).all()
    # every kept line is accounted for, and cancellations are flags, not negative quantities
    assert retail.orders.height + sum(retail.dropped.values()) == raw.height
    n_cancel_lines = raw.filter(pl.col("InvoiceNo").str.starts_with("C") & (pl.col("UnitPrice") > 0)
                                & pl.col("StockCode").str.contains(r"^\d{5}[A-Za-z]{0,3}$")).height
    assert retail.orders["cancelled"].sum() == n_cancel_lines
    assert set(retail.orders["spu_id"].unique()) == set(retail.spus["spu_id"])


def test_market_is_daily_median_and_units(online_retail_path):
    retail = read_online_retail(online_retail_path, until="2011-01-01")
    assert retail.orders["ordered_at"].dt.year().max() == 2010
    day = retail.market.filter(pl.col("spu_id") == "85123A").row(0, named=True)
    lines = retail.orders.filter((pl.col("spu_id") == "85123A") & ~pl.col("cancelled")
                                 & (pl.col("ordered_at").dt.date() == day["date"]))
    assert day["price"] == lines["unit_price"].median()
    assert day["units_sold"] == lines["quantity"].sum()
    assert retail.market.select(pl.struct("spu_id", "date").is_unique().all()).item()


def test_title_is_most_used_spelling_and_variants(online_retail_path):
    retail = read_online_retail(online_retail_path)
    variants = title_variants(online_retail_path)
    multi = variants.group_by("spu_id").len().filter(pl.col("len") > 1)
    assert multi.height > 100  # the same-SPU positive pairs the threshold is calibrated on
    code = multi["spu_id"][0]
    raw = read_raw(online_retail_path, "online_retail").filter(pl.col("StockCode") == code)
    counts = raw.group_by("Description").len().sort("len", descending=True)
    assert retail.spus.filter(pl.col("spu_id") == code)["title"].item() == counts["Description"][0]
