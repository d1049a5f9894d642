"""Load on the HTTP service against its floor, measured in the same run.

The floor (bench/floor_service.py) is the service's /price route doing no work: same BentoML settings,
same input validation, same middlewares, a constant real answer of the same size. Both run as
`bentoml serve` on free ports (ours with the model in the store, default pledgeval:latest: `make serve`
or `pledgeval train` first) and a store holding the demo book, swept once so position health answers.

Loads, each run against ours and the floor where both apply:
- closed loop: ``--concurrency`` clients send /price by a known spu_id back to back; the most requests
  per second each sustains (``rps_over_floor`` = ours / floor);
- open loop: Poisson arrivals at ``--rate`` requests/s, latency counted from each request's scheduled
  send time (a slow answer delays nothing, so no coordinated omission): p50/p99 of each;
- /price by title of a new SPU, closed loop at ``--concurrency``, and the items per encoder call (the
  service's batcher, read from /metrics);
- a desk-shaped open-loop mix at ``--rate``: 80% known SPU, 15% new SPU by title, 5% position health.

    python bench/serving.py --seconds 20 --concurrency 8
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench._common import BentoServer, finish_work_folder, free_port, print_table  # noqa: E402

KEY = "bench-key"


def quantity() -> int:
    return int(np.exp(random.uniform(0, np.log(5000))))
HEADERS = {"X-API-Key": KEY, "Content-Type": "application/json"}


def call(port: int, method: str, path: str, body: dict | None = None, timeout: float = 120) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=json.dumps(body) if body is not None else None, headers=HEADERS)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def closed_loop(port: int, make_request, seconds: float, concurrency: int) -> dict:
    """``concurrency`` clients, each sending its next request when the last one is answered. The standard
    library's client: the load generator shares the cores with the servers, so it should cost little."""
    latencies, errors, stop = [], [0], time.monotonic() + seconds

    def client():
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while time.monotonic() < stop:
            method, path, body = make_request()
            t = time.perf_counter()
            connection.request(method, path, body=json.dumps(body) if body is not None else None, headers=HEADERS)
            response = connection.getresponse()
            response.read()
            latencies.append((time.perf_counter() - t) * 1000)
            errors[0] += response.status != 200
        connection.close()

    started = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    return summary(latencies, errors[0], time.monotonic() - started)


def open_loop(port: int, make_request, seconds: float, rate: float, seed: int = 0) -> dict:
    """Poisson arrivals at ``rate``/s for ``seconds``; each latency runs from the scheduled send time."""
    import aiohttp

    rng = np.random.default_rng(seed)
    schedule = np.cumsum(rng.exponential(1 / rate, size=int(rate * seconds * 1.5) + 10))
    schedule = schedule[schedule < seconds]
    requests = [make_request() for _ in schedule]
    latencies, errors = [], [0]

    async def run():
        connector = aiohttp.TCPConnector(limit=0)  # an open loop never waits for a free connection
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", connector=connector, headers=HEADERS,
                                         timeout=aiohttp.ClientTimeout(total=120)) as session:
            loop = asyncio.get_running_loop()
            start = loop.time()

            async def one(at: float, method: str, path: str, body: dict | None):
                await asyncio.sleep(max(0.0, start + at - loop.time()))
                try:
                    async with session.request(method, path, data=json.dumps(body) if body is not None else None) as r:
                        await r.read()
                        errors[0] += r.status != 200
                except aiohttp.ClientError:
                    errors[0] += 1
                latencies.append((loop.time() - start - at) * 1000)

            await asyncio.gather(*(one(at, *request) for at, request in zip(schedule.tolist(), requests)))
            return loop.time() - start

    elapsed = asyncio.run(run())
    return summary(latencies, errors[0], elapsed)


def summary(latencies: list[float], errors: int, elapsed: float) -> dict:
    p50, p99 = np.percentile(latencies, [50, 99]) if latencies else (float("nan"), float("nan"))
    return {"p50": float(p50), "p99": float(p99), "rps": len(latencies) / elapsed, "n": len(latencies),
            "errors": errors}


def batch_counts(port: int) -> dict[str, float]:
    """The service's histogram of items per encoder-path pricing call (serving.batching), from /metrics:
    ``sum``, ``count`` and the cumulative count per bucket bound (``le=...``)."""
    status, body = call(port, "GET", "/metrics")
    if status != 200:
        return {}
    counts = {}
    for line in body.decode().splitlines():
        if line.startswith("pledgeval_price_batch_items_"):
            name, value = line.rsplit(" ", 1)
            key = name.split("{")[0].removeprefix("pledgeval_price_batch_items_")
            if key == "bucket":
                key = "le=" + name.split('le="')[1].split('"')[0]
            counts[key] = counts.get(key, 0.0) + float(value)  # one series per worker
    return counts


def _name_value(text: str) -> str:
    if "=" not in text or not text.split("=", 1)[0]:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20, help="per closed-loop phase, and per open-loop phase")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rate", type=float, default=100, help="open-loop arrivals per second")
    parser.add_argument("--model", default="pledgeval:latest")
    parser.add_argument("--service-env", action="append", default=[], metavar="NAME=VALUE", type=_name_value,
                        help="environment of both servers, e.g. PLEDGEVAL_ACCESS_LOG=off (repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep the working folder (store, server logs); "
                        "it is kept anyway when a request failed")
    args = parser.parse_args()
    os.environ.setdefault("BENTOML_HOME", str(ROOT / "var" / "bentoml"))

    import polars as pl

    from valuation.model import PledgeModel

    model = PledgeModel.load_from_store(args.model)
    spu_ids, titles = model.catalog.spu_ids, model.side["title"].to_list()
    inproc = {}
    for kind, item in (("spu_id", lambda: {"spu_id": random.choice(spu_ids), "quantity": 10}),
                       ("title", lambda: {"spu_id": "NEW", "title": random.choice(titles) + " v2", "quantity": 10})):
        times = []
        for _ in range(200):
            request = item()
            t = time.perf_counter()
            model.price_rows([request])
            times.append((time.perf_counter() - t) * 1000)
        inproc[kind] = float(np.percentile(times, 50))
    del model

    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    env = {**os.environ, "PLEDGEVAL_API_KEY": KEY, "PLEDGEVAL_SCHEDULE": "off", "PLEDGEVAL_MODEL": args.model,
           "PLEDGEVAL_DB_URL": f"sqlite:///{work}/bench.db", "OMP_NUM_THREADS": "1", "BENTOML_DO_NOT_TRACK": "True",
           "PLEDGEVAL_BUILD_DEMO": "off", **dict(pair.split("=", 1) for pair in args.service_env)}
    demo = Path(env.get("PLEDGEVAL_DEMO_DIR", ROOT / "var" / "demo"))
    subprocess.run([str(Path(sys.executable).parent / "pledgeval"), "demo", "--no-train", "--db", env["PLEDGEVAL_DB_URL"]],
                   cwd=ROOT, env=env, check=True, capture_output=True)
    position_ids = pl.read_parquet(demo / "positions.parquet", columns=["position_id"])["position_id"].to_list()

    ours = BentoServer("serving.service:PledgeService", free_port(), env, work / "ours.log")
    floor = None
    try:
        ours.wait_ready(300)
        status, body = call(ours.port, "POST", "/price", {"items": [{"spu_id": spu_ids[0], "quantity": 10}]})
        assert status == 200, body
        (work / "answer.json").write_bytes(json.dumps(json.loads(body)[0]).encode())
        # its own BENTOML_HOME: a server starting empties the Prometheus folder under it, ours' /metrics included
        floor = BentoServer("bench.floor_service:FloorService", free_port(),
                            {**env, "PLEDGEVAL_FLOOR_ANSWER": str(work / "answer.json"),
                             "BENTOML_HOME": str(work / "floor-home")}, work / "floor.log")
        floor.wait_ready(300)
        status, body = call(ours.port, "POST", "/sweep", {})
        sweep = json.loads(body)["sweep_id"]
        while json.loads(call(ours.port, "GET", f"/sweeps/{sweep}")[1]).get("status") not in ("completed", "failed"):
            time.sleep(1)

        def known():  # quantities spread like a desk's (1 to 5,000, log-uniform): the haircut depends on them
            return "POST", "/price", {"items": [{"spu_id": random.choice(spu_ids), "quantity": quantity()}]}

        def by_title():
            return "POST", "/price", {"items": [{"spu_id": f"NEW-{random.randrange(10**6)}",
                                                 "title": random.choice(titles) + " v2", "quantity": quantity()}]}

        def mixed():
            roll = random.random()
            if roll < 0.80:
                return known()
            if roll < 0.95:
                return by_title()
            return "GET", f"/positions/{random.choice(position_ids)}/health", None

        for server in (ours, floor):  # warm both: first requests pay imports and caches
            closed_loop(server.port, known, 2, args.concurrency)
        figures = {
            "floor_closed": closed_loop(floor.port, known, args.seconds, args.concurrency),
            "closed": closed_loop(ours.port, known, args.seconds, args.concurrency),
            "floor_open": open_loop(floor.port, known, args.seconds, args.rate),
            "open": open_loop(ours.port, known, args.seconds, args.rate),
        }
        before = batch_counts(ours.port)
        figures["title"] = closed_loop(ours.port, by_title, args.seconds, args.concurrency)
        after = batch_counts(ours.port)
        batches = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
        figures["mixed"] = open_loop(ours.port, mixed, args.seconds, args.rate, seed=1)
    finally:
        ours.stop()
        if floor is not None:
            floor.stop()

    rows = [[name, f"{f['p50']:.1f}", f"{f['p99']:.1f}", f"{f['rps']:.0f}", str(f["n"]), str(f["errors"])]
            for name, f in (("floor, closed loop", figures["floor_closed"]), ("/price known, closed loop", figures["closed"]),
                            (f"floor, open loop {args.rate:.0f}/s", figures["floor_open"]),
                            (f"/price known, open loop {args.rate:.0f}/s", figures["open"]),
                            ("/price new by title, closed loop", figures["title"]),
                            (f"desk mix 80/15/5, open loop {args.rate:.0f}/s", figures["mixed"]))]
    print_table(f"HTTP on loopback, 2 cores shared with the load generator; closed loops at concurrency "
                f"{args.concurrency}, {args.seconds:.0f}s each; {' '.join(args.service_env) or 'default settings'}", ["load", "p50 ms", "p99 ms", "req/s", "requests",
                                                                  "errors"], rows)
    n_batches = batches.get("count", 0.0)
    mean_batch = batches["sum"] / n_batches if n_batches else float("nan")
    spread = ", ".join(f"<= {k[3:]}: {v:.0f}" for k, v in batches.items() if k.startswith("le=") and v)
    print(f"\nin process p50: known {inproc['spu_id']:.2f} ms, new by title {inproc['title']:.2f} ms; "
          f"encoder-path calls under the title load: {n_batches:.0f}, mean items {mean_batch:.2f} "
          f"(cumulative by size: {spread or 'none'})")
    c, fc, o, fo = figures["closed"], figures["floor_closed"], figures["open"], figures["floor_open"]
    errors = sum(f["errors"] for f in figures.values())
    finish_work_folder(work, args.keep or errors > 0)
    print(f"p50_ms={c['p50']:.1f} p99_ms={c['p99']:.1f} rps={c['rps']:.0f} floor_rps={fc['rps']:.0f} "
          f"rps_over_floor={c['rps'] / fc['rps']:.2f} fixed_rate_p50_ms={o['p50']:.1f} fixed_rate_p99_ms={o['p99']:.1f} "
          f"floor_fixed_rate_p99_ms={fo['p99']:.1f} p99_over_floor={o['p99'] / fo['p99']:.2f} "
          f"title_p50_ms={figures['title']['p50']:.1f} title_p99_ms={figures['title']['p99']:.1f} "
          f"title_rps={figures['title']['rps']:.0f} mean_batch={mean_batch:.2f} mixed_p99_ms={figures['mixed']['p99']:.1f} "
          f"inproc_known_ms={inproc['spu_id']:.2f} inproc_title_ms={inproc['title']:.2f} errors={errors}")


if __name__ == "__main__":
    main()
