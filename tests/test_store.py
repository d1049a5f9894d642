from datetime import date

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


def test_plain_tables_read_through_the_driver_in_batches_as_sqlalchemy_reads_them(store, demo, monkeypatch):
    from data.store import _from_rows

    load_all(store, demo)
    for name in ("market", "positions"):
        with store.engine.connect() as connection:
            rows = connection.execute(sa.select(store.table(name))).mappings().all()
        as_sqlalchemy_reads = _from_rows(name, rows)
        assert as_sqlalchemy_reads.height > 2 * 7
        assert_frame_equal(store.read(name), as_sqlalchemy_reads)
        monkeypatch.setattr("data.store.READ_BATCH", 7)  # many batches, the last one short
        assert_frame_equal(store.read(name), as_sqlalchemy_reads)
        monkeypatch.undo()
    market = store.table("market")
    one = demo.market["spu_id"][0]
    assert_frame_equal(store.read("market", market.c.spu_id == one),
                       _from_rows("market", []).vstack(demo.market.filter(pl.col("spu_id") == one)
                                                       .select(store.read("market").columns)).sort("spu_id", "date"))
    assert store.read("market", market.c.spu_id == "no such SPU").schema == store.read("market").schema


def test_dates_handed_over_as_text_are_parsed_when_the_first_rows_have_none():
    from data.store import _frame

    frame = _frame([("a", None), ("b", "2024-01-02")], {"k": pl.String, "d": pl.Date})
    assert frame["d"].to_list() == [None, date(2024, 1, 2)]
    assert _frame([("a", date(2024, 1, 2))], {"k": pl.String, "d": pl.Date})["d"].to_list() == [date(2024, 1, 2)]
    assert _frame([], {"k": pl.String, "d": pl.Date}).schema == {"k": pl.String, "d": pl.Date}


def test_unknown_table_refused(store):
    with pytest.raises(ValueError, match="unknown table"):
        store.read("loans")


def test_read_rows_by_key_and_bulk_upsert(store):
    """Rows by a list of keys, bound as one parameter: more keys than an IN list was asked in, keys a
    JSON list must escape, no keys, keys not there. And the driver-level upsert replaces a row by its key."""
    from data.store import bulk_insert, read_rows, upsert_clause

    odd = ['quote"d', "back\\slash", "it's", "ünï", "[1]"]
    ids = [f"S{i:05d}" for i in range(2_500)] + odd
    positions = pl.DataFrame({"position_id": [f"P-{s}" for s in ids], "loan_id": "L", "borrower": "B", "spu_id": ids,
                              "quantity": 1, "warehouse": "W", "pledged_at": date(2024, 1, 1),
                              "loan_amount": 1.0, "pledge_unit_price": 2.0})
    store.upsert("positions", positions)
    table = store.table("positions")
    schema = {"position_id": pl.String, "spu_id": pl.String, "pledged_at": pl.Date}
    query = sa.select(table.c.position_id, table.c.spu_id, table.c.pledged_at)
    wanted = ids[::2] + odd + ["not-there"]
    with store.engine.begin() as connection:
        got = read_rows(connection, query, table.c.spu_id, wanted, schema).sort("spu_id")
        assert got["spu_id"].to_list() == sorted(set(wanted) - {"not-there"})
        assert got["pledged_at"].unique().to_list() == [date(2024, 1, 1)]  # a date on both stores
        assert read_rows(connection, query, table.c.spu_id, [], schema).height == 0
        assert read_rows(connection, query, None, None, schema).height == len(ids)
        changed = positions.head(2).with_columns(pl.lit(7).alias("quantity"))
        bulk_insert(connection, table, changed, upsert_clause(table, changed.columns))
    stored = store.read("positions")
    assert stored.height == len(ids) and stored.filter(pl.col("quantity") == 7)["position_id"].to_list() == \
        changed["position_id"].to_list()


def test_bulk_upsert_of_many_rows_keeps_every_row_and_their_order(store, monkeypatch):
    """Over COPY_ROWS rows (PostgreSQL COPYs them through a staging table): an upsert replaces by key and
    adds the new ones, and an identity column numbers the rows in the frame's order."""
    from datetime import datetime

    from data.health_log import ALERT_COLUMNS, HealthLog
    from data.store import COPY_ROWS, bulk_insert, upsert_clause

    monkeypatch.setattr("data.store.COPY_SLICE", 700)  # several slices of CSV, the last one short
    n = COPY_ROWS + 500
    table = store.table("positions")
    odd_text = ["", 'a,"b"\nc', "ünï\\"]  # COPY's CSV: an empty string is not a null; quotes, commas, lines
    first = pl.DataFrame({"position_id": [f"P{i:05d}" for i in range(n)], "loan_id": "L", "borrower": "B",
                          "spu_id": "S", "quantity": 1, "warehouse": [odd_text[i % 3] for i in range(n)],
                          "pledged_at": date(2024, 1, 1),
                          "loan_amount": 1.0, "pledge_unit_price": 2.0})
    again = first.tail(n - 100).with_columns(pl.col("quantity") + 1)  # 100 kept, the rest replaced ...
    extra = first.head(COPY_ROWS).with_columns(pl.format("Q{}", pl.col("position_id")).alias("position_id"))  # ... and new
    with store.engine.begin() as connection:
        bulk_insert(connection, table, first, upsert_clause(table, first.columns))
        bulk_insert(connection, table, pl.concat([again, extra]), upsert_clause(table, first.columns))
    stored = store.read("positions")
    assert stored.height == n + COPY_ROWS
    assert stored.group_by("quantity").len().sort("quantity").rows() == [(1, 100 + COPY_ROWS), (2, n - 100)]
    assert stored.filter(pl.col("position_id").str.starts_with("P"))["warehouse"].to_list() == first["warehouse"].to_list()

    keys = [f"K{(i * 7919) % n:05d}" for i in range(n)]  # not sorted: the order must come from the frame
    alerts = pl.DataFrame({"alert_key": keys, "position_id": "P", "spu_id": "S", "trigger": "sweep", "source_id": "x",
                           "as_of": date(2024, 1, 1), "action": "watch", "previous_action": None, "reasons": "[]",
                           "observation": None, "created_at": datetime(2024, 1, 1)}).select(ALERT_COLUMNS)
    log = HealthLog(store)
    with log.gate() as connection:
        log.add_alerts(connection, alerts)
        log.add_alerts(connection, alerts.head(10))  # already there: left as they are
    feed = log.alerts_since(0, limit=n + 10)
    assert [a["alert_key"] for a in feed] == keys


def test_upsert_of_a_key_twice_keeps_the_later_row(store):
    from data.store import COPY_ROWS

    n = COPY_ROWS + 10  # through COPY on PostgreSQL, where one statement cannot update a row twice
    rows = pl.DataFrame({"spu_id": [f"S{i % (n // 2)}" for i in range(n)], "date": date(2024, 1, 2),
                         "price": [float(i + 1) for i in range(n)], "units_sold": 1})
    assert store.upsert("market", rows) == n
    stored = store.read("market")
    assert stored.height == n // 2 and stored["price"].min() == n // 2 + 1  # each SPU's second row


@pytest.mark.parametrize("orders", [1, 1_500])  # row by row, and (on PostgreSQL) through COPY
def test_a_reload_without_optional_columns_keeps_their_stored_values(store, orders):
    """A file without ``cancelled`` or ``customer_id`` must not un-cancel or blank a stored order; the
    same for a catalogue file with titles only (category, brand and images stay)."""
    from datetime import datetime

    store.upsert("spus", pl.DataFrame({"spu_id": ["A"], "title": ["Red mug"], "category": ["mugs"], "brand": ["Acme"],
                                       "images": [["a.png"]]}))
    full = pl.DataFrame({"order_id": [f"o{i}" for i in range(orders)], "spu_id": "A", "quantity": 2, "unit_price": 3.0,
                         "ordered_at": datetime(2024, 1, 2), "cancelled": True, "customer_id": "C1"},
                        schema_overrides={"quantity": pl.Int64})
    store.upsert("orders", full)
    store.upsert("orders", full.select("order_id", "spu_id", "quantity", pl.lit(4.0).alias("unit_price"), "ordered_at")
                 .vstack(pl.DataFrame({"order_id": ["new"], "spu_id": ["A"], "quantity": [1], "unit_price": [4.0],
                                       "ordered_at": [datetime(2024, 1, 3)]})))
    stored = store.read("orders").sort("order_id")
    old = stored.filter(pl.col("order_id") != "new")
    assert old["unit_price"].unique().to_list() == [4.0]  # a column given replaces the stored value
    assert old["cancelled"].all() and old["customer_id"].unique().to_list() == ["C1"]
    new = stored.filter(pl.col("order_id") == "new").row(0, named=True)
    assert new["cancelled"] is False and new["customer_id"] is None  # a new row gets the defaults
    store.upsert("spus", pl.DataFrame({"spu_id": ["A"], "title": ["Red mug, large"]}))
    spu = store.read("spus").row(0, named=True)
    assert (spu["title"], spu["category"], spu["brand"], spu["images"]) == ("Red mug, large", "mugs", "Acme", ["a.png"])
