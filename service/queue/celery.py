"""The Celery queue (RNNLAB_QUEUE=celery): run ids through Redis to `rnnlab worker`s anywhere.

The database stays the truth; the broker only carries ids:

- `POST /runs` (and `/sweeps`) commit the runs, then send their ids (`send_pending`), so a
  worker can never receive an id it cannot read. A run whose send failed keeps
  `dispatched_at` NULL, and the server's recovery loop sends it again: never lost.
- A worker's task claims exactly that run with the same conditional UPDATE as the local
  pool (status queued → running, attempt + 1). A task delivered twice finds the run no longer
  queued and does nothing, so a run never runs twice at once.
- Long jobs: late acknowledgement, prefetch 1, reject on a lost worker, and a visibility
  timeout (RNNLAB_CELERY_VISIBILITY_TIMEOUT_S) longer than any run. A worker that dies is
  noticed by its stale heartbeat; the recovery loop re-queues its run (dispatched_at NULL again)
  and re-sends the id, wherever the worker ran.
- One run at a time per worker process, in the solo pool: no fork after CUDA is initialised.
  Cancel stays the database flag, read at every epoch write.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from sqlalchemy import select

from service.db import Database
from service.queue import lifecycle
from service.settings import Settings, get_settings
from service.tables import Run, RunStatus

log = logging.getLogger("rnnlab.dispatch")
TASK = "rnnlab.execute_run"
QUEUE = "rnnlab"
_apps: dict[str, Any] = {}


def celery_app(settings: Settings) -> Any:
    """The Celery app for this broker (one per process and broker URL)."""
    if settings.broker_url in _apps:
        return _apps[settings.broker_url]
    from celery import Celery

    app = Celery("rnnlab", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_default_queue=QUEUE,
        task_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": settings.celery_visibility_timeout_s},
        task_ignore_result=True,
    )
    app.task(name=TASK, ignore_result=True)(execute_run)
    _apps[settings.broker_url] = app
    return app


def send_pending(db: Database, settings: Settings, *, limit: int = 1000) -> int:
    """Send the ids of queued runs not sent yet, marking each sent; returns how many."""
    with db.reading() as session:
        ids = list(
            session.scalars(
                select(Run.id)
                .where(Run.status == RunStatus.queued, Run.dispatched_at.is_(None))
                .order_by(Run.created_at, Run.id)
                .limit(limit)
            )
        )
    if not ids:
        return 0
    app = celery_app(settings)
    sent: list[str] = []
    try:
        for run_id in ids:
            app.send_task(TASK, args=[run_id], queue=QUEUE)
            sent.append(run_id)
    finally:  # one write for every id that went out, even if a later send failed
        if sent:
            lifecycle.mark_dispatched(db, sent)
    return len(sent)


def try_send_pending(db: Database, settings: Settings) -> None:
    """send_pending for a request path: a broker that is down must not fail the request."""
    try:
        send_pending(db, settings)
    except Exception as e:  # the recovery loop sends them later
        log.warning("could not send queued runs to the broker (%s); the recovery loop retries", e)


class RecoveryLoop:
    """In the API process on the Celery queue: re-queue runs of dead workers, send ids."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings, self.db = settings, db
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="recovery", daemon=True)

    def start(self) -> RecoveryLoop:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def sweep(self) -> None:
        lifecycle.reap_stale(
            self.db,
            timeout_s=self.settings.heartbeat_timeout_s,
            max_requeues=self.settings.max_requeues,
        )
        send_pending(self.db, self.settings)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sweep()
            except Exception:
                log.exception("recovery loop: error; trying again")
            self._stop.wait(self.settings.reap_interval_s)


# --- the worker side ------------------------------------------------------------------------

_worker: Any = None


def _the_worker() -> Any:
    global _worker
    if _worker is None:
        from service.queue.workers import Worker, configure_threads, warm_up_models

        settings = get_settings()
        configure_threads(settings)
        warm_up_models()
        _worker = Worker(settings)
    return _worker


def execute_run(run_id: str) -> str:
    """The Celery task: claim this run if it is still queued, and train it."""
    worker = _the_worker()
    outcome = worker.run_one(run_id)
    return outcome or "not queued (already claimed, ended or deleted): nothing to do"


def run_worker(settings: Settings) -> int:
    """`rnnlab worker` on the Celery queue: a solo-pool Celery worker, one run at a time."""
    from celery.signals import worker_shutting_down

    app = celery_app(settings)
    _the_worker()  # load the kernels before taking a task, not inside the first run

    @worker_shutting_down.connect
    def _stop(**_kwargs: Any) -> None:  # warm shutdown: stop at an epoch, re-queue the run
        if _worker is not None:
            _worker.stop()

    app.worker_main(
        ["worker", "--pool=solo", "--concurrency=1", f"--queues={QUEUE}", "--without-gossip",
         "--without-mingle", "--without-heartbeat", f"--loglevel={settings.log_level.upper()}"]
    )  # fmt: skip
    return 0
