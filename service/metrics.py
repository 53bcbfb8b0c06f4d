"""Prometheus metrics at /metrics, from the API process and its worker processes alike.

Workers are separate processes, so the counters and histograms use prometheus-client's
multiprocess mode: every process writes its own files under one directory (the setting
`RNNLAB_METRICS_DIR`, by default `<data dir>/metrics`), and /metrics adds them up. The
server empties the directory when it starts (its counters start again with it, as
Prometheus expects of a restarted target); the processes it starts inherit the location.
Run counts by status and the queue length are read from the database at each scrape, the one
source of truth wherever the runs are trained.

Until `init` is called (a plain script using `service.queue.execution`), recording is a no-op.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.db import Database
from service.settings import Settings
from service.tables import Run, RunStatus

_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus-client itself
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_m: dict[str, Any] = {}


def init(settings: Settings, *, owner: bool) -> None:
    """Record into the shared directory from now on; `owner` (the server) empties it first."""
    if _m:
        return
    path = Path(os.environ.get(_ENV) or settings.metrics_path)
    if owner and _ENV not in os.environ and path.is_dir():
        for stale in path.glob("*.db"):
            stale.unlink(missing_ok=True)
    path.mkdir(parents=True, exist_ok=True)
    os.environ[_ENV] = str(path)  # before prometheus-client is first imported, and for children
    import prometheus_client
    from prometheus_client import values

    if not getattr(values.ValueClass, "_multiprocess", False):
        # prometheus-client was imported before the variable was set (it picks its value
        # class at import): switch to the multiprocess one before any metric exists.
        values.ValueClass = values.MultiProcessValue()
    seconds = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
    _m.update(
        dir=str(path),
        epochs=prometheus_client.Counter(
            "rnnlab_epochs_trained", "Epochs trained, over all members and runs", ["model"]
        ),
        epoch_seconds=prometheus_client.Histogram(
            "rnnlab_epoch_duration_seconds",
            "Wall time of one training epoch (all members, training and validation)",
            ["model"],
            buckets=seconds,
        ),
        run_seconds=prometheus_client.Histogram(
            "rnnlab_run_duration_seconds",
            "Wall time of one run's attempt, from claim to its end",
            ["model", "status"],
            buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400),
        ),
        predict_seconds=prometheus_client.Histogram(
            "rnnlab_predict_duration_seconds",
            "Server time of prediction requests that succeeded (POST /predict, /v2 inference)",
            buckets=seconds,
        ),
        requests=prometheus_client.Counter(
            "rnnlab_http_requests", "HTTP requests answered", ["method", "route", "status"]
        ),
    )


def epoch(model: str, seconds: float) -> None:
    if _m:
        _m["epochs"].labels(model).inc()
        _m["epoch_seconds"].labels(model).observe(seconds)


def run_ended(model: str, status: str, seconds: float) -> None:
    if _m:
        _m["run_seconds"].labels(model, status).observe(seconds)


def predicted(seconds: float) -> None:
    if _m:
        _m["predict_seconds"].observe(seconds)


class _DatabaseCollector:
    """Runs by status and the queue length, read from the database at scrape time."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        with self.db.reading() as session:
            counts = dict(
                session.execute(select(Run.status, func.count()).group_by(Run.status)).all()
            )
        runs = GaugeMetricFamily("rnnlab_runs", "Runs by status", labels=["status"])
        for status in RunStatus:
            runs.add_metric([status.value], counts.get(status, 0))
        yield runs
        yield GaugeMetricFamily(
            "rnnlab_queue_length",
            "Runs waiting for a worker",
            value=counts.get(RunStatus.queued, 0),
        )


def render(db: Database) -> bytes:
    """The text exposition of every process's metrics plus the database's."""
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    registry = CollectorRegistry()
    if _m:
        multiprocess.MultiProcessCollector(registry, path=_m["dir"])
    registry.register(_DatabaseCollector(db))
    return generate_latest(registry)


class RequestMetricsMiddleware:
    """Counts answered requests by method, route template (not the raw path) and status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _m:
            await self.app(scope, receive, send)
            return
        status = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            _m["requests"].labels(scope["method"], template, str(status["code"])).inc()


class Stopwatch:
    def __init__(self) -> None:
        self.last = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        seconds, self.last = now - self.last, now
        return seconds
