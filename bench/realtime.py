"""Real-time health: from a market update POSTed to the service to the alert a desk can read, and every alert
delivered to the webhook once it is back.

1. A synthetic book (``bench/sweep.py``'s generator, seeded): ``--positions`` over ``--spus`` SPUs with
   ``--days`` of market history, in a fresh SQLite store; one sweep of its last day, so that every
   position has a state the market alerts are de-duplicated against.
2. ``bentoml serve`` of the service (2 workers, the demo model ``pledgeval:latest`` in ``$BENTOML_HOME``),
   its webhook pointed at a receiver in this process that checks every signature and records every
   ``alert_key`` it is sent.
3. ``--updates`` observations: the next days of ``--updates / --rounds`` SPUs, one day per round, sent
   in batches of ``--batch`` by ``--clients`` concurrent clients, round after round; a tenth of the
   SPUs crash (price to a third, sales stop), the rest move a little. A failed POST (worker killed, 5xx)
   is sent again: the batch is idempotent. A poller reads ``GET /alerts?since=`` every ``--poll-ms``
   and stamps when each alert first became visible; an alert's latency is from the send of the batch
   that caused it (its observation's ``source``) to that moment.
4. Faults (both on by default; ``--receiver-down-s 0 --no-kill`` for a clean run): the receiver answers
   503 for the first ``--receiver-down-s`` seconds, and one worker is SIGKILLed when half the batches
   are sent (mid-batch: requests are in flight).
5. When the feed is drained: ``lost_alerts`` (in the outbox but never received, plus batches never
   applied), ``duplicate_alerts`` (a position alerted twice for the same action: the de-duplication
   failed), ``redelivered_alerts`` (an alert_key received twice: allowed by at-least-once, the key is
   for the receiver to drop it).

    python bench/realtime.py --positions 100000 --updates 10000
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import ROOT, BentoServer, finish_work_folder, free_port, print_table  # noqa: E402
from bench.sweep import START, synthetic_book  # noqa: E402
from data import Store  # noqa: E402
from monitoring import Monitor, apply_market_updates  # noqa: E402
from monitoring.delivery import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify  # noqa: E402

KEY = "bench-realtime-key"
SECRET = "bench-webhook-secret"
WORKER_MARK = "_bentoml_impl.worker"


class Receiver:
    """The desk's webhook: checks signatures, answers 503 while ``down_until`` is ahead, records keys."""

    def __init__(self) -> None:
        self.received: Counter = Counter()
        self.bad_signatures = 0
        self.refused = 0
        self.down_until = 0.0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if time.monotonic() < receiver.down_until:
                    with receiver.lock:
                        receiver.refused += 1
                    self.send_response(503)
                    self.end_headers()
                    return
                if not verify(SECRET, self.headers[TIMESTAMP_HEADER], body, self.headers[SIGNATURE_HEADER]):
                    with receiver.lock:
                        receiver.bad_signatures += 1
                    self.send_response(401)
                    self.end_headers()
                    return
                keys = [a["alert_key"] for a in json.loads(body)["alerts"]]
                with receiver.lock:
                    receiver.received.update(keys)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


class Poller:
    """GET /alerts?since= in a loop: when each alert was first visible, by key."""

    def __init__(self, base: str, every: float) -> None:
        self.client = httpx.Client(base_url=base, headers={"X-API-Key": KEY}, timeout=30)
        self.every, self.cursor = every, 0
        self.seen: dict[str, float] = {}
        self.alerts: dict[str, dict] = {}
        self.errors = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def skip_existing(self) -> int:
        while True:
            page = self.client.get("/alerts", params={"since": self.cursor, "limit": 1000}).json()
            self.cursor = page["cursor"]
            if not page["more"]:
                return self.cursor

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                page = self.client.get("/alerts", params={"since": self.cursor, "limit": 1000})
                page.raise_for_status()
                body = page.json()
            except httpx.HTTPError:
                self.errors += 1
                time.sleep(self.every)
                continue
            now = time.monotonic()
            for alert in body["alerts"]:
                self.seen.setdefault(alert["alert_key"], now)
                self.alerts[alert["alert_key"]] = alert
            self.cursor = body["cursor"]
            if not body["more"]:
                time.sleep(self.every)


def build_store(db: Path, args) -> tuple[pl.DataFrame, pl.DataFrame, date]:
    market, book = synthetic_book(args.positions, args.spus, args.days, args.seed)
    last = START + timedelta(days=args.days - 1)
    store = Store(f"sqlite:///{db}")
    spus = market.select("spu_id").unique().sort("spu_id")
    store.upsert("spus", spus.with_columns((pl.lit("Bench product ") + pl.col("spu_id")).alias("title")))
    store.upsert("market", market)
    store.upsert("positions", book)
    started = time.perf_counter()
    outcome = Monitor(store).run_sweep(last, market=market, positions=book)
    print(f"store: {book.height:,} positions on {spus.height:,} SPUs, {market.height:,} market rows; sweep of "
          f"{last}: {outcome.n_alerts:,} alerts in {time.perf_counter() - started:.1f} s", flush=True)
    store.close()
    return market, book, last


def update_rounds(market: pl.DataFrame, last: date, args) -> list[list[dict]]:
    """``--rounds`` days after ``last``, the observations of each; every day the same SPUs move."""
    rng = np.random.default_rng(args.seed + 1)
    latest = market.sort("date").group_by("spu_id").agg(pl.col("price").last(), pl.col("units_sold").mean())
    chosen = latest.sample(min(args.updates // args.rounds, latest.height), seed=args.seed)
    crash = rng.random(chosen.height) < 0.1
    rounds = []
    for r in range(1, args.rounds + 1):
        day = (last + timedelta(days=r)).isoformat()
        drift = np.exp(rng.normal(0, 0.02, chosen.height))
        price = np.where(crash, chosen["price"].to_numpy() / 3, chosen["price"].to_numpy() * drift)
        units = np.where(crash, 0, rng.poisson(np.maximum(chosen["units_sold"].to_numpy(), 0.2)))
        rounds.append([{"spu_id": s, "date": day, "price": round(float(p), 2), "units": int(u)}
                       for s, p, u in zip(chosen["spu_id"], price, units)])
    return rounds


def in_batches(items: list[dict], size: int, first: int) -> list[list[dict]]:
    """Batches of ``size``, each observation's source naming its batch (numbered from ``first``)."""
    batches = [items[i:i + size] for i in range(0, len(items), size)]
    for k, batch in enumerate(batches, start=first):
        for item in batch:
            item["source"] = f"bench-{k}"
    return batches


def duplicate_alerts(market_alerts: pl.DataFrame, events: pl.DataFrame, swept: pl.DataFrame) -> int:
    """Market alerts whose position already stood at that action or worse just before (its previous health
    record, in the order records were written): the de-duplication missed them."""
    from monitoring.health import ACTION_RANK

    records = (events.select("seq", "event_id", "position_id", "action")
               .join(swept, on="position_id", how="left")
               .with_columns(pl.col("action").shift(1).over("position_id", order_by="seq")
                             .fill_null(pl.col("_swept")).fill_null("ok").alias("before")))
    checked = market_alerts.select(pl.col("source_id").alias("event_id"), "position_id", "action").join(
        records.select("event_id", "position_id", "before"), on=["event_id", "position_id"], how="left")
    rank = {k: v for k, v in ACTION_RANK.items()}
    return int(checked.filter(pl.col("before").replace_strict(rank, return_dtype=pl.Int8)
                              >= pl.col("action").replace_strict(rank, return_dtype=pl.Int8)).height)


def kill_busiest_worker(server: BentoServer, sent_at: dict, after: int, killed: list) -> None:
    import psutil

    while len(sent_at) <= after:
        time.sleep(0.01)
    workers = [psutil.Process(pid) for pid in worker_pids(server)]
    for worker in workers:
        worker.cpu_percent(None)
    time.sleep(0.1)
    busiest = max(workers, key=lambda w: w.cpu_percent(None))
    busiest.send_signal(signal.SIGKILL)
    killed.append(busiest.pid)


def worker_pids(server: BentoServer) -> list[int]:
    import psutil

    try:
        children = psutil.Process(server.proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    pids = []
    for child in children:
        try:
            if WORKER_MARK in " ".join(child.cmdline()):
                pids.append(child.pid)
        except psutil.Error:
            pass
    return pids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--positions", type=int, default=100_000)
    parser.add_argument("--spus", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=90, help="days of market history per SPU")
    parser.add_argument("--updates", type=int, default=10_000, help="market observations sent")
    parser.add_argument("--rounds", type=int, default=5, help="days of updates (updates / rounds SPUs each day)")
    parser.add_argument("--paced-rate", type=float, default=1000.0,
                        help="observations/s of the first day's feed, sent on a clock: the latency phase")
    parser.add_argument("--paced-batch", type=int, default=100)
    parser.add_argument("--batch", type=int, default=1000, help="observations per POST in the throughput phase")
    parser.add_argument("--clients", type=int, default=4, help="concurrent POSTs in the throughput phase")
    parser.add_argument("--poll-ms", type=float, default=50.0)
    parser.add_argument("--receiver-down-s", type=float, default=30.0, help="the webhook refuses everything this long")
    parser.add_argument("--no-kill", action="store_true", help="do not SIGKILL a worker half way")
    parser.add_argument("--drain-s", type=float, default=180.0, help="how long to wait for every alert to arrive")
    parser.add_argument("--model", default="pledgeval:latest")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the working folder (store, server log); it is "
                        "kept anyway when an alert was lost or duplicated")
    args = parser.parse_args()
    os.environ.setdefault("BENTOML_HOME", str(ROOT / "var" / "bentoml"))

    work = Path(tempfile.mkdtemp(prefix="bench-realtime-"))
    market, book, last = build_store(work / "realtime.db", args)
    rounds = update_rounds(market, last, args)
    paced = in_batches(rounds[0], args.paced_batch, 0)
    loaded = in_batches([item for day in rounds[1:] for item in day], args.batch, len(paced))
    batches = paced + loaded
    inprocess = in_process_rate(work, rounds, args)
    receiver = Receiver()
    env = {**os.environ, "PLEDGEVAL_API_KEY": KEY, "PLEDGEVAL_SCHEDULE": "off", "PLEDGEVAL_MODEL": args.model,
           "PLEDGEVAL_DB_URL": f"sqlite:///{work / 'realtime.db'}", "OMP_NUM_THREADS": "1",
           "BENTOML_DO_NOT_TRACK": "True", "PLEDGEVAL_BUILD_DEMO": "off", "PLEDGEVAL_WEBHOOK_URL": receiver.url,
           "PLEDGEVAL_WEBHOOK_SECRET": SECRET}
    server = BentoServer("serving.service:PledgeService", free_port(), env, work / "server.log")
    sent_at: dict[int, float] = {}
    answered: dict[int, dict] = {}
    retries: Counter = Counter()
    killed: list[int] = []
    try:
        print(f"service ready in {server.wait_ready(300):.0f} s (log {work / 'server.log'})", flush=True)
        poller = Poller(server.base, args.poll_ms / 1000)
        started = time.monotonic()
        sweep_alerts = poller.skip_existing()
        while len(receiver.received) < sweep_alerts and time.monotonic() - started < args.drain_s:
            time.sleep(0.5)  # the sweep's alerts reach the webhook before anything is timed
        sweep_drain_s = time.monotonic() - started
        print(f"the sweep's {sweep_alerts:,} alerts delivered in {sweep_drain_s:.1f} s", flush=True)
        poller.thread.start()
        kill_after = None if args.no_kill else len(paced) + len(loaded) // 2

        def send(k: int) -> None:
            with httpx.Client(base_url=server.base, headers={"X-API-Key": KEY}, timeout=120) as client:
                sent_at[k] = time.monotonic()
                while retries[k] <= 50:
                    try:
                        response = client.post("/market", json={"observations": batches[k]})
                        if response.status_code == 200:
                            answered[k] = response.json()
                            return
                    except httpx.HTTPError:
                        pass
                    retries[k] += 1
                    time.sleep(0.5)

        # 1. latency: the first day's feed on a clock, at a rate the service keeps up with
        receiver.down_until = time.monotonic() + args.receiver_down_s
        interval = args.paced_batch / args.paced_rate
        clock = time.monotonic()
        with ThreadPoolExecutor(args.clients) as pool:
            for k in range(len(paced)):
                time.sleep(max(0.0, clock + k * interval - time.monotonic()))
                pool.submit(send, k)
        paced_s = time.monotonic() - clock
        # 2. throughput: the other days as fast as the clients can send them; half way, the worker that is
        # busiest (scoring a batch) is killed, with every client's request in flight
        clock = time.monotonic()
        killer = threading.Thread(target=kill_busiest_worker, args=(server, sent_at, kill_after, killed), daemon=True)
        if kill_after is not None:
            killer.start()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(send, range(len(paced), len(batches))))
        ingest_s = time.monotonic() - clock

        deadline = time.monotonic() + args.drain_s  # drained: every alert polled and received
        while time.monotonic() < deadline:
            page = poller.client.get("/alerts", params={"since": poller.cursor}).json()
            if not page["alerts"] and all(k in receiver.received for k in poller.alerts):
                break
            time.sleep(0.5)
        poller.stop.set()
        poller.thread.join(10)
    finally:
        server.stop()
        receiver.server.shutdown()

    store = Store(f"sqlite:///{work / 'realtime.db'}")
    outbox = store.read("alert_outbox")
    events = store.read("health_events").sort("seq")
    swept = store.read("sweep_results").select("position_id", pl.col("action").alias("_swept"))
    stored_market = store.read("market").filter(pl.col("date") > last).height
    store.close()
    market_alerts = outbox.filter(pl.col("trigger") == "market")
    never_received = outbox.filter(~pl.col("alert_key").is_in(list(receiver.received))).height
    never_applied = len(batches) - len(answered)
    duplicates = duplicate_alerts(market_alerts, events, swept)
    redelivered = sum(n - 1 for n in receiver.received.values() if n > 1)
    finish_work_folder(work, args.keep or never_received + never_applied + duplicates > 0)

    def latency(batch_ids: range) -> np.ndarray:
        wanted = {f"bench-{k}" for k in batch_ids}
        found = []
        for row in market_alerts.iter_rows(named=True):
            source = json.loads(row["observation"])[0]["source"]
            seen = poller.seen.get(row["alert_key"])
            if seen is not None and source in wanted:
                found.append((seen - sent_at[int(source.split("-")[1])]) * 1000)
        return np.array(found) if found else np.array([np.nan])

    paced_lat, loaded_lat = latency(range(len(paced))), latency(range(len(paced), len(batches)))
    n_obs, n_loaded = sum(len(b) for b in batches), sum(len(b) for b in loaded)
    rescored = sum(a["positions_rescored"] for a in answered.values())
    applied = sum(a["applied"] for a in answered.values())
    rate = n_loaded / ingest_s

    def pct(values: np.ndarray, q: float) -> float:
        return float(np.nanpercentile(values, q))

    print_table("market updates through the service (SQLite store, 2 workers)", ["measure", "value"], [
        ["book", f"{args.positions:,} positions on {args.spus:,} SPUs, {args.days} days of history"],
        ["observations sent / applied / stored", f"{n_obs:,} / {applied:,} / {stored_market:,}"],
        ["positions re-scored", f"{rescored:,}"],
        ["latency phase", f"{sum(len(b) for b in paced):,} obs at {args.paced_rate:.0f}/s in "
                          f"batches of {args.paced_batch} ({paced_s:.1f} s)"],
        ["  POST to alert visible p50 / p99", f"{pct(paced_lat, 50):.0f} / {pct(paced_lat, 99):.0f} ms "
                                             f"({np.isfinite(paced_lat).sum()} alerts)"],
        ["throughput phase", f"{n_loaded:,} obs in batches of {args.batch}, {args.clients} clients ({ingest_s:.1f} s)"],
        ["  observations/s through the service", f"{rate:,.0f}"],
        ["  same batches in process, one thread", f"{inprocess:,.0f} (ratio {rate / inprocess:.2f})"],
        ["  POST to alert visible p50 / p99", f"{pct(loaded_lat, 50):.0f} / {pct(loaded_lat, 99):.0f} ms (queued)"],
        ["market alerts / all alerts", f"{market_alerts.height:,} / {outbox.height:,} (the sweep's: {sweep_alerts:,}, "
                                       f"delivered in {sweep_drain_s:.0f} s)"],
        ["webhook down at start", f"{args.receiver_down_s:.0f} s ({receiver.refused} deliveries refused)"],
        ["worker killed mid-run", f"pid {killed[0]}" if killed else "no"],
        ["POSTs sent again after a failure", f"{sum(retries.values())}"],
        ["lost / duplicate / redelivered alerts", f"{never_received + never_applied} / {duplicates} / {redelivered}"],
        ["bad signatures at the receiver", f"{receiver.bad_signatures}"],
    ])
    print(f"update_to_alert_p50_ms={pct(paced_lat, 50):.1f} update_to_alert_p99_ms={pct(paced_lat, 99):.1f} "
          f"observations_per_s={rate:.0f} lost_alerts={never_received + never_applied} duplicate_alerts={duplicates} "
          f"redelivered_alerts={redelivered} inprocess_observations_per_s={inprocess:.0f} "
          f"service_over_inprocess={rate / inprocess:.2f} loaded_update_to_alert_p99_ms={pct(loaded_lat, 99):.1f} "
          f"market_alerts={market_alerts.height} positions_rescored={rescored} receiver_down_s={args.receiver_down_s:.0f} "
          f"worker_killed={int(bool(killed))} post_retries={sum(retries.values())} positions={args.positions} "
          f"spus={args.spus} updates={n_obs} paced_rate={args.paced_rate:.0f} batch={args.batch} clients={args.clients}")


def in_process_rate(work: Path, rounds: list[list[dict]], args) -> float:
    """Observations/s of the throughput phase's batches applied in this process on a copy of the store,
    one after another: what the service is compared with."""
    import shutil

    from monitoring.jobs import monitor_for

    copy = work / "inprocess.db"
    shutil.copy(work / "realtime.db", copy)
    store = Store(f"sqlite:///{copy}")
    monitor = monitor_for(store, args.model)  # the served model: its early warning and values, as the service
    items = [dict(item) for day in rounds[1:] for item in day]
    batches = [items[i:i + args.batch] for i in range(0, len(items), args.batch)]
    started = time.perf_counter()
    for batch in batches:
        apply_market_updates(monitor, batch)
    rate = len(items) / (time.perf_counter() - started)
    store.close()
    for path in work.glob("inprocess.db*"):
        path.unlink()
    print(f"in process: {rate:,.0f} observations/s", flush=True)
    return rate


if __name__ == "__main__":
    main()
