import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from data import Store

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ONLINE_RETAIL = SHARED / "online_retail" / "orders_2010-12_2011-08.parquet"
MYNTRA = SHARED / "myntra"
SERVICE_KEY = "test-key"
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


# The HTTP service on a free loopback port, one per test session, stopped by pid.
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server(small_catalog, tmp_path_factory):
    from data import Store, load_table

    folder, tables = small_catalog
    home = tmp_path_factory.mktemp("bentoml")
    db = f"sqlite:///{tmp_path_factory.mktemp('db')}/service.db"
    env = {**os.environ, "BENTOML_HOME": str(home), "PLEDGEVAL_API_KEY": SERVICE_KEY, "PLEDGEVAL_SCHEDULE": "off",
           "PLEDGEVAL_DB_URL": db, "HF_HUB_OFFLINE": "1", "BENTOML_DO_NOT_TRACK": "True",
           "PLEDGEVAL_BUILD_DEMO": "off"}
    # BentoML fixes its model store at first use in a process, so the model is saved from a child
    # process that sees only the test's BENTOML_HOME.
    save = ("import sys; from data import load_catalog; from valuation.model import PledgeModel; "
            "PledgeModel.train(load_catalog(sys.argv[1]), log=None).save_to_store()")
    subprocess.run([sys.executable, "-c", save, str(folder)], env=env, check=True,
                   cwd=Path(__file__).resolve().parents[1])
    store = Store(db)
    for name in ("spus", "orders", "market", "positions"):
        store.upsert(name, load_table(folder / f"{name}.parquet", name).table)
    store.close()
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "serving.service:PledgeService",
                                "--port", str(port)], env=env, cwd=Path(__file__).resolve().parents[1],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            pytest.fail(f"server exited: {process.stdout.read().decode()[-3000:]}")
        time.sleep(0.5)
    else:
        os.killpg(process.pid, signal.SIGTERM)
        pytest.fail("server did not become ready")
    client = httpx.Client(base_url=base, headers={"X-API-Key": SERVICE_KEY}, timeout=60)
    yield client, tables
    client.close()
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
