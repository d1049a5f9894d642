"""Read a table from parquet, CSV or JSONL and check it against its schema.

Every problem is reported with the file, the row (1 = first data row, after a CSV header), the field and
the reason. By default one bad row fails the whole file (a lender would rather load nothing than half a
book); ``skip_bad_rows=True`` loads the good rows and returns the rejects with their reasons.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from data.schemas import REFERENCES_SPUS, TABLES, TableSchema

ROW = "_row"
MAX_PROBLEMS_IN_MESSAGE = 20
READERS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
LIST_SEPARATOR = "|"  # how a CSV cell holds several image paths


@dataclass(frozen=True)
class Problem:
    row: int | None
    field: str | None
    reason: str
    value: str | None = None

    def __str__(self) -> str:
        where = []
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.field is not None:
            where.append(f"field '{self.field}'")
        value = f" = {self.value!r}" if self.value is not None else ""
        return f"{', '.join(where) or 'file'}{value}: {self.reason}"


class DataFileError(ValueError):
    """A file that cannot be loaded as the table it claims to be."""

    def __init__(self, path: Path | str, table: str, problems: list[Problem]):
        self.path = str(path)
        self.table = table
        self.problems = problems
        shown = "\n".join(f"  {p}" for p in problems[:MAX_PROBLEMS_IN_MESSAGE])
        more = len(problems) - MAX_PROBLEMS_IN_MESSAGE
        tail = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(f"{self.path}: cannot load as '{table}' ({len(problems)} problem(s)):\n{shown}{tail}")


@dataclass(frozen=True)
class LoadResult:
    table: pl.DataFrame
    rejects: pl.DataFrame  # row, field, value, reason: one line per problem
    given: list[str]  # the table's columns the file has (the rest are defaults)
    rows: pl.Series  # each table row's row number in the file (from 1, the header not counted)

    def given_columns(self) -> pl.DataFrame:
        """The rows with only the columns the file gave: what an upsert may replace in a stored row (a
        file without ``customer_id`` must not blank the customer of an order already stored)."""
        return self.table.select(self.given)

    def write_rejects(self, path: Path | str) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.rejects.write_csv(path)
        return path


def read_raw(path: Path | str, table: str) -> pl.DataFrame:
    """The file as a frame, with CSV cells kept as text so that type errors can name their row."""
    path = Path(path)
    if not path.is_file():
        reason = "a folder, not a file" if path.is_dir() else "file not found"
        raise DataFileError(path, table, [Problem(None, None, reason)])
    kind = READERS.get(path.suffix.lower())
    if kind is None:
        raise DataFileError(path, table, [Problem(None, None, f"unknown file type '{path.suffix}' "
                                                            f"(use {', '.join(sorted(READERS))})")])
    try:
        if kind == "parquet":
            return pl.read_parquet(path)
        if kind == "jsonl":
            return pl.read_ndjson(path, infer_schema_length=None)
        frame = pl.read_csv(path, infer_schema=False, null_values=[""])
    except Exception as exc:  # polars raises several types; the user needs the file name and the reason
        raise DataFileError(path, table, [Problem(None, None, f"malformed {kind} file: {exc}")]) from exc
    # polars renames a repeated header to NAME_duplicated_N: which of the two is meant is not ours to guess
    twice = sorted({c.split("_duplicated_")[0] for c in frame.columns if "_duplicated_" in c})
    if twice:
        raise DataFileError(path, table, [Problem(None, c, "the header names this column more than once")
                                          for c in twice])
    return frame


def load_table(
    path: Path | str,
    table: str,
    *,
    skip_bad_rows: bool = False,
    known_spus: Iterable[str] | None = None,
) -> LoadResult:
    """Load ``path`` as ``table`` (one of data.schemas.TABLES), checked row by row."""
    if table not in TABLES:
        raise ValueError(f"unknown table '{table}' (known: {', '.join(TABLES)})")
    path = Path(path)
    raw = read_raw(path, table)
    return validate(raw, TABLES[table], source=path, skip_bad_rows=skip_bad_rows, known_spus=known_spus)


def validate(
    raw: pl.DataFrame,
    schema: TableSchema,
    *,
    source: Path | str = "<frame>",
    skip_bad_rows: bool = False,
    known_spus: Iterable[str] | None = None,
) -> LoadResult:
    missing = [c.name for c in schema.columns if c.name not in raw.columns and not c.nullable]
    if missing:
        problems = [Problem(None, name, f"missing required column (file has: {', '.join(raw.columns) or 'none'})")
                    for name in missing]
        raise DataFileError(source, schema.name, problems)

    frame = raw.with_row_index(ROW, offset=1)
    typed, problems = _cast_columns(frame, schema, Path(source).parent if isinstance(source, Path) else None)
    problems = pl.concat([problems, _rule_problems(typed, frame, schema, known_spus)], how="vertical")
    problems = problems.sort(ROW, "field", maintain_order=True)

    if problems.height and not skip_bad_rows:
        raise DataFileError(source, schema.name, [
            Problem(r[ROW], r["field"], r["reason"], r["value"]) for r in problems.iter_rows(named=True)
        ])
    good = typed.filter(~pl.col(ROW).is_in(problems[ROW].implode()))
    return LoadResult(good.select(schema.column_names), problems.rename({ROW: "row"}),
                      [c for c in schema.column_names if c in raw.columns], good[ROW])


def _problems(frame: pl.DataFrame, mask: pl.Expr, field: str, reason: str, value: pl.Expr) -> pl.DataFrame:
    return frame.filter(mask).select(
        pl.col(ROW).cast(pl.UInt32),
        pl.lit(field).alias("field"),
        value.cast(pl.String, strict=False).alias("value"),
        pl.lit(reason).alias("reason"),
    )


ISO_DATE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
ISO_DATETIME = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,9})?)?)?$"


def _cast(src: pl.Expr, src_dtype: pl.DataType, target: pl.DataType) -> pl.Expr:
    if src_dtype == target:
        return src
    if isinstance(target, pl.List):
        return src.str.split(LIST_SEPARATOR) if src_dtype == pl.String else src.cast(target, strict=False)
    if src_dtype == pl.String:
        text = src.str.strip_chars()
        if target == pl.Boolean:
            lowered = text.str.to_lowercase()
            return (pl.when(lowered.is_in(["true", "1", "yes", "y", "t"])).then(True)
                    .when(lowered.is_in(["false", "0", "no", "n", "f"])).then(False))
        # ISO 8601 only: left to infer, the parser read 04/09/2024 as 4 September or 9 April depending on
        # the file's first date, and took 2024-4-9; anything else is "not a valid Date" for that row
        if isinstance(target, pl.Datetime):
            return pl.when(text.str.contains(ISO_DATETIME)).then(text).str.to_datetime(strict=False, time_unit="us")
        if target == pl.Date:
            return pl.when(text.str.contains(ISO_DATE)).then(text).str.to_date("%Y-%m-%d", strict=False)
        return text.cast(target, strict=False)
    if isinstance(src_dtype, pl.Datetime) and src_dtype.time_zone is not None:
        src = src.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
    if target.is_integer() and src_dtype.is_float():
        return pl.when(src == src.floor()).then(src.cast(target, strict=False))
    return src.cast(target, strict=False)


def _resolve_paths(images: pl.Expr, base_dir: Path | None) -> pl.Expr:
    """Image paths in a file are relative to that file's folder, so a catalogue folder can move."""
    images = images.fill_null(pl.lit([], dtype=pl.List(pl.String)))
    if base_dir is None:
        return images
    return images.list.eval(pl.when(pl.element().str.starts_with("/")).then(pl.element())
                            .otherwise(pl.lit(str(base_dir.resolve()) + "/") + pl.element()))


def _cast_columns(frame: pl.DataFrame, schema: TableSchema, base_dir: Path | None):
    exprs, problems = [pl.col(ROW)], []
    for column in schema.columns:
        if column.name not in frame.columns:
            exprs.append(pl.lit(column.default, dtype=column.dtype).alias(column.name))
            continue
        src = pl.col(column.name)
        cast = _cast(src, frame.schema[column.name], column.dtype)
        # a blank cell means what an absent column means (e.g. cancelled = false), not an unknown
        filled = cast.fill_null(pl.lit(column.default, dtype=column.dtype)) if column.default is not None else cast
        exprs.append(filled.alias(column.name))
        probe = frame.select(pl.col(ROW), src, cast.alias("_cast"))
        wrong_type = src.is_not_null() & pl.col("_cast").is_null()
        problems.append(_problems(probe, wrong_type, column.name, f"not a valid {column.dtype}", src))
        if not column.nullable:
            problems.append(_problems(probe, src.is_null(), column.name, "missing value", src))
    typed = frame.select(exprs)
    if "images" in typed.columns:
        typed = typed.with_columns(_resolve_paths(pl.col("images"), base_dir))
    return typed, pl.concat(problems, how="vertical")


def _rule_problems(typed, frame, schema: TableSchema, known_spus) -> pl.DataFrame:
    rules = list(schema.rules)
    checks = []
    for rule in rules:
        # A null never breaks a value rule; nulls are judged by the column's nullability.
        checks.append(_problems(typed, rule.is_bad.fill_null(False), rule.field, rule.reason, pl.col(rule.field)))
    if known_spus is not None and schema.name in REFERENCES_SPUS:
        known = pl.Series(list(known_spus), dtype=pl.String)
        checks.append(_problems(typed, pl.col("spu_id").is_not_null() & ~pl.col("spu_id").is_in(known.implode()),
                                "spu_id", "unknown spu_id (not in the SPU catalogue)", pl.col("spu_id")))
    key = list(schema.key)
    duplicated = pl.struct(key).is_duplicated() & pl.all_horizontal(pl.col(k).is_not_null() for k in key)
    checks.append(_problems(typed, duplicated, ",".join(key), "duplicate key within the file",
                            pl.concat_str([pl.col(k).cast(pl.String) for k in key], separator="|")))
    return pl.concat(checks, how="vertical")


CATALOG_TABLES = ("spus", "reviews", "orders", "market", "positions")


def load_catalog(folder: Path | str, tables: Iterable[str] = CATALOG_TABLES) -> dict[str, pl.DataFrame]:
    """The tables of a catalogue folder (``<table>.parquet|.csv|.jsonl``); ``spus`` is required, the rest
    are read when present. References to SPUs are checked against the folder's own ``spus``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataFileError(folder, "catalog", [Problem(None, None, "catalogue folder not found")])
    found: dict[str, pl.DataFrame] = {}
    for table in tables:
        path = next((folder / f"{table}{ext}" for ext in (".parquet", ".csv", ".jsonl") if (folder / f"{table}{ext}").is_file()),
                    None)
        if path is None:
            if table == "spus":
                raise DataFileError(folder, "spus", [Problem(None, None, "no spus.parquet/.csv/.jsonl in the folder")])
            continue
        known = found["spus"]["spu_id"] if table in REFERENCES_SPUS and "spus" in found else None
        found[table] = load_table(path, table, known_spus=known).table
    return found
