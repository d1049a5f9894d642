"""The persistent store: SQLite by default, PostgreSQL when PLEDGEVAL_DB_URL names one.

The schema is owned by the Alembic migrations in ``data/migrations``; tables are reflected from the
database after migrating, so the migrations are the one definition. Every write is one transaction and
an idempotent upsert keyed on the table's natural id: loading the same file twice changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Iterator

import polars as pl
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from data.schemas import TABLES

DEFAULT_URL = "sqlite:///var/pledgeval.db"
MIGRATIONS = Path(__file__).parent / "migrations"
CHUNK = 5_000
COPY_ROWS = 1_000  # from this many rows, bulk_insert COPYs to PostgreSQL instead of INSERTing
COPY_SLICE = 50_000  # rows of CSV handed to COPY at a time
READ_BATCH = 100_000  # rows read from the driver and made a frame at a time
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
        """Upsert several tables in one transaction (or in the caller's ``connection``): all or nothing. A
        stored row takes the frame's columns; a column the frame leaves out keeps its stored value (and a
        new row gets its default)."""
        if connection is None:
            with self.engine.begin() as connection:
                return self.upsert_many(frames, connection)
        written = {}
        for name, frame in frames.items():
            table = self.table(name)
            key = [c.name for c in table.primary_key.columns]
            if _as_stored(name):
                # a key twice: the later row wins, as row-by-row upserts had it (one statement cannot update a row twice)
                rows = _completed(name, frame).unique(subset=key, keep="last", maintain_order=True)
                given = [c for c in frame.columns if c in table.columns.keys()]
                bulk_insert(connection, table, rows, upsert_clause(table, given))
                written[name] = frame.height
                continue
            rows = _to_rows(name, frame)
            statement = self.insert(table)
            update = {c.name: statement.excluded[c.name] for c in table.columns
                      if c.name not in key and c.name in frame.columns}
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

    @contextmanager
    def reading(self, connection: sa.Connection | None) -> Iterator[sa.Connection]:
        """The caller's connection (inside its transaction), or one of our own to read outside any."""
        if connection is not None:
            yield connection
            return
        with self.engine.connect() as own:
            yield own

    def read(self, name: str, where: sa.ColumnElement | None = None,
             connection: sa.Connection | None = None) -> pl.DataFrame:
        """The table's rows (those ``where`` selects), sorted by its key. ``connection``: read in the caller's
        transaction (plain tables only, see ``_plain``); otherwise on a connection of its own."""
        table, schema = self.table(name), TABLES.get(name)
        if schema is not None and _plain(schema):
            # straight through the driver, READ_BATCH rows to a frame at a time. As SQLAlchemy row mappings, a
            # 1M-position book's market and positions (5.5M + 1M rows, SQLite) took 65 s and a 3.2 GB peak (now
            # 16 s, 0.8 GB), and a 5M-position book's took the process past 14 GB
            query = sa.select(*[table.c[c] for c in schema.column_names])
            query = query if where is None else query.where(where)
            with self.reading(connection) as reading:
                return read_rows(reading, query, None, None, schema.polars_schema).sort(list(schema.key))
        if connection is not None:
            raise ValueError(f"{name}: only plain tables are read in the caller's transaction")
        query = sa.select(table) if where is None else sa.select(table).where(where)
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


def chunks(values: list, size: int = 900) -> Iterator[list]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


def read_rows(connection: sa.Connection, query, key: sa.Column | None, keys: list[str] | None,
              schema: dict) -> pl.DataFrame:
    """``query``'s rows (all, or those whose ``key`` is one of ``keys``) as a frame."""
    if keys is not None:
        query = query.where(_one_of(connection, key, sorted(set(keys))))
    return _fetch(connection, query, schema)


def _one_of(connection: sa.Connection, key: sa.Column, keys: list[str]) -> sa.ColumnElement:
    """``key`` is one of ``keys``, the keys bound as one parameter (a PostgreSQL array, an SQLite JSON list):
    the statement compiles once whatever their number. An IN list of bound values, asked 900 keys at a
    time, was compiled per 900: reading 200,000 positions' last actions took 1.9 s on SQLite, 1.0 s of it
    compiling, and now 0.3 s; a million positions' market on PostgreSQL took 167 s, now 18 s."""
    if connection.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import ARRAY

        return key == sa.any_(sa.bindparam("one_of_keys", keys, type_=ARRAY(key.type)))
    listed = sa.func.json_each(sa.bindparam("one_of_keys", json.dumps(keys))).table_valued("value")
    return key.in_(sa.select(listed.c.value))


def _fetch(connection: sa.Connection, query: sa.Select, schema: dict) -> pl.DataFrame:
    """The rows as the driver returns them, in the connection's transaction, made a frame READ_BATCH rows at
    a time: SQLAlchemy's row processing cost more than the reading on the event path (dates stay text on
    SQLite; ``_frame`` parses them at once), and a big read never holds all its rows as Python tuples."""
    compiled = query.compile(dialect=connection.dialect, compile_kwargs={"render_postcompile": True})
    params = compiled.params  # built on every access: once
    if compiled.positional:
        params = tuple(params[name] for name in compiled.positiontup)
    cursor = connection.connection.cursor()
    try:
        streamed = connection.dialect.driver == "psycopg" and _chunked_streams()
        frames = [_frame(rows, schema) for rows in _batches(cursor, str(compiled), params, streamed)]
        return pl.concat(frames) if frames else _frame([], schema)
    finally:
        cursor.close()


def _batches(cursor, sql: str, params, streamed: bool) -> Iterator[list]:
    """The query's rows, READ_BATCH at a time. With psycopg on libpq 17 or later, a stream in chunks of
    READ_BATCH rows: a plain cursor has libpq hold the whole result before the first row (a 1M-position
    book read peaked at 1.23 GB that way, streamed at 1.0 GB), and a server-side cursor's FETCHes took
    1.5 times as long as the plain cursor (the stream: 0.8 times)."""
    if streamed:
        rows = cursor.stream(sql, params, size=READ_BATCH)
        while batch := list(islice(rows, READ_BATCH)):
            yield batch
        return
    cursor.execute(sql, params)
    while batch := cursor.fetchmany(READ_BATCH):
        yield batch


def _chunked_streams() -> bool:
    import psycopg

    return psycopg.pq.version() >= 170000  # libpq's chunked rows mode


def _as_stored(name: str) -> bool:
    """The database keeps the table's columns as its frame has them (no JSON column, no derived key)."""
    return name not in JSON_COLUMNS and name not in DERIVED_KEYS


def _plain(schema) -> bool:
    """A table that the driver's rows give as they are: text, integers, floats and dates (which ``_frame``
    parses on SQLite) only; no JSON, derived key, time or boolean column."""
    return _as_stored(schema.name) and all(t in (pl.String, pl.Int64, pl.Float64, pl.Date)
                                           for t in schema.polars_schema.values())


def bulk_insert(connection: sa.Connection, table: sa.Table, frame: pl.DataFrame, on_conflict: str = "") -> None:
    """INSERT many rows straight through the driver: the event path writes thousands of rows a second, and
    SQLAlchemy's per-row parameter processing was half of that time. On SQLite, dates and times are
    written as the text SQLAlchemy writes and reads them."""
    if frame.height == 0:
        return
    if connection.dialect.name == "sqlite":
        frame = frame.with_columns([pl.col(c).dt.strftime("%Y-%m-%d") for c, t in frame.schema.items() if t == pl.Date]
                                   + [pl.col(c).dt.strftime("%Y-%m-%d %H:%M:%S.%6f") for c, t in frame.schema.items()
                                      if isinstance(t, pl.Datetime)])
    columns = ", ".join(f'"{c}"' for c in frame.columns)
    if connection.dialect.name == "postgresql" and frame.height >= COPY_ROWS:
        _copy_insert(connection, table, frame, columns, on_conflict)
        return
    marker = "?" if connection.dialect.paramstyle == "qmark" else "%s"
    sql = f'INSERT INTO "{table.name}" ({columns}) VALUES ({", ".join([marker] * frame.width)}) {on_conflict}'
    rows = frame.rows()
    for start in range(0, len(rows), CHUNK):
        connection.exec_driver_sql(sql, rows[start:start + CHUNK])


def _copy_insert(connection: sa.Connection, table: sa.Table, frame: pl.DataFrame, columns: str, on_conflict: str) -> None:
    """PostgreSQL: COPY the rows into a temporary table, then one INSERT ... SELECT with the same ON CONFLICT
    clause. Row by row, a sweep's million results and 257,000 alerts took 56.7 s to write; this way 30.7 s.
    The keys must be unique within the frame: PostgreSQL refuses to update one row twice in one statement."""
    staging = f"staging_{uuid.uuid4().hex[:12]}"
    # the written columns' types only (no constraints: a NOT NULL column the frame leaves to its default);
    # staging_row keeps the frame's order, which an identity column such as the outbox's seq follows
    connection.exec_driver_sql(f'CREATE TEMPORARY TABLE "{staging}" ON COMMIT DROP AS '
                               f'SELECT {columns} FROM "{table.name}" WITH NO DATA')
    connection.exec_driver_sql(f'ALTER TABLE "{staging}" ADD COLUMN staging_row bigserial')
    cursor = connection.connection.cursor()
    try:
        # polars writes the CSV (a null is an empty field, an empty string ""), which is COPY's CSV format;
        # psycopg's write_row per row took 2.5 times as long. In slices: with a part's whole CSV at once, a
        # million-position sweep peaked at 1,028 MB, in slices at 976 MB (850 MB with row-by-row INSERTs)
        with cursor.copy(f'COPY "{staging}" ({columns}) FROM STDIN (FORMAT csv)') as copy:
            for start in range(0, frame.height, COPY_SLICE):
                copy.write(frame.slice(start, COPY_SLICE).write_csv(include_header=False))
    finally:
        cursor.close()
    connection.exec_driver_sql(f'INSERT INTO "{table.name}" ({columns}) SELECT {columns} FROM "{staging}" '
                               f'ORDER BY staging_row {on_conflict}')
    connection.exec_driver_sql(f'DROP TABLE "{staging}"')  # not only at commit: a sweep writes several parts


def upsert_clause(table: sa.Table, columns: list[str]) -> str:
    """``bulk_insert``'s ON CONFLICT clause of an upsert on the table's primary key: ``columns`` (those
    written) replace the stored row's; the rest of the row stays."""
    key = [c.name for c in table.primary_key.columns]
    update = ", ".join(f'"{c}" = excluded."{c}"' for c in columns if c not in key)
    target = ", ".join(f'"{k}"' for k in key)
    return f"ON CONFLICT ({target}) DO UPDATE SET {update}" if update else f"ON CONFLICT ({target}) DO NOTHING"


def _frame(rows: list, schema: dict) -> pl.DataFrame:
    dates = [c for c, t in schema.items() if t == pl.Date]
    at = list(schema).index(dates[0]) if dates else None
    # SQLite hands dates over as text: told by the first date that is there (a nullable column may start empty)
    first = next((row[at] for row in rows if row[at] is not None), None) if dates else None
    if not isinstance(first, str):
        return pl.DataFrame(rows, schema=schema, orient="row")
    as_text = {c: (pl.String if c in dates else t) for c, t in schema.items()}
    return pl.DataFrame(rows, schema=as_text, orient="row").with_columns(pl.col(c).str.to_date("%Y-%m-%d") for c in dates)


def review_id(spu_id: str, created_at, text: str) -> str:
    return hashlib.sha256(f"{spu_id}\x1f{created_at.isoformat()}\x1f{text}".encode()).hexdigest()


def _completed(name: str, frame: pl.DataFrame) -> pl.DataFrame:
    """A table's frame with every column of its schema (an optional one missing gets its default), in order."""
    schema = TABLES.get(name)
    if schema is None:
        return frame
    missing = [c for c in schema.columns if c.name not in frame.columns]
    required = [c.name for c in missing if not c.nullable]
    if required:
        raise ValueError(f"{name}: missing required column(s) {', '.join(required)}")
    frame = frame.with_columns(pl.lit(c.default, dtype=c.dtype).alias(c.name) for c in missing)
    return frame.select(schema.column_names)


def _to_rows(name: str, frame: pl.DataFrame) -> list[dict]:
    rows = _completed(name, frame).to_dicts()
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
