"""The persistent store: SQLite by default, PostgreSQL when PLEDGEVAL_DB_URL names one.

The schema is owned by the Alembic migrations in ``data/migrations``; tables are reflected from the
database after migrating, so the migrations are the one definition. Every write is one transaction and
an idempotent upsert keyed on the table's natural id: loading the same file twice changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import polars as pl
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from data.schemas import TABLES

DEFAULT_URL = "sqlite:///var/pledgeval.db"
MIGRATIONS = Path(__file__).parent / "migrations"
CHUNK = 5_000
# Columns the database keeps in another form than the polars schema.
JSON_COLUMNS = {"spus": ("images",)}
DERIVED_KEYS = {"reviews": "review_id"}


def database_url(url: str | None = None) -> str:
    return url or os.environ.get("PLEDGEVAL_DB_URL") or DEFAULT_URL


def redact(url: str) -> str:
    return sa.engine.make_url(url).render_as_string(hide_password=True)


class Store:
    """Tables of the book, behind one engine. Create it once per process and share it."""

    def __init__(self, url: str | None = None, *, engine_options: dict | None = None):
        self.url = database_url(url)
        parsed = sa.engine.make_url(self.url)
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        self.engine = sa.create_engine(self.url, **(engine_options or {}))
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        self.migrate()
        self.metadata = sa.MetaData()
        self.metadata.reflect(self.engine)

    def migrate(self) -> None:
        """Bring the schema to the newest migration (a no-op when it is there already)."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def table(self, name: str) -> sa.Table:
        try:
            return self.metadata.tables[name]
        except KeyError:
            raise ValueError(f"unknown table '{name}' (known: {', '.join(sorted(self.metadata.tables))})") from None

    def upsert(self, name: str, frame: pl.DataFrame) -> int:
        """Insert or replace rows by natural key, all in one transaction; returns rows written."""
        return self.upsert_many({name: frame})[name]

    def upsert_many(self, frames: dict[str, pl.DataFrame], connection: sa.Connection | None = None) -> dict[str, int]:
        """Upsert several tables in one transaction (or in the caller's ``connection``): all or nothing."""
        if connection is None:
            with self.engine.begin() as connection:
                return self.upsert_many(frames, connection)
        written = {}
        for name, frame in frames.items():
            table = self.table(name)
            rows = _to_rows(name, frame)
            key = [c.name for c in table.primary_key.columns]
            statement = self.insert(table)
            update = {c.name: statement.excluded[c.name] for c in table.columns if c.name not in key}
            statement = (statement.on_conflict_do_update(index_elements=key, set_=update) if update
                         else statement.on_conflict_do_nothing(index_elements=key))
            for start in range(0, len(rows), CHUNK):
                connection.execute(statement, rows[start:start + CHUNK])
            written[name] = len(rows)
        return written

    def insert(self, table: sa.Table):
        """An INSERT with the dialect's ON CONFLICT clauses (upserts)."""
        if self.engine.dialect.name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        elif self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            raise NotImplementedError(f"upserts are implemented for sqlite and postgresql, not {self.engine.dialect.name}")
        return insert(table)

    def read(self, name: str, where: sa.ColumnElement | None = None) -> pl.DataFrame:
        table = self.table(name)
        query = sa.select(table)
        if where is not None:
            query = query.where(where)
        with self.engine.connect() as connection:
            rows = connection.execute(query).mappings().all()
        return _from_rows(name, rows)

    def count(self, name: str) -> int:
        with self.engine.connect() as connection:
            return connection.execute(sa.select(sa.func.count()).select_from(self.table(name))).scalar_one()

    def spu_ids(self) -> set[str]:
        with self.engine.connect() as connection:
            return set(connection.execute(sa.select(self.table("spus").c.spu_id)).scalars())

    def close(self) -> None:
        self.engine.dispose()


def review_id(spu_id: str, created_at, text: str) -> str:
    return hashlib.sha256(f"{spu_id}\x1f{created_at.isoformat()}\x1f{text}".encode()).hexdigest()


def _to_rows(name: str, frame: pl.DataFrame) -> list[dict]:
    schema = TABLES.get(name)
    if schema is not None:
        missing = [c for c in schema.columns if c.name not in frame.columns]
        required = [c.name for c in missing if not c.nullable]
        if required:
            raise ValueError(f"{name}: missing required column(s) {', '.join(required)}")
        frame = frame.with_columns(pl.lit(c.default, dtype=c.dtype).alias(c.name) for c in missing)
        frame = frame.select(schema.column_names)
    rows = frame.to_dicts()
    for column in JSON_COLUMNS.get(name, ()):
        for row in rows:
            row[column] = json.dumps(row[column] or [])
    if name in DERIVED_KEYS:
        for row in rows:
            row[DERIVED_KEYS[name]] = review_id(row["spu_id"], row["created_at"], row["text"])
    return rows


def _from_rows(name: str, rows) -> pl.DataFrame:
    schema = TABLES.get(name)
    records = [dict(r) for r in rows]
    for column in JSON_COLUMNS.get(name, ()):
        for record in records:
            record[column] = json.loads(record[column])
    if schema is None:
        return pl.DataFrame(records, infer_schema_length=None)
    frame = pl.DataFrame(records, schema={**schema.polars_schema, **({DERIVED_KEYS[name]: pl.String}
                                                                       if name in DERIVED_KEYS else {})})
    return frame.select(schema.column_names).sort(list(schema.key))


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers keep reading while a sweep writes
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
