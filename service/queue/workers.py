"""Local worker processes: claim queued runs, execute them, heartbeat; a supervising pool.

Workers are started with `spawn`, never `fork`: CUDA cannot be used in a forked child.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select

from service import metrics
from service.db import Database
from service.queue import lifecycle
from service.queue.execution import execute
from service.settings import Settings
from service.tables import Run, RunStatus

log = logging.getLogger("rnnlab.worker")
HOST = socket.gethostname()
RESTART_QUICK_S = 10.0  # a worker dying sooner than this after its start counts as crashing


def make_worker_id(pid: int | None = None) -> str:
    return f"{HOST}/{pid or os.getpid()}/{uuid.uuid4().hex[:8]}"


def local_worker_is_dead(worker_id: str) -> bool:
    """True only when `worker_id` names a process on this host that is gone (or a zombie)."""
    parts = worker_id.split("/")
    if len(parts) != 3 or parts[0] != HOST or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        # "pid (name) S ...": a zombie has exited; only its parent has not collected it yet.
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def configure_threads(settings: Settings) -> None:
    """Give each worker its share of the cores so that workers don't oversubscribe them.

    The share goes to the threads rnnlab runs itself (the fused kernels' member groups, the
    torch path's row split, a validation beside the training; see models/paths.py). Torch
    itself gets one thread: its ops on these tiny tensors gain nothing from more, and its
    OpenMP threads would spin on the cores the kernels use, slowing their epochs down.
    """
    import torch

    from models import kernels

    torch.set_num_threads(1)
    kernels.set_threads(settings.worker_threads())


def warm_up_models() -> None:
    """Compile (or load from numba's disk cache) every kernel now, not on the first run, and
    load (or measure, once per machine and thread count) the training paths' calibration."""
    import torch

    from models import MODEL_KINDS, TrainConfig, build_model, make_splits, train
    from models.chooser import load_calibration
    from models.population import build_population

    load_calibration()
    for kind in MODEL_KINDS:
        model = build_model(kind)
        x = torch.zeros(1, 2, model.n_input)
        with torch.inference_mode():
            model(x)  # the inference kernels
        # An epoch of the default shape's lane kernels, with and without a population.
        for size in (2, 1):
            cfg = TrainConfig(
                model=kind, epochs=2, population=size, n_sequences=2, seq_len=4, seed=0
            )
            splits = make_splits(cfg.seed, cfg.n_sequences, cfg.seq_len, cfg.marker_probs)
            train(build_population(kind, seed=0, size=size), splits, cfg, path="fused")


class Worker:
    """A loop guarded by a flag; run_once() claims and executes one run (tests call it)."""

    def __init__(
        self,
        settings: Settings,
        *,
        db: Database | None = None,
        worker_id: str | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> None:
        self.settings = settings
        self.db = db or Database(settings)
        self.worker_id = worker_id or make_worker_id()
        self._stop_flag = threading.Event()
        self._external_stop = stop or (lambda: False)
        self._last_reap = 0.0

    def stop(self) -> None:
        self._stop_flag.set()

    def stopping(self) -> bool:
        return self._stop_flag.is_set() or self._external_stop()

    def run_once(self) -> str | None:
        """Claim the oldest queued run and execute it; None when the queue was empty."""
        return self.run_one(None)

    def run_one(self, run_id: str | None) -> str | None:
        """Claim `run_id` (or the oldest queued run) and execute it; None if not queued."""
        claim = lifecycle.claim(self.db, worker_id=self.worker_id, run_id=run_id)
        if claim is None:
            return None
        log.info("worker %s: run %s attempt %d", self.worker_id, claim.run_id, claim.attempt)
        outcome = execute(
            self.db,
            claim,
            should_stop=self.stopping,
            heartbeat_interval_s=self.settings.heartbeat_interval_s,
            train_path=self.settings.train_path,
            hold_file=self.settings.hold_file,
        )
        log.info("worker %s: run %s %s", self.worker_id, claim.run_id, outcome)
        return outcome

    def reap(self) -> None:
        lifecycle.reap_stale(
            self.db,
            timeout_s=self.settings.heartbeat_timeout_s,
            max_requeues=self.settings.max_requeues,
            is_dead=local_worker_is_dead,
        )
        self._last_reap = time.monotonic()

    def work(self, *, burst: bool = False, reap: bool = False) -> None:
        """Process runs until stopped (or, with burst, until the queue is empty)."""
        while not self.stopping():
            if reap and time.monotonic() - self._last_reap >= self.settings.reap_interval_s:
                self._guarded(self.reap)
            outcome = self._guarded(self.run_once)
            if outcome is None:
                if burst:
                    return
                self._stop_flag.wait(self.settings.poll_interval_s)

    def _guarded(self, fn: Callable[[], Any]) -> Any:
        # A database hiccup must not end the worker: log it, back off, go on.
        try:
            return fn()
        except Exception:
            log.exception("worker %s: error in %s", self.worker_id, fn.__name__)
            self._stop_flag.wait(min(5.0, 4 * self.settings.poll_interval_s))
            return None


def _worker_process_main(settings: Settings, parent_pid: int) -> None:
    """Entry point of a spawned worker process."""
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # The pool stops us with SIGTERM; Ctrl+C in a terminal reaches the whole process
    # group, so the parent alone decides.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    metrics.init(settings, owner=False)
    configure_threads(settings)
    warm_up_models()
    # An orphaned worker (its server was killed) stops too, handing its run back.
    worker = Worker(settings, stop=lambda: os.getppid() != parent_pid)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    try:
        worker.work()
    finally:
        worker.db.dispose()


class WorkerPool:
    """Runs N worker processes, restarts any that die, reaps stale runs, stops gracefully."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self._ctx = mp.get_context("spawn")
        self._procs: list[Any] = []
        self._started: list[float] = []  # per slot: when its current process started
        self._failures: list[int] = []  # per slot: deaths in a row soon after a start
        self._not_before: list[float] = []  # per slot: earliest next restart
        self._handled: set[int | None] = set()  # dead pids whose runs were dealt with
        self._closing = threading.Event()
        self._monitor: threading.Thread | None = None

    def start(self) -> WorkerPool:
        for _ in range(self.settings.workers):
            self._procs.append(self._spawn())
            self._started.append(time.monotonic())
            self._failures.append(0)
            self._not_before.append(0.0)
        self._monitor = threading.Thread(target=self._supervise, name="worker-pool", daemon=True)
        self._monitor.start()
        return self

    def _spawn(self) -> Any:
        p = self._ctx.Process(
            target=_worker_process_main,
            args=(self.settings, os.getpid()),
            name="rnnlab-worker",
            daemon=True,
        )
        p.start()
        return p

    def alive(self) -> int:
        return sum(p.is_alive() for p in self._procs)

    @property
    def size(self) -> int:
        return len(self._procs)

    def _supervise(self) -> None:
        while not self._closing.wait(min(1.0, self.settings.reap_interval_s)):
            # Nothing may end this loop but closing: it is what restarts workers and reaps.
            try:
                self._restart_dead()
            except Exception:
                log.exception("restarting dead workers failed")
            try:
                lifecycle.reap_stale(
                    self.db,
                    timeout_s=self.settings.heartbeat_timeout_s,
                    max_requeues=self.settings.max_requeues,
                    is_dead=local_worker_is_dead,
                )
            except Exception:
                log.exception("reaping stale runs failed")

    def _restart_dead(self) -> None:
        now = time.monotonic()
        for i, p in enumerate(self._procs):
            if p.is_alive() or self._closing.is_set() or now < self._not_before[i]:
                continue
            if p.pid not in self._handled:
                log.error("worker pid %s died (exit code %s)", p.pid, p.exitcode)
                self._lose_runs_of(p.pid)
                self._handled.add(p.pid)
            # A worker that keeps dying at once is restarted ever more slowly (up to a minute).
            quick = now - self._started[i] < RESTART_QUICK_S
            self._failures[i] = self._failures[i] + 1 if quick else 0
            self._procs[i] = self._spawn()
            self._started[i] = time.monotonic()
            self._not_before[i] = self._started[i] + min(60.0, 2.0 ** self._failures[i] - 1)
            log.info("restarted worker %d as pid %s", i, self._procs[i].pid)

    def _lose_runs_of(self, pid: int | None) -> None:
        prefix = f"{HOST}/{pid}/"
        try:
            with self.db.reading() as session:
                ids = session.scalars(
                    select(Run.worker_id).where(
                        Run.status == RunStatus.running, Run.worker_id.startswith(prefix)
                    )
                ).all()
            for worker_id in {w for w in ids if w is not None}:  # (all: they match the prefix)
                lifecycle.lose_worker_runs(
                    self.db, worker_id, max_requeues=self.settings.max_requeues
                )
        except Exception:
            log.exception("re-queueing the runs of dead worker pid %s failed", pid)

    def stop(self) -> None:
        """Stop taking runs; running ones stop at an epoch boundary and go back to the queue."""
        self._closing.set()
        if self._monitor is not None:
            # After this join no restart can slip in behind the SIGTERMs below.
            self._monitor.join()
        for p in self._procs:
            if p.is_alive():
                p.terminate()  # SIGTERM: the worker finishes its epoch and re-queues its run
        deadline = time.monotonic() + self.settings.shutdown_grace_s
        for p in self._procs:
            p.join(max(0.0, deadline - time.monotonic()))
        for p in self._procs:
            if p.is_alive():
                log.warning("worker pid %s did not stop in time; terminating it", p.pid)
                p.kill()
                p.join(5)
                # We stopped it ourselves: its run goes back to the queue as not failed.
                self._requeue_runs_of(p.pid)

    def _requeue_runs_of(self, pid: int | None) -> None:
        lifecycle.requeue_stopped(self.db, f"{HOST}/{pid}/")
