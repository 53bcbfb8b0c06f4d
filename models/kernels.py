"""Fused recurrent kernels: the Elman and LSTM recurrences as compiled loops (CPU) and cuDNN (CUDA).

Why: with 2 hidden units, each time step is a handful of multiply-adds, so PyTorch's eager
per-step ops (dispatch, autograd bookkeeping, tiny allocations) cost 100× the arithmetic. Here
each recurrence is one numba-compiled loop over the whole sequence, forward and BPTT alike,
wrapped in a `torch.autograd.Function`. The Elman kernel is the recurrence only: its input
projection and read-out stay ordinary `nn.Linear` calls over whole sequences. The LSTM kernel
also does nn.LSTM's own input projection (x W_ih^T + b_ih + b_hh, a few multiply-adds a step
for 2 inputs) and returns gradients for x, W_ih, W_hh, b_ih and b_hh; its read-out (fc)
stays an nn.Linear.

Shapes: B batch, T time steps, I inputs, H hidden units, G = 4H LSTM gate rows (order i, f,
g, o as in `torch.nn.LSTM`). All arrays are C-contiguous; float32 and float64 are both
compiled (float64 for gradcheck). No loop runs in parallel threads: see `_njit` for why not
`prange` (the LSTM loops do a step's whole batch at once, vectorized, instead).

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
from llvmlite import ir as llvm_ir
from numba.core import cgutils, types
from numba.core import config as numba_config
from numba.extending import intrinsic
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
# The input projection x_t W_ih^T + b_ih + b_hh is folded into the loop (n_input is tiny, so it
# is a few multiply-adds a step), which saves a (B, T, 4H) tensor and two torch ops per pass.
#
# The cost of a step is its 5H activations (an exp and a division each), not the few
# multiply-adds: libm's exp is a call LLVM cannot vectorize, so the loops below walk time on
# the outside and do each step's activations for the whole batch in one flat loop over
# B·4H gates (then B·H cells) with `_exp`, a branch-free exp that LLVM vectorizes. tanh(z) is
# written as 2 σ(2z) - 1 so one loop handles all four gate kinds. Each sequence's arithmetic
# is the same whatever the batch, so results do not depend on the batch size or order.

_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01  # ln 2 in two parts (fdlibm): k·_LN2_HI is exact
_LN2_LO = 1.90821492927058770002e-10


@intrinsic
def _float_from_bits(typingctx: Any, bits: Any) -> Any:
    """The float64 whose IEEE bit pattern is the int64 `bits` (a register bitcast)."""
    if bits != types.int64:
        return None

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.bitcast(args[0], llvm_ir.DoubleType())

    return types.float64(types.int64), codegen


@intrinsic
def _fma(typingctx: Any, a: Any, b: Any, c: Any) -> Any:
    """a·b + c with one rounding (LLVM's fma intrinsic; vectorizes to vfmadd)."""
    if not all(t == types.float64 for t in (a, b, c)):
        return None

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        f64 = llvm_ir.DoubleType()
        fnty = llvm_ir.FunctionType(f64, [f64, f64, f64])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.fma.f64")
        return builder.call(fn, args)

    return types.float64(types.float64, types.float64, types.float64), codegen


@_njit(inline="always")
def _exp(z):
    """exp(z) in float64 within 1 ulp of libm's for |z| ≤ 708, vectorizable (no call).

    Beyond that it saturates at exp(±708.x) (≈1e±307) instead of 0 or inf, which leaves
    σ and tanh below exactly as they are (0 or 1 to float64 precision). NaN stays NaN.
    z = k ln2 + r with |r| ≤ ln2 / 2; exp(r) by its Taylor series to r^13 (error < 1e-17),
    evaluated by Estrin's scheme (short dependency chains: each time step waits on two
    exps), times 2^k built from its bits.
    """
    z = np.float64(z)
    if z > 709.0:
        z = 709.0
    if z < -708.0:
        z = -708.0
    kf = np.floor(z * _LOG2E + 0.5)
    if kf != kf:  # NaN: any finite k, so the int conversion below is defined; r is NaN
        kf = 0.0
    r = _fma(-kf, _LN2_LO, _fma(-kf, _LN2_HI, z))
    r2 = r * r
    r4 = r2 * r2
    p01 = _fma(r, 1.0, 1.0)
    p23 = _fma(r, 1.0 / 6.0, 0.5)
    p45 = _fma(r, 1.0 / 120.0, 1.0 / 24.0)
    p67 = _fma(r, 1.0 / 5040.0, 1.0 / 720.0)
    p89 = _fma(r, 1.0 / 362880.0, 1.0 / 40320.0)
    p1011 = _fma(r, 1.0 / 39916800.0, 1.0 / 3628800.0)
    p1213 = _fma(r, 1.0 / 6227020800.0, 1.0 / 479001600.0)
    q0 = _fma(r2, p23, p01)
    q1 = _fma(r2, p67, p45)
    q2 = _fma(r2, p1011, p89)
    s0 = _fma(r4, q1, q0)
    s1 = _fma(r4, p1213, q2)
    p = _fma(r4 * r4, s1, s0)
    return p * _float_from_bits((np.int64(kf) + 1023) << 52)


@_njit(inline="always")
def _lstm_setup(w_ih, w_hh, b_ih, b_hh, n_batch):
    """Constants of a pass, laid out over a step's flat gate vector z[q], q = gate·P + b·H + j
    (gate-major, then sequence b, then unit j; P = B·H), so that each per-step loop is one
    flat loop over the whole batch (LLVM vectorizes the activations' `_exp`):

    wix[k, q] = W_ih[gate·H + j, k], whx[k, q] = W_hh[gate·H + j, k], biasx[q] = b_ih + b_hh,
    scale[q] = 2 for g (tanh z = 2 σ(2z) - 1) and 1 for the σ gates, hb[q] = b·H (where
    sequence b's state starts in a flat [P] vector) and xb[q] = b.
    """
    n_hidden = w_hh.shape[1]
    n_input = w_ih.shape[1]
    units = n_batch * n_hidden
    wix = np.zeros((n_input, 4 * units))
    whx = np.zeros((n_hidden, 4 * units))
    biasx = np.zeros(4 * units)
    scale = np.ones(4 * units)
    hb = np.zeros(4 * units, dtype=np.int64)
    xb = np.zeros(4 * units, dtype=np.int64)
    for gate in range(4):
        for bi in range(n_batch):
            for j in range(n_hidden):
                q = gate * units + bi * n_hidden + j
                r = gate * n_hidden + j
                biasx[q] = np.float64(b_ih[r]) + np.float64(b_hh[r])
                for k in range(n_input):
                    wix[k, q] = w_ih[r, k]
                for k in range(n_hidden):
                    whx[k, q] = w_hh[r, k]
                hb[q] = bi * n_hidden
                xb[q] = bi
        if gate == 2:
            scale[2 * units : 3 * units] = 2.0
    return wix, whx, biasx, scale, hb, xb


@_njit(inline="always")
def _lstm_step(x, t, wix, whx, biasx, scale, hb, xb, h, c, tc, z):
    """Step t for the whole batch in place: z[4P] ← the activated gates (layout of
    `_lstm_setup`), and c, tc = tanh(c), h [P] ← step t's from step t-1's."""
    units = h.shape[0]
    for q in range(z.shape[0]):
        s = biasx[q]
        for k in range(wix.shape[0]):
            s += wix[k, q] * x[xb[q], t, k]
        z[q] = s
    for k in range(whx.shape[0]):
        for q in range(z.shape[0]):
            z[q] += whx[k, q] * h[hb[q] + k]
    for q in range(z.shape[0]):  # σ(scale z) · scale - (scale - 1): σ or tanh
        a = scale[q]
        z[q] = a / (1.0 + _exp(-a * z[q])) - (a - 1.0)
    for p in range(units):  # unit p's i, f, g, o: z[p], z[P + p], z[2P + p], z[3P + p]
        c[p] = z[units + p] * c[p] + z[p] * z[2 * units + p]
        tc[p] = 1.0 - 2.0 / (_exp(2.0 * c[p]) + 1.0)
        h[p] = z[3 * units + p] * tc[p]


@_njit
def _lstm_forward_train(x, w_ih, w_hh, b_ih, b_hh, hs, cs, tcs, gates):
    """hs[B,T,H] from x[B,T,I] and zero initial state; keeps, for the backward pass, the
    activated gates[T, 4P] (layout of `_lstm_setup`), cs[T, P] and tcs = tanh(cs)."""
    n_batch, n_steps, _ = x.shape
    n_hidden = w_hh.shape[1]
    wix, whx, biasx, scale, hb, xb = _lstm_setup(w_ih, w_hh, b_ih, b_hh, n_batch)
    units = n_batch * n_hidden
    h = np.zeros(units)  # float64 state, rounded to the storage type in hs/cs
    c = np.zeros(units)
    tc = np.zeros(units)
    z = np.zeros(4 * units)
    for t in range(n_steps):
        _lstm_step(x, t, wix, whx, biasx, scale, hb, xb, h, c, tc, z)
        for q in range(4 * units):
            gates[t, q] = z[q]
        for p in range(units):
            cs[t, p] = c[p]
            tcs[t, p] = tc[p]
        for bi in range(n_batch):
            for j in range(n_hidden):
                hs[bi, t, j] = h[bi * n_hidden + j]


@_njit
def _lstm_forward_infer(x, w_ih, w_hh, b_ih, b_hh, h_io, c_io, hs):
    """hs[B,T,H] from x[B,T,I]; h_io[B,H] and c_io[B,H] carry the state in and out.

    Stores no gates or cells: memory is hs plus O(B·G).
    """
    n_batch, n_steps, _ = x.shape
    n_hidden = w_hh.shape[1]
    wix, whx, biasx, scale, hb, xb = _lstm_setup(w_ih, w_hh, b_ih, b_hh, n_batch)
    units = n_batch * n_hidden
    h = np.zeros(units)
    c = np.zeros(units)
    for bi in range(n_batch):
        for j in range(n_hidden):
            h[bi * n_hidden + j] = h_io[bi, j]
            c[bi * n_hidden + j] = c_io[bi, j]
    tc = np.zeros(units)
    z = np.zeros(4 * units)
    for t in range(n_steps):
        _lstm_step(x, t, wix, whx, biasx, scale, hb, xb, h, c, tc, z)
        for bi in range(n_batch):
            for j in range(n_hidden):
                hs[bi, t, j] = h[bi * n_hidden + j]
    for bi in range(n_batch):
        for j in range(n_hidden):
            h_io[bi, j] = h[bi * n_hidden + j]
            c_io[bi, j] = c[bi * n_hidden + j]


@_njit
def _lstm_backward(dhs, x, hs, cs, tcs, gates, w_ih, w_hh, want_dx, dx, dw_ih, dw_hh, db):
    """BPTT from dL/dhs[B,T,H]: dx[B,T,I] (when want_dx), dw_ih[G,I], dw_hh[G,H], db[G].

    gates, cs, tcs as `_lstm_forward_train` keeps them. With c_t = f c_{t-1} + i g and
    h_t = o tanh(c_t), walking back in time:
    dh = dhs_t + W_hh^T dz_{t+1};  dc = dc_{t+1} f_{t+1} + dh o (1 - tanh²c_t);
    dz = [dc g · i(1-i), dc c_{t-1} · f(1-f), dc i · (1-g²), dh tanh c_t · o(1-o)];
    dx_t = W_ih^T dz_t, dW_ih += dz_t x_t^T, db += dz_t, dW_hh += dz_t h_{t-1}^T.
    Sums are kept per lane (gate, sequence, unit) in float64 and reduced over the batch at
    the end.
    """
    n_batch, n_steps, n_hidden = hs.shape
    n_input = w_ih.shape[1]
    units = n_batch * n_hidden
    # (the biases do not enter the backward pass: any [G] vector stands in for them)
    wix, whx, _, _, _, xb = _lstm_setup(w_ih, w_hh, w_ih[:, 0], w_ih[:, 0], n_batch)
    dwix = np.zeros((n_input, 4 * units))
    dwhx = np.zeros((n_hidden, 4 * units))
    dbx = np.zeros(4 * units)
    dz = np.zeros(4 * units)
    prod = np.zeros((n_hidden, 4 * units))
    dh = np.zeros(units)  # dL/dh_t: dhs_t + W_hh^T dz_{t+1}
    dc_carry = np.zeros(units)  # dL/dc_t through c_{t+1} = f_{t+1} c_t + ...
    for t in range(n_steps - 1, -1, -1):
        for bi in range(n_batch):
            for j in range(n_hidden):
                dh[bi * n_hidden + j] += dhs[bi, t, j]
        for p in range(units):
            i = np.float64(gates[t, p])
            f = np.float64(gates[t, units + p])
            g = np.float64(gates[t, 2 * units + p])
            o = np.float64(gates[t, 3 * units + p])
            c_prev = np.float64(cs[t - 1, p]) if t > 0 else 0.0
            tc = np.float64(tcs[t, p])
            dc = dc_carry[p] + dh[p] * o * (1.0 - tc * tc)
            dz[p] = dc * g * i * (1.0 - i)
            dz[units + p] = dc * c_prev * f * (1.0 - f)
            dz[2 * units + p] = dc * i * (1.0 - g * g)
            dz[3 * units + p] = dh[p] * tc * o * (1.0 - o)
            dc_carry[p] = dc * f
        for q in range(4 * units):
            dbx[q] += dz[q]
            for k in range(n_input):
                dwix[k, q] += dz[q] * x[xb[q], t, k]
        if want_dx:
            for bi in range(n_batch):
                for k in range(n_input):
                    s = 0.0
                    for gate in range(4):
                        for j in range(n_hidden):
                            q = gate * units + bi * n_hidden + j
                            s += wix[k, q] * dz[q]
                    dx[bi, t, k] = s
        if t == 0:
            break  # h_{-1} = 0: step 0 adds nothing to dW_hh and reaches nothing earlier
        for k in range(n_hidden):
            for q in range(4 * units):
                dwhx[k, q] += dz[q] * hs[xb[q], t - 1, k]
                prod[k, q] = whx[k, q] * dz[q]
        # dh[b·H + k] = Σ over gate and j of W_hh[gate·H + j, k] dz[gate·P + b·H + j]
        for bi in range(n_batch):
            for k in range(n_hidden):
                s = 0.0
                for gate in range(4):
                    base = gate * units + bi * n_hidden
                    for j in range(n_hidden):
                        s += prod[k, base + j]
                dh[bi * n_hidden + k] = s
    for gate in range(4):
        for j in range(n_hidden):
            r = gate * n_hidden + j
            sb = 0.0
            for bi in range(n_batch):
                sb += dbx[gate * units + bi * n_hidden + j]
            db[r] = sb
            for k in range(n_input):
                s = 0.0
                for bi in range(n_batch):
                    s += dwix[k, gate * units + bi * n_hidden + j]
                dw_ih[r, k] = s
            for k in range(n_hidden):
                s = 0.0
                for bi in range(n_batch):
                    s += dwhx[k, gate * units + bi * n_hidden + j]
                dw_hh[r, k] = s


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


def _check_lstm(
    x: torch.Tensor,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_ih: torch.Tensor,
    bias_hh: torch.Tensor,
) -> None:
    if x.dim() != 3:
        raise ValueError(f"x must be [batch, time, input], got {tuple(x.shape)}")
    if weight_hh.dim() != 2 or weight_hh.shape[0] != 4 * weight_hh.shape[1]:
        raise ValueError(f"weight_hh must be [4 * hidden, hidden], got {tuple(weight_hh.shape)}")
    n_gates, n_input = weight_hh.shape[0], x.shape[2]
    _check("x", x, x.dtype, tuple(x.shape))
    _check("weight_hh", weight_hh, x.dtype, tuple(weight_hh.shape))
    _check("weight_ih", weight_ih, x.dtype, (n_gates, n_input))
    _check("bias_ih", bias_ih, x.dtype, (n_gates,))
    _check("bias_hh", bias_hh, x.dtype, (n_gates,))


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
    """hs = LSTM of (x, weight_ih, weight_hh, bias_ih, bias_hh); see `lstm_recurrence`."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
        x: torch.Tensor,
        weight_ih: torch.Tensor,
        weight_hh: torch.Tensor,
        bias_ih: torch.Tensor,
        bias_hh: torch.Tensor,
    ) -> torch.Tensor:
        n_batch, n_steps, _ = x.shape
        n_hidden = weight_hh.shape[1]
        hs = torch.empty(n_batch, n_steps, n_hidden, dtype=x.dtype)
        units = n_batch * n_hidden
        cs = torch.empty(n_steps, units, dtype=x.dtype)
        tcs = torch.empty_like(cs)
        gates = torch.empty(n_steps, 4 * units, dtype=x.dtype)
        x, weight_ih, weight_hh = x.contiguous(), weight_ih.contiguous(), weight_hh.contiguous()
        _lstm_forward_train(
            _np(x),
            _np(weight_ih),
            _np(weight_hh),
            _np(bias_ih),
            _np(bias_hh),
            hs.numpy(),
            cs.numpy(),
            tcs.numpy(),
            gates.numpy(),
        )
        ctx.save_for_backward(x, weight_ih, weight_hh, hs, cs, tcs, gates)
        return hs

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: Any, dhs: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        x, weight_ih, weight_hh, hs, cs, tcs, gates = ctx.saved_tensors
        want_dx = bool(ctx.needs_input_grad[0])
        dx = torch.empty(x.shape if want_dx else (1, 1, 1), dtype=x.dtype)
        dw_ih = torch.empty(weight_ih.shape, dtype=x.dtype)
        dw_hh = torch.empty(weight_hh.shape, dtype=x.dtype)
        db = torch.empty(weight_hh.shape[0], dtype=x.dtype)
        _lstm_backward(
            _np(dhs),
            _np(x),
            _np(hs),
            _np(cs),
            _np(tcs),
            _np(gates),
            _np(weight_ih),
            _np(weight_hh),
            want_dx,
            dx.numpy(),
            dw_ih.numpy(),
            dw_hh.numpy(),
            db.numpy(),
        )
        # b_ih and b_hh enter every gate as a sum: the same gradient, as separate tensors
        # (one shared tensor could end up as both parameters' .grad and be accumulated twice).
        return dx if want_dx else None, dw_ih, dw_hh, db, db.clone()


def elman_recurrence(a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """hs[B,T,H]: h_0 = tanh(a_0), h_t = tanh(a_t + weight h_{t-1} + bias), differentiable.

    a[B,T,H] is the input projection l1(x); weight[H,H] and bias[H] are hr's. CPU only.
    """
    _check_elman(a, weight, bias)
    return ElmanFunction.apply(a, weight, bias)


def lstm_recurrence(
    x: torch.Tensor,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_ih: torch.Tensor,
    bias_hh: torch.Tensor,
) -> torch.Tensor:
    """hs[B,T,H] of a one-layer torch.nn.LSTM (batch_first) from zero state, differentiable.

    x[B,T,I]; weight_ih[4H,I], weight_hh[4H,H], bias_ih[4H], bias_hh[4H] are nn.LSTM's
    weight_ih_l0 ... bias_hh_l0. Differentiable in all five. CPU only.
    """
    _check_lstm(x, weight_ih, weight_hh, bias_ih, bias_hh)
    return LSTMFunction.apply(x, weight_ih, weight_hh, bias_ih, bias_hh)


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
    x: torch.Tensor,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_ih: torch.Tensor,
    bias_hh: torch.Tensor,
    h: torch.Tensor,
    c: torch.Tensor,
) -> torch.Tensor:
    """hs[B,T,H] for one time chunk, no autograd; h[B,H] and c[B,H] carry the state in and out.

    Zero h and c on entry give torch.nn.LSTM's default initial state.
    """
    _check_lstm(x, weight_ih, weight_hh, bias_ih, bias_hh)
    for name, t in (("h", h), ("c", c)):
        _check(name, t, x.dtype, (x.shape[0], weight_hh.shape[1]))
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous: it is updated in place")
    hs = torch.empty(x.shape[0], x.shape[1], weight_hh.shape[1], dtype=x.dtype)
    _lstm_forward_infer(
        _np(x),
        _np(weight_ih),
        _np(weight_hh),
        _np(bias_ih),
        _np(bias_hh),
        h.numpy(),
        c.numpy(),
        hs.numpy(),
    )
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
        x = torch.zeros(1, 2, 2, dtype=dtype, requires_grad=True)
        w_ih = torch.zeros(4, 2, dtype=dtype, requires_grad=True)
        w_hh = torch.zeros(4, 1, dtype=dtype, requires_grad=True)
        b4 = torch.zeros(4, dtype=dtype, requires_grad=True)
        lstm_recurrence(x, w_ih, w_hh, b4, b4).sum().backward()  # with dx
        lstm_recurrence(x.detach(), w_ih, w_hh, b4, b4).sum().backward()  # without
        with torch.no_grad():
            elman_inference(a, w, b, torch.zeros(1, 1, dtype=dtype), True)
            z = torch.zeros(1, 1, dtype=dtype)
            lstm_inference(x, w_ih, w_hh, b4, b4, z, z.clone())


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
