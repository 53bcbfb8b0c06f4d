"""One function executes a claimed run, whatever delivered its id (local pool or Celery)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import torch
from safetensors.torch import save as save_safetensors

from models import EpochReport, build_population, evaluate, make_splits, resolve_device, train
from service import lifecycle
from service.db import Database
from service.lifecycle import Claim, LostClaim
from service.runs import config_from_json

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
) -> str:
    """Train a claimed run to its end; return the status it ended in ("lost" if taken away).

    `should_stop` is the worker's shutdown flag: when it turns true the run stops at the next
    epoch boundary and goes back to the queue.
    """
    try:
        cfg = config_from_json(claim.config)
        device = resolve_device(cfg.device)
        lifecycle.set_device(db, claim, str(device))
        splits = make_splits(cfg.seed, cfg.n_sequences, cfg.seq_len, cfg.marker_probs)
        pop = build_population(
            cfg.model, seed=cfg.seed, size=cfg.population, n_hidden=cfg.hidden_size
        ).to(device)
        cancel = False

        def on_report(report: EpochReport) -> None:
            nonlocal cancel
            cancel = lifecycle.record_epoch(
                db,
                claim,
                report.epoch,
                report.train_loss,
                report.valid_loss,
                member=report.member,
                members=[m.to_dict() for m in report.members],
            )

        with _Heartbeat(db, claim, heartbeat_interval_s) as beat:
            history = train(
                pop,
                splits,
                cfg,
                on_report=on_report,
                should_stop=lambda: cancel or beat.lost or should_stop(),
            )
        if beat.lost:
            raise LostClaim(f"run {claim.run_id} was taken away while training")
        if history.stopped:
            if cancel or lifecycle.cancel_requested(db, claim):
                lifecycle.finish_cancelled(db, claim)
                return "cancelled"
            lifecycle.requeue(db, claim)
            return "queued"
        model = pop.member(0)  # the kept member: the run's model from here on
        metrics = evaluate(model, splits.test)
        lifecycle.finish_succeeded(
            db,
            claim,
            metrics=metrics.to_dict(),
            checkpoint=checkpoint_bytes(model, kind=cfg.model, run_id=claim.run_id),
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
