import os
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from data import Store

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ONLINE_RETAIL = SHARED / "online_retail" / "orders_2010-12_2011-08.parquet"
MYNTRA = SHARED / "myntra"
PG_URL = os.environ.get("PLEDGEVAL_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def online_retail_path() -> Path:
    if not ONLINE_RETAIL.is_file():
        pytest.skip(f"real Online Retail data not found at {ONLINE_RETAIL}")
    return ONLINE_RETAIL


def _postgres_or_skip() -> None:
    try:
        with sa.create_engine(PG_URL).connect() as connection:
            connection.execute(sa.text("select 1"))
    except Exception as exc:  # any failure to reach the server
        if os.environ.get("PLEDGEVAL_REQUIRE_POSTGRES"):
            pytest.fail(f"PostgreSQL required (PLEDGEVAL_REQUIRE_POSTGRES) but not reachable at {PG_URL}: {exc}")
        pytest.skip(f"no PostgreSQL at {PG_URL} ({type(exc).__name__}); set PLEDGEVAL_TEST_PG_URL to run")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request, tmp_path):
    """A fresh store: an SQLite file, or a throw-away schema on the PostgreSQL server."""
    if request.param == "sqlite":
        s = Store(f"sqlite:///{tmp_path}/store.db")
        yield s
        s.close()
        return
    _postgres_or_skip()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL)
    with admin.begin() as connection:
        connection.execute(sa.text(f'create schema "{schema}"'))
    s = Store(PG_URL, engine_options={"connect_args": {"options": f"-csearch_path={schema}"}})
    try:
        yield s
    finally:
        s.close()
        with admin.begin() as connection:
            connection.execute(sa.text(f'drop schema "{schema}" cascade'))
        admin.dispose()


@pytest.fixture(scope="session")
def encoder():
    from embeddings import create_encoder

    return create_encoder()


@pytest.fixture(scope="session")
def small_catalog(tmp_path_factory):
    from data import generate_demo_catalog, load_catalog

    folder = tmp_path_factory.mktemp("catalog")
    generate_demo_catalog(folder, n_spus=120, seed=5)
    return folder, load_catalog(folder)
