"""Which training path (`models.paths`) a run takes: the one a cost model fitted to this
machine predicts to be faster per epoch.

The model. A path's epoch is its training batches plus a validation pass, each a walk over
the sequence's T steps; per step a pass over S sequences costs

    fused: a + b · ⌈S / LANES⌉ · R·(2 + I + H)    (lane groups × the weights each touches)
    torch: a + b · S · R·(I + H)                  (sequences × the weights of a step's GEMM)

with R the pre-activation rows (LSTM 4H, Elman H), and separate (a, b) for training
(forward and backward) and validation (forward only), per kind and path. The fused path runs
a population's members in as many threads as the kernels have (`kernels.get_threads`), and a
single network's validation beside the next epoch's training; the torch path runs members one
after the other.

The calibration. (a, b) come from timing both paths at a few sizes on this machine
(`calibrate`, a few seconds plus the kernels' first compilation), stored as JSON in the
kernels' cache directory (`kernels.compile._cache_dir`), keyed by the machine, the thread
count and the versions of torch, numba and the kernels: a decision is a pure function of
that file and the run's shape. The fused kernels compile the loops over units in for small
sizes (`lanes.UNROLL_MAX`), which this linear model does not see; it calibrates above that,
where the paths compete, and so underrates the fused path below it, where it wins anyway.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
import torch

from models import kernels
from models.kernels import compile as kernels_compile
from models.kernels import lanes

CALIBRATION_VERSION = 1
# Sizes the calibration times (hidden units, sequences per pass): above lanes.UNROLL_MAX.
_POINTS = ((16, 8), (48, 8), (16, 32))
_STEPS = 48  # time steps per timed pass


@dataclass(frozen=True)
class Line:
    """Seconds per time step of a pass: a + b · work."""

    a: float
    b: float

    def __call__(self, work: float) -> float:
        return self.a + self.b * work


def _work(path: str, kind: str, hidden: int, n_seq: int, n_in: int = 2) -> float:
    rows = 4 * hidden if kind == "lstm" else hidden
    if path == "fused":
        return math.ceil(n_seq / lanes.L) * rows * (2 + n_in + hidden)
    return n_seq * rows * (n_in + hidden)


def _fit(points: list[tuple[float, float]]) -> Line:
    """Least squares of seconds on work, the intercept kept ≥ 0 and the slope > 0."""
    xs = np.array([w for w, _ in points])
    ys = np.array([s for _, s in points])
    b, a = np.polyfit(xs, ys, 1) if len(set(xs.tolist())) > 1 else (ys.mean() / xs.mean(), 0.0)
    return Line(max(0.0, float(a)), max(float(b), 1e-15))


@dataclass(frozen=True)
class Calibration:
    """Per (kind, path): the step cost of a training pass and of a validation pass."""

    train: dict[str, Line]  # "lstm/fused" → Line
    valid: dict[str, Line]

    def to_json(self) -> dict[str, Any]:
        return {
            "train": {k: [v.a, v.b] for k, v in self.train.items()},
            "valid": {k: [v.a, v.b] for k, v in self.valid.items()},
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Calibration:
        return cls(
            train={k: Line(*v) for k, v in d["train"].items()},
            valid={k: Line(*v) for k, v in d["valid"].items()},
        )


def epoch_seconds(
    calibration: Calibration,
    path: str,
    *,
    model: str,
    hidden_size: int,
    batch_size: int,
    population: int,
    n_sequences: tuple[int, int],
    seq_len: int,
    threads: int,
) -> float:
    """The model's seconds per epoch of `path` for this run's shape."""
    n_train, n_valid = n_sequences
    key = f"{model}/{path}"
    train_line, valid_line = calibration.train[key], calibration.valid[key]
    batch = min(batch_size, n_train)
    n_full, rest = divmod(n_train, batch)
    if path == "fused":
        parts = max(1, min(threads, population))
        members = math.ceil(population / parts)  # the busiest thread's
        train = n_full * train_line(_work(path, model, hidden_size, members * batch))
        if rest:
            train += train_line(_work(path, model, hidden_size, members * rest))
        per_pass = max(1, min(n_valid, 512 // members))
        valid = 0.0
        for row0 in range(0, n_valid, per_pass):
            n = min(per_pass, n_valid - row0)
            valid += valid_line(_work(path, model, hidden_size, members * n))
    else:
        train = population * n_full * train_line(_work(path, model, hidden_size, batch))
        if rest:
            train += population * train_line(_work(path, model, hidden_size, rest))
        valid = population * valid_line(_work(path, model, hidden_size, min(64, n_valid)))
        valid *= math.ceil(n_valid / 64)
    if population == 1 and threads > 1:  # validation beside the next epoch's training
        return seq_len * max(train, valid)
    return seq_len * (train + valid)


# --- measuring ---------------------------------------------------------------------------------


def _timed(fn: Callable[[], Any], repeat: int = 5) -> float:
    fn()  # compile, warm caches
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _measure(kind: str, path: str, hidden: int, n_seq: int) -> tuple[float, float]:
    """Seconds per step of a training pass and of a validation pass over n_seq sequences."""
    from models.paths import FusedPath, TorchPath
    from models.population import build_population
    from models.training import _clip_per_member, make_optimizer

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n_seq, _STEPS, 2, generator=gen) * 2 - 1
    t = torch.rand(n_seq, _STEPS, 1, generator=gen)
    pop = build_population(kind, seed=0, size=1, n_hidden=hidden)
    optimizer = make_optimizer(pop, 1e-3)
    engine: FusedPath | TorchPath
    if path == "fused":
        engine = FusedPath(pop, x, t, x, t, n_seq)
    else:
        engine = TorchPath(pop, x, t, x, t, n_seq, _clip_per_member)
    with engine.threads():
        train = _timed(lambda: engine.train_epoch(pop, optimizer, 1e-3, 0.0))
        valid = _timed(lambda: engine.validate(pop).result())
    return train / _STEPS, valid / _STEPS


def calibrate() -> Calibration:
    """Time both paths of both kinds at `_POINTS` on this machine and fit the lines."""
    train: dict[str, Line] = {}
    valid: dict[str, Line] = {}
    with torch.random.fork_rng(devices=[]):
        for kind in ("lstm", "elman"):
            for path in ("fused", "torch"):
                t_points, v_points = [], []
                for hidden, n_seq in _POINTS:
                    t_step, v_step = _measure(kind, path, hidden, n_seq)
                    work = _work(path, kind, hidden, n_seq)
                    t_points.append((work, t_step))
                    v_points.append((work, v_step))
                train[f"{kind}/{path}"] = _fit(t_points)
                valid[f"{kind}/{path}"] = _fit(v_points)
    return Calibration(train, valid)


def _machine_key() -> str:
    return "|".join(
        [
            f"v{CALIBRATION_VERSION}",
            platform.machine(),
            platform.processor() or _cpu_model(),
            f"threads={kernels.get_threads()}",
            f"torch={torch.__version__}",
            f"numba={numba.__version__}",
            f"kernels={kernels_compile._sources_digest()}",
        ]
    )


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


_lock = threading.Lock()
_memory: dict[str, Calibration] = {}


def calibration_path() -> str | None:
    """Where the calibration is stored: beside the kernels' compiled code."""
    where = kernels_compile._cache_dir()
    return None if where is None else os.path.join(where, "calibration.json")


def load_calibration(*, measure: bool = True) -> Calibration | None:
    """This machine's calibration: from memory, from its file, or (with `measure`) measured
    now and stored. None when there is none and measure is False."""
    key = _machine_key()
    with _lock:
        if key in _memory:
            return _memory[key]
        stored = calibration_path()
        if stored is not None and os.path.exists(stored):
            try:
                with open(stored) as f:
                    entries = json.load(f)
                if key in entries:
                    _memory[key] = Calibration.from_json(entries[key])
                    return _memory[key]
            except (OSError, ValueError, KeyError, TypeError):
                pass  # unreadable: measure again
        if not measure:
            return None
        found = calibrate()
        _memory[key] = found
        if stored is not None:
            _store(stored, key, found)
        return found


def _store(stored: str, key: str, calibration: Calibration) -> None:
    entries: dict[str, Any] = {}
    try:
        with open(stored) as f:
            entries = json.load(f)
    except (OSError, ValueError):
        entries = {}
    entries[key] = calibration.to_json()
    tmp = f"{stored}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(entries, f, indent=1)
        os.replace(tmp, stored)  # atomic: another process never reads half a file
    except OSError:
        pass


def choose_path(
    *,
    model: str,
    hidden_size: int,
    batch_size: int,
    population: int,
    n_sequences: tuple[int, int],
    seq_len: int,
    device: str,
    fused_ok: bool = True,
    calibration: Calibration | None = None,
) -> str:
    """ "fused" or "torch" for this run: "torch" off the CPU (or where the fused kernels do
    not apply), else the one `epoch_seconds` predicts faster with this machine's
    calibration (measured now if there is none yet); ties go to "fused"."""
    if device != "cpu" or not fused_ok:
        return "torch"
    calibration = calibration or load_calibration()
    assert calibration is not None
    shape = dict(
        model=model,
        hidden_size=hidden_size,
        batch_size=batch_size,
        population=population,
        n_sequences=n_sequences,
        seq_len=seq_len,
        threads=kernels.get_threads(),
    )
    fused = epoch_seconds(calibration, "fused", **shape)  # type: ignore[arg-type]
    torch_ = epoch_seconds(calibration, "torch", **shape)  # type: ignore[arg-type]
    return "fused" if fused <= torch_ else "torch"
