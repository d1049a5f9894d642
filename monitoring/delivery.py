"""Alerts out: every alert in the outbox is POSTed to the configured webhook until the receiver takes it.

- At least once: an alert stays in the outbox until a 2xx answer; a receiver that is down, slow or
  answering errors is retried with exponential backoff, and a worker that dies holding alerts loses its
  claim when the claim runs out, so another worker sends them. Each alert carries ``alert_key``: a
  receiver that sees one twice (a retry after a lost answer) drops the second.
- Signed: ``X-Pledgeval-Signature: sha256=<hex>`` is the HMAC-SHA256, under the shared secret, of
  ``<X-Pledgeval-Timestamp>.<body>``; a receiver recomputes it and refuses old timestamps (replays).
- Batched: one POST carries up to ``batch`` alerts as ``{"alerts": [...]}``, oldest first.

Configured in ``monitor.toml`` ``[alerts]``; ``PLEDGEVAL_WEBHOOK_URL`` and ``PLEDGEVAL_WEBHOOK_SECRET`` override
the file (a secret is better kept out of files).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx

from data.health_log import HealthLog
from monitoring.reasons import reason_texts

log = logging.getLogger("pledgeval.alerts")
SIGNATURE_HEADER = "X-Pledgeval-Signature"
TIMESTAMP_HEADER = "X-Pledgeval-Timestamp"


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    secret: str
    batch: int = 100
    timeout_seconds: float = 5.0
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 300.0
    claim_seconds: float = 60.0
    poll_seconds: float = 0.5

    @classmethod
    def from_config(cls, config: dict) -> WebhookConfig | None:
        """The webhook of ``[alerts]`` (environment first); None when no URL is set. A URL without a secret
        is refused: an unsigned alert could be forged by anyone who can reach the receiver."""
        section = config.get("alerts", {})
        url = os.environ.get("PLEDGEVAL_WEBHOOK_URL", section.get("webhook_url", ""))
        if not url:
            return None
        secret = os.environ.get("PLEDGEVAL_WEBHOOK_SECRET", section.get("webhook_secret", ""))
        if not secret:
            raise ValueError("alerts.webhook_secret: a webhook needs a shared secret for its signature "
                             "(PLEDGEVAL_WEBHOOK_SECRET, or webhook_secret in monitor.toml)")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"alerts.webhook_url: not an http(s) URL: {url!r}")
        keys = ("batch", "timeout_seconds", "retry_base_seconds", "retry_max_seconds", "claim_seconds", "poll_seconds")
        return cls(url=url, secret=secret, **{k: section[k] for k in keys if k in section})


def sign(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(secret: str, timestamp: str, body: bytes, signature: str, max_age_seconds: float = 300.0) -> bool:
    """What a receiver does with a delivery: the signature matches and the timestamp is recent."""
    try:
        fresh = abs(time.time() - float(timestamp)) <= max_age_seconds
    except ValueError:
        return False
    return fresh and hmac.compare_digest(sign(secret, timestamp, body), signature)


def alert_payload(row: dict) -> dict:
    """An outbox row as the receiver and GET /alerts see it."""
    return {"seq": row["seq"], "alert_key": row["alert_key"], "position_id": row["position_id"],
            "spu_id": row["spu_id"], "trigger": row["trigger"], "source_id": row["source_id"],
            "as_of": row["as_of"].isoformat(), "action": row["action"], "previous_action": row["previous_action"],
            "reasons": row["reasons"], "reason_text": reason_texts(row["reasons"]),
            "observation": row["observation"], "created_at": row["created_at"].isoformat(),
            "delivered": row["delivered_at"] is not None, "attempts": row["attempts"]}


class AlertDelivery:
    """Sends the outbox to the webhook. Any number of these (one per worker) can run on one store: claims
    keep them off each other's alerts."""

    def __init__(self, log_store: HealthLog, config: WebhookConfig, client: httpx.Client | None = None):
        self.log = log_store
        self.config = config
        self.client = client or httpx.Client(timeout=config.timeout_seconds)
        self.holder = f"{socket.gethostname()}:{os.getpid()}"
        self.wake = threading.Event()

    def deliver_due(self) -> int:
        """One round: claim what is due, send it in batches; returns the alerts delivered."""
        now = datetime.now()
        claim = f"{self.holder}:{uuid.uuid4().hex[:8]}"
        rows = self.log.claim_due(claim, now, now + timedelta(seconds=self.config.claim_seconds),
                                  self.config.batch * 10)
        delivered = 0
        for start in range(0, len(rows), self.config.batch):
            batch = rows[start:start + self.config.batch]
            seqs = [r["seq"] for r in batch]
            error = self._send([alert_payload(r) for r in batch])
            if error is None:
                self.log.mark_delivered(claim, seqs, datetime.now())
                delivered += len(batch)
            else:
                attempts = max(r["attempts"] for r in batch) + 1
                delay = min(self.config.retry_max_seconds, self.config.retry_base_seconds * 2 ** (attempts - 1))
                delay *= random.uniform(0.8, 1.2)  # receivers coming back are not hit by every worker at once
                retry_at = datetime.now() + timedelta(seconds=delay)
                # the rest of this claim waits too: the receiver is failing, so hammering it helps nobody
                rest = [r["seq"] for r in rows[start:]]
                self.log.mark_failed(claim, rest, error, retry_at)
                log.warning("webhook delivery of %d alerts failed (%s); retry in %.1f s", len(rest), error, delay)
                break
        return delivered

    def _send(self, alerts: list[dict]) -> str | None:
        body = json.dumps({"alerts": alerts}, separators=(",", ":")).encode()
        timestamp = f"{time.time():.3f}"
        headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: timestamp,
                   SIGNATURE_HEADER: sign(self.config.secret, timestamp, body)}
        try:
            response = self.client.post(self.config.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        if response.is_success:
            return None
        return f"HTTP {response.status_code}: {response.text[:200]}"

    def run(self, stop: threading.Event) -> None:
        """Deliver until ``stop``: right away when woken (new alerts written here), else every poll_seconds
        (alerts written by other workers, retries coming due)."""
        while not stop.is_set():
            try:
                busy = self.deliver_due() > 0
            except Exception:  # the store may be briefly unavailable: keep the loop alive
                log.exception("alert delivery round failed")
                busy = False
            if not busy:
                self.wake.wait(self.config.poll_seconds)
                self.wake.clear()
