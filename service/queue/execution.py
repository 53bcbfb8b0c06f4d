"""One function executes a claimed run, whatever delivered its id (local pool or Celery)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save as save_safetensors

from models import EpochReport, fit, prepare
from service import metrics
from service.db import Database
from service.queue import lifecycle
from service.queue.lifecycle import Claim, LostClaim
from service.runs.config import config_from_json

log = logging.getLogger("rnnlab.worker")
CHECKPOINT_FORMAT = "rnnlab-1"


class _Heartbeat(threading.Thread):
    """Beats every `interval` s while an epoch runs, however long the epoch takes."""

    def __init__(self, db: Database, claim: Claim, interval: float) -> None:
        super().__init__(name=f"heartbeat-{claim.run_id}", daemon=True)
        self.db, self.claim, self.interval = db, claim, interval
        self.done = threading.Event()
        self.lost = False

    def run(self) -> None:
        while not self.done.wait(self.interval):
            try:
                lifecycle.heartbeat(self.db, self.claim)
            except LostClaim:
                self.lost = True
                return
            except Exception:  # a busy database must not kill the run; the next beat retries
                log.exception("heartbeat for run %s failed", self.claim.run_id)

    def __enter__(self) -> _Heartbeat:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.join()


class _EpochWriter(threading.Thread):
    """Stores epochs off the training thread: training never waits on the database.

    The trainer hands each epoch to `put` and goes on; this thread writes whatever has
    piled up in one transaction (`lifecycle.record_epochs`), then waits `coalesce_s` so
    that fast epochs share transactions. So an epoch is visible through the API within
    about coalesce_s plus one write of its end, and every epoch is written exactly once:
    a batch leaves the queue only when its transaction has committed. Each write also reads
    the cancel flag (`cancel`). `catch_up` holds the trainer back if the database falls
    more than `max_lag_s` behind, so a slow disk cannot let the backlog, or the time to see
    a cancel, grow without bound.
    """

    def __init__(
        self, db: Database, claim: Claim, *, coalesce_s: float = 0.25, max_lag_s: float = 0.5
    ) -> None:
        super().__init__(name=f"epochs-{claim.run_id}", daemon=True)
        self.db, self.claim = db, claim
        self.coalesce_s, self.max_lag_s = coalesce_s, max_lag_s
        self.cond = threading.Condition()
        self.pending: list[tuple[float, lifecycle.EpochRow]] = []
        self.closing = False
        self.cancel = False
        self.lost = False
        self.error: BaseException | None = None

    def put(self, row: lifecycle.EpochRow) -> None:
        with self.cond:
            self.pending.append((time.monotonic(), row))
            # Only the first epoch of a batch wakes the writer (it may be waiting for work).
            # While it writes or coalesces it needs no wake-up, and waking it every epoch
            # would cost the trainer a thread switch per epoch, a share of a small network's
            # sub-millisecond epoch (`python -m benchmarks.train_speed --skip eager,population`
            # compares epochs through the service with epochs in-process).
            if len(self.pending) == 1:
                self.cond.notify_all()

    def catch_up(self) -> None:
        """Block while the oldest unwritten epoch is older than max_lag_s."""
        with self.cond:
            while (
                self.pending
                and not (self.lost or self.error)
                and time.monotonic() - self.pending[0][0] > self.max_lag_s
            ):
                self.cond.wait(0.05)

    def run(self) -> None:
        failures = 0
        while True:
            with self.cond:
                while not self.pending and not self.closing:
                    self.cond.wait()
                if not self.pending:
                    return
                batch = [row for _, row in self.pending]
            try:
                cancel = lifecycle.record_epochs(self.db, self.claim, batch)
            except LostClaim:
                with self.cond:
                    self.lost = True
                    self.pending.clear()
                    self.cond.notify_all()
                return
            except Exception as e:  # a busy database: keep the epochs and try again
                failures += 1
                log.exception("storing epochs of run %s failed", self.claim.run_id)
                if self.closing and failures >= 5:
                    with self.cond:
                        self.error = e
                        self.cond.notify_all()
                    return
                time.sleep(min(2.0, 0.1 * failures))
                continue
            failures = 0
            with self.cond:
                del self.pending[: len(batch)]
                self.cancel = self.cancel or cancel
                self.cond.notify_all()
                # Let the next epochs pile up (only closing cuts this short).
                deadline = time.monotonic() + self.coalesce_s
                while not self.closing and (left := deadline - time.monotonic()) > 0:
                    self.cond.wait(left)

    def __enter__(self) -> _EpochWriter:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Write everything still queued, then stop; raises what made that impossible."""
        with self.cond:
            self.closing = True
            self.cond.notify_all()
        self.join()
        if self.error is not None:
            raise self.error


def hold(
    path: Path, reported: int, should_stop: Callable[[], bool], cancelled: Callable[[], bool]
) -> bool:
    """Tests only (RNNLAB_HOLD_FILE): wait while `path` exists and the run has reported at
    least the epochs it names (empty: 2), until the worker is told to stop or the run is
    cancelled; True when it was cancelled meanwhile (the run stops there). While it waits,
    `<path>.held` names the epoch it holds at: an event a test can wait for."""
    announced = False
    while not should_stop():
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            return False
        except OSError:
            text = ""
        if reported < (int(text) if text.isdigit() else 2):
            return False
        if cancelled():
            return True
        if not announced:
            path.with_name(path.name + ".held").write_text(str(reported))
            announced = True
        time.sleep(0.05)
    return False


def checkpoint_bytes(model: torch.nn.Module, *, kind: str, run_id: str) -> bytes:
    """The model's state_dict as safetensors, tensor names unchanged."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {
        "format": CHECKPOINT_FORMAT,
        "model": kind,
        "n_input": str(model.n_input),
        "n_hidden": str(model.n_hidden),
        "n_out": str(model.n_out),
        "run_id": run_id,
    }
    return save_safetensors(tensors, metadata=meta)


def execute(
    db: Database,
    claim: Claim,
    *,
    should_stop: Callable[[], bool] = lambda: False,
    heartbeat_interval_s: float = 5.0,
    train_path: str = "auto",
    hold_file: Path | None = None,
) -> str:
    """Train a claimed run to its end; return the status it ended in ("lost" if taken away).

    `should_stop` is the worker's shutdown flag: when it turns true the run stops at the next
    epoch boundary and goes back to the queue. `train_path` (RNNLAB_TRAIN_PATH): "auto"
    (`models.chooser.choose_path`), "fused" or "torch". `hold_file`: RNNLAB_HOLD_FILE, tests
    only (`hold`).
    """
    start = time.perf_counter()
    status = _execute(db, claim, should_stop, heartbeat_interval_s, train_path, hold_file)
    model = str(claim.config.get("model", "unknown"))
    metrics.run_ended(model, status, time.perf_counter() - start)
    return status


def _execute(
    db: Database,
    claim: Claim,
    should_stop: Callable[[], bool],
    heartbeat_interval_s: float,
    train_path: str,
    hold_file: Path | None,
) -> str:
    try:
        cfg = config_from_json(claim.config)
        run = prepare(cfg, path=train_path)
        lifecycle.set_device(db, claim, str(run.device), train_path=run.path)

        stopwatch = metrics.Stopwatch()
        reported = [0]

        def on_report(report: EpochReport) -> None:
            reported[0] = report.epoch
            metrics.epoch(cfg.model, stopwatch.lap())
            writer.put(
                lifecycle.EpochRow(
                    epoch=report.epoch,
                    train_loss=report.train_loss,
                    valid_loss=report.valid_loss,
                    member=report.member,
                    members=[m.to_dict() for m in report.members],
                )
            )

        def cancelled() -> bool:
            return writer.cancel or lifecycle.cancel_requested(db, claim)

        def stop_now() -> bool:
            if hold_file is not None and hold(hold_file, reported[0], should_stop, cancelled):
                return True
            writer.catch_up()
            return writer.cancel or writer.lost or beat.lost or should_stop()

        with _Heartbeat(db, claim, heartbeat_interval_s) as beat, _EpochWriter(db, claim) as writer:
            result = fit(run, on_report=on_report, should_stop=stop_now)
        history = result.history
        cancel = writer.cancel
        if beat.lost or writer.lost:
            raise LostClaim(f"run {claim.run_id} was taken away while training")
        if history.stopped:
            if cancel or lifecycle.cancel_requested(db, claim):
                lifecycle.finish_cancelled(db, claim)
                return "cancelled"
            lifecycle.requeue(db, claim)
            return "queued"
        lifecycle.finish_succeeded(
            db,
            claim,
            metrics=result.metrics.to_dict(),
            checkpoint=checkpoint_bytes(result.model, kind=cfg.model, run_id=claim.run_id),
            members=[m.to_dict() for m in history.members],
        )
        return "succeeded"
    except LostClaim as e:
        log.warning("%s; dropping it", e)
        return "lost"
    except Exception as e:  # any training error fails this run; the worker goes on
        log.exception("run %s failed", claim.run_id)
        try:
            lifecycle.finish_failed(db, claim, f"{type(e).__name__}: {e}")
        except LostClaim:
            return "lost"
        return "failed"
