"""The BentoML settings of the service, from the environment; the serving bench's floor service uses the
same ones, so that the floor differs from the service only in what a route does."""

from __future__ import annotations

import os

from serving.auth import bind_host


def _on(name: str, default: str) -> bool:
    value = os.environ.get(name, default).strip().lower()
    if value not in ("on", "off"):
        raise ValueError(f"{name}: must be 'on' or 'off', got {value!r}")
    return value == "on"


def service_config() -> dict:
    """Two worker processes by default: the GIL would otherwise hold one process to one of the two cores.
    ``PLEDGEVAL_ACCESS_LOG=off`` drops BentoML's per-request access log line (errors are still logged by
    serving.errors); ``PLEDGEVAL_METRICS=off`` drops the Prometheus counters behind ``/metrics``.
    bench/serving.py measures what each costs."""
    return {"http": {"host": bind_host()}, "traffic": {"timeout": 120},
            "workers": int(os.environ.get("PLEDGEVAL_WORKERS", "2")),
            "logging": {"access": {"enabled": _on("PLEDGEVAL_ACCESS_LOG", "on")}},
            "metrics": {"enabled": _on("PLEDGEVAL_METRICS", "on")}}
