"""Fused recurrent kernels: the Elman and LSTM recurrences as compiled loops (CPU) and cuDNN (CUDA).

Why: with 2 hidden units, each time step is a handful of multiply-adds, so PyTorch's eager
per-step ops (dispatch, autograd bookkeeping, tiny allocations) cost 100× the arithmetic. Here
each recurrence is one numba-compiled loop over the whole sequence, forward and BPTT alike,
wrapped in a `torch.autograd.Function`. Only the recurrence lives here: the input projections
and read-outs around it stay ordinary `nn.Linear` calls over whole sequences, so autograd
carries the gradients from these Functions on to every parameter and to the model input.

Shapes: B batch, T time steps, H hidden units, G = 4H LSTM gate rows (order i, f, g, o as in
`torch.nn.LSTM`). All arrays are C-contiguous; float32 and float64 are both compiled (float64
for gradcheck). Every loop runs serially over the batch: see `_njit` for why not `prange`.

Compiled code is cached on disk (numba's `cache=True`), so a process compiles a kernel once at
its first call, or just loads it when an earlier process has already compiled it.
"""

from __future__ import annotations

import contextlib
import math
import os
import stat
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numba
import numpy as np
import torch
from numba.core import config as numba_config
from torch.autograd.function import FunctionCtx, once_differentiable

DTYPES = (torch.float32, torch.float64)
# Inference runs over time in chunks of about this many B×G elements, so memory stays
# proportional to the input and output, never to the per-step gates (see `chunk_steps`).
INFERENCE_CHUNK_ELEMENTS = 1 << 20


# --- numba compile cache --------------------------------------------------------------------


def _fallback_cache_dir() -> str | None:
    """A private per-user cache dir under the temp dir, or None if it cannot be trusted.

    Numba's cache holds pickles and machine code, so a directory someone else could have
    planted in a shared /tmp must not be loaded: it must be ours and writable by us only.
    """
    uid = os.getuid() if hasattr(os, "getuid") else 0
    path = os.path.join(tempfile.gettempdir(), f"rnnlab-numba-cache-{uid}")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_mode & 0o022:
        return None
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        return None
    return path


@contextlib.contextmanager
def _numba_cache_dir(path: str) -> Iterator[None]:
    # Numba's locators read config.CACHE_DIR when a dispatcher is created and keep the path,
    # so overriding it just around the decoration affects our functions only.
    saved = numba_config.CACHE_DIR
    numba_config.CACHE_DIR = path
    try:
        yield
    finally:
        numba_config.CACHE_DIR = saved


def _njit(fn: Callable[..., Any] | None = None, **options: Any) -> Any:
    """`numba.njit(cache=True, ...)` with a cache location that works from a read-only install.

    Numba looks, in order, at NUMBA_CACHE_DIR, `__pycache__` next to this file, then its
    user-wide dir (~/.cache/numba); when none is writable (a read-only image whose user has no
    writable home) it refuses to decorate. Then we point it at a private temp dir, and failing
    that compile in memory: once per process, slower to start but still correct.

    error_model="numpy": IEEE division instead of a ZeroDivisionError check in every step.
    nogil: the loops touch only arrays, so other threads (a web server's event loop, other
    requests) run while a long sequence is computed.

    No `parallel=True`: on 2 cores, prange over the batch made the LSTM forward kernel 1.5×
    (batch 3) and 1.8× (batch 9) faster alone, but a whole training epoch only went from 9.3
    to 8.8 ms with 1 torch thread and got slower (10.0 ms) with 2, as numba's threads and
    torch's compete for the cores; it gains nothing for a single sequence. It would also bring
    an OpenMP runtime that is not fork-safe, and numba's fallback "workqueue" layer, which
    aborts the process when two threads launch parallel kernels at once (a threaded web
    server does).
    """
    if fn is None:
        return lambda f: _njit(f, **options)
    options = {"cache": True, "error_model": "numpy", "nogil": True, **options}
    try:
        return numba.njit(**options)(fn)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        pass
    path = _fallback_cache_dir()
    if path is not None:
        with _numba_cache_dir(path):
            try:
                return numba.njit(**options)(fn)
            except RuntimeError:
                pass
    return numba.njit(**{**options, "cache": False})(fn)


# --- activations ----------------------------------------------------------------------------
# Both from one exp, in float64 whatever the storage type. libm's tanh measured 3× slower than
# exp here (16 vs 4.3 ns), and tanh is on every step's critical path. Absolute error ≤ 4e-16;
# exp overflowing to inf still gives the right limits (tanh → ±1, sigmoid → 0).


@_njit(inline="always")
def _tanh(z):
    return 1.0 - 2.0 / (math.exp(2.0 * z) + 1.0)


@_njit(inline="always")
def _sigmoid(z):
    return 1.0 / (1.0 + math.exp(-z))


# --- Elman: h_0 = tanh(a_0); h_t = tanh(a_t + W h_{t-1} + b) --------------------------------


@_njit
def _elman_forward(a, w, b, h, start, hs):
    """hs[B,T,H] from a[B,T,H], w[H,H], b[H]; h[B,H] is the state carried in and out.

    With `start`, step 0 is the sequence's first step (no recurrent term, not even b) and `h`
    is ignored on entry; otherwise `h` holds the step before a[:, 0] (chunked inference).
    """
    n_batch, n_steps, n_hidden = a.shape
    for bi in range(n_batch):
        h_prev = h[bi]  # (H,) view: updated in place, so it always holds the latest state
        for t in range(n_steps):
            h_t = hs[bi, t]  # (H,)
            if t == 0 and start:
                for j in range(n_hidden):
                    h_t[j] = _tanh(a[bi, 0, j])
            else:
                for j in range(n_hidden):
                    r = b[j]  # hr(h_{t-1}) = W h_{t-1} + b, then + l1(x_t), as the reference
                    for k in range(n_hidden):
                        r += w[j, k] * h_prev[k]
                    h_t[j] = _tanh(a[bi, t, j] + r)
            for j in range(n_hidden):
                h_prev[j] = h_t[j]


@_njit
def _elman_backward(dhs, hs, w, da, dw, db):
    """BPTT: da[B,T,H], dw[H,H], db[H] from dL/dhs[B,T,H] and the forward's hs[B,T,H].

    z_t is tanh's argument: dz_t = (dhs_t + W^T dz_{t+1}) * (1 - h_t^2), da_t = dz_t, and
    dW += dz_t h_{t-1}^T, db += dz_t for t >= 1 only (step 0 has no recurrent term).
    """
    n_batch, n_steps, n_hidden = hs.shape
    dw_acc = np.zeros((n_hidden, n_hidden))  # float64 sums: 1e5+ terms in float32 drift
    db_acc = np.zeros(n_hidden)
    dz = np.empty(n_hidden)
    carry = np.empty(n_hidden)  # W^T dz_{t+1}: the gradient reaching h_t through step t+1
    for bi in range(n_batch):
        carry[:] = 0.0
        for t in range(n_steps - 1, -1, -1):
            for j in range(n_hidden):
                h = hs[bi, t, j]
                dz[j] = (dhs[bi, t, j] + carry[j]) * (1.0 - h * h)
                da[bi, t, j] = dz[j]
            if t == 0:
                break
            for j in range(n_hidden):
                db_acc[j] += dz[j]
                for k in range(n_hidden):
                    dw_acc[j, k] += dz[j] * hs[bi, t - 1, k]
            for k in range(n_hidden):
                s = 0.0
                for j in range(n_hidden):
                    s += w[j, k] * dz[j]
                carry[k] = s
    dw[:] = dw_acc
    db[:] = db_acc


# --- LSTM: torch.nn.LSTM's cell, gates i, f, g, o -------------------------------------------


@_njit(inline="always")
def _lstm_cell(gx_t, w, h_prev, c, z, h_t):
    """One step in place: z[G] ← activated gates, c[H] ← c_t, h_t[H] ← h_t.

    gx_t[G] is x_t W_ih^T + b_ih + b_hh; w[G,H] is W_hh; h_prev[H] is h_{t-1}.
    """
    n_gates, n_hidden = w.shape
    for r in range(n_gates):
        s = gx_t[r]
        for k in range(n_hidden):
            s += w[r, k] * h_prev[k]
        z[r] = s
    for j in range(n_hidden):
        i = _sigmoid(z[j])
        f = _sigmoid(z[n_hidden + j])
        g = _tanh(z[2 * n_hidden + j])
        o = _sigmoid(z[3 * n_hidden + j])
        z[j], z[n_hidden + j], z[2 * n_hidden + j], z[3 * n_hidden + j] = i, f, g, o
        c[j] = f * c[j] + i * g
        h_t[j] = o * _tanh(c[j])


@_njit
def _lstm_forward_train(gx, w, hs, cs, gates):
    """hs[B,T,H] from gx[B,T,G] and zero initial state; keeps cs[B,T,H] and gates[B,T,G]
    (activated) for the backward pass."""
    n_batch, n_steps, _ = gx.shape
    n_hidden = w.shape[1]
    h0 = np.zeros(n_hidden, dtype=hs.dtype)
    c = np.empty(n_hidden, dtype=hs.dtype)
    for bi in range(n_batch):
        c[:] = 0.0
        for t in range(n_steps):
            h_prev = hs[bi, t - 1] if t > 0 else h0
            _lstm_cell(gx[bi, t], w, h_prev, c, gates[bi, t], hs[bi, t])
            cs[bi, t] = c


@_njit
def _lstm_forward_infer(gx, w, h, c, hs):
    """hs[B,T,H] from gx[B,T,G]; h[B,H] and c[B,H] carry the state in and out.

    Stores no gates or cells: memory is hs plus O(G).
    """
    n_batch, n_steps, n_gates = gx.shape
    z = np.empty(n_gates, dtype=hs.dtype)
    for bi in range(n_batch):
        h_prev = h[bi]  # (H,)
        for t in range(n_steps):
            _lstm_cell(gx[bi, t], w, h_prev, c[bi], z, hs[bi, t])
            h_prev = hs[bi, t]
        h[bi] = h_prev


@_njit
def _lstm_backward(dhs, hs, cs, gates, w, dgx, dw):
    """BPTT: dgx[B,T,G] (= dL/d pre-activation gates) and dw[G,H] from dL/dhs[B,T,H].

    With c_t = f c_{t-1} + i g and h_t = o tanh(c_t), walking back in time:
    dh = dhs_t + W^T dz_{t+1};  dc = dc_{t+1} f_{t+1} + dh o (1 - tanh²c_t);
    dz = [dc g · i(1-i), dc c_{t-1} · f(1-f), dc i · (1-g²), dh tanh c_t · o(1-o)];
    dW += dz_t h_{t-1}^T.
    """
    n_batch, n_steps, n_hidden = hs.shape
    n_gates = 4 * n_hidden
    dw_acc = np.zeros((n_gates, n_hidden))  # float64 sums, as in _elman_backward
    dz = np.empty(n_gates)
    dh_carry = np.empty(n_hidden)  # W^T dz_{t+1}
    dc_carry = np.empty(n_hidden)  # dL/dc_t through c_{t+1} = f_{t+1} c_t + ...
    for bi in range(n_batch):
        dh_carry[:] = 0.0
        dc_carry[:] = 0.0
        for t in range(n_steps - 1, -1, -1):
            for j in range(n_hidden):
                i = gates[bi, t, j]
                f = gates[bi, t, n_hidden + j]
                g = gates[bi, t, 2 * n_hidden + j]
                o = gates[bi, t, 3 * n_hidden + j]
                c_prev = cs[bi, t - 1, j] if t > 0 else 0.0
                tc = _tanh(cs[bi, t, j])
                dh = dhs[bi, t, j] + dh_carry[j]
                dc = dc_carry[j] + dh * o * (1.0 - tc * tc)
                dz[j] = dc * g * i * (1.0 - i)
                dz[n_hidden + j] = dc * c_prev * f * (1.0 - f)
                dz[2 * n_hidden + j] = dc * i * (1.0 - g * g)
                dz[3 * n_hidden + j] = dh * tc * o * (1.0 - o)
                dc_carry[j] = dc * f
            for r in range(n_gates):
                dgx[bi, t, r] = dz[r]
            if t == 0:
                break  # h_{-1} = 0: no weight gradient, nothing earlier to reach
            for r in range(n_gates):
                for k in range(n_hidden):
                    dw_acc[r, k] += dz[r] * hs[bi, t - 1, k]
            for k in range(n_hidden):
                s = 0.0
                for r in range(n_gates):
                    s += w[r, k] * dz[r]
                dh_carry[k] = s
    dw[:] = dw_acc


# --- torch glue -----------------------------------------------------------------------------


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


def _check_elman(a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> None:
    if a.dim() != 3:
        raise ValueError(f"a must be [batch, time, hidden], got {tuple(a.shape)}")
    n = a.shape[2]
    _check("a", a, a.dtype, tuple(a.shape))
    _check("weight", weight, a.dtype, (n, n))
    _check("bias", bias, a.dtype, (n,))


def _check_lstm(gx: torch.Tensor, weight_hh: torch.Tensor) -> None:
    if gx.dim() != 3 or gx.shape[2] % 4:
        raise ValueError(f"gx must be [batch, time, 4 * hidden], got {tuple(gx.shape)}")
    _check("gx", gx, gx.dtype, tuple(gx.shape))
    _check("weight_hh", weight_hh, gx.dtype, (gx.shape[2], gx.shape[2] // 4))


class ElmanFunction(torch.autograd.Function):
    """hs = Elman recurrence of (a, weight, bias); see `elman_recurrence`."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx, a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        hs = torch.empty(a.shape, dtype=a.dtype)
        h = torch.empty(a.shape[0], a.shape[2], dtype=a.dtype)  # final state, unused here
        _elman_forward(_np(a), _np(weight), _np(bias), h.numpy(), True, hs.numpy())
        ctx.save_for_backward(hs, weight)
        return hs

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: Any, dhs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        hs, weight = ctx.saved_tensors
        da = torch.empty_like(hs)
        dw = torch.empty_like(weight, memory_format=torch.contiguous_format)
        db = torch.empty(hs.shape[2], dtype=hs.dtype)
        _elman_backward(_np(dhs), _np(hs), _np(weight), da.numpy(), dw.numpy(), db.numpy())
        if hs.shape[1] == 1:
            # One step never uses hr: no gradient at all (None), as in the reference, so that
            # an optimizer skips hr exactly as it does there instead of seeing zeros.
            return da, None, None
        return da, dw, db


class LSTMFunction(torch.autograd.Function):
    """hs = LSTM recurrence of (gx, weight_hh); see `lstm_recurrence`."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx, gx: torch.Tensor, weight_hh: torch.Tensor
    ) -> torch.Tensor:
        n_batch, n_steps, n_gates = gx.shape
        hs = torch.empty(n_batch, n_steps, n_gates // 4, dtype=gx.dtype)
        cs = torch.empty_like(hs)
        gates = torch.empty(n_batch, n_steps, n_gates, dtype=gx.dtype)
        _lstm_forward_train(_np(gx), _np(weight_hh), hs.numpy(), cs.numpy(), gates.numpy())
        ctx.save_for_backward(hs, cs, gates, weight_hh)
        return hs

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: Any, dhs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hs, cs, gates, weight_hh = ctx.saved_tensors
        dgx = torch.empty_like(gates)
        dw = torch.empty(weight_hh.shape, dtype=weight_hh.dtype)
        _lstm_backward(
            _np(dhs), _np(hs), _np(cs), _np(gates), _np(weight_hh), dgx.numpy(), dw.numpy()
        )
        return dgx, dw


def elman_recurrence(a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """hs[B,T,H]: h_0 = tanh(a_0), h_t = tanh(a_t + weight h_{t-1} + bias), differentiable.

    a[B,T,H] is the input projection l1(x); weight[H,H] and bias[H] are hr's. CPU only.
    """
    _check_elman(a, weight, bias)
    return ElmanFunction.apply(a, weight, bias)


def lstm_recurrence(gx: torch.Tensor, weight_hh: torch.Tensor) -> torch.Tensor:
    """hs[B,T,H] of torch.nn.LSTM's cell from zero state, differentiable.

    gx[B,T,4H] is x W_ih^T + b_ih + b_hh (the input projection, hoisted out of the loop);
    weight_hh[4H,H] is W_hh. CPU only.
    """
    _check_lstm(gx, weight_hh)
    return LSTMFunction.apply(gx, weight_hh)


def elman_inference(
    a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, h: torch.Tensor, start: bool
) -> torch.Tensor:
    """hs[B,T,H] for one time chunk, no autograd; h[B,H] carries the state in and out.

    `start` marks a[:, 0] as the sequence's first step (h is then ignored on entry).
    """
    _check_elman(a, weight, bias)
    _check("h", h, a.dtype, (a.shape[0], a.shape[2]))
    if not h.is_contiguous():
        raise ValueError("h must be contiguous: it is updated in place")
    hs = torch.empty(a.shape, dtype=a.dtype)
    _elman_forward(_np(a), _np(weight), _np(bias), h.numpy(), bool(start), hs.numpy())
    return hs


def lstm_inference(
    gx: torch.Tensor, weight_hh: torch.Tensor, h: torch.Tensor, c: torch.Tensor
) -> torch.Tensor:
    """hs[B,T,H] for one time chunk, no autograd; h[B,H] and c[B,H] carry the state in and out.

    Zero h and c on entry give torch.nn.LSTM's default initial state.
    """
    _check_lstm(gx, weight_hh)
    for name, t in (("h", h), ("c", c)):
        _check(name, t, gx.dtype, (gx.shape[0], weight_hh.shape[1]))
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous: it is updated in place")
    hs = torch.empty(gx.shape[0], gx.shape[1], weight_hh.shape[1], dtype=gx.dtype)
    _lstm_forward_infer(_np(gx), _np(weight_hh), h.numpy(), c.numpy(), hs.numpy())
    return hs


def chunk_steps(batch: int, width: int) -> int:
    """Time steps per inference chunk so one chunk holds ~INFERENCE_CHUNK_ELEMENTS values."""
    return max(1, INFERENCE_CHUNK_ELEMENTS // max(1, batch * width))


def warm_up() -> None:
    """Compile (or load from the disk cache) every kernel for float32 and float64 now."""
    for dtype in DTYPES:
        a = torch.zeros(1, 2, 1, dtype=dtype, requires_grad=True)
        w = torch.zeros(1, 1, dtype=dtype, requires_grad=True)
        b = torch.zeros(1, dtype=dtype, requires_grad=True)
        elman_recurrence(a, w, b).sum().backward()
        gx = torch.zeros(1, 2, 4, dtype=dtype, requires_grad=True)
        w4 = torch.zeros(4, 1, dtype=dtype, requires_grad=True)
        lstm_recurrence(gx, w4).sum().backward()
        with torch.no_grad():
            elman_inference(a, w, b, torch.zeros(1, 1, dtype=dtype), True)
            z = torch.zeros(1, 1, dtype=dtype)
            lstm_inference(gx, w4, z, z.clone())


# --- CUDA: the Elman recurrence through cuDNN's RNN_TANH ------------------------------------

# cuDNN copies weights that are not one flat buffer (ours: an identity W_ih next to hr's
# parameters) on every call and says so each time; for an H×H layer the copy is negligible.
_WEIGHT_COPY_WARNING = r"RNN module weights are not part of single contiguous chunk of memory"
_precision_lock = threading.Lock()
_precision_users = 0
_precision_saved: str | bool | None = None


@contextlib.contextmanager
def _ieee_cudnn_rnn() -> Iterator[None]:
    """cuDNN RNNs in full float32 (no TF32) while inside, for the Elman path only.

    By default cuDNN RNNs may round float32 matmul inputs to TF32 (10-bit mantissa) on
    Ampere and later, but the Elman reference runs nn.Linear through cuBLAS in full float32;
    equal results need IEEE math. The flag is process-global, so concurrent users share one
    save/restore (a count under a lock) instead of restoring each other's values.
    """
    global _precision_users, _precision_saved
    rnn = getattr(torch.backends.cudnn, "rnn", None)
    new_api = rnn is not None and hasattr(torch._C, "_get_fp32_precision_getter")
    with _precision_lock:
        if _precision_users == 0:
            if new_api:
                _precision_saved = rnn.fp32_precision  # type: ignore[union-attr]
                rnn.fp32_precision = "ieee"  # type: ignore[union-attr]
            else:  # torch < 2.9: one cuDNN-wide switch
                _precision_saved = torch.backends.cudnn.allow_tf32
                torch.backends.cudnn.allow_tf32 = False
        _precision_users += 1
    try:
        yield
    finally:
        with _precision_lock:
            _precision_users -= 1
            if _precision_users == 0:
                if new_api:
                    rnn.fp32_precision = _precision_saved  # type: ignore[union-attr]
                else:
                    torch.backends.cudnn.allow_tf32 = _precision_saved


def _rnn_tanh_steps(a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """hs[B,T,H] with steps 1… by torch's fused RNN_TANH (cuDNN on CUDA).

    RNN_TANH computes tanh(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh); feeding a_t as x_t with
    W_ih = I and b_ih = 0 gives tanh(a_t + W h_{t-1} + b) exactly, from h_0 = tanh(a_0).
    """
    h0 = torch.tanh(a[:, 0])  # (B, H): step 0 has no recurrent term
    if a.shape[1] == 1:
        return h0.unsqueeze(1)
    n = a.shape[2]
    eye = torch.eye(n, dtype=a.dtype, device=a.device)
    zero = torch.zeros(n, dtype=a.dtype, device=a.device)
    with _ieee_cudnn_rnn(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_WEIGHT_COPY_WARNING, category=UserWarning)
        out, _ = torch._VF.rnn_tanh(  # type: ignore[attr-defined]
            a[:, 1:].contiguous(),
            h0.unsqueeze(0).contiguous(),  # (1, B, H): one layer, one direction
            [eye, weight, zero, bias],  # W_ih, W_hh, b_ih, b_hh
            True,  # has_biases
            1,  # num_layers
            0.0,  # dropout
            torch.is_grad_enabled(),  # train: keep cuDNN's reserve space for backward
            False,  # bidirectional
            True,  # batch_first
        )
    return torch.cat([h0.unsqueeze(1), out], dim=1)


class _RNNTanhFunction(torch.autograd.Function):
    """`_rnn_tanh_steps` whose backward also runs under `_ieee_cudnn_rnn`.

    cuDNN reads the TF32 flag again when the backward pass runs, outside any `with` block of
    the forward, so the forward records its own small graph and replays it here (as
    torch.utils.checkpoint does).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        inputs = tuple(
            t.detach().requires_grad_(need)
            for t, need in zip((a, weight, bias), ctx.needs_input_grad, strict=True)
        )
        with torch.enable_grad():
            hs = _rnn_tanh_steps(*inputs)
        ctx.inner = (hs, inputs)
        return hs.detach()

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: Any, dhs: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        hs, inputs = ctx.inner
        wanted = [t for t in inputs if t.requires_grad]
        grads: tuple[torch.Tensor | None, ...] = (None,) * len(wanted)
        if hs.requires_grad:  # not when a single step saw only `weight` needing a gradient
            with _ieee_cudnn_rnn():
                # retain_graph: the outer graph may run again (retain_graph=True, gradcheck);
                # the inner one is freed with ctx. allow_unused: one step never uses weight.
                grads = torch.autograd.grad(hs, wanted, dhs, retain_graph=True, allow_unused=True)
        found = iter(grads)  # None where unused, as in the reference (see ElmanFunction)
        return tuple(next(found) if t.requires_grad else None for t in inputs)


def elman_rnn_tanh(a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The Elman recurrence of `elman_recurrence` through torch's RNN_TANH (cuDNN on CUDA).

    Any device torch's RNNs run on; in full float32 on cuDNN. Differentiable in a, weight, bias.
    """
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (a, weight, bias))
    if needs_grad:
        return _RNNTanhFunction.apply(a, weight, bias)
    return _rnn_tanh_steps(a, weight, bias)
