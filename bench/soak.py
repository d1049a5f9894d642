"""Soak test of the HTTP service: does worker memory (RSS) level off under a steady desk-like load?

    python bench/soak.py --minutes 30 --rps 20

(run it with the project's venv and OMP_NUM_THREADS=1, from anywhere; it works in the repository root).

What it does, in order:

1. Model. It needs ``pledgeval:latest`` (``--model``) in the BentoML store at ``$BENTOML_HOME`` (default
   ``var/bentoml`` in the repository). If the store has none, the script builds the demo model itself by
   running ``pledgeval demo`` once (about 7-10 minutes on 2 cores) before anything else; pass
   ``--no-build-model`` to make a missing model an error instead.
2. Store. A fresh SQLite store in a temporary folder, with the demo tables loaded by
   ``pledgeval demo --no-train --db sqlite:///<tmp>/soak.db`` (which writes ``var/demo`` if missing).
   No sweep has run in it yet, so position health answers 409 until the first sweep.
3. Server. ``bentoml serve serving.service:PledgeService --port <free port>`` in its own process group,
   with an API key the script picks, ``PLEDGEVAL_SCHEDULE=off``, ``PLEDGEVAL_BUILD_DEMO=off``,
   ``HF_HUB_OFFLINE=1``, ``BENTOML_DO_NOT_TRACK=True``; it waits for ``GET /readyz`` to answer 200.
   Its output goes to ``server.log`` in the temporary folder (the tail is printed if it fails).
4. Load. locust, headless and in-process, at ``--rps`` requests/s in total (``--users`` users, each on
   ``constant_throughput(rps / users)``): 80% ``POST /price`` of a known spu_id, 15% ``POST /price`` of a
   new spu_id (``NEW-<n>``, n counting up) with a known title + " v2", 5% ``GET /positions/<id>/health``;
   each user starts at a random point of its period, so the requests are spread out, not sent in bursts.
   Every request carries ``Authorization: Bearer <key>``. Errors are non-2xx answers (other than 404/409
   on position health, which are expected) and connection failures.
5. Sweeps. Every ``--sweep-every`` minutes (default 5; first at that mark, not at 0; ``--sweep-at-start``
   adds one before the load) it posts
   ``POST /sweep {}`` and polls ``GET /sweeps/<id>`` until completed or failed. Note ``{}`` sweeps the
   latest market date, so on a fixed store only the first sweep computes; later ones find it done.
6. Memory. Every ``--sample-every`` seconds (default 30, plus once just before the load starts) it reads
   the RSS of every process in the served tree (psutil); workers are the ``_bentoml_impl.worker``
   processes under the serve process. locust keeps its connections open (keep-alive), and all of them
   may be accepted by one worker: check the per-process table (and ``[entry_service:PledgeService:N]`` in
   the server log) before reading a worker's figures as "per worker under load".
7. Report. A table per ``--slice`` minutes (requests, errors, p50/p99 latency, worker RSS at the slice's
   end), per route, and per process; then, as the LAST line, key=value pairs:
   ``errors requests rps p50_ms p99_ms rss_start_mb rss_end_mb rss_growth_mb_per_min
   rss_growth_first5_mb_per_min sweeps minutes``. ``rss_start_mb`` is the workers' RSS sum just before the
   load, ``rss_end_mb`` the last sample; ``rss_growth_mb_per_min`` is the least-squares slope of the
   workers' RSS sum over the samples after ``--warmup`` minutes (default 5), and
   ``rss_growth_first5_mb_per_min`` the slope over the samples in the first 5 minutes (``nan`` when fewer
   than 2 samples). Every sample and request summary is also written as JSON (``--out``).

8. Python allocations (``--tracemalloc MINUTES``). ``bench/memtrace/sitecustomize.py`` runs in every
   server process: after MINUTES it starts ``tracemalloc``, then snapshots every MINUTES. The report adds,
   per worker, traced memory against RSS from the first snapshot after ``--warmup`` to the last, and the
   allocation sites that grew most; the last line gains ``traced_growth_mb_per_min`` and
   ``traced_rss_growth_mb_per_min`` (both workers). Tracing slows the workers: read its latencies as such.

The server is stopped (SIGTERM to its process group, SIGKILL after 30 s) at the end, on Ctrl-C, SIGTERM
and errors. ``--mix`` changes the route weights (e.g. ``--mix 100,0,0`` for /price by spu_id only) to
find which route a memory growth comes from.
"""

from __future__ import annotations

# locust patches the standard library with gevent on import: it must come before everything else.
from locust import FastHttpUser, constant_throughput, events, task  # isort: skip
from locust.env import Environment  # isort: skip

import argparse
import atexit
import itertools
import json
import logging
import math
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import gevent
import numpy as np
import polars as pl
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench._common import BentoServer, free_port, print_table  # noqa: E402

VENV_BIN = Path(sys.executable).parent
WORKER_MARK = "_bentoml_impl.worker"
HEALTH_EXPECTED = (404, 409)  # position not swept yet (409) / not known (404)


# -- set-up -------------------------------------------------------------------------------------------
def tool(name: str) -> str:
    path = VENV_BIN / name
    return str(path) if path.exists() else name


def base_env(bentoml_home: str) -> dict:
    return {**os.environ, "BENTOML_HOME": bentoml_home, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
            "HF_HUB_OFFLINE": "1", "BENTOML_DO_NOT_TRACK": "True"}


def ensure_model(model: str, env: dict, build: bool) -> None:
    check = subprocess.run([sys.executable, "-c", f"import bentoml; bentoml.models.get({model!r})"], env=env,
                           cwd=ROOT, capture_output=True, text=True)
    if check.returncode == 0:
        print(f"model {model} found in {env['BENTOML_HOME']}", flush=True)
        return
    if not build:
        raise SystemExit(f"no model {model} in the BentoML store {env['BENTOML_HOME']}: run "
                         f"`BENTOML_HOME={env['BENTOML_HOME']} .venv/bin/pledgeval demo` first (or drop --no-build-model)")
    if model != "pledgeval:latest":
        raise SystemExit(f"no model {model} in the BentoML store, and only pledgeval:latest can be built here")
    print(f"no model {model} in {env['BENTOML_HOME']}: building the demo model (pledgeval demo, ~7-10 min) ...",
          flush=True)
    subprocess.run([tool("pledgeval"), "demo"], env=env, cwd=ROOT, check=True)


def load_demo_store(db_url: str, env: dict) -> None:
    print(f"loading the demo tables into {db_url} ...", flush=True)
    done = subprocess.run([tool("pledgeval"), "demo", "--no-train", "--db", db_url], env=env, cwd=ROOT,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"pledgeval demo --no-train failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


def http(method: str, url: str, key: str | None = None, body: dict | None = None, timeout: float = 30):
    """(status, parsed JSON or text); status 0 and the error text on a connection failure."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        return 0, str(exc)
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


class Server(BentoServer):
    """The service under soak, and its process tree for the memory samples."""

    def __init__(self, port: int, env: dict, log_path: Path) -> None:
        super().__init__("serving.service:PledgeService", port, env, log_path)

    def processes(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []


# -- memory -------------------------------------------------------------------------------------------
def describe(process: psutil.Process) -> tuple[str, bool]:
    try:
        cmdline = " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "?", False
    if WORKER_MARK in cmdline:
        return "worker", True
    if "bentoml serve" in cmdline:
        return "serve", False
    return (process.name() or "other"), False


def sample_rss(server: Server, t0: float) -> dict:
    procs = {}
    for p in server.processes():
        try:
            rss = p.memory_info().rss / 2**20
            cpu = sum(p.cpu_times()[:2])
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        kind, is_worker = describe(p)
        procs[str(p.pid)] = {"kind": kind, "worker": is_worker, "rss_mb": round(rss, 1), "cpu_s": round(cpu, 1)}
    workers = sum(v["rss_mb"] for v in procs.values() if v["worker"])
    return {"t": time.monotonic() - t0, "workers_mb": round(workers, 1),
            "total_mb": round(sum(v["rss_mb"] for v in procs.values()), 1), "load1": os.getloadavg()[0],
            "procs": procs}


def slope_per_min(samples: list[dict], lo_min: float, hi_min: float, key: str = "workers_mb") -> float:
    pts = [(s["t"] / 60, s[key]) for s in samples if lo_min <= s["t"] / 60 <= hi_min]
    if len(pts) < 2 or len({x for x, _ in pts}) < 2:
        return float("nan")
    x, y = np.array(pts).T
    return float(np.polyfit(x, y, 1)[0])


# -- load ---------------------------------------------------------------------------------------------
def make_user(key: str, spu_ids: list[str], titles: list[str], position_ids: list[str], weights: list[int],
              per_user_rps: float):
    counter = itertools.count(1)
    headers = {"Authorization": f"Bearer {key}"}

    class DeskUser(FastHttpUser):
        wait_time = constant_throughput(per_user_rps)
        network_timeout = 120.0
        connection_timeout = 10.0

        def on_start(self) -> None:
            # users spawned together would stay in phase and send their requests as one burst per period;
            # a random start within the period spreads them out
            gevent.sleep(random.uniform(0, 1 / per_user_rps))

        def _post_price(self, item: dict, name: str) -> None:
            with self.client.post("/price", json={"items": [item]}, headers=headers, name=name,
                                  catch_response=True) as response:
                if 200 <= response.status_code < 300:
                    response.success()
                else:
                    response.failure(f"{response.status_code}: {(response.text or '')[:300]}")

        @task(weights[0])
        def price_known(self) -> None:
            self._post_price({"spu_id": random.choice(spu_ids), "quantity": 10}, "POST /price spu_id")

        @task(weights[1])
        def price_title(self) -> None:
            self._post_price({"spu_id": f"NEW-{next(counter)}", "title": random.choice(titles) + " v2",
                              "quantity": 10}, "POST /price title")

        @task(weights[2])
        def health(self) -> None:
            with self.client.get(f"/positions/{random.choice(position_ids)}/health", headers=headers,
                                 name="GET /positions/[id]/health", catch_response=True) as response:
                if 200 <= response.status_code < 300 or response.status_code in HEALTH_EXPECTED:
                    response.success()
                else:
                    response.failure(f"{response.status_code}: {(response.text or '')[:300]}")

    return DeskUser


def sweeper(base: str, key: str, every_s: float, until_s: float, t0: float, log: list[dict],
            once: bool = False) -> None:
    n = 1
    while True:
        due = t0 + n * every_s
        if (due - t0 >= until_s and not once) or (once and n > 1):
            return
        gevent.sleep(max(0.0, due - time.monotonic()))
        started = time.monotonic()
        entry = {"t": started - t0, "status": None, "sweep_id": None, "seconds": None, "detail": None}
        log.append(entry)
        status, answer = http("POST", f"{base}/sweep", key, {}, timeout=120)
        if status != 200 or not isinstance(answer, dict):
            entry.update(status="post-failed", detail=f"{status}: {str(answer)[:300]}")
        else:
            entry["sweep_id"] = answer["sweep_id"]
            polls = 0
            while time.monotonic() - started < 600:
                status, state = http("GET", f"{base}/sweeps/{answer['sweep_id']}", key, timeout=60)
                polls += 1
                current = state.get("status") if isinstance(state, dict) else None
                if status == 200 and current in ("completed", "failed"):
                    entry.update(status=current, detail=None if current == "completed" else str(state)[:300])
                    break
                if status != 200:
                    entry["detail"] = f"{status}: {str(state)[:300]}"
                gevent.sleep(2)
            else:
                entry["status"] = "timeout"
            entry["seconds"] = round(time.monotonic() - started, 1)
            entry["polls"] = polls
        print(f"[{entry['t'] / 60:5.1f} min] sweep {entry['sweep_id']}: {entry['status']} in {entry['seconds']}s"
              + (f" ({entry['detail']})" if entry["detail"] else ""), flush=True)
        n += 1


# -- report -------------------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def fmt(x: float, digits: int = 1) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def rss_at(samples: list[dict], t: float) -> dict | None:
    """The last sample taken at or before t."""
    before = [s for s in samples if s["t"] <= t + 1.0]  # the first sample is taken a moment after 0
    return before[-1] if before else None


def report(records: list[tuple], samples: list[dict], sweeps: list[dict], args, duration_s: float,
           out: Path) -> str:
    slice_s = args.slice * 60
    n_slices = max(1, math.ceil(duration_s / slice_s - 1e-9))
    rows = []
    for i in range(n_slices):
        lo, hi = i * slice_s, min((i + 1) * slice_s, duration_s)
        part = [r for r in records if lo <= r[0] < hi or (i == n_slices - 1 and r[0] >= hi)]
        lat = [r[2] for r in part]
        errors = sum(1 for r in part if not r[4])
        s = rss_at(samples, hi)
        rows.append([f"{lo / 60:.0f}-{hi / 60:.1f}", str(len(part)), str(errors),
                     fmt(len(part) / max(hi - lo, 1e-9)), fmt(pct(lat, 50)), fmt(pct(lat, 99)),
                     fmt(s["workers_mb"]) if s else "-", fmt(s["total_mb"]) if s else "-"])
    print_table(f"soak: {args.rps} req/s target, {duration_s / 60:.1f} min, slices of {args.slice} min",
                ["minutes", "requests", "errors", "req/s", "p50 ms", "p99 ms", "worker RSS MB", "tree RSS MB"], rows)

    names = sorted({r[1] for r in records})
    route_rows = []
    for name in names:
        part = [r for r in records if r[1] == name]
        codes: dict = {}
        for r in part:
            codes[r[3]] = codes.get(r[3], 0) + 1
        lat = [r[2] for r in part]
        route_rows.append([name, str(len(part)), str(sum(1 for r in part if not r[4])), fmt(pct(lat, 50)),
                           fmt(pct(lat, 99)), fmt(max(lat) if lat else float("nan")),
                           " ".join(f"{c}:{n}" for c, n in sorted(codes.items()))])
    print_table("per route", ["route", "requests", "errors", "p50 ms", "p99 ms", "max ms", "status codes"], route_rows)

    errors_by_text: dict = {}
    for r in records:
        if not r[4]:
            errors_by_text[r[5]] = errors_by_text.get(r[5], 0) + 1
    if errors_by_text:
        print_table("errors", ["count", "error"], [[str(n), t[:160]] for t, n in
                                                    sorted(errors_by_text.items(), key=lambda kv: -kv[1])[:15]])

    # each process's RSS at every slice boundary (and at the start)
    marks = [0.0] + [min((i + 1) * slice_s, duration_s) for i in range(n_slices)]
    pids = sorted({pid for s in samples for pid in s["procs"]}, key=int)
    kinds = {pid: next(s["procs"][pid]["kind"] for s in samples if pid in s["procs"]) for pid in pids}
    proc_rows = []
    for pid in pids:
        cells = []
        for m in marks:
            s = rss_at(samples, m)
            cells.append(fmt(s["procs"][pid]["rss_mb"]) if s and pid in s["procs"] else "-")
        proc_rows.append([pid, kinds[pid], *cells,
                          fmt(slope_per_min([{"t": s["t"], "v": s["procs"][pid]["rss_mb"]} for s in samples
                                             if pid in s["procs"]], args.warmup, 1e9, key="v"), 2)])
    print_table("RSS per process (MB) at slice ends; slope after warm-up",
                ["pid", "process", *[f"{m / 60:.1f}m" for m in marks], "MB/min"], proc_rows)

    if sweeps:
        print_table("sweeps", ["at min", "sweep_id", "status", "seconds", "detail"],
                    [[fmt(s["t"] / 60), str(s["sweep_id"]), str(s["status"]), str(s["seconds"]),
                      (s["detail"] or "")[:100]] for s in sweeps])

    lat = [r[2] for r in records]
    errors = sum(1 for r in records if not r[4])
    start = samples[0]["workers_mb"] if samples else float("nan")
    end = samples[-1]["workers_mb"] if samples else float("nan")
    line = (f"errors={errors} requests={len(records)} rps={fmt(len(records) / max(duration_s, 1e-9), 2)} "
            f"p50_ms={fmt(pct(lat, 50))} p99_ms={fmt(pct(lat, 99))} rss_start_mb={fmt(start)} rss_end_mb={fmt(end)} "
            f"rss_growth_mb_per_min={fmt(slope_per_min(samples, args.warmup, 1e9), 2)} "
            f"rss_growth_first5_mb_per_min={fmt(slope_per_min(samples, 0, 5), 2)} "
            f"sweeps={sum(1 for s in sweeps if s['status'] == 'completed')} minutes={fmt(duration_s / 60, 2)}")
    out.write_text(json.dumps({"args": vars(args), "samples": samples, "sweeps": sweeps, "summary": line,
                               "routes": route_rows, "slices": rows}, indent=1, default=str))
    print(f"\nsamples and summaries: {out}")
    return line


def memtrace_report(folder: Path, workers: list[str], after_wall: float, top: int = 12) -> str:
    """Per worker: Python-traced memory against RSS between its first snapshot after the warm-up and its
    last, and the allocation sites (by traceback) that grew most. Returns key=value pairs to append."""
    import tracemalloc

    def where(frames) -> str:
        # the innermost frame (a Traceback runs from the oldest frame to the most recent), and the innermost
        # one in this project's code when that is another
        def short(frame):
            path = Path(frame.filename)
            text = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else "/".join(path.parts[-2:])
            return f"{text.replace('.venv/lib/python3.11/site-packages/', '')}:{frame.lineno}"
        own = next((f for f in reversed(frames) if Path(f.filename).is_relative_to(ROOT)
                    and ".venv" not in Path(f.filename).parts), None)
        return short(frames[-1]) + (f" <- {short(own)}" if own is not None and own is not frames[-1] else "")

    traced_total, rss_total = 0.0, 0.0
    for pid in workers:
        log = folder / f"{pid}.jsonl"
        marks = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
        marks = [m for m in marks if m["wall"] >= after_wall]
        if len(marks) < 2:
            print(f"tracemalloc: worker {pid} has {len(marks)} snapshot(s) after the warm-up; nothing to compare")
            continue
        first, last = marks[0], marks[-1]
        minutes = (last["wall"] - first["wall"]) / 60
        traced, rss = (last["traced_mb"] - first["traced_mb"]) / minutes, (last["rss_mb"] - first["rss_mb"]) / minutes
        traced_total, rss_total = traced_total + traced, rss_total + rss
        before = tracemalloc.Snapshot.load(str(folder / f"{pid}-{first['n']:03d}.snap"))
        after = tracemalloc.Snapshot.load(str(folder / f"{pid}-{last['n']:03d}.snap"))
        print(f"\ntracemalloc, worker {pid}, {minutes:.1f} min from snapshot {first['n']} to {last['n']}: "
              f"traced {first['traced_mb']:.1f} -> {last['traced_mb']:.1f} MB ({traced:+.2f} MB/min), "
              f"RSS {first['rss_mb']:.0f} -> {last['rss_mb']:.0f} MB ({rss:+.2f} MB/min)")
        grew = sorted(after.compare_to(before, "traceback"), key=lambda d: -d.size_diff)[:top]
        rows = [[fmt(d.size_diff / 2**20, 3), f"{d.count_diff:+d}", fmt(d.size / 2**20, 2), where(d.traceback)]
                for d in grew]
        print_table(f"worker {pid}: allocation sites that grew most", ["+MB", "+blocks", "MB now", "where"], rows)
    return f" traced_growth_mb_per_min={fmt(traced_total, 2)} traced_rss_growth_mb_per_min={fmt(rss_total, 2)}"


# -- main ---------------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--rps", type=float, default=20, help="total requests/s")
    parser.add_argument("--users", type=int, default=0, help="locust users (default: max(4, rps))")
    parser.add_argument("--mix", default="80,15,5", help="weights: price by spu_id, price by title, position health")
    parser.add_argument("--sweep-every", type=float, default=5, help="minutes between POST /sweep (0: none)")
    parser.add_argument("--sweep-at-start", action="store_true",
                        help="also sweep once before the load starts (position health then answers 200)")
    parser.add_argument("--sample-every", type=float, default=30, help="seconds between RSS samples")
    parser.add_argument("--warmup", type=float, default=5, help="minutes left out of rss_growth_mb_per_min")
    parser.add_argument("--slice", type=float, default=5, help="minutes per row of the report table")
    parser.add_argument("--model", default="pledgeval:latest")
    parser.add_argument("--no-build-model", action="store_true", help="fail instead of building a missing model")
    parser.add_argument("--bentoml-home", default=os.environ.get("BENTOML_HOME", str(ROOT / "var" / "bentoml")))
    parser.add_argument("--demo-dir", default=str(ROOT / "var" / "demo"))
    parser.add_argument("--ready-timeout", type=float, default=600, help="seconds to wait for /readyz")
    parser.add_argument("--out", default=None, help="JSON with every sample (default: <tmp dir>/soak.json)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tracemalloc", type=float, default=0, metavar="MINUTES",
                        help="trace the server's Python allocations; snapshot every MINUTES and report what grew")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    random.seed(args.seed)
    weights = [int(w) for w in args.mix.split(",")]
    if len(weights) != 3 or sum(weights) <= 0 or min(weights) < 0:
        raise SystemExit("--mix: three non-negative weights, e.g. 80,15,5")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    env = base_env(args.bentoml_home)
    ensure_model(args.model, env, build=not args.no_build_model)
    tmp = Path(tempfile.mkdtemp(prefix="pledgeval-soak-"))
    db_url = f"sqlite:///{tmp}/soak.db"
    load_demo_store(db_url, env)

    demo = Path(args.demo_dir)
    spus = pl.read_parquet(demo / "spus.parquet", columns=["spu_id", "title"])
    spu_ids, titles = spus["spu_id"].to_list(), spus["title"].to_list()
    position_ids = pl.read_parquet(demo / "positions.parquet", columns=["position_id"])["position_id"].to_list()

    key = "soak-" + secrets.token_hex(12)
    server_env = {**env, "PLEDGEVAL_API_KEY": key, "PLEDGEVAL_SCHEDULE": "off", "PLEDGEVAL_DB_URL": db_url,
                  "PLEDGEVAL_BUILD_DEMO": "off", "PLEDGEVAL_MODEL": args.model}
    if args.tracemalloc > 0:
        trace_dir = tmp / "memtrace"
        trace_dir.mkdir()
        server_env.update(PLEDGEVAL_MEMTRACE_DIR=str(trace_dir), PLEDGEVAL_MEMTRACE_EVERY=str(args.tracemalloc * 60),
                          PYTHONPATH=os.pathsep.join(p for p in (str(ROOT / "bench" / "memtrace"), env.get("PYTHONPATH")) if p))
    port = free_port()
    print(f"starting bentoml serve on port {port} (log {tmp / 'server.log'}) ...", flush=True)
    server = Server(port, server_env, tmp / "server.log")
    atexit.register(server.stop)

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)

    records: list[tuple] = []  # (t, name, ms, status, ok, error text)
    samples: list[dict] = []
    sweeps: list[dict] = []
    out = Path(args.out) if args.out else tmp / "soak.json"
    duration_s = args.minutes * 60
    interrupted = False
    try:
        ready_s = server.wait_ready(args.ready_timeout)
        print(f"ready in {ready_s:.0f}s; {len(spu_ids)} SPUs, {len(position_ids)} positions; "
              f"{args.rps} req/s for {args.minutes} min, mix {weights}", flush=True)
        if args.sweep_at_start:
            first: list[dict] = []
            sweeper(server.base, key, 0.0, 1e-9, time.monotonic(), first, once=True)
            print(f"sweep before the load: {first[0]['status']}", flush=True)
            sweeps.extend({**entry, "t": 0.0} for entry in first)
        users = args.users or max(4, math.ceil(args.rps))
        user_class = make_user(key, spu_ids, titles, position_ids, weights, args.rps / users)
        locust_env = Environment(user_classes=[user_class], events=events, host=server.base)
        t0, load_wall = time.monotonic(), time.time()

        def on_request(request_type, name, response_time, response_length, exception=None, response=None, **kw):
            status = getattr(response, "status_code", 0) or 0
            records.append((time.monotonic() - t0, name, float(response_time), int(status), exception is None,
                            "" if exception is None else str(exception)[:300]))
        locust_env.events.request.add_listener(on_request)

        samples.append(sample_rss(server, t0))
        print(f"[  0.0 min] worker RSS {samples[-1]['workers_mb']:.0f} MB "
              f"({sum(1 for p in samples[-1]['procs'].values() if p['worker'])} workers), "
              f"tree {samples[-1]['total_mb']:.0f} MB", flush=True)

        def sampler():
            n = 1
            while True:
                gevent.sleep(max(0.0, t0 + n * args.sample_every - time.monotonic()))
                if time.monotonic() - t0 > duration_s + 1:
                    return
                samples.append(sample_rss(server, t0))
                s = samples[-1]
                done = len(records)
                errs = sum(1 for r in records if not r[4])
                print(f"[{s['t'] / 60:5.1f} min] worker RSS {s['workers_mb']:.0f} MB, tree {s['total_mb']:.0f} MB; "
                      f"{done} requests, {errs} errors; load {s['load1']:.1f}", flush=True)
                n += 1

        runner = locust_env.create_local_runner()
        runner.start(users, spawn_rate=users)
        background = [gevent.spawn(sampler)]
        if args.sweep_every > 0:
            background.append(gevent.spawn(sweeper, server.base, key, args.sweep_every * 60, duration_s, t0, sweeps))
        gevent.spawn_later(duration_s, runner.quit)
        runner.greenlet.join()
        # one last sample at the end mark (the sampler's own may have been just before it)
        if not samples or samples[-1]["t"] < duration_s - 1:
            samples.append(sample_rss(server, t0))
        gevent.killall(background, timeout=5)
        duration_s = time.monotonic() - t0 if time.monotonic() - t0 < duration_s else duration_s
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: stopping the server", flush=True)
    finally:
        server.stop()
    if interrupted:
        raise SystemExit(130)
    if server.proc.returncode not in (None, 0, -signal.SIGTERM):
        print(f"(bentoml serve exited with {server.proc.returncode})")
    line = report(records, samples, sweeps, args, duration_s, out)
    if args.tracemalloc > 0:
        workers = sorted({pid for sample in samples for pid, p in sample["procs"].items() if p["worker"]}, key=int)
        line += memtrace_report(tmp / "memtrace", workers, load_wall + args.warmup * 60)
    print(f"server log: {tmp / 'server.log'}")
    print(line, flush=True)


if __name__ == "__main__":
    main()
