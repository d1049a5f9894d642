import polars as pl
import pytest
import sqlalchemy as sa
from polars.testing import assert_frame_equal

from data import Store, generate_demo_catalog


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return generate_demo_catalog(tmp_path_factory.mktemp("demo"), n_spus=60, seed=3)


def load_all(store, demo):
    for name in ("spus", "reviews", "orders", "market", "positions"):
        store.upsert(name, getattr(demo, name))


def test_round_trip_and_idempotent_reload(store, demo):
    load_all(store, demo)
    counts = {name: store.count(name) for name in ("spus", "reviews", "orders", "market", "positions")}
    load_all(store, demo)  # the same files again: nothing duplicated
    assert counts == {name: store.count(name) for name in counts}
    assert counts["orders"] == demo.orders.height
    orders = store.read("orders")  # buyers kept, guests (no id) as null
    assert orders["customer_id"].to_list() == demo.orders.sort("order_id")["customer_id"].to_list()
    assert 0 < orders["customer_id"].null_count() < orders.height
    for name in ("spus", "reviews", "market", "positions"):
        got = store.read(name)
        expected = getattr(demo, name).select(got.columns)
        assert_frame_equal(got.sort(got.columns), expected.sort(got.columns), check_dtypes=True)


def test_corrected_rows_replace_old_ones(store, demo):
    load_all(store, demo)
    first = demo.market.head(3).with_columns(pl.col("price") * 2)
    store.upsert("market", first)
    got = store.read("market", store.table("market").c.spu_id == first["spu_id"][0])
    assert got.join(first, on=["spu_id", "date"]).select((pl.col("price") == pl.col("price_right")).all()).item()
    assert store.count("market") == demo.market.height


def test_failed_write_leaves_nothing(store, demo):
    good = demo.positions.head(10)
    bad = pl.concat([good, good.head(1).with_columns(pl.lit("P-BAD").alias("position_id"),
                                                     pl.lit(None, dtype=pl.String).alias("borrower"))])
    with pytest.raises(sa.exc.IntegrityError):
        store.upsert("positions", bad)
    assert store.count("positions") == 0


def test_migrations_are_idempotent(store):
    store.migrate()
    store.migrate()
    with store.engine.connect() as connection:
        assert connection.execute(sa.text("select version_num from alembic_version")).scalar_one() == "0006"
    assert {"spus", "reviews", "orders", "market", "positions"} <= set(store.metadata.tables)


def test_upgrade_keeps_the_sweep_results_and_orders_of_an_older_schema(tmp_path):
    from alembic import command
    from alembic.config import Config

    from data.store import MIGRATIONS

    url = f"sqlite:///{tmp_path}/old.db"
    engine = sa.create_engine(url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0002")
        connection.execute(sa.text("insert into sweep_results (sweep_id, position_id, spu_id, value_source, health, "
                                   "grade, action, reasons) values ('sweep-2024-01-01', 'P1', 'A', 'market', 90, "
                                   "'A', 'ok', '[]')"))
        connection.execute(sa.text("insert into spus (spu_id, title, images) values ('A', 'a mug', '[]')"))
        connection.execute(sa.text("insert into orders (order_id, spu_id, quantity, unit_price, ordered_at, cancelled) "
                                   "values ('o1', 'A', 2, 3.5, '2024-01-01 10:00:00', 0)"))
    engine.dispose()
    store = Store(url)  # migrates to the newest schema
    rows, orders = store.read("sweep_results"), store.read("orders")
    store.close()
    assert rows.height == 1 and rows["position_id"][0] == "P1" and rows["p_loss"][0] is None
    # an order line written before buyers were kept reads as a guest order
    assert orders.height == 1 and orders["quantity"][0] == 2 and orders["customer_id"][0] is None


def test_unknown_table_refused(store):
    with pytest.raises(ValueError, match="unknown table"):
        store.read("loans")
