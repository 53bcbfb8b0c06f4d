"""Which training path (`models.paths`) a run takes: the one a cost model fitted to this
machine predicts to be faster per epoch.

The model. An epoch is the training batches and the validation passes, each a walk over the
sequences' T steps. A pass costs c + T · (a + b · work): c its fixed cost (calls, set-up),
a + b · work each step's, where work is

    fused: ⌈S / LANES⌉ · R·(2 + I + H)   (lane groups × the weights each step touches)
    torch: S · R·(I + H)                 (sequences × the weights of a step's matrix product)

for a pass over S sequences, R the pre-activation rows (LSTM 4H, Elman H); c, a, b per kind,
path, and training (forward and backward) or validation (forward only). The fused path runs
a population's members in as many threads as the kernels have (`kernels.get_threads`), and a
single network's validation beside the next epoch's training; the torch path splits every
batch's rows over those threads and runs the members one after the other.

Close calls. Where the two predictions are within a factor CLOSE of each other, the model's
linear costs (which miss cache effects of long sequences, thread hand-offs, the unrolled
sizes between the calibrated ones) are not trusted: both paths are timed once at the run's
own shape (`probe`: a couple of batches and a validation pass at two short lengths,
extrapolated to the run's length) and the faster is taken; the probe is stored with the
calibration, so the same shape decides the same way without timing again.

The calibration. c, a, b come from timing both paths at a few sizes and two lengths on this
machine (`calibrate`: seconds, plus the kernels' first compilation), stored as JSON in the
kernels' cache directory (`kernels.compile._cache_dir`), keyed by the machine, the thread
count and the versions of torch, numba and the kernels: a decision is a pure function of
that file and the run's shape. The fused kernels compile the loops over units in for small
sizes (`lanes.UNROLL_MAX`): a regime with costs of its own, calibrated apart.
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
from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np
import torch

from models import kernels
from models.kernels import compile as kernels_compile
from models.kernels import lanes

CALIBRATION_VERSION = 9
# Sizes the calibration times (hidden units, sequences per pass), spanning the range where
# the paths compete (small steps: fixed costs; large: arithmetic). The fused kernels compile
# the loops over units in up to lanes.UNROLL_MAX units, a regime of its own ("fused-unrolled",
# timed at 2 units, the default's, whose kernels a worker compiles anyway).
_POINTS = ((16, 8), (64, 8), (64, 32), (128, 32))
_UNROLLED_POINTS = ((2, 8), (2, 32))
_LENGTHS = (24, 120)  # steps per timed pass: the difference isolates the per-step cost


@dataclass(frozen=True)
class Cost:
    """Seconds of a pass of T steps over `work`: c + T · (a + b · work)."""

    c: float
    a: float
    b: float

    def __call__(self, steps: int, work: float) -> float:
        return self.c + steps * (self.a + self.b * work)


def _rows(kind: str, hidden: int) -> int:
    return 4 * hidden if kind == "lstm" else hidden


def _work(path: str, kind: str, hidden: int, n_seq: int, n_in: int = 2) -> float:
    if path == "fused":
        return math.ceil(n_seq / lanes.L) * _rows(kind, hidden) * (2 + n_in + hidden)
    return n_seq * _rows(kind, hidden) * (n_in + hidden)


def _fit(points: list[tuple[float, float, float]]) -> Cost:
    """From (work, per-step seconds, per-pass seconds) points: the per-step line by least
    squares of relative errors (the points span orders of magnitude; a ≥ 0, b > 0) and the
    median per-pass cost (≥ 0)."""
    xs = np.array([w for w, _, _ in points])
    ys = np.array([s for _, s, _ in points])
    b, a = np.polyfit(xs, ys, 1, w=1.0 / np.maximum(ys, 1e-12))
    c = statistics.median(p for _, _, p in points)
    return Cost(max(0.0, float(c)), max(0.0, float(a)), max(float(b), 1e-15))


@dataclass(frozen=True)
class Calibration:
    """Per "kind/path" (and "kind/fused-unrolled"): the cost of a training pass and of a
    validation pass; and the probes of shapes where the model's predictions were close
    (`probe_key` → seconds per epoch of each path, measured at that shape)."""

    train: dict[str, Cost]
    valid: dict[str, Cost]
    probes: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "train": {k: [v.c, v.a, v.b] for k, v in self.train.items()},
            "valid": {k: [v.c, v.a, v.b] for k, v in self.valid.items()},
            "probes": self.probes,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Calibration:
        return cls(
            train={k: Cost(*v) for k, v in d["train"].items()},
            valid={k: Cost(*v) for k, v in d["valid"].items()},
            probes={k: dict(v) for k, v in d.get("probes", {}).items()},
        )


def _passes(n_rows: int, per_pass: int) -> list[int]:
    """The rows of each pass over n_rows, per_pass at a time."""
    return [min(per_pass, n_rows - r) for r in range(0, n_rows, per_pass)]


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
    split: bool = True,
    layout: str = "lanes",
) -> float:
    """The model's seconds per epoch of `path` for this run's shape (torch: with its rows
    split over the threads, or on one thread; fused: in the lanes or the rows layout, whose
    cost is modelled as the lanes' for the lanes it would fill, with its units padded to a
    multiple of LANES: a pass over S < LANES sequences of H units costs S / LANES · ⌈H⌉/H of
    a lane group's)."""
    n_train, n_valid = n_sequences
    key = f"{model}/{path}"
    if path == "fused" and hidden_size <= lanes.UNROLL_MAX:
        key += "-unrolled"
    train_cost, valid_cost = calibration.train[key], calibration.valid[key]
    batches = _passes(n_train, min(batch_size, n_train))

    def work(n_seq: int) -> float:
        return _work(path, model, hidden_size, n_seq)

    if path == "fused":
        members = math.ceil(population / max(1, min(threads, population)))  # busiest thread

        padding = math.ceil(hidden_size / lanes.L) * lanes.L / hidden_size

        def filled(n_seq: int) -> float:
            # The rows layout pays for the lanes it fills, its units padded to LANES.
            if layout == "lanes":
                return 1.0
            return padding * n_seq / (lanes.L * math.ceil(n_seq / lanes.L))

        train = sum(train_cost(seq_len, work(members * n)) * filled(members * n) for n in batches)
        per_pass = max(1, min(n_valid, 512 // members))  # paths.VALID_LANES
        valid = sum(
            valid_cost(seq_len, work(members * n)) * filled(members * n)
            for n in _passes(n_valid, per_pass)
        )
        if population == 1 and threads > 1:  # validation beside the next epoch's training
            return max(train, valid)
        return train + valid
    # paths.TorchPath: the rows split over the threads, or one thread.
    parts = max(1, threads) if split and min(batch_size, n_train) > 1 else 1
    train = population * sum(train_cost(seq_len, work(math.ceil(n / parts))) for n in batches)
    valid_rows = math.ceil(n_valid / parts)  # the busiest thread's, 64 a call
    valid = population * sum(valid_cost(seq_len, work(n)) for n in _passes(valid_rows, 64))
    if parts == 1 and population == 1 and threads > 1:  # validation beside the training
        return max(train, valid)
    return train + valid


# --- measuring ---------------------------------------------------------------------------------


def _timed(fn: Callable[[], Any], repeat: int = 5) -> float:
    fn()  # compile, warm caches
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _time_path(
    path: str,
    pop: Any,
    x: torch.Tensor,
    t: torch.Tensor,
    xv: torch.Tensor,
    tv: torch.Tensor,
    batch: int,
    repeat: int = 5,
    split: bool | None = None,
    layout: str = "lanes",
) -> tuple[float, float]:
    """Seconds of a training epoch over (x, t) in batches of `batch` rows and of a
    validation pass over (xv, tv), as `models.train` runs them on `path` (median of
    `repeat`, after a first run)."""
    from models.paths import FusedPath, TorchPath
    from models.training import _clip_per_member, make_optimizer

    optimizer = make_optimizer(pop, 1e-3)
    engine: FusedPath | TorchPath
    if path == "fused":
        engine = FusedPath(pop, x, t, xv, tv, batch, layout)
    else:
        engine = TorchPath(pop, x, t, xv, tv, batch, _clip_per_member, split=split)
    with engine.threads():
        train = _timed(lambda: engine.train_epoch(pop, optimizer, 1e-3, 0.0), repeat)
        valid = _timed(lambda: engine.validate(pop).result(), repeat)
    return train, valid


def _measure(kind: str, path: str, hidden: int, n_seq: int, steps: int) -> tuple[float, float]:
    """Seconds of one training pass and one validation pass over n_seq sequences of `steps`
    steps, as `models.train` runs them on this path."""
    from models.population import build_population

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n_seq, steps, 2, generator=gen) * 2 - 1
    t = torch.rand(n_seq, steps, 1, generator=gen)
    pop = build_population(kind, seed=0, size=1, n_hidden=hidden)
    return _time_path(path, pop, x, t, x, t, n_seq, split=True)


def calibrate() -> Calibration:
    """Time both paths of both kinds at `_POINTS` and `_LENGTHS` here; fit the costs."""
    train: dict[str, Cost] = {}
    valid: dict[str, Cost] = {}
    t1, t2 = _LENGTHS
    parts = kernels.get_threads()
    regimes = (("fused", _POINTS), ("fused-unrolled", _UNROLLED_POINTS), ("torch", _POINTS))
    with torch.random.fork_rng(devices=[]):
        for kind in ("lstm", "elman"):
            for name, points in regimes:
                path = name.split("-")[0]
                t_points: list[tuple[float, float, float]] = []
                v_points: list[tuple[float, float, float]] = []
                for hidden, n_seq in points:
                    short = _measure(kind, path, hidden, n_seq, t1)
                    long = _measure(kind, path, hidden, n_seq, t2)
                    # The work of one pass as `epoch_seconds` counts it (torch: one part).
                    per_part = n_seq if path == "fused" else math.ceil(n_seq / parts)
                    work = _work(path, kind, hidden, per_part)
                    for fitted, s, ell in (
                        (t_points, short[0], long[0]),
                        (v_points, short[1], long[1]),
                    ):
                        step = (ell - s) / (t2 - t1)
                        fitted.append((work, step, s - t1 * step))
                train[f"{kind}/{name}"] = _fit(t_points)
                valid[f"{kind}/{name}"] = _fit(v_points)
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


def _without_threads(key: str) -> str:
    return "|".join(part for part in key.split("|") if not part.startswith("threads="))


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


def load_calibration(*, measure: bool = True, any_threads: bool = False) -> Calibration | None:
    """This machine's calibration: from memory, from its file, or (with `measure`) measured
    now and stored. None when there is none and measure is False. With any_threads, one
    measured for another thread count serves too (single-thread costs, as prediction's)."""
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
                if any_threads:
                    same = [k for k in entries if _without_threads(k) == _without_threads(key)]
                    if same:
                        return Calibration.from_json(entries[same[0]])
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


CLOSE = 3.0  # predictions within this factor are decided by a probe at the run's shape
PROBE_LENGTHS = (64, 256)  # steps of a probe's two timings
# What a run can train on here: the fused path in its two layouts (`paths.FusedPath`'s
# `layout`; "rows" only for batches that leave lanes empty), or the torch path with its rows
# split over the threads or on one (`paths.TorchPath`'s `split`).
CANDIDATES = ("fused", "fused-rows", "torch-split", "torch-serial")


def probe_key(shape: dict[str, Any]) -> str:
    return json.dumps(shape, sort_keys=True)


def probe(shape: dict[str, Any], candidates: list[str]) -> dict[str, float]:
    """Seconds per epoch of each of `candidates` at this shape, from timing it on random
    data of the shape's sizes (two batches and a validation pass) at PROBE_LENGTHS steps,
    extrapolated linearly to the shape's length (so fixed costs are not scaled with it) and
    scaled to its numbers of batches and validation rows."""
    from models.population import build_population

    n_train, n_valid = shape["n_sequences"]
    batch = min(shape["batch_size"], n_train)
    rows, valid_rows = min(n_train, 2 * batch), min(n_valid, 64)
    lengths = sorted({min(shape["seq_len"], n) for n in PROBE_LENGTHS})
    out = {}
    with torch.random.fork_rng(devices=[]):
        for candidate in candidates:
            path = candidate.split("-")[0]
            split = candidate == "torch-split"
            layout = "rows" if candidate == "fused-rows" else "lanes"
            seconds = []
            for steps in lengths:
                gen = torch.Generator().manual_seed(0)
                x = torch.rand(rows, steps, 2, generator=gen) * 2 - 1
                t = torch.rand(rows, steps, 1, generator=gen)
                xv = x.repeat(math.ceil(valid_rows / rows), 1, 1)[:valid_rows]
                tv = t.repeat(math.ceil(valid_rows / rows), 1, 1)[:valid_rows]
                pop = build_population(
                    shape["model"], seed=0, size=shape["population"], n_hidden=shape["hidden_size"]
                )
                train, valid = _time_path(
                    path, pop, x, t, xv, tv, batch, repeat=3, split=split, layout=layout
                )
                train *= n_train / rows
                valid *= n_valid / valid_rows
                # Validation beside the next epoch's training: one member, one training thread.
                beside = shape["population"] == 1 and shape["threads"] > 1
                beside = beside and (path == "fused" or not split or batch < 2)
                seconds.append(max(train, valid) if beside else train + valid)
            if len(lengths) == 1:
                out[candidate] = seconds[0] * shape["seq_len"] / lengths[0]
            else:
                per_step = (seconds[1] - seconds[0]) / (lengths[1] - lengths[0])
                out[candidate] = seconds[0] + per_step * (shape["seq_len"] - lengths[0])
    return out


def estimates(
    *,
    model: str,
    hidden_size: int,
    batch_size: int,
    population: int,
    n_sequences: tuple[int, int],
    seq_len: int,
    calibration: Calibration | None = None,
) -> dict[str, float]:
    """Seconds per epoch of each of CANDIDATES for this shape on the CPU: from the cost model
    (`epoch_seconds`); where others are within CLOSE of the best, those contenders' from the
    shape's `probe` instead (timed now if it has none yet, and kept with the calibration)."""
    stored = calibration is None
    calibration = calibration or load_calibration()
    assert calibration is not None
    shape = dict(
        model=model,
        hidden_size=hidden_size,
        batch_size=batch_size,
        population=population,
        n_sequences=list(n_sequences),
        seq_len=seq_len,
        threads=kernels.get_threads(),
    )
    modelled = {
        "fused": epoch_seconds(calibration, "fused", **shape),  # type: ignore[arg-type]
        "torch-split": epoch_seconds(calibration, "torch", split=True, **shape),  # type: ignore[arg-type]
        "torch-serial": epoch_seconds(calibration, "torch", split=False, **shape),  # type: ignore[arg-type]
    }
    rows_cost = epoch_seconds(calibration, "fused", layout="rows", **shape)  # type: ignore[arg-type]
    if rows_cost < modelled["fused"]:  # (batches that leave lanes empty, units not padded much)
        modelled["fused-rows"] = rows_cost
    best = min(modelled.values())
    contenders = [c for c in CANDIDATES if c in modelled and modelled[c] <= CLOSE * best]
    if len(contenders) == 1:
        return modelled
    key = probe_key(shape)
    if key not in calibration.probes:
        timed = probe(shape, contenders)
        with _lock:
            calibration.probes[key] = timed
            where = calibration_path()
            if stored and where is not None:
                _store(where, _machine_key(), calibration)
    return {**modelled, **calibration.probes[key]}


@dataclass(frozen=True)
class Plan:
    """How a run trains: its path, the fused path's layout and the torch path's split."""

    path: str  # "fused" or "torch"
    layout: str = "lanes"  # the fused path's: "lanes" or "rows"
    split: bool = False  # the torch path's: a batch's rows over the threads, or one thread


def plan(
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
    path: str | None = None,
) -> Plan:
    """The `Plan` for this run: the torch path off the CPU (or where the fused kernels do not
    apply); else `path` if given, otherwise the path of the fastest of `estimates` (ties go
    to "fused"), with that path's faster layout or split in `estimates`."""
    if device != "cpu" or not fused_ok:
        return Plan("torch")
    found = estimates(
        model=model, hidden_size=hidden_size, batch_size=batch_size, population=population,
        n_sequences=n_sequences, seq_len=seq_len, calibration=calibration,
    )  # fmt: skip
    rows = found.get("fused-rows", math.inf)
    if path is None:
        fused = min(found["fused"], rows)
        path = "fused" if fused <= min(found["torch-split"], found["torch-serial"]) else "torch"
    can_split = kernels.get_threads() > 1 and min(batch_size, n_sequences[0]) > 1
    return Plan(
        path,
        layout="rows" if rows < found["fused"] else "lanes",
        split=can_split and found["torch-split"] < found["torch-serial"],
    )


def choose_path(**shape: Any) -> str:
    """`plan(**shape).path`: "fused" or "torch" for this run."""
    return plan(**shape).path


def predict_path(*, model: str, hidden_size: int, n_sequences: int, seq_len: int) -> str:
    """ "fused" or "torch" for a forward pass over n_sequences (on the CPU, one thread): the
    cheaper validation pass in this machine's calibration (of any thread count; none is
    measured for a prediction: without one, the fused kernels up to their compiled-in
    sizes, torch's layers beyond)."""
    calibration = load_calibration(measure=False, any_threads=True)
    if calibration is None:
        return "fused" if hidden_size <= lanes.UNROLL_MAX else "torch"
    fused_key = f"{model}/fused" + ("-unrolled" if hidden_size <= lanes.UNROLL_MAX else "")
    fused = calibration.valid[fused_key](seq_len, _work("fused", model, hidden_size, n_sequences))
    torch_ = calibration.valid[f"{model}/torch"](
        seq_len, _work("torch", model, hidden_size, n_sequences)
    )
    return "fused" if fused <= torch_ else "torch"
