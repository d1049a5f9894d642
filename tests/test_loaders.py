import json
import math

import polars as pl
import pytest

from data import DataFileError, load_table


def write_csv(path, text):
    path.write_text(text.strip() + "\n")
    return path


ORDERS_HEADER = "order_id,spu_id,quantity,unit_price,ordered_at,cancelled"


def test_good_csv_loads_with_types(tmp_path):
    f = write_csv(tmp_path / "orders.csv", f"""
{ORDERS_HEADER}
o1,A,2,3.50,2024-01-02 10:00:00,false
o2,B,1,10,2024-01-03T11:00:00,true
""")
    table = load_table(f, "orders").table
    assert table.schema["quantity"] == pl.Int64
    assert table.schema["ordered_at"] == pl.Datetime("us")
    assert table["cancelled"].to_list() == [False, True]
    assert table["unit_price"].to_list() == [3.5, 10.0]


def test_nan_price_and_negative_quantity_name_both_rows_and_fields(tmp_path):
    f = write_csv(tmp_path / "orders.csv", f"""
{ORDERS_HEADER}
o1,A,2,3.50,2024-01-02 10:00:00,false
o2,B,1,NaN,2024-01-03 11:00:00,false
o3,C,-4,2.00,2024-01-03 12:00:00,false
""")
    with pytest.raises(DataFileError) as info:
        load_table(f, "orders")
    message = str(info.value)
    assert str(f) in message
    assert "row 2, field 'unit_price'" in message and "NaN" in message
    assert "row 3, field 'quantity'" in message and "must be > 0" in message
    assert [(p.row, p.field) for p in info.value.problems] == [(2, "unit_price"), (3, "quantity")]


@pytest.mark.parametrize("price, reason", [("0", "> 0"), ("-1.5", "> 0"), ("inf", "finite")])
def test_non_positive_or_infinite_price_refused(tmp_path, price, reason):
    f = write_csv(tmp_path / "m.csv", f"spu_id,date,price,units_sold\nA,2024-01-01,{price},3")
    with pytest.raises(DataFileError, match=reason):
        load_table(f, "market")


def test_missing_column_named(tmp_path):
    f = write_csv(tmp_path / "orders.csv", "order_id,spu_id,quantity,ordered_at\no1,A,2,2024-01-01")
    with pytest.raises(DataFileError) as info:
        load_table(f, "orders")
    assert [p.field for p in info.value.problems] == ["unit_price"]
    assert "missing required column" in str(info.value)


def test_wrong_type_and_missing_value(tmp_path):
    f = write_csv(tmp_path / "orders.csv", f"""
{ORDERS_HEADER}
o1,A,two,3.5,2024-01-02,false
o2,B,1,3.5,not-a-date,false
o3,,1,3.5,2024-01-02,false
o4,D,1.5,3.5,2024-01-02,maybe
""")
    with pytest.raises(DataFileError) as info:
        load_table(f, "orders")
    found = {(p.row, p.field) for p in info.value.problems}
    assert {(1, "quantity"), (2, "ordered_at"), (3, "spu_id"), (4, "quantity"), (4, "cancelled")} <= found
    assert "not a valid Int64" in str(info.value)
    assert "missing value" in str(info.value)


def test_float_quantity_in_parquet_refused_unless_whole(tmp_path):
    f = tmp_path / "m.parquet"
    pl.DataFrame({"spu_id": ["A", "B"], "date": ["2024-01-01", "2024-01-02"], "price": [1.0, 2.0],
                  "units_sold": [3.0, 2.5]}).write_parquet(f)
    with pytest.raises(DataFileError) as info:
        load_table(f, "market")
    assert [(p.row, p.field) for p in info.value.problems] == [(2, "units_sold")]


def test_unknown_spu_in_positions(tmp_path):
    f = write_csv(tmp_path / "positions.csv", """
position_id,loan_id,borrower,spu_id,quantity,warehouse,pledged_at,loan_amount,pledge_unit_price
p1,L1,Acme,A,10,W1,2024-01-01,100,12.5
p2,L1,Acme,ZZZ,10,W1,2024-01-01,100,12.5
""")
    with pytest.raises(DataFileError) as info:
        load_table(f, "positions", known_spus={"A"})
    assert [(p.row, p.field) for p in info.value.problems] == [(2, "spu_id")]
    assert "unknown spu_id" in str(info.value)


def test_duplicate_key_within_file(tmp_path):
    f = write_csv(tmp_path / "m.csv", "spu_id,date,price,units_sold\nA,2024-01-01,1,1\nA,2024-01-01,2,1")
    with pytest.raises(DataFileError, match="duplicate key"):
        load_table(f, "market")


def test_rating_range_and_blank_title(tmp_path):
    reviews = write_csv(tmp_path / "r.csv", "spu_id,text,rating,created_at\nA,ok,6,2024-01-01\nA,bad,0,2024-01-02")
    with pytest.raises(DataFileError, match="1..5"):
        load_table(reviews, "reviews")
    spus = write_csv(tmp_path / "s.csv", 'spu_id,title\nA,"   "')
    with pytest.raises(DataFileError, match="field 'title'.*blank"):
        load_table(spus, "spus")


def test_skip_bad_rows_loads_the_rest_and_reports(tmp_path):
    f = write_csv(tmp_path / "orders.csv", f"""
{ORDERS_HEADER}
o1,A,2,3.50,2024-01-02 10:00:00,false
o2,B,1,NaN,2024-01-03 11:00:00,false
o3,C,-4,-2.00,2024-01-03 12:00:00,false
o4,D,1,1.00,2024-01-03 12:00:00,
""")
    result = load_table(f, "orders", skip_bad_rows=True)
    assert result.table["order_id"].to_list() == ["o1", "o4"]
    # a blank flag is the column's default, not a null: the store's column is NOT NULL, and a null would
    # drop the line from every ~cancelled filter (sales, launch prices) without a word
    assert result.table["cancelled"].to_list() == [False, False]
    assert result.rejects.select("row", "field").rows() == [(2, "unit_price"), (3, "quantity"), (3, "unit_price")]
    out = result.write_rejects(tmp_path / "rejects.csv")
    assert "must be a finite number > 0" in out.read_text()


def test_jsonl_and_image_lists(tmp_path):
    f = tmp_path / "spus.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in [
        {"spu_id": "A", "title": "Red mug", "images": ["img/a.png", "/abs/b.png"]},
        {"spu_id": "B", "title": "Blue mug", "category": "mug"},
    ]))
    table = load_table(f, "spus").table
    assert table["images"].to_list() == [[f"{tmp_path}/img/a.png", "/abs/b.png"], []]
    assert table["category"].to_list() == [None, "mug"]
    csv = write_csv(tmp_path / "spus.csv", "spu_id,title,images\nA,Red mug,a.png|b.png\nB,Blue mug,")
    assert load_table(csv, "spus").table["images"].to_list() == [[f"{tmp_path}/a.png", f"{tmp_path}/b.png"], []]


@pytest.mark.parametrize("name, content, reason", [
    ("x.parquet", b"PAR1 not really parquet", "malformed parquet"),
    ("x.jsonl", b'{"spu_id": "A", "title": \n', "malformed jsonl"),
    ("x.xlsx", b"", "unknown file type"),
])
def test_malformed_files(tmp_path, name, content, reason):
    f = tmp_path / name
    f.write_bytes(content)
    with pytest.raises(DataFileError, match=reason) as info:
        load_table(f, "spus")
    assert str(f) in str(info.value)


def test_missing_file_and_unknown_table(tmp_path):
    with pytest.raises(DataFileError, match="file not found"):
        load_table(tmp_path / "nope.csv", "spus")
    with pytest.raises(ValueError, match="unknown table"):
        load_table(tmp_path / "nope.csv", "loans")


def test_nan_in_parquet_float_column(tmp_path):
    f = tmp_path / "positions.parquet"
    pl.DataFrame({"position_id": ["p1"], "loan_id": ["L"], "borrower": ["B"], "spu_id": ["A"], "quantity": [3],
                  "warehouse": ["W"], "pledged_at": ["2024-01-01"], "loan_amount": [math.nan],
                  "pledge_unit_price": [2.0]}).write_parquet(f)
    with pytest.raises(DataFileError, match="row 1, field 'loan_amount'"):
        load_table(f, "positions")


@pytest.mark.parametrize("when", ["01/02/2024 10:00", "2024-2-1", "2024/02/01", "1 Feb 2024"])
def test_dates_are_iso_only_never_guessed(tmp_path, when):
    """04/09/2024 is 4 September to one reader and 9 April to another: the loader does not guess."""
    f = write_csv(tmp_path / "orders.csv", f"""
{ORDERS_HEADER}
o1,A,2,3.50,2024-01-02T10:00,false
o2,B,1,10,{when},false
""")
    with pytest.raises(DataFileError) as info:
        load_table(f, "orders")
    assert "row 2, field 'ordered_at'" in str(info.value) and "not a valid Datetime" in str(info.value)
    positions = write_csv(tmp_path / "positions.csv", """
position_id,loan_id,borrower,spu_id,quantity,warehouse,pledged_at,loan_amount,pledge_unit_price
P1,L1,B1,A,10,W1,04/09/2024,50,10
P2,L1,B1,A,10,W1,2024-04-09,50,10
""")
    with pytest.raises(DataFileError) as info:
        load_table(positions, "positions", known_spus={"A"})
    assert "row 1, field 'pledged_at'" in str(info.value) and "row 2" not in str(info.value)
