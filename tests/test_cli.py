import hashlib

import polars as pl
import pytest
from typer.testing import CliRunner

from data import Store
from serving.cli import app

runner = CliRunner()


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("demo-data", "load", "import-online-retail", "demo"):
        assert command in result.output


def test_demo_data_twice_byte_identical(tmp_path):
    for out in ("a", "b"):
        result = runner.invoke(app, ["demo-data", "--out", str(tmp_path / out), "--spus", "40", "--seed", "1"])
        assert result.exit_code == 0, result.output
    for name in ("spus", "reviews", "orders", "market", "positions"):
        a, b = ((tmp_path / d / f"{name}.parquet").read_bytes() for d in ("a", "b"))
        assert hashlib.sha256(a).digest() == hashlib.sha256(b).digest(), name


def test_load_bad_csv_fails_without_writing(tmp_path):
    db = f"sqlite:///{tmp_path}/cli.db"
    spus = tmp_path / "spus.csv"
    spus.write_text("spu_id,title\nA,Red mug\nB,Blue mug\n")
    assert runner.invoke(app, ["load", "spus", str(spus), "--db", db]).exit_code == 0
    orders = tmp_path / "orders.csv"
    orders.write_text("order_id,spu_id,quantity,unit_price,ordered_at\n"
                      "o1,A,1,2.0,2024-01-01\no2,B,-3,2.0,2024-01-01\no3,Q,1,nan,2024-01-01\n")
    result = runner.invoke(app, ["load", "orders", str(orders), "--db", db])
    assert result.exit_code == 2
    assert "row 2, field 'quantity'" in result.output and "row 3, field 'unit_price'" in result.output
    assert "row 3, field 'spu_id'" in result.output and "nothing was written" in result.output

    result = runner.invoke(app, ["load", "orders", str(orders), "--db", db, "--skip-bad-rows"])
    assert result.exit_code == 0, result.output
    assert "1 rows upserted" in result.output
    assert "must be > 0" in (tmp_path / "orders.csv.rejects.csv").read_text()


def test_a_reload_with_fewer_columns_keeps_what_it_does_not_name(tmp_path):
    db = f"sqlite:///{tmp_path}/cli.db"
    spus = tmp_path / "spus.csv"
    spus.write_text("spu_id,title,category,brand\nA,Red mug,mugs,Acme\n")
    assert runner.invoke(app, ["load", "spus", str(spus), "--db", db]).exit_code == 0
    spus.write_text("spu_id,title\nA,Red mug large\n")
    assert runner.invoke(app, ["load", "spus", str(spus), "--db", db]).exit_code == 0
    stored = Store(db).read("spus").row(0, named=True)
    assert (stored["title"], stored["category"], stored["brand"]) == ("Red mug large", "mugs", "Acme")


def test_user_mistakes_are_one_line_errors_that_write_nothing(tmp_path):
    db = f"sqlite:///{tmp_path}/cli.db"
    orders = tmp_path / "orders.csv"
    orders.write_text("order_id,spu_id,quantity,unit_price,ordered_at\no1,A,1,2.0,2024-01-01\no2,A,-3,2.0,2024-01-01\n")
    spus = tmp_path / "spus.csv"
    spus.write_text("spu_id,title\nA,Red mug\n")
    assert runner.invoke(app, ["load", "spus", str(spus), "--db", db]).exit_code == 0
    # a rejects path under a file: refused before the good row is written (it was written, then a traceback)
    result = runner.invoke(app, ["load", "orders", str(orders), "--db", db, "--skip-bad-rows",
                                 "--rejects", str(spus / "rejects.csv")])
    assert result.exit_code == 2 and "--rejects" in result.output and result.exception.__class__.__name__ == "SystemExit"
    assert Store(db).count("orders") == 0
    twice = tmp_path / "twice.csv"
    twice.write_text("order_id,spu_id,quantity,unit_price,ordered_at,spu_id\no1,A,1,2.0,2024-01-01,B\n")
    result = runner.invoke(app, ["load", "orders", str(twice), "--db", db])
    assert result.exit_code == 2 and "spu_id" in result.output and "more than once" in result.output
    result = runner.invoke(app, ["load", "orders", str(tmp_path), "--db", db])
    assert result.exit_code == 2 and "a folder, not a file" in result.output
    for url in ("notaurl", f"sqlite:///{spus}/x.db", "postgresql://user:s3cretpw@127.0.0.1:1/db"):
        result = runner.invoke(app, ["load", "orders", str(orders), "--db", url])
        assert result.exit_code == 2 and "cannot open the store" in result.output, (url, result.output)
        assert result.exception.__class__.__name__ == "SystemExit" and "s3cretpw" not in result.output
    result = runner.invoke(app, ["sweep", "--db", db, "--config", str(tmp_path / "nosuch.toml")])
    assert result.exit_code == 2 and "--config" in result.output
    result = runner.invoke(app, ["backtest", "--online-retail", str(tmp_path / "no-such-file")])
    assert result.exit_code == 2 and "file not found" in result.output, result.output


def test_a_sweep_whose_report_cannot_be_written_says_the_sweep_is_stored(tmp_path):
    import os
    import subprocess
    import sys
    from datetime import date, timedelta
    from pathlib import Path

    db = f"sqlite:///{tmp_path}/cli.db"
    store = Store(db)
    store.upsert("spus", pl.DataFrame({"spu_id": ["A"], "title": ["Red mug"]}))
    days = [date(2024, 3, 1) + timedelta(days=i) for i in range(31)]
    store.upsert("market", pl.DataFrame({"spu_id": "A", "date": days, "price": 10.0, "units_sold": 5}))
    store.upsert("positions", pl.DataFrame({
        "position_id": ["P1"], "loan_id": ["L1"], "borrower": ["X"], "spu_id": ["A"], "quantity": [100],
        "warehouse": ["W"], "pledged_at": [date(2024, 3, 20)], "loan_amount": [700.0], "pledge_unit_price": [7.0]}))
    store.close()
    under_a_file = tmp_path / "a-file"
    under_a_file.write_text("")
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "COLUMNS": "400"}  # no model: the rules
    result = subprocess.run([str(Path(sys.executable).parent / "pledgeval"), "sweep", "--db", db, "--reports",
                             str(under_a_file / "reports")], capture_output=True, text=True, env=env)
    said = result.stdout + result.stderr
    assert result.returncode == 2 and "--reports" in said and "the sweep is stored" in said, said
    assert "Traceback" not in said and Store(db).count("sweeps") == 1


def test_errors_are_one_line_per_problem_and_suggest_only_what_helps(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    db = f"sqlite:///{tmp_path}/cli.db"
    long_name = tmp_path / ("a-file-whose-name-is-long-enough-to-pass-eighty-columns-" + "x" * 40 + ".csv")
    result = runner.invoke(app, ["load", "spus", str(long_name), "--db", db])
    assert result.exit_code == 2
    assert f"{long_name}: cannot load as 'spus'" in result.output  # not broken across lines
    assert "--skip-bad-rows" not in result.output  # a missing file has no good rows to keep
    spus = tmp_path / "spus.csv"
    spus.write_text("spu_id,title\nA,\n")
    result = runner.invoke(app, ["load", "spus", str(spus), "--db", db])
    assert result.exit_code == 2 and "--skip-bad-rows" in result.output


def test_unknown_table_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["load", "loans", str(tmp_path / "x.csv")])
    assert result.exit_code == 2 and "unknown table 'loans'" in result.output


@pytest.mark.slow
def test_import_online_retail(tmp_path, online_retail_path):
    db = f"sqlite:///{tmp_path}/cli.db"
    result = runner.invoke(app, ["import-online-retail", str(online_retail_path), "--until", "2010-12-08", "--db", db])
    assert result.exit_code == 0, result.output
    assert "left out" in result.output and "orders" in result.output


def test_demo_job_builds_and_loads(tmp_path):
    db = f"sqlite:///{tmp_path}/demo.db"
    args = ["demo", "--dir", str(tmp_path / "demo"), "--spus", "60", "--db", db, "--no-train"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "pledged book by borrower" in first.output
    tables = ("spus", "reviews", "orders", "market", "positions")
    in_files = {t: pl.read_parquet(tmp_path / "demo" / f"{t}.parquet").height for t in tables}
    store = Store(db)
    assert {t: store.count(t) for t in tables} == in_files and min(in_files.values()) > 0
    again = runner.invoke(app, args)  # reuses the files, upserts without duplicating
    assert again.exit_code == 0, again.output
    assert {t: store.count(t) for t in tables} == in_files
    store.close()


@pytest.mark.slow
def test_train_and_price_commands(small_catalog, tmp_path, monkeypatch):
    import polars as pl

    folder, tables = small_catalog
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    trained = runner.invoke(app, ["train", "--catalog", str(folder), "--checkpoint", str(tmp_path / "none.pt")])
    assert trained.exit_code == 2 and "checkpoint not found" in trained.output
    from embeddings.training import save_tower_checkpoint
    from embeddings import create_encoder
    tower = save_tower_checkpoint(create_encoder().model, tmp_path / "tower.pt")
    trained = runner.invoke(app, ["train", "--catalog", str(folder), "--checkpoint", str(tower),
                                  "--cache", str(tmp_path / "cache.db")])
    assert trained.exit_code == 0, trained.output
    assert "saved BentoML model pledgeval:" in trained.output
    requests = tmp_path / "requests.csv"
    known = tables["spus"]["spu_id"][0]
    requests.write_text(f"spu_id,title,quantity\n{known},,5\nNEW-9,Aurora AA-1 Gold Watch,3\n")
    out = tmp_path / "answers.parquet"
    priced = runner.invoke(app, ["price", "--input", str(requests), "--output", str(out)])
    assert priced.exit_code == 0, priced.output
    answers = pl.read_parquet(out)
    assert answers["spu_id"].to_list() == [known, "NEW-9"] and answers["error"].null_count() == 2
    assert set(answers.columns) >= {"value", "value_low", "value_high", "haircut", "pledge_unit_price", "decision",
                                    "reasons", "comparables"}
    # a new SPU's category and brand, as CSV columns; a brand of digits is still a brand, not a number
    requests.write_text("spu_id,title,category,brand\nNEW-9,Aurora AA-1 Gold Watch,lamp,7\n")
    priced = runner.invoke(app, ["price", "--input", str(requests), "--output", str(out)])
    assert priced.exit_code == 0, priced.output
    assert pl.read_parquet(out)["category"].to_list() == ["lamp"]
    requests.write_text("spu_id,quantity\nNOPE,5\n")
    failed = runner.invoke(app, ["price", "--input", str(requests), "--output", str(out)])
    assert failed.exit_code == 1 and "unknown spu_id 'NOPE'" in failed.output


def test_load_market_rescores_the_moved_positions_and_refuses_bad_rows_by_name(tmp_path):
    import os
    import subprocess
    import sys
    from datetime import date, timedelta
    from pathlib import Path

    db = f"sqlite:///{tmp_path}/cli.db"
    store = Store(db)
    store.upsert("spus", pl.DataFrame({"spu_id": ["A", "B"], "title": ["Red mug", "Blue mug"]}))
    days = [date(2024, 3, 1) + timedelta(days=i) for i in range(31)]
    store.upsert("market", pl.DataFrame({"spu_id": ["A"] * 31 + ["B"] * 31, "date": days * 2, "price": [10.0] * 62,
                                         "units_sold": [5] * 62}))
    store.upsert("positions", pl.DataFrame({
        "position_id": ["P1", "P2"], "loan_id": ["L1", "L2"], "borrower": ["X", "X"], "spu_id": ["A", "B"],
        "quantity": [100, 100], "warehouse": ["W", "W"], "pledged_at": [date(2024, 3, 20)] * 2,
        "loan_amount": [700.0, 700.0], "pledge_unit_price": [7.0, 7.0]}))
    store.close()
    prices = tmp_path / "prices.csv"
    prices.write_text("spu_id,date,price,units_sold\n" + "".join(f"A,2024-04-{d:02d},4.0,0\n" for d in range(1, 8)))
    # no model: market prices and the rules; wide lines, so that a long store path does not wrap a sentence
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "COLUMNS": "400"}

    def load(path):
        return subprocess.run([str(Path(sys.executable).parent / "pledgeval"), "load", "market", str(path), "--db", db],
                              capture_output=True, text=True, env=env)

    first = load(prices)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "7 observations applied, 0 already stored" in first.stdout and "1 positions re-scored" in first.stdout
    events = Store(db).read("health_events")
    assert events["position_id"].to_list() == ["P1"] and events["action"][0] == "liquidate"
    assert "file:prices.csv" in events["observation"][0]
    again = load(prices)
    assert "0 observations applied, 7 already stored" in again.stdout
    future = tmp_path / "future.csv"
    future.write_text("spu_id,date,price,units_sold\nB,2024-04-01,9.0,1\nB,2999-01-01,9.0,1\n")
    refused = load(future)
    assert refused.returncode == 1 and "1 observations applied" in refused.stdout
    assert "row 2, field 'date': 2999-01-01 is in the future" in refused.stderr + refused.stdout
    # rows the loader skips are still counted: the refusal names the file's row 3 and its column units_sold,
    # and the loader's rejects are written even though the load then exits 1
    mixed = tmp_path / "mixed.csv"
    mixed.write_text("spu_id,date,price,units_sold\nB,2024-04-02,abc,1\nB,2024-04-03,9.0,1\nB,2024-04-04,9.0,2000000000\n"
                     "B,2999-01-02,9.0,1\n")
    skipped = subprocess.run([str(Path(sys.executable).parent / "pledgeval"), "load", "market", str(mixed), "--db", db,
                              "--skip-bad-rows"], capture_output=True, text=True, env=env)
    said = skipped.stdout + skipped.stderr
    assert skipped.returncode == 1 and "1 observations applied" in said, said
    assert "row 3, field 'units_sold'" in said and "row 4, field 'date'" in said, said
    assert "abc" in (tmp_path / "mixed.csv.rejects.csv").read_text()
