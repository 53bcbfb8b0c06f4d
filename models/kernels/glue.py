"""Checks and conversions shared by the kernels' torch wrappers."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from models.kernels.compile import _njit

DTYPES = (torch.float32, torch.float64)


class Record:
    """A base for the namedtuples that carry a kernel call's arrays: built by keyword only,
    so two arrays of one type cannot trade places unseen (positionally they would, and the
    kernel would compile and run). numba takes a record as a namedtuple and the kernel reads
    its fields by name. Use: `class Pass(Record, namedtuple("Pass", "a b"))` with
    `__slots__ = ()`."""

    __slots__ = ()

    def __new__(cls, **fields: Any) -> Any:
        return super().__new__(cls, **fields)


def _np(t: torch.Tensor) -> np.ndarray:
    """A numpy view of a CPU tensor, made contiguous first (numba compiles per layout)."""
    return t.detach().contiguous().numpy()


def _check(name: str, t: torch.Tensor, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    if t.device.type != "cpu":
        raise ValueError(f"{name} must be on the CPU, got {t.device}")
    if t.dtype != dtype or t.dtype not in DTYPES:
        raise ValueError(f"{name} must be float32 or float64 like the input, got {t.dtype}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")


# --- sequences in parallel threads ----------------------------------------------------------
# The K·B sequences of a pass (every member on every row of the batch) are independent
# recurrences, and the compiled loops release the GIL, so they can be split into groups
# that run at the same time on different cores. Each sequence's arithmetic is the same
# whatever group it is in, and the gradient sums are kept per sequence and added up per
# member afterwards in sequence order, so results are bit for bit those of one pass, whatever
# the number of threads.

_threads = 1
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def set_threads(n: int) -> None:
    """Run a pass's sequences in up to `n` threads (1: all in the calling thread)."""
    global _threads
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"threads must be a positive integer, got {n!r}")
    _threads = n


def get_threads() -> int:
    return _threads


def sequence_groups(n_seq: int) -> list[tuple[int, int]]:
    """[start, stop) sequence ranges, one per thread to use, as even as possible."""
    parts = max(1, min(_threads, n_seq))
    edges = [round(i * n_seq / parts) for i in range(parts + 1)]
    return [(edges[i], edges[i + 1]) for i in range(parts)]


def run_groups(fn: Callable[[int, int], None], groups: list[tuple[int, int]]) -> None:
    """fn(start, stop) for every group: the first in the calling thread, the others in the
    pool at the same time (the caller works instead of sleeping while a pool thread wakes)."""
    global _pool
    if len(groups) == 1:
        fn(*groups[0])
        return
    with _pool_lock:
        if _pool is None or _pool._max_workers < len(groups) - 1:
            _pool = ThreadPoolExecutor(max_workers=len(groups) - 1, thread_name_prefix="rnnlab-k")
        pool = _pool
    futures = [pool.submit(fn, a, b) for a, b in groups[1:]]
    try:
        fn(*groups[0])
    finally:
        for future in futures:
            future.result()


def submit(fn: Callable[[], Any]) -> Future[Any]:
    """fn() in a pool thread (the same pool as `run_groups`'), now."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rnnlab-k")
        pool = _pool
    return pool.submit(fn)


@_njit(inline="always")
def _expand(v, n_hidden, out):
    """out[k, n·H + j] = v[n·H + k] for every j: each sequence's state value k repeated over
    its H units, so that a kernel's loop over units reads it at the unit's own position
    (contiguous, vectorized) instead of gathering it unit by unit."""
    for k in range(out.shape[0]):
        for n in range(out.shape[1] // n_hidden):
            for j in range(n_hidden):
                out[k, n * n_hidden + j] = v[n * n_hidden + k]


# Time steps moved at once between a kernel's [N', T, H] arrays and its time-major buffers.
_CHUNK = 32


@_njit(inline="always")
def _load(src, t0, t1, dst, row0):
    """dst[row0 + s, n·H + j] = src[n, t0 + s, j] for s < t1 - t0: a time chunk of [N',T,H]
    laid out time-major, so that a step's loop over units reads one contiguous row."""
    n_hidden = src.shape[2]
    for n in range(src.shape[0]):
        for s in range(t1 - t0):
            for j in range(n_hidden):
                dst[row0 + s, n * n_hidden + j] = src[n, t0 + s, j]


@_njit(inline="always")
def _store(src, t0, t1, dst):
    """dst[n, t0 + s, j] = src[s, n·H + j]: a time-major chunk back into [N',T,H]."""
    n_hidden = dst.shape[2]
    for n in range(dst.shape[0]):
        for s in range(t1 - t0):
            for j in range(n_hidden):
                dst[n, t0 + s, j] = src[s, n * n_hidden + j]


@_njit(inline="always")
def _load_units(src, t0, t1, dst, row0):
    """dst[row0 + s, j·N' + n] = src[n, t0 + s, j] for s < t1 - t0 (src[N',T,C]): a time
    chunk laid out time-major and unit-major, so that a step's loops over a unit's
    sequences read contiguous runs."""
    n_seq, _, width = src.shape
    for n in range(n_seq):
        for s in range(t1 - t0):
            for j in range(width):
                dst[row0 + s, j * n_seq + n] = src[n, t0 + s, j]


@_njit(inline="always")
def _store_units(src, t0, t1, dst, row0):
    """dst[n, t0 + s, j] = src[row0 + s, j·N' + n]: a `_load_units` chunk back into [N',T,C]."""
    n_seq, _, width = dst.shape
    for n in range(n_seq):
        for s in range(t1 - t0):
            for j in range(width):
                dst[n, t0 + s, j] = src[row0 + s, j * n_seq + n]


@_njit
def _reduce_lanes(lanes, n_batch, out):
    """out[m, c] = Σ_b lanes[m·B + b, c] in sequence order: a member's gradient from its
    sequences' sums (lanes and out flattened to [sequences, c] and [members, c])."""
    n_members, width = out.shape
    for m in range(n_members):
        for c in range(width):
            s = 0.0
            for bi in range(n_batch):
                s += lanes[m * n_batch + bi, c]
            out[m, c] = s


def reduce_members(lanes: np.ndarray, n_batch: int, like: torch.Tensor) -> torch.Tensor:
    """A tensor shaped and typed like `like` [K, …]: per-sequence sums [K·B, …] added up per
    member, in sequence order (so the result does not depend on how sequences were grouped)."""
    out = torch.empty(like.shape, dtype=like.dtype)
    _reduce_lanes(
        lanes=lanes.reshape(lanes.shape[0], -1), n_batch=n_batch,
        out=out.view(out.shape[0], -1).numpy(),
    )  # fmt: skip
    return out


@_njit
def _reduce_rows(lanes, n_batch, out):
    """out[b, c] = Σ_m lanes[m·B + b, c] in member order: a row's gradient from the sequences
    of every member that read it (lanes and out flattened to [sequences, c] and [rows, c])."""
    n_members = lanes.shape[0] // n_batch
    for bi in range(n_batch):
        for c in range(out.shape[1]):
            s = 0.0
            for m in range(n_members):
                s += lanes[m * n_batch + bi, c]
            out[bi, c] = s


def reduce_rows(lanes: np.ndarray, n_batch: int, like: torch.Tensor) -> torch.Tensor:
    """A tensor shaped and typed like `like` [B, …]: per-sequence sums [K·B, …] added up per
    row of the batch, in member order (so the result does not depend on how sequences were
    grouped), then rounded once to like's type."""
    out = torch.empty(like.shape, dtype=like.dtype)
    _reduce_rows(
        lanes=lanes.reshape(lanes.shape[0], -1), n_batch=n_batch,
        out=out.view(out.shape[0], -1).numpy(),
    )  # fmt: skip
    return out
