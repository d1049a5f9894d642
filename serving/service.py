"""The BentoML service desks call: pledge prices, admission, similar SPUs, position health, sweeps.

The model is loaded once at start-up from the BentoML model store (``PLEDGEVAL_MODEL``, default
``pledgeval:latest``); with an empty store the demo model is built first. The service holds no
business logic: valuation, embeddings and monitoring do the work.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from datetime import date, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Annotated

import bentoml
import numpy as np
import polars as pl
from bentoml.exceptions import BentoMLException
from pydantic import Field

from serving.auth import ApiKeyMiddleware, api_key
from serving.batching import PriceBatcher
from serving.config import service_config
from serving.errors import ErrorShapeMiddleware, quiet_client_errors
from serving.metrics import install as count_requests_by_route
from serving.routes import SERVICE_STATE, MountRootPaths, alerts_app, catalog_app, desk_app, positions_app, reports_app, sweeps_app
from serving.schemas import MAX_BATCH, MarketObservation, PriceItem, SpuQuery, status_of
from valuation.policy import currency_of

log = logging.getLogger("pledgeval")
WORST_SHOWN = 200  # positions the book view lists, the largest amount at risk first
INLINE_BATCH = 16  # known-SPU requests up to this size are answered on the event loop
DEMO_DIR = Path(os.environ.get("PLEDGEVAL_DEMO_DIR", "var/demo"))


def _load_model():
    """The served model; with an empty store the demo one is built first (one worker builds while the
    others wait on a file lock, then all load it), unless PLEDGEVAL_BUILD_DEMO=off."""
    from monitoring.jobs import demo_model
    from valuation.pipeline import MODEL_TAG, resolve_model

    try:
        return resolve_model(MODEL_TAG)
    except LookupError:
        if os.environ.get("PLEDGEVAL_BUILD_DEMO", "on") == "off":
            where = os.environ.get("BENTOML_HOME", "~/bentoml")
            raise RuntimeError(f"no model {MODEL_TAG} in the BentoML store ({where}); train one with "
                               "`pledgeval train` or allow the demo build (PLEDGEVAL_BUILD_DEMO=on)") from None
    from filelock import FileLock

    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    with FileLock(str(DEMO_DIR / ".build.lock")):
        log.warning("no model %s in the BentoML store: building the demo model if no other worker has", MODEL_TAG)
        return demo_model(DEMO_DIR, log=None)


def _as_sent(error: str) -> str:
    """An item's error naming the request's field: the model's ``images`` is ``image_base64`` here."""
    return "image_base64: " + error.removeprefix("images: ") if error.startswith("images: ") else error


def _image_by_url(row: dict) -> dict:
    """A catalogue SPU's row with its image as the URL that serves it, never its path on this machine."""
    row["image_url"] = f"/catalog/{row['spu_id']}/image" if row.pop("image", None) else None
    return row


def _since(since: str | None) -> tuple[int, datetime | None]:
    """(cursor, created after) of a ``since`` parameter: an alert's or change's seq, or an ISO timestamp;
    nothing starts at the beginning."""
    if not since:
        return 0, None
    if re.fullmatch(r"-?[0-9]+", since):  # ASCII digits: str.isdigit() also takes "²"
        if not 0 <= int(since) < 2**63:
            raise BentoMLException("since: a cursor is an integer from 0 to 2**63 - 1",
                                   error_code=HTTPStatus.UNPROCESSABLE_ENTITY)
        return int(since), None
    try:
        moment = datetime.fromisoformat(since)
        # the store's times are this server's local time: a timestamp with an offset is converted to it
        return 0, (moment.astimezone() if moment.tzinfo else moment).replace(tzinfo=None)
    except ValueError:
        raise BentoMLException(f"since: neither a cursor (an integer) nor an ISO timestamp: {since!r}",
                               error_code=HTTPStatus.UNPROCESSABLE_ENTITY) from None


def _limit(limit: str | None) -> int:
    try:
        value = int(limit) if limit else 500
    except ValueError:
        value = 0
    if not 1 <= value <= 1000:
        raise BentoMLException(f"limit: must be 1..1000, got {limit!r}", error_code=HTTPStatus.UNPROCESSABLE_ENTITY)
    return value


def _json_rows(frame: pl.DataFrame) -> list[dict]:
    return json.loads(frame.write_json())  # dates, NaN and nested lists as JSON sees them


def _with_reason_text(rows: list[dict]) -> list[dict]:
    """Each row's reason codes also as sentences (``reason_text``), from monitoring.reasons' one table."""
    from monitoring.reasons import reason_texts

    for row in rows:
        codes = row.get("reasons")
        row["reason_text"] = reason_texts(json.loads(codes) if isinstance(codes, str) else codes)
    return rows


@bentoml.service(**service_config())
@bentoml.asgi_app(positions_app, path="/positions")
@bentoml.asgi_app(sweeps_app, path="/sweeps")
@bentoml.asgi_app(catalog_app, path="/catalog")
@bentoml.asgi_app(reports_app, path="/reports")
@bentoml.asgi_app(desk_app, path="/desk")
@bentoml.asgi_app(alerts_app, path="/alerts")
class PledgeService:
    def __init__(self) -> None:
        from data import Store
        from monitoring import Monitor, load_config
        from valuation.pipeline import value_function

        if api_key() is None:
            log.warning("PLEDGEVAL_API_KEY is not set: no key is asked for, and the service binds to "
                        "127.0.0.1 only")
        quiet_client_errors()
        self.model = _load_model()
        self._one_thread_per_request()
        self.model.warm_up()  # value every known SPU and build the match indexes now, not on the first request
        self._batcher = PriceBatcher(self._answers, max_items=int(os.environ.get("PLEDGEVAL_BATCH_ITEMS", "64")))
        self.store = Store()
        self.monitor_config = load_config(os.environ.get("PLEDGEVAL_MONITOR_CONFIG"))
        self.monitor = Monitor(self.store, self.monitor_config, value_function(self.model), warning=self.model.warning)
        self.delivery = self._alert_delivery()
        self._completed_sweeps: dict[str, dict] = {}  # GET /sweeps/{id} of completed sweeps, the latest few
        SERVICE_STATE["service"] = self
        if os.environ.get("PLEDGEVAL_SCHEDULE", "on") != "off":
            threading.Thread(target=self._scheduler, name="sweep-scheduler", daemon=True).start()

    def _alert_delivery(self):
        """Every worker sends the outbox to the webhook of monitor.toml's [alerts], if one is set; claims in
        the store keep the workers off each other's alerts."""
        from monitoring.delivery import AlertDelivery, WebhookConfig

        webhook = WebhookConfig.from_config(self.monitor_config)
        if webhook is None:
            return None
        delivery = AlertDelivery(self.monitor.log, webhook)
        threading.Thread(target=delivery.run, args=(threading.Event(),), name="alert-delivery", daemon=True).start()
        log.info("alerts are delivered to %s", webhook.url)
        return delivery

    @staticmethod
    def _one_thread_per_request() -> None:
        """Requests run in parallel threads; libraries that each start their own threads on top would
        oversubscribe the cores and make every request slower. scikit-learn's tree ensembles use OpenMP: on
        a one-SPU request two threads per tree made the learned haircut's explanation 15% slower, not faster."""
        import faiss
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(int(os.environ.get("PLEDGEVAL_TORCH_THREADS", "1")))
        faiss.omp_set_num_threads(1)
        threadpool_limits(limits=1, user_api="openmp")

    # -- pricing ------------------------------------------------------------------------------
    @bentoml.api(route="/price")
    async def price(self, items: list[PriceItem]) -> list[dict]:
        """Value, interval, haircut parts, pledge price, decision, reasons and comparables per item.
        A bad item is answered with its error; if every item is bad, the status says why."""
        return await self._priced(items)

    async def _priced(self, items: list[PriceItem]) -> list[dict]:
        if not items:
            raise BentoMLException("items: empty", error_code=HTTPStatus.UNPROCESSABLE_ENTITY)
        if len(items) > MAX_BATCH:
            raise BentoMLException(f"items: {len(items)} in one request; at most {MAX_BATCH}",
                                   error_code=HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        # A known SPU's valuation is cached: answering it on the event loop (0.2 to 1 ms) is cheaper than
        # the hop to a worker thread. Anything to embed goes through the batcher, which prices concurrent
        # requests in one call on a thread (photos decoded there too), so the loop is never held up.
        if len(items) <= INLINE_BATCH and all(item.spu_id in self.model.known_spu_ids and not item.image_base64
                                              for item in items):
            answers = self._answers(items)
        else:
            answers = await self._batcher(items)
        errors = [a["error"] for a in answers if a["error"]]
        if len(errors) == len(answers):
            raise BentoMLException("; ".join(_as_sent(e) for e in errors), error_code=status_of(errors[0]))
        for answer in answers:
            answer["error"] = answer["error"] and _as_sent(answer["error"])
            for comparable in answer["comparables"] or []:
                _image_by_url(comparable)
        return answers

    def _answers(self, items: list[PriceItem]) -> list[dict]:
        return self.model.price_rows([item.request() for item in items])

    @bentoml.api(route="/admit")
    async def admit(self, items: list[PriceItem]) -> list[dict]:
        """Admission only: accept / review / reject with reasons and the pledge price behind it."""
        keep = ("spu_id", "decision", "reasons", "pledge_unit_price", "haircut", "matched_spu_id", "error")
        return [{k: a[k] for k in keep} for a in await self._priced(items)]

    @bentoml.api(route="/similar")
    def similar(self, query: SpuQuery, k: Annotated[int, Field(strict=True)] = 5) -> list[dict]:
        """The top-k known SPUs for a title and/or an image."""
        from embeddings import ImageError

        if not 1 <= k <= 50:
            raise BentoMLException("k: must be 1..50", error_code=HTTPStatus.UNPROCESSABLE_ENTITY)
        try:
            hits = self.model.similar(query.title, query.images(), k)
        except ImageError as exc:
            raise BentoMLException(f"image_base64: {exc}", error_code=status_of(f"images: {exc}")) from exc
        except ValueError as exc:
            raise BentoMLException(f"query: {exc}", error_code=HTTPStatus.UNPROCESSABLE_ENTITY) from exc
        hits = hits.join(self.model.side, on="spu_id", how="left", maintain_order="left")
        prices = {s: float(np.exp(p)) for s, p in self.model.values.reference.items()}
        return [{**_image_by_url(row), "score": round(row["score"], 4), "price": prices.get(row["spu_id"])}
                for row in _json_rows(hits)]

    # -- monitoring ---------------------------------------------------------------------------
    @bentoml.api(route="/sweep")
    def sweep(self, as_of: str | None = None) -> dict:
        """Start a sweep in the background; poll GET /sweeps/{sweep_id}."""
        try:
            when = date.fromisoformat(as_of) if as_of else self.monitor.latest_market_date()
        except ValueError as exc:
            raise BentoMLException(f"as_of: not an ISO date: {as_of!r}", error_code=HTTPStatus.UNPROCESSABLE_ENTITY) \
                from exc
        if when is None:
            raise BentoMLException("no market data in the store", error_code=HTTPStatus.CONFLICT)
        try:
            self.monitor.check_as_of(when)
        except ValueError as exc:
            raise BentoMLException(str(exc), error_code=HTTPStatus.UNPROCESSABLE_ENTITY) from exc
        # the store decides who runs it: one claim wins across workers; the rest answer with its id
        sweep_id, mine = self.monitor.request_sweep(when)
        if mine:
            threading.Thread(target=self._run_sweep, args=(when,), daemon=True).start()
        return {"sweep_id": sweep_id, "status_url": f"/sweeps/{sweep_id}"}

    def _run_sweep(self, when: date) -> None:
        try:
            self.monitor.run_requested(when)
        except Exception:  # recorded in the store as failed (GET /sweeps/{id}); the service keeps serving
            log.exception("sweep of %s failed", when)
        if self.delivery is not None:
            self.delivery.wake.set()

    @bentoml.api(route="/market")
    def market(self, observations: list[MarketObservation]) -> dict:
        """Market observations (spu_id, date, price, units, source): stored, and the positions on the SPUs
        they moved re-scored at once. A bad observation is answered with its item, field and reason; the
        good ones are applied together. New alerts: GET /alerts?since= and the webhook."""
        from monitoring.market_updates import BatchTooLarge, apply_market_updates

        if not observations:
            raise BentoMLException("observations: empty", error_code=HTTPStatus.UNPROCESSABLE_ENTITY)
        try:
            outcome = apply_market_updates(self.monitor, [o.model_dump() for o in observations])
        except BatchTooLarge as exc:
            raise BentoMLException(f"observations: {exc}", error_code=HTTPStatus.REQUEST_ENTITY_TOO_LARGE) from exc
        if outcome.errors and outcome.applied + outcome.unchanged == 0:
            shown = "; ".join(f"item {e['item']}, {e['field']}: {e['error']}" for e in outcome.errors[:10])
            more = f"; and {len(outcome.errors) - 10} more" if len(outcome.errors) > 10 else ""
            raise BentoMLException(f"no observation applied: {shown}{more}",
                                   error_code=HTTPStatus.UNPROCESSABLE_ENTITY)
        if outcome.alerts and self.delivery is not None:
            self.delivery.wake.set()
        return outcome.as_dict()

    def alerts_since(self, since: str | None, limit: str | None) -> dict:
        """Alerts (sweeps and market updates) after a cursor: ``since`` is the ``cursor`` of the previous
        answer (an alert's seq), or an ISO timestamp; nothing or 0 starts at the first alert."""
        from monitoring.delivery import alert_payload

        (seq, after), count = _since(since), _limit(limit)
        # one row more than asked: whether it came is whether another page is there
        rows = self.monitor.log.alerts_since(seq, created_after=after, limit=count + 1)
        more, rows = len(rows) > count, rows[:count]
        return {"alerts": [alert_payload(r) for r in rows], "cursor": rows[-1]["seq"] if rows else seq, "more": more}

    def changes_since(self, since: str | None, limit: str | None) -> dict:
        """Positions whose grade or action a market update changed, after a cursor (as for alerts), each
        with its amount at risk, for the desk's live book."""
        from monitoring.report import at_risk

        (seq, after), count = _since(since), _limit(limit)
        rows = self.monitor.log.changes_since(seq, created_after=after, limit=count + 1)
        more, rows = len(rows) > count, rows[:count]
        if not rows:
            return {"changes": [], "cursor": seq, "more": False}
        frame = at_risk(pl.DataFrame(rows, infer_schema_length=None)).sort("seq")
        changes = _with_reason_text(_json_rows(frame.with_columns(pl.col("created_at").dt.to_string("%Y-%m-%dT%H:%M:%S"))))
        return {"changes": changes, "cursor": rows[-1]["seq"], "more": more}

    def sweep_status(self, sweep_id: str) -> dict:
        """A sweep's totals and its worst positions; ``latest`` is the most recent completed sweep. A sweep
        not complete yet answers its run's status (running, waiting for the lock, failed), from the store,
        whichever worker runs it."""
        sweep_id = self._resolve_sweep(sweep_id)
        status = self.monitor.status(sweep_id)
        if status is None:
            raise BentoMLException(f"unknown sweep_id '{sweep_id}'", error_code=HTTPStatus.NOT_FOUND)
        if status["status"] != "completed":
            return json.loads(json.dumps(status, default=str))
        if sweep_id not in self._completed_sweeps:  # a completed sweep never changes: worked out once
            if len(self._completed_sweeps) >= 8:
                self._completed_sweeps.pop(next(iter(self._completed_sweeps)))
            self._completed_sweeps[sweep_id] = self._completed_status(sweep_id, status)
        return self._completed_sweeps[sweep_id]

    def _completed_status(self, sweep_id: str, status: dict) -> dict:
        from monitoring.report import at_risk

        book = at_risk(self.monitor.results(sweep_id))
        exposure = (book.group_by("grade").agg(pl.len().alias("positions"), pl.col("loan_amount").sum(),
                                               pl.col("amount_at_risk").sum()).sort("grade"))
        worst = (book.head(WORST_SHOWN)
                 .join(self.model.side.select("spu_id", "title"), on="spu_id", how="left", maintain_order="left")
                 .select("position_id", "spu_id", "title", "loan_amount", "collateral_value", "amount_at_risk",
                         "unit_value", "ltv", "health", "grade", "action", "reasons", "p_loss"))
        return {**json.loads(json.dumps(status, default=str)), "currency": currency_of(self.model.policy),
                "exposure_by_grade": _json_rows(exposure), "worst": _with_reason_text(_json_rows(worst)),
                "report_url": f"/sweeps/{sweep_id}/report"}

    def _resolve_sweep(self, sweep_id: str) -> str:
        if sweep_id != "latest":
            return sweep_id
        latest = self.monitor.latest_sweep_id()
        if latest is None:
            raise BentoMLException("no sweep has completed yet: POST /sweep", error_code=HTTPStatus.NOT_FOUND)
        return latest

    def sweep_report(self, sweep_id: str) -> str:
        from monitoring.report import render_report

        sweep_id = self._resolve_sweep(sweep_id)
        stored = self.monitor.get_sweep(sweep_id)
        if stored is None:
            raise BentoMLException(f"unknown sweep_id '{sweep_id}'", error_code=HTTPStatus.NOT_FOUND)
        market = self.monitor.sweeps.market(until=stored["as_of"])
        results = self.monitor.results(sweep_id).join(self.model.side.select("spu_id", "title"), on="spu_id",
                                                      how="left", maintain_order="left")
        return render_report(stored, results, market, currency_of(self.model.policy))

    def catalog_thumbnail(self, spu_id: str) -> bytes:
        """A small JPEG of a known SPU's first image, for comparables on the desk page."""
        import io

        from PIL import Image

        from embeddings import ImageError, load_image

        rows = self.model.side.filter(pl.col("spu_id") == spu_id)
        if rows.height == 0:
            raise BentoMLException(f"unknown spu_id '{spu_id}'", error_code=HTTPStatus.NOT_FOUND)
        path = rows["image"][0]
        if not path:
            raise BentoMLException(f"spu_id '{spu_id}' has no image in the catalogue", error_code=HTTPStatus.NOT_FOUND)
        try:
            image = load_image(path, "image")
        except (ImageError, OSError) as exc:
            raise BentoMLException(f"spu_id '{spu_id}': catalogue image unavailable ({exc})",
                                   error_code=HTTPStatus.NOT_FOUND) from exc
        image.thumbnail((128, 128), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=85)
        return buffer.getvalue()

    def position_health(self, position_id: str) -> dict:
        history, alerts = self.monitor.position_history(position_id)
        events = self.monitor.log.events_of(position_id)
        if history.height + events.height == 0:
            if self.monitor.sweeps.position(position_id).height == 0:
                raise BentoMLException(f"unknown position_id '{position_id}'", error_code=HTTPStatus.NOT_FOUND)
            raise BentoMLException(f"position '{position_id}' has not been swept yet: POST /sweep",
                                   error_code=HTTPStatus.CONFLICT)
        if history.height:
            history = history.with_columns(pl.col("reasons").str.json_decode(pl.List(pl.String)),
                                           pl.lit("sweep").alias("trigger"), pl.col("completed_at").alias("recorded_at"))
        if events.height:  # market updates: the newest record is the position's health now
            events = events.with_columns(pl.col("reasons").str.json_decode(pl.List(pl.String)),
                                         pl.col("created_at").alias("recorded_at"))
            events = events.drop("seq", "event_id", "observation", "changed", "created_at")
            # by the day scored, then when: a sweep of an earlier day, run later, is history, not the health now
            history = pl.concat([history, events] if history.height else [events],
                                how="diagonal_relaxed").sort("as_of", "recorded_at")
        latest = _with_reason_text(_json_rows(history.tail(1).drop("completed_at", "recorded_at", strict=False)))[0]
        market = self.monitor.sweeps.market(spu_id=latest["spu_id"]).sort("date")
        return {"position_id": position_id, "latest": latest,
                "history": _json_rows(history.select("as_of", "trigger", "unit_value", "ltv", "health", "grade",
                                                     "action")),
                "alerts": self._position_alerts(position_id, alerts),
                "market": _json_rows(market.select("date", "price", "units_sold"))}

    def _position_alerts(self, position_id: str, swept: pl.DataFrame) -> list[dict]:
        """The outbox's alerts of a position (sweeps and market updates), and sweep alerts from before the
        outbox existed."""
        from monitoring.delivery import alert_payload

        alerts = [alert_payload(r) for r in self.monitor.log.alerts_of(position_id)]
        sources = {a["source_id"] for a in alerts}
        older = [{**row, "trigger": "sweep", "source_id": row["sweep_id"]} for row in _json_rows(swept)
                 if row["sweep_id"] not in sources] if swept.height else []
        return sorted(_with_reason_text(older), key=lambda a: a["as_of"]) + alerts

    def _scheduler(self) -> None:
        """Sweeps on the cron schedule of monitor.toml; the store's lock keeps schedulers apart."""
        import time

        from croniter import croniter

        from monitoring import SweepLocked

        schedule = croniter(self.monitor_config["schedule"]["cron"], datetime.now())
        while True:
            due = schedule.get_next(datetime)
            time.sleep(max(0.0, (due - datetime.now()).total_seconds()))
            try:
                outcome = self.monitor.run_sweep()
                log.info("scheduled sweep %s: %s", outcome.sweep_id, "done" if outcome.created else "already done")
            except SweepLocked as exc:
                log.info("scheduled sweep skipped: %s", exc)
            except Exception:  # keep the schedule alive; the next run tries again
                log.exception("scheduled sweep failed")


count_requests_by_route(PledgeService.mount_apps)
PledgeService.add_asgi_middleware(ApiKeyMiddleware)
PledgeService.add_asgi_middleware(ErrorShapeMiddleware)
PledgeService.add_asgi_middleware(MountRootPaths)
