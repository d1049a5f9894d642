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


def skip_unless_required(switch: str, reason: str) -> None:
    """Skip for a missing resource, or fail when ``switch`` is set (CI sets every switch: no silent skips)."""
    if os.environ.get(switch):
        pytest.fail(f"{reason}, and {switch} is set: this test must run here", pytrace=False)
    pytest.skip(f"{reason} (set {switch}=1 to make this a failure)")


def pytest_sessionfinish(session, exitstatus):
    """Under PLEDGEVAL_NO_SKIPS (set by .ci/run), a run with any skipped test fails."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if os.environ.get("PLEDGEVAL_NO_SKIPS") and skipped and session.exitstatus == 0:
        reporter.write_line(f"PLEDGEVAL_NO_SKIPS is set and {len(skipped)} test(s) skipped: failing the run", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def real_data(path: Path) -> Path:
    """A real data set under ../shared; without it the test skips, or fails under PLEDGEVAL_REQUIRE_REAL_DATA."""
    if not path.exists():
        skip_unless_required("PLEDGEVAL_REQUIRE_REAL_DATA", f"real data not found at {path}")
    return path


@pytest.fixture(scope="session")
def online_retail_path() -> Path:
    return real_data(ONLINE_RETAIL)


@pytest.fixture(scope="session")
def myntra_path() -> Path:
    real_data(MYNTRA / "products.parquet")
    return MYNTRA


def _postgres_unreachable(url: str) -> OSError | None:
    """The connection error when nothing answers at the server's address (refused, no route, timeout),
    else None. Only this is a reason to skip: a server that answers but refuses the login or lacks the
    database is a broken setup, and the store fixture lets that error fail the test."""
    parsed = sa.engine.make_url(url)
    host = parsed.host or parsed.query.get("host") or "/var/run/postgresql"
    port = parsed.port or 5432
    try:
        if host.startswith("/"):  # a Unix-domain socket directory
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(3)
                s.connect(f"{host}/.s.PGSQL.{port}")
        else:
            socket.create_connection((host, port), timeout=3).close()
    except OSError as exc:
        return exc
    return None


def _postgres_or_skip() -> None:
    refused = _postgres_unreachable(PG_URL)
    if refused is not None:
        skip_unless_required("PLEDGEVAL_REQUIRE_POSTGRES",
                             f"no PostgreSQL answering at {PG_URL} ({refused}; PLEDGEVAL_TEST_PG_URL names another)")


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


def wait_for_sweep(client: httpx.Client, sweep_id: str, timeout: float = 120) -> dict:
    """Poll GET /sweeps/{id} until the sweep completes. Every answer must be 200 (the service runs
    several workers: a 404 from one that did not start the sweep is a bug, not "not yet") and say
    running or completed; failed stops the test with the sweep's error."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(f"/sweeps/{sweep_id}")
        assert response.status_code == 200, f"GET /sweeps/{sweep_id}: {response.status_code} {response.text}"
        status = response.json()
        assert status["sweep_id"] == sweep_id, status
        assert status["status"] != "failed", f"sweep {sweep_id} failed: {status.get('error')}"
        if status["status"] == "completed":
            return status
        assert status["status"] in ("running", "waiting") and status.get("since"), status
        assert time.monotonic() < deadline, f"sweep {sweep_id} still running after {timeout} s"
        time.sleep(0.5)


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
    # the server's log goes to a file: a pipe nobody reads fills at 64 KB, and the server then hangs on its
    # next log line (seen as requests timing out once a test module sent enough of them)
    log = tmp_path_factory.mktemp("server") / "server.log"
    process = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "serving.service:PledgeService",
                                "--port", str(port)], env=env, cwd=Path(__file__).resolve().parents[1],
                               stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            pytest.fail(f"server exited: {log.read_text(errors='replace')[-3000:]}")
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
