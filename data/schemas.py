"""One typed schema per table, and the row rules a lender relies on.

A schema is data: its columns (name, polars dtype, nullable) and its row rules (a polars expression that
is true on a *bad* row, with the reason a person reads). `data.loaders` applies them to whole tables at
once; nothing here walks rows in Python.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl


@dataclass(frozen=True)
class Column:
    name: str
    dtype: pl.DataType
    nullable: bool = False
    default: object = None  # used when an optional column is absent from a file


@dataclass(frozen=True)
class Rule:
    field: str
    reason: str
    is_bad: pl.Expr  # true on rows that break the rule; nulls are handled by Column.nullable


@dataclass(frozen=True)
class TableSchema:
    name: str
    key: tuple[str, ...]
    columns: tuple[Column, ...]
    rules: tuple[Rule, ...] = field(default_factory=tuple)

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def polars_schema(self) -> dict[str, pl.DataType]:
        return {c.name: c.dtype for c in self.columns}

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    def empty(self) -> pl.DataFrame:
        return pl.DataFrame(schema=self.polars_schema)


def _bad_price(name: str) -> Rule:
    col = pl.col(name)
    return Rule(name, "must be a finite number > 0 (NaN, infinite, zero and negative prices are refused)",
                col.is_nan() | col.is_infinite() | (col <= 0))


def _blank(name: str) -> Rule:
    return Rule(name, "must not be blank", pl.col(name).str.strip_chars().str.len_chars() == 0)


SPUS = TableSchema(
    name="spus",
    key=("spu_id",),
    columns=(
        Column("spu_id", pl.String),
        Column("title", pl.String),
        Column("category", pl.String, nullable=True),
        Column("brand", pl.String, nullable=True),
        # Paths are relative to the file they came from, or absolute; 0..n per SPU.
        Column("images", pl.List(pl.String), nullable=True, default=[]),
    ),
    rules=(_blank("spu_id"), _blank("title")),
)

REVIEWS = TableSchema(
    name="reviews",
    key=("spu_id", "created_at", "text"),
    columns=(
        Column("spu_id", pl.String),
        Column("text", pl.String),
        Column("rating", pl.Int64),
        Column("created_at", pl.Datetime("us")),
    ),
    rules=(
        _blank("spu_id"),
        Rule("rating", "must be an integer 1..5", (pl.col("rating") < 1) | (pl.col("rating") > 5)),
    ),
)

ORDERS = TableSchema(
    name="orders",
    key=("order_id",),
    columns=(
        Column("order_id", pl.String),
        Column("spu_id", pl.String),
        Column("quantity", pl.Int64),
        Column("unit_price", pl.Float64),
        Column("ordered_at", pl.Datetime("us")),
        # A cancellation is a flagged line with a positive quantity, never a negative quantity.
        Column("cancelled", pl.Boolean, nullable=True, default=False),
        # who bought: a product many buyers reorder keeps selling after a default; one buyer's stock may not
        Column("customer_id", pl.String, nullable=True),
    ),
    rules=(
        _blank("order_id"),
        _blank("spu_id"),
        Rule("quantity", "must be > 0 (mark cancellations with the cancelled flag)", pl.col("quantity") <= 0),
        _bad_price("unit_price"),
    ),
)

POSITIONS = TableSchema(
    name="positions",
    key=("position_id",),
    columns=(
        Column("position_id", pl.String),
        Column("loan_id", pl.String),
        Column("borrower", pl.String),
        Column("spu_id", pl.String),
        Column("quantity", pl.Int64),
        Column("warehouse", pl.String),
        Column("pledged_at", pl.Date),
        Column("loan_amount", pl.Float64),
        Column("pledge_unit_price", pl.Float64),
    ),
    rules=(
        _blank("position_id"),
        _blank("loan_id"),
        _blank("spu_id"),
        Rule("quantity", "must be > 0", pl.col("quantity") <= 0),
        Rule("loan_amount", "must be a finite number >= 0",
             pl.col("loan_amount").is_nan() | pl.col("loan_amount").is_infinite() | (pl.col("loan_amount") < 0)),
        _bad_price("pledge_unit_price"),
    ),
)

MARKET = TableSchema(
    name="market",
    key=("spu_id", "date"),
    columns=(
        Column("spu_id", pl.String),
        Column("date", pl.Date),
        Column("price", pl.Float64),
        Column("units_sold", pl.Int64),
    ),
    rules=(
        _blank("spu_id"),
        _bad_price("price"),
        Rule("units_sold", "must be >= 0", pl.col("units_sold") < 0),
    ),
)

TABLES: dict[str, TableSchema] = {s.name: s for s in (SPUS, REVIEWS, ORDERS, POSITIONS, MARKET)}

# Tables whose spu_id must name a known SPU when the loader is given the catalogue.
REFERENCES_SPUS = ("reviews", "orders", "positions", "market")
