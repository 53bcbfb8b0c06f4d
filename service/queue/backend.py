"""The queue a server sends its runs to, as one object: `queue_for(settings)`.

Everything that differs between RNNLAB_QUEUE=local and RNNLAB_QUEUE=celery is a method here,
so no other module asks which queue is configured:

- `start` / `stop`, in the API's lifespan: the local worker pool, or the recovery loop that
  re-queues the runs of dead Celery workers and sends ids;
- `submitted`, after a request committed new runs: nothing locally (workers poll the
  database), the ids to the broker on Celery;
- `workers_check`, for /readyz;
- `run_worker`, the `rnnlab worker` command.

The database is the truth for both: a run is a row, claimed by the conditional UPDATE in
`lifecycle.claim`, whichever queue carried its id.
"""

from __future__ import annotations

import logging
import signal
from typing import Any, Protocol

from service.db import Database
from service.settings import Settings

log = logging.getLogger("rnnlab.queue")


class Queue(Protocol):
    """What the API and the `rnnlab worker` command need from a queue."""

    def start(self, db: Database, *, start_workers: bool) -> None:
        """In the API's lifespan, after migrations: start what trains or sends runs."""

    def stop(self) -> None:
        """At shutdown: running runs stop at an epoch boundary and go back to the queue."""

    def submitted(self, db: Database) -> None:
        """New runs were committed; called after the commit, outside the request's session."""

    def workers_check(self) -> tuple[dict[str, Any], bool]:
        """/readyz's entry for the workers, and whether they are ready."""

    def describe(self) -> str:
        """Where runs go, for the log line at start-up."""

    def run_worker(self, *, burst: bool) -> int:
        """`rnnlab worker`: train runs from this queue in this process until stopped."""


class LocalQueue:
    """RNNLAB_QUEUE=local: worker processes started by the server poll the database."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pool: Any = None  # workers.WorkerPool once started

    def start(self, db: Database, *, start_workers: bool) -> None:
        from service.queue.workers import WorkerPool

        if start_workers and self.settings.workers > 0:
            self.pool = WorkerPool(self.settings, db).start()

    def stop(self) -> None:
        if self.pool is not None:
            log.info("stopping workers: running runs go back to the queue")
            self.pool.stop()

    def submitted(self, db: Database) -> None:
        return None  # the workers find queued runs in the database

    def workers_check(self) -> tuple[dict[str, Any], bool]:
        if self.pool is None:
            return {"local": 0, "note": "RNNLAB_WORKERS=0: runs need `rnnlab worker`"}, True
        alive = self.pool.alive()
        return {"alive": alive, "configured": self.pool.size}, alive == self.pool.size

    def describe(self) -> str:
        return f"{self.settings.workers} local workers"

    def run_worker(self, *, burst: bool) -> int:
        from service import db as database
        from service.queue.workers import Worker, configure_threads

        configure_threads(self.settings)
        w = Worker(self.settings)
        database.upgrade(w.db.engine)

        def _stop(signum: int, _frame: object) -> None:
            logging.getLogger("rnnlab.worker").info(
                "signal %d: finishing the current epoch, then re-queueing", signum
            )
            w.stop()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        try:
            w.work(burst=burst, reap=True)
        finally:
            w.db.dispose()
        return 0


class CeleryQueue:
    """RNNLAB_QUEUE=celery: ids through the broker to `rnnlab worker`s anywhere
    (`service.queue.celery`)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.recovery: Any = None  # celery.RecoveryLoop once started

    def start(self, db: Database, *, start_workers: bool) -> None:
        from service.queue.celery import RecoveryLoop

        # This process trains nothing: it re-queues lost runs and sends ids.
        self.recovery = RecoveryLoop(self.settings, db).start()

    def stop(self) -> None:
        if self.recovery is not None:
            self.recovery.stop()

    def submitted(self, db: Database) -> None:
        from service.queue.celery import try_send_pending

        try_send_pending(db, self.settings)

    def workers_check(self) -> tuple[dict[str, Any], bool]:
        return {"queue": "celery", "note": "runs go to `rnnlab worker`s via the broker"}, True

    def describe(self) -> str:
        return "the Celery queue"

    def run_worker(self, *, burst: bool) -> int:
        from service import db as database
        from service.queue.celery import run_worker

        if burst:
            log.warning("--burst applies to local workers only; a Celery worker runs until stopped")
        db = database.Database(self.settings)
        try:
            database.upgrade(db.engine)
        finally:
            db.dispose()
        return run_worker(self.settings)


def queue_for(settings: Settings) -> LocalQueue | CeleryQueue:
    """The queue RNNLAB_QUEUE names."""
    return CeleryQueue(settings) if settings.queue == "celery" else LocalQueue(settings)
