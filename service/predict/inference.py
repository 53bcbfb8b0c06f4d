"""Predictions from stored checkpoints; loaded models are cached (bounded LRU)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from itertools import chain

import numpy as np
import torch
from safetensors.torch import load as load_safetensors

from models import build_model, predict
from service import limits
from service.db import Database
from service.problems import invalid
from service.runs.store import get_run_or_404, read_checkpoint, require_succeeded
from service.settings import Settings


def load_model(data: bytes, *, kind: str, hidden_size: int) -> torch.nn.Module:
    """Rebuild a network from safetensors bytes (never unpickles)."""
    model = build_model(kind, n_hidden=hidden_size)
    model.load_state_dict(load_safetensors(data), strict=True)
    return model.eval()


class ModelCache:
    """At most `size` loaded models, least recently used evicted; thread-safe."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._models: OrderedDict[str, torch.nn.Module] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # how many times weights were read from the database

    def get(self, db: Database, run_id: str) -> torch.nn.Module:
        """The run's model; the database is read only when it is not cached."""
        with self._lock:
            model = self._models.get(run_id)
            if model is not None:
                self._models.move_to_end(run_id)
                return model
        with db.reading() as session:
            run = get_run_or_404(session=session, run_id=run_id)
            require_succeeded(run)
            data = read_checkpoint(session=session, run_id=run_id)
            kind, hidden_size = run.model, run.config["hidden_size"]
        model = load_model(data, kind=kind, hidden_size=hidden_size)
        with self._lock:
            self.loads += 1
            self._models[run_id] = model
            self._models.move_to_end(run_id)
            while len(self._models) > self.size:
                self._models.popitem(last=False)
        return model

    def forget(self, run_id: str) -> None:
        """Drop a run's model (when the run is deleted)."""
        with self._lock:
            self._models.pop(run_id, None)


def run_predict(
    *,
    db: Database,
    cache: ModelCache,
    settings: Settings,
    run_id: str,
    sequences: list[list[list[float]]],
) -> list[list[float]]:
    """One output per time step of each sequence, from a succeeded run's weights."""
    limits.check_predict(sequences, settings)
    return predict_outputs(cache.get(db, run_id), sequences)


def predict_outputs(
    model: torch.nn.Module, sequences: list[list[list[float]]]
) -> list[list[float]]:
    """One output per step of each validated sequence (the API and `rnnlab predict` share it)."""
    # Steps are validated [value, marker] pairs; flattening through fromiter is ~3× faster
    # than np.asarray on nested lists.
    with np.errstate(over="ignore"):  # beyond float32: inf, and a 422 below if it matters
        arrays = [
            np.fromiter(chain.from_iterable(s), dtype=np.float32, count=2 * len(s)).reshape(-1, 2)
            for s in sequences
        ]
    outputs = predict(model, arrays)
    bad = first_non_finite(outputs)
    if bad is not None:
        # JSON has no NaN or infinity: say where, instead of sending null or failing.
        i, step, count = bad
        raise invalid(
            [
                {
                    "loc": ["body", "sequences", i, step],
                    "msg": f"the model's output is not a finite number at this step "
                    f"({count} steps of sequence {i}); inputs this large overflow the "
                    "network's float32 arithmetic",
                    "type": "non_finite_output",
                }
            ]
        )
    return [o[:, 0].astype(np.float64).tolist() for o in outputs]


def first_non_finite(outputs: list[np.ndarray]) -> tuple[int, int, int] | None:
    """(sequence, its first step, its number of steps) of the first sequence whose outputs
    ([steps, 1] each) are not all finite; None when every output is."""
    for i, o in enumerate(outputs):
        bad = np.flatnonzero(~np.isfinite(o[:, 0]))
        if bad.size:
            return i, int(bad[0]), int(bad.size)
    return None
