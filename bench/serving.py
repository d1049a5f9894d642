"""Load on the HTTP service: /price by spu_id and by title at a fixed concurrency, on loopback.

Starts `bentoml serve` on a free port with the model in the store (default pledgeval:latest; train one
with `make serve` or `pledgeval train` first), then compares with the same call in-process.

    python bench/serving.py --seconds 20 --concurrency 8
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench._common import print_table  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--model", default="pledgeval:latest")
    args = parser.parse_args()
    os.environ.setdefault("BENTOML_HOME", str(ROOT / "var" / "bentoml"))

    from valuation.model import PledgeModel
    model = PledgeModel.load_from_store(args.model)
    spu_ids = model.catalog.spu_ids
    titles = model.side["title"].to_list()

    def payload(kind: str) -> dict:
        if kind == "spu_id":
            return {"items": [{"spu_id": random.choice(spu_ids), "quantity": 10}]}
        return {"items": [{"spu_id": "NEW", "title": random.choice(titles) + " v2", "quantity": 10}]}

    inproc = {}
    for kind in ("spu_id", "title"):
        times = []
        for _ in range(200):
            item = payload(kind)["items"][0]
            t = time.perf_counter()
            model.price([item])
            times.append((time.perf_counter() - t) * 1000)
        inproc[kind] = float(np.percentile(times, 50))

    port, key = free_port(), "bench-key"
    env = {**os.environ, "PLEDGEVAL_API_KEY": key, "PLEDGEVAL_SCHEDULE": "off", "PLEDGEVAL_MODEL": args.model}
    server = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "serving.service:PledgeService", "--port",
                               str(port)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                              start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            raise SystemExit("server did not start")
        rows, figures = [], {}
        for kind in ("spu_id", "title"):
            latencies, errors = [], [0]
            stop = time.monotonic() + args.seconds / 2

            def worker():
                # the standard library's client: the load generator shares the two cores with the server,
                # so it should cost as little as possible
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                headers = {"X-API-Key": key, "Content-Type": "application/json"}
                while time.monotonic() < stop:
                    body = json.dumps(payload(kind))
                    t = time.perf_counter()
                    connection.request("POST", "/price", body=body, headers=headers)
                    response = connection.getresponse()
                    response.read()
                    latencies.append((time.perf_counter() - t) * 1000)
                    if response.status != 200:
                        errors[0] += 1
                connection.close()

            started = time.monotonic()
            threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
            [t.start() for t in threads]
            [t.join() for t in threads]
            elapsed = time.monotonic() - started
            p50, p99 = np.percentile(latencies, [50, 99])
            rps = len(latencies) / elapsed
            figures[kind] = (p50, p99, rps, errors[0])
            rows.append([f"/price by {kind}", f"{p50:.1f}", f"{p99:.1f}", f"{rps:.0f}", str(errors[0]),
                         f"{inproc[kind]:.2f}", f"{p50 / inproc[kind]:.1f}x"])
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    print_table(f"HTTP load: concurrency {args.concurrency}, {args.seconds:.0f}s in all, loopback",
                ["route", "p50 ms", "p99 ms", "req/s", "errors", "in-process p50 ms", "HTTP / in-process"], rows)
    p50, p99, rps, errors = figures["spu_id"]
    t50, t99, trps, terrors = figures["title"]
    print(f"p50_ms={p50:.1f} p99_ms={p99:.1f} rps={rps:.0f} errors={errors + terrors} "
          f"http_overhead_ratio={p50 / inproc['spu_id']:.1f} title_p50_ms={t50:.1f} title_p99_ms={t99:.1f} "
          f"title_rps={trps:.0f}")


if __name__ == "__main__":
    main()
