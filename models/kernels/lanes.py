"""Training and validation passes with one sequence per vector lane (`simd.Vec`), an epoch a call.

Layout. A pass runs S sequences: sequence s = i·B' + b is row row0 + b of the data run by
member m0 + i (B' rows). Sequence s sits in lane s % LANES of lane group s // LANES; a group's
last lanes, if S does not fill it, repeat its last sequence and are never read back. The data
is time-major ([T, C, N], `time_major`), so a step's input of a lane group is one gather, and
every stored state is lane-innermost ([group, step, …, LANES]): a step is a few dozen vector
instructions per group whatever the batch or the member mix, and the groups advance together
through time (independent chains the CPU overlaps). Each lane computes exactly what a lone
sequence would, so a member's results depend on neither the grouping, the batch's other rows
nor the number of threads.

Weights. Both kinds are one layer: rows r < R of pre-activations, z_r = b_in + b_rec + W_in x
+ W_rec h_{t-1} (LSTM: R = 4H, gates i, f, g, o as torch.nn.LSTM, biases b_ih, b_hh;
Elman: R = H, l1 and hr, and step 0 is l1(x_0) alone), then a read-out y = W_out h + b_out.
The kernels take the six stacked parameters as 2-D [K, size] views (`Params`) and copy them
per lane after every optimizer step.

Sizes. `shape` = (I, H, O) as `size_tag`s: small sizes are compiled in, so LLVM unrolls the
loops over units (at 2 units a step's loops are shorter than their own overhead).

Sums. Per-step arithmetic runs in the parameters' type; sums over time run in that type for
_CHUNK steps, then go into float64 totals; a member's gradient is the sum of its sequences'
lanes in sequence order, rounded once to the parameters' type (what autograd leaves in
.grad), then clipped (optional, over the member's whole gradient) and stepped with Adam
(torch.optim.Adam's algorithm, as `kernels.adam`), all inside the same call.
"""

from __future__ import annotations

import math
from collections import namedtuple
from typing import Any

import numpy as np
from numba.core import types
from numba.extending import overload

from models.kernels.compile import _njit
from models.kernels.simd import (
    LANES,
    as_type,
    vfma,
    vgather,
    vget,
    vload,
    vsigmoid,
    vsplat,
    vstore,
    vtanh,
)

L = LANES
LSTM, ELMAN = 0, 1
KINDS = {"lstm": LSTM, "elman": ELMAN}

# The six stacked parameters, each a 2-D view [K, size] of the members' tensor.
Params = namedtuple("Params", ["w_in", "b_in", "w_rec", "b_rec", "w_out", "b_out"])
# A split as the passes read it (`make_data`): inputs xt [T, I, N] and targets tt [T, O, N]
# time-major, the same packed per pass and lane in xl, tl (empty: read xt, tt by gathers),
# and the rows of one pass (a training batch).
Data = namedtuple("Data", ["xt", "tt", "xl", "tl", "rows_per_pass"])
# Adam's hyper-parameters for one epoch; clip: the gradient norm per member (0: none).
AdamConfig = namedtuple("AdamConfig", ["lr", "beta1", "beta2", "eps", "clip"])
# The arrays a pass works in (`workspace`), all flat: the weights per lane, the stored
# states, the backward's carries, a chunk of inputs and targets per lane, and the sums.
Workspace = namedtuple(
    "Workspace",
    ["wl", "ol", "gates", "cs", "tcs", "hs", "err", "dh", "dc", "dz", "rows", "xs",
     "accp", "oaccp", "sqp", "acc", "oacc", "sq"],
)  # fmt: skip

# Steps per chunk: inputs are copied per lane, and sums flushed into float64, once a chunk.
_CHUNK = 32
# Sizes up to this are compiled in (one specialization per size; see `size_tag`).
UNROLL_MAX = 8


def size_tag(n: int) -> Any:
    """A size as the kernels take it: up to UNROLL_MAX a tuple of n Nones, whose length is
    part of the compiled signature (LLVM unrolls the loops over it), beyond it n itself."""
    return (None,) * n if n <= UNROLL_MAX else n


def _size(tag: Any) -> int:
    raise NotImplementedError("_size runs in compiled code only")


@overload(_size, inline="always")
def _size_overload(tag):
    if isinstance(tag, types.BaseTuple):
        n = len(tag)
        return lambda tag: n
    if isinstance(tag, types.Integer):
        return lambda tag: tag
    return None


def rows_of(kind: int, n_hidden: int) -> int:
    """R: pre-activation rows per sequence (LSTM: 4H gates, Elman: H units)."""
    return 4 * n_hidden if kind == LSTM else n_hidden


# The kind as compiled code takes it: a tag (`size_tag` of LSTM or ELMAN), so that each
# kind's passes compile on their own, without the other kind's branches.
_LSTM_TAG, _ELMAN_TAG = size_tag(LSTM), size_tag(ELMAN)


@_njit(inline="always")
def _is_lstm(kind):
    return _size(kind) == LSTM


@_njit(inline="always")
def _rows(kind, n_hidden):
    return 4 * n_hidden if _is_lstm(kind) else n_hidden


@_njit(inline="always")
def _dims(kind, shape):
    """(R, I, H, O) from shape = (I, H, O) as `size_tag`s."""
    n_in, n_hidden, n_out = _size(shape[0]), _size(shape[1]), _size(shape[2])
    return _rows(kind, n_hidden), n_in, n_hidden, n_out


@_njit(inline="always")
def _groups(n_seq):
    return (n_seq + L - 1) // L


def workspace(
    kind: int, n_in: int, n_hidden: int, n_out: int, n_groups: int, n_steps: int, dtype: Any
) -> Workspace:
    """A workspace for passes over up to n_groups lane groups of n_steps steps (n_steps = 2
    for forward-only passes, which keep two steps of state)."""
    n_rows = rows_of(kind, n_hidden)
    cols = 2 + n_in + n_hidden
    ng = n_groups
    lstm = kind == LSTM

    def arr(n: int, dt: Any = dtype) -> np.ndarray:
        return np.zeros(n * L, dtype=dt)

    return Workspace(
        wl=arr(ng * n_rows * cols),
        ol=arr(ng * n_out * (1 + n_hidden)),
        gates=arr(ng * n_steps * n_rows if lstm else 1),
        cs=arr(ng * n_steps * n_hidden if lstm else 1),
        tcs=arr(ng * n_steps * n_hidden if lstm else 1),
        hs=arr(ng * n_steps * n_hidden),
        err=arr(ng * n_steps * n_out),
        dh=arr(ng * n_hidden),
        dc=arr(ng * n_hidden),
        dz=arr(ng * n_rows),
        rows=arr(ng, np.int64),
        xs=arr(ng * n_in),
        accp=arr(ng * n_rows * cols),
        oaccp=arr(ng * n_out * (1 + n_hidden)),
        sqp=arr(ng),
        acc=arr(ng * n_rows * cols, np.float64),
        oacc=arr(ng * n_out * (1 + n_hidden), np.float64),
        sq=arr(ng, np.float64),
    )


@_njit
def _spread(kind, shape, params, m0, n_batch, n_seq, ws):
    """The weights per lane: ws.wl[((g·R + r)·C + c)·L + l] with columns c = b_in, b_rec,
    W_in[r, :], W_rec[r, :] (C = 2 + I + H), and the read-out ws.ol[((g·O + o)·(1+H) + c)·L
    + l] (b_out, W_out[o, :]), of member m0 + s // n_batch for sequence s = g·L + l."""
    n_rows, n_in, n_hidden, n_out = _dims(kind, shape)
    cols = 2 + n_in + n_hidden
    wl, ol = ws.wl, ws.ol
    for g in range(_groups(n_seq)):
        for lane in range(L):
            m = m0 + min(g * L + lane, n_seq - 1) // n_batch
            for r in range(n_rows):
                base = (g * n_rows + r) * cols
                wl[base * L + lane] = params.b_in[m, r]
                wl[(base + 1) * L + lane] = params.b_rec[m, r]
                for k in range(n_in):
                    wl[(base + 2 + k) * L + lane] = params.w_in[m, r * n_in + k]
                for k in range(n_hidden):
                    wl[(base + 2 + n_in + k) * L + lane] = params.w_rec[m, r * n_hidden + k]
            for o in range(n_out):
                base = (g * n_out + o) * (1 + n_hidden)
                ol[base * L + lane] = params.b_out[m, o]
                for k in range(n_hidden):
                    ol[(base + 1 + k) * L + lane] = params.w_out[m, o * n_hidden + k]


def time_major(a: np.ndarray) -> np.ndarray:
    """[N, T, C] data as the kernels read it: [T, C, N], C-contiguous."""
    return np.ascontiguousarray(np.transpose(a, (1, 2, 0)))


def pass_groups(n_data: int, rows_per_pass: int, n_members: int) -> int:
    """Lane groups of all the passes over n_data rows, rows_per_pass at a time, for
    n_members members (each pass: ⌈n_members · rows / LANES⌉)."""
    total = 0
    for row0 in range(0, n_data, rows_per_pass):
        total += -(-n_members * min(rows_per_pass, n_data - row0) // L)
    return total


def make_data(
    x: np.ndarray, target: np.ndarray, rows_per_pass: int, n_members: int, budget: int
) -> Data:
    """A split ([N, T, C] inputs and targets) as the passes read it: time-major, and, when
    that takes at most `budget` bytes, also packed per pass and lane (`pack_passes`), which
    the kernels read with plain vector loads instead of gathering lane by lane."""
    xt, tt = time_major(x), time_major(target)
    n_steps, n_data = xt.shape[0], xt.shape[2]
    groups = pass_groups(n_data, rows_per_pass, n_members)
    size = groups * n_steps * (xt.shape[1] + tt.shape[1]) * L * xt.itemsize
    if size > budget:
        empty = np.zeros(0, dtype=xt.dtype)
        return Data(xt, tt, empty, empty, rows_per_pass)
    xl = np.empty(groups * n_steps * xt.shape[1] * L, dtype=xt.dtype)
    tl = np.empty(groups * n_steps * tt.shape[1] * L, dtype=xt.dtype)
    pack_passes(xt, tt, rows_per_pass, n_members, xl, tl)
    return Data(xt, tt, xl, tl, rows_per_pass)


@_njit
def pack_passes(xt, tt, rows_per_pass, n_members, xl, tl):
    """xl[(((G_p + g)·T + t)·I + k)·L + l] = xt[t, k, row of lane l of group g of pass p]
    (G_p: the groups of the passes before p), and tl likewise from tt."""
    n_steps, n_in, n_data = xt.shape
    n_out = tt.shape[1]
    goff = 0
    for row0 in range(0, n_data, rows_per_pass):
        nb = min(rows_per_pass, n_data - row0)
        n_seq = n_members * nb
        for g in range(_groups(n_seq)):
            for lane in range(L):
                row = row0 + min(g * L + lane, n_seq - 1) % nb
                for t in range(n_steps):
                    base = (goff + g) * n_steps + t
                    for k in range(n_in):
                        xl[(base * n_in + k) * L + lane] = xt[t, k, row]
                    for o in range(n_out):
                        tl[(base * n_out + o) * L + lane] = tt[t, o, row]
        goff += _groups(n_seq)


@_njit(inline="always")
def _lane_rows(row0, n_batch, n_seq, rows):
    """rows[s] = row0 + s % n_batch: the data row of each lane's sequence (padding lanes:
    the last sequence's)."""
    for s in range(_groups(n_seq) * L):
        rows[s] = row0 + min(s, n_seq - 1) % n_batch


@_njit(inline="always")
def _fetch_x(t, g, goff, n_steps, n_in, xl, xf, n_data, rows, xs):
    """xs[g, k] = x_t of lane group g, column k: from the packed inputs xl (pass groups from
    goff) or, when there are none, gathered from the time-major xf. Once per step: the
    loads that use it follow stores LLVM cannot tell apart from the data."""
    for k in range(n_in):
        if xl.shape[0] > 0:
            v = vload(xl, (((goff + g) * n_steps + t) * n_in + k) * L)
        else:
            v = vgather(xf, (t * n_in + k) * n_data, rows, g * L)
        vstore(xs, (g * n_in + k) * L, v)


@_njit(inline="always")
def _flush(part, total, n):
    """total[:n] += part[:n] in float64 (scalar code: 512-bit float64 vectors would take half
    the vector ports of an AVX-512 core for the whole loop), then part[:n] = 0."""
    for i in range(n):
        total[i] += part[i]
        part[i] = 0.0


# --- one time step of one lane group ---------------------------------------------------------
# The step functions are inlined into the loops that call them; the passes around them are
# compiled functions of their own (shared by the entry points, so each compiles once: numba's
# inlining of a function with loops into another misplaced variables here and crashed).
# A group's time-indexed arrays are [G, T', …, L] with T' the steps kept: all (training) or 2
# (forward only: slot t & 1 holds step t, the other step t - 1).


@_njit(inline="always")
def _slot(t, keep):
    return t if keep else t & 1


@_njit(inline="always")
def _lstm_forward(t, g, n_slots, keep, shape, xs, wl, gates, cs, tcs, hs):
    """Step t of the LSTM: activated gates, c, tanh c and h of every group into
    its slot of gates, cs, tcs, hs, from step t - 1's h and c (zero at t = 0) and x_t in
    xs (`_gather_x`); the weights are wl's."""
    n_rows, n_in, n_hidden, _ = _dims(_LSTM_TAG, shape)
    cols = 2 + n_in + n_hidden
    for r in range(n_rows):
        cur = g * n_slots + _slot(t, keep)
        prev = g * n_slots + _slot(t - 1, keep)
        wb = (g * n_rows + r) * cols * L
        acc = vload(wl, wb) + vload(wl, wb + L)
        for k in range(n_in):
            acc = vfma(vload(wl, wb + (2 + k) * L), vload(xs, (g * n_in + k) * L), acc)
        if t > 0:
            for k in range(n_hidden):
                hk = vload(hs, (prev * n_hidden + k) * L)
                acc = vfma(vload(wl, wb + (2 + n_in + k) * L), hk, acc)
        if 2 * n_hidden <= r < 3 * n_hidden:
            vstore(gates, (cur * n_rows + r) * L, vtanh(acc))
        else:
            vstore(gates, (cur * n_rows + r) * L, vsigmoid(acc))
    for j in range(n_hidden):
        cur = g * n_slots + _slot(t, keep)
        prev = g * n_slots + _slot(t - 1, keep)
        gb = cur * n_rows * L
        c = vload(gates, gb + j * L) * vload(gates, gb + (2 * n_hidden + j) * L)  # i g
        if t > 0:
            f = vload(gates, gb + (n_hidden + j) * L)
            c = vfma(f, vload(cs, (prev * n_hidden + j) * L), c)
        tc = vtanh(c)
        hb = (cur * n_hidden + j) * L
        vstore(cs, hb, c)
        vstore(tcs, hb, tc)
        vstore(hs, hb, vload(gates, gb + (3 * n_hidden + j) * L) * tc)


@_njit(inline="always")
def _elman_forward(t, g, n_slots, keep, shape, xs, wl, hs):
    """Step t of the Elman network: h_t = tanh(l1(x_t) + hr(h_{t-1})) of every
    group into its slot of hs (step 0: tanh(l1(x_0)))."""
    _, n_in, n_hidden, _ = _dims(_ELMAN_TAG, shape)
    cols = 2 + n_in + n_hidden
    for j in range(n_hidden):
        cur = g * n_slots + _slot(t, keep)
        prev = g * n_slots + _slot(t - 1, keep)
        wb = (g * n_hidden + j) * cols * L
        a = vload(wl, wb)  # l1(x_t) = b1 + W1 x_t
        for k in range(n_in):
            a = vfma(vload(wl, wb + (2 + k) * L), vload(xs, (g * n_in + k) * L), a)
        if t > 0:  # + hr(h_{t-1}) = b + W h_{t-1}, added as the reference adds them
            rec = vload(wl, wb + L)
            for k in range(n_hidden):
                hk = vload(hs, (prev * n_hidden + k) * L)
                rec = vfma(vload(wl, wb + (2 + n_in + k) * L), hk, rec)
            a = a + rec
        vstore(hs, (cur * n_hidden + j) * L, vtanh(a))


@_njit(inline="always")
def _readout(t, g, n_slots, keep, shape, goff, n_steps, tl, tf, n_data, rows, ol, hs, err, sqp):
    """y_t = W_out h_t + b_out of lane group g against its target (as `_fetch_x` reads x):
    sqp += e² and, when every step is kept, err[g, t, o] = e."""
    _, _, n_hidden, n_out = _dims(_LSTM_TAG, shape)
    for o in range(n_out):
        cur = g * n_slots + _slot(t, keep)
        ob = (g * n_out + o) * (1 + n_hidden) * L
        y = vload(ol, ob)
        for k in range(n_hidden):
            y = vfma(vload(ol, ob + (1 + k) * L), vload(hs, (cur * n_hidden + k) * L), y)
        if tl.shape[0] > 0:
            e = y - vload(tl, (((goff + g) * n_steps + t) * n_out + o) * L)
        else:
            e = y - vgather(tf, (t * n_out + o) * n_data, rows, g * L)
        if keep:
            vstore(err, ((g * n_slots + t) * n_out + o) * L, e)
        vstore(sqp, g * L, vfma(e, e, vload(sqp, g * L)))


@_njit
def _forward(kind, shape, data, goff, row0, n_batch, n_seq, keep, ws):
    """The forward pass and read-out of n_seq lanes (weights spread) on rows row0 … of
    `data`, packed as its pass from group goff: ws.sq[l] = each lane's sum of squared
    errors; with `keep` every step's states and errors are kept for `_backward`, else two
    steps of state."""
    n_steps, n_in, n_data = data.xt.shape
    n_groups = _groups(n_seq)
    n_slots = n_steps if keep else 2
    # (the arrays taken out of their tuples once: each access costs a refcount)
    xf, tf, xl, tl = data.xt.reshape(data.xt.size), data.tt.reshape(data.tt.size), data.xl, data.tl
    wl, ol, rows, gates, cs, tcs = ws.wl, ws.ol, ws.rows, ws.gates, ws.cs, ws.tcs
    hs, err, sq, sqp, xs = ws.hs, ws.err, ws.sq, ws.sqp, ws.xs
    _lane_rows(row0, n_batch, n_seq, rows)
    sq[: n_groups * L] = 0.0
    sqp[: n_groups * L] = 0.0
    for t in range(n_steps):
        for g in range(n_groups):
            _fetch_x(t, g, goff, n_steps, n_in, xl, xf, n_data, rows, xs)
            if _is_lstm(kind):
                _lstm_forward(t, g, n_slots, keep, shape, xs, wl, gates, cs, tcs, hs)
            else:
                _elman_forward(t, g, n_slots, keep, shape, xs, wl, hs)
            _readout(t, g, n_slots, keep, shape, goff, n_steps, tl, tf, n_data, rows, ol, hs,
                     err, sqp)  # fmt: skip
        if t % _CHUNK == _CHUNK - 1 or t == n_steps - 1:
            _flush(sqp, sq, n_groups * L)


# --- the backward pass -----------------------------------------------------------------------


@_njit(inline="always")
def _dh_at(t, g, j, n_steps, n_hidden, n_out, scale, ol, err, dh):
    """dL/dh_t of unit j in lane group g: through step t + 1 (dh) plus the read-out's,
    scale · Σ_o err_t[o] W_out[o, j]."""
    d = vload(dh, (g * n_hidden + j) * L)
    for o in range(n_out):
        e = vload(err, ((g * n_steps + t) * n_out + o) * L) * scale
        d = vfma(e, vload(ol, ((g * n_out + o) * (1 + n_hidden) + 1 + j) * L), d)
    return d


@_njit(inline="always")
def _lstm_dz(t, g, n_steps, shape, scale, ol, err, gates, cs, tcs, dh, dc, dz):
    """dz = dL/d(gate pre-activations) at step t of every group, from dh (dL/dh_t through
    step t + 1) plus the read-out's, and dc (dL/dc_t through c_{t+1}, then replaced by
    the share c_{t-1} gets: dL/dc_t f_t)."""
    n_rows, _, n_hidden, n_out = _dims(_LSTM_TAG, shape)
    for j in range(n_hidden):
        hb = (g * n_hidden + j) * L
        d = _dh_at(t, g, j, n_steps, n_hidden, n_out, scale, ol, err, dh)
        gb = (g * n_steps + t) * n_rows * L
        tc = vload(tcs, ((g * n_steps + t) * n_hidden + j) * L)
        i = vload(gates, gb + j * L)
        f = vload(gates, gb + (n_hidden + j) * L)
        gg = vload(gates, gb + (2 * n_hidden + j) * L)
        o_ = vload(gates, gb + (3 * n_hidden + j) * L)
        c = vfma(d * o_, 1.0 - tc * tc, vload(dc, hb))
        zb = g * n_rows * L
        vstore(dz, zb + j * L, c * gg * (i * (1.0 - i)))
        if t > 0:
            cp = vload(cs, ((g * n_steps + t - 1) * n_hidden + j) * L)
            vstore(dz, zb + (n_hidden + j) * L, c * cp * (f * (1.0 - f)))
        else:
            vstore(dz, zb + (n_hidden + j) * L, vsplat(0.0, dz))
        vstore(dz, zb + (2 * n_hidden + j) * L, c * i * (1.0 - gg * gg))
        vstore(dz, zb + (3 * n_hidden + j) * L, d * tc * (o_ * (1.0 - o_)))
        vstore(dc, hb, c * f)


@_njit(inline="always")
def _elman_dz(t, g, n_steps, shape, scale, ol, err, hs, dh, dz):
    """dz = dL/d(tanh's argument) at step t of every group, from dh (dL/dh_t through step
    t + 1) plus the read-out's."""
    _, _, n_hidden, n_out = _dims(_ELMAN_TAG, shape)
    for j in range(n_hidden):
        hb = (g * n_hidden + j) * L
        d = _dh_at(t, g, j, n_steps, n_hidden, n_out, scale, ol, err, dh)
        h = vload(hs, ((g * n_steps + t) * n_hidden + j) * L)
        vstore(dz, hb, d * (1.0 - h * h))


@_njit(inline="always")
def _sum_grads(kind, t, g, n_steps, shape, scale, xs, dz, hs, err, accp, oaccp):
    """Step t's terms of the gradient sums, into the partial sums accp[g, r, c] += dz ·
    (1, 1, x_t, h_{t-1}) (column 1, b_rec: Elman from step 1 on; the LSTM's is b_in's) and
    oaccp[g, o, c] += scale · err_t[o] · (1, h_t)."""
    n_rows, n_in, n_hidden, n_out = _dims(kind, shape)
    cols = 2 + n_in + n_hidden
    for r in range(n_rows):
        d = vload(dz, (g * n_rows + r) * L)
        ab = (g * n_rows + r) * cols * L
        vstore(accp, ab, vload(accp, ab) + d)
        if not _is_lstm(kind) and t > 0:
            vstore(accp, ab + L, vload(accp, ab + L) + d)
        for k in range(n_in):
            a = ab + (2 + k) * L
            vstore(accp, a, vfma(d, vload(xs, (g * n_in + k) * L), vload(accp, a)))
        if t > 0:
            for k in range(n_hidden):
                a = ab + (2 + n_in + k) * L
                hk = vload(hs, ((g * n_steps + t - 1) * n_hidden + k) * L)
                vstore(accp, a, vfma(d, hk, vload(accp, a)))
    for o in range(n_out):
        e = vload(err, ((g * n_steps + t) * n_out + o) * L) * scale
        ob = (g * n_out + o) * (1 + n_hidden) * L
        vstore(oaccp, ob, vload(oaccp, ob) + e)
        for k in range(n_hidden):
            a = ob + (1 + k) * L
            hk = vload(hs, ((g * n_steps + t) * n_hidden + k) * L)
            vstore(oaccp, a, vfma(e, hk, vload(oaccp, a)))


@_njit(inline="always")
def _dh_through(kind, g, shape, wl, dz, dh):
    """dh[g, k] = Σ_r W_rec[r, k] dz[g, r]: dL/dh_{t-1} through step t, as two interleaved
    partial sums (half the chain the next step waits on)."""
    n_rows, n_in, n_hidden, _ = _dims(kind, shape)
    cols = 2 + n_in + n_hidden
    for k in range(n_hidden):
        s0 = vsplat(0.0, wl)
        s1 = vsplat(0.0, wl)
        for r in range(n_rows):
            term = vload(wl, ((g * n_rows + r) * cols + 2 + n_in + k) * L)
            if r % 2 == 0:
                s0 = vfma(term, vload(dz, (g * n_rows + r) * L), s0)
            else:
                s1 = vfma(term, vload(dz, (g * n_rows + r) * L), s1)
        vstore(dh, (g * n_hidden + k) * L, s0 + s1)


@_njit
def _backward(kind, shape, data, goff, n_seq, ws, scale):
    """BPTT of n_seq lanes after `_forward` kept every step (and set ws.rows): the float64
    gradient sums ws.acc[g, r, c] (c: b_in, b_rec, W_in, W_rec) and ws.oacc[g, o, c] (b_out,
    W_out), for dL/dy_t = scale · err_t."""
    n_rows, n_in, n_hidden, n_out = _dims(kind, shape)
    n_steps, n_data = data.xt.shape[0], data.xt.shape[2]
    n_groups = _groups(n_seq)
    n_acc = n_groups * n_rows * (2 + n_in + n_hidden) * L
    n_oacc = n_groups * n_out * (1 + n_hidden) * L
    xf, xl = data.xt.reshape(data.xt.size), data.xl
    wl, ol, rows, gates, cs, tcs, hs = ws.wl, ws.ol, ws.rows, ws.gates, ws.cs, ws.tcs, ws.hs
    err, dh, dc, dz, xs = ws.err, ws.dh, ws.dc, ws.dz, ws.xs
    acc, accp, oacc, oaccp = ws.acc, ws.accp, ws.oacc, ws.oaccp
    acc[:n_acc] = 0.0
    accp[:n_acc] = 0.0
    oacc[:n_oacc] = 0.0
    oaccp[:n_oacc] = 0.0
    dh[: n_groups * n_hidden * L] = 0.0
    dc[: n_groups * n_hidden * L] = 0.0
    for t in range(n_steps - 1, -1, -1):
        for g in range(n_groups):
            if _is_lstm(kind):
                _lstm_dz(t, g, n_steps, shape, scale, ol, err, gates, cs, tcs, dh, dc, dz)
            else:
                _elman_dz(t, g, n_steps, shape, scale, ol, err, hs, dh, dz)
            _fetch_x(t, g, goff, n_steps, n_in, xl, xf, n_data, rows, xs)
            _sum_grads(kind, t, g, n_steps, shape, scale, xs, dz, hs, err, accp, oaccp)
            if t > 0:
                _dh_through(kind, g, shape, wl, dz, dh)
        if t % _CHUNK == 0:
            _flush(accp, acc, n_acc)
            _flush(oaccp, oacc, n_oacc)


# --- a batch, an epoch, a validation ---------------------------------------------------------


@_njit
def _member_grads(kind, shape, mi, n_batch, ws, out):
    """out[p][:] = member mi's (local index) gradient of parameter p in Params order: its
    lanes mi·B' … mi·B'+B'-1 added up in sequence order, then rounded to out's type."""
    n_rows, n_in, n_hidden, n_out = _dims(kind, shape)
    cols = 2 + n_in + n_hidden
    acc, oacc = ws.acc, ws.oacc
    for r in range(n_rows):
        sb = sr = 0.0
        for b in range(n_batch):
            s = mi * n_batch + b
            sb += acc[((s // L * n_rows + r) * cols) * L + s % L]
            sr += acc[((s // L * n_rows + r) * cols + 1) * L + s % L]
        out[1][r] = sb
        out[3][r] = sb if _is_lstm(kind) else sr  # b_ih and b_hh enter every gate as a sum
        for k in range(n_in + n_hidden):
            v = 0.0
            for b in range(n_batch):
                s = mi * n_batch + b
                v += acc[((s // L * n_rows + r) * cols + 2 + k) * L + s % L]
            if k < n_in:
                out[0][r * n_in + k] = v
            else:
                out[2][r * n_hidden + k - n_in] = v
    for o in range(n_out):
        for k in range(1 + n_hidden):
            v = 0.0
            for b in range(n_batch):
                s = mi * n_batch + b
                v += oacc[((s // L * n_out + o) * (1 + n_hidden) + k) * L + s % L]
            if k == 0:
                out[5][o] = v
            else:
                out[4][o * n_hidden + k - 1] = v


@_njit
def _batch(kind, shape, data, goff, row0, nb, m0, n_members, params, ws, used, grads, losses):
    """One batch (rows row0 … row0+nb-1 of `data`, its pass packed from group goff) for
    members m0 … m0+n_members-1: losses[mi] its mean squared error (float64 of the value
    rounded to the parameters' type), grads[mi][p] its gradient of parameter p (zeros where
    not used[p]), in the parameters' type."""
    n_steps, n_out = data.tt.shape[0], data.tt.shape[1]
    n_seq = n_members * nb
    count = nb * n_steps * n_out
    scale = as_type(2.0 / count, ws.wl)  # d(mean of squares)/dy = 2 err / count
    _spread(kind, shape, params, m0, nb, n_seq, ws)
    _forward(kind, shape, data, goff, row0, nb, n_seq, True, ws)
    _backward(kind, shape, data, goff, n_seq, ws, scale)
    for mi in range(n_members):
        total = 0.0
        for b in range(nb):
            total += ws.sq[mi * nb + b]
        losses[mi] = np.float64(as_type(total / count, ws.wl))
        _member_grads(kind, shape, mi, nb, ws, grads[mi])
        for p in range(6):
            if not used[p]:
                grads[mi][p][:] = 0.0


@_njit
def _clip(grads, used, max_norm):
    """clip_grad_norm_ of one member's gradient: scaled by max_norm / (‖g‖ + 1e-6) if < 1."""
    norm2 = 0.0
    for p in range(6):
        if used[p]:
            for q in range(grads[p].shape[0]):
                norm2 += np.float64(grads[p][q]) ** 2
    factor = as_type(min(1.0, max_norm / (math.sqrt(norm2) + 1e-6)), grads[0])
    for p in range(6):
        for q in range(grads[p].shape[0]):
            grads[p][q] = grads[p][q] * factor


@_njit
def _adam(params, moments1, moments2, m, grads, used, steps, hp):
    """One Adam step of member m's parameters from grads, as torch.optim.Adam (float64
    arithmetic, one rounding into each stored value); steps[p] is this step's number for
    parameter p, counting from 1. Parameters not `used` are skipped, as torch skips one
    whose .grad is None."""
    for p in range(6):
        if not used[p]:
            continue
        bias1 = 1.0 - hp.beta1 ** steps[p]
        bias2_sqrt = math.sqrt(1.0 - hp.beta2 ** steps[p])
        w, mo, v, gr = params[p][m], moments1[p][m], moments2[p][m], grads[p]
        for i in range(w.shape[0]):
            gi = np.float64(gr[i])
            mo[i] = mo[i] + (1.0 - hp.beta1) * (gi - mo[i])  # torch's lerp(m, g, 1 - beta1)
            v[i] = hp.beta2 * v[i] + (1.0 - hp.beta2) * gi * gi
            denom = math.sqrt(np.float64(v[i])) / bias2_sqrt + hp.eps
            w[i] = w[i] - (hp.lr / bias1) * np.float64(mo[i]) / denom


@_njit(inline="always")
def _member_arrays(params, n_members):
    """Per member, one array per parameter shaped like its row: gradients' storage."""
    return [[np.empty_like(params[p][0]) for p in range(6)] for _ in range(n_members)]


@_njit
def _epoch(kind, shape, data, m0, m1, params, moments1, moments2, steps, hp, used, ws, losses):
    n_data = data.xt.shape[2]
    batch_size = data.rows_per_pass
    n_members = m1 - m0
    grads = _member_arrays(params, n_members)
    batch_losses = np.empty(n_members)
    weighted = np.zeros(n_members)
    step = steps.copy()
    goff = 0
    for row0 in range(0, n_data, batch_size):
        nb = min(batch_size, n_data - row0)
        _batch(kind, shape, data, goff, row0, nb, m0, n_members, params, ws, used, grads,
               batch_losses)  # fmt: skip
        goff += _groups(n_members * nb)
        for p in range(6):
            if used[p]:
                step[p] += 1
        for mi in range(n_members):
            weighted[mi] += batch_losses[mi] * nb
            if hp.clip > 0:
                _clip(grads[mi], used, hp.clip)
            _adam(params, moments1, moments2, m0 + mi, grads[mi], used, step, hp)
    for mi in range(n_members):
        losses[m0 + mi] = weighted[mi] / n_data


@_njit
def lstm_epoch(shape, data, m0, m1, params, moments1, moments2, steps, hp, used, ws, losses):
    """One epoch of Adam steps for LSTM members m0 … m1-1 on `data` (`make_data` for m1-m0
    members; batches of data.rows_per_pass rows in order). params, moments1, moments2
    (Adam's exp_avg, exp_avg_sq): `Params` of 2-D [K, size] views, updated in place;
    steps[p]: the steps parameter p had taken before (not updated); hp: `AdamConfig`;
    used[p]: whether parameter p gets a gradient; ws: a `workspace` for a batch's lane
    groups over T steps. losses[m] = member m's mean training loss over the epoch (each
    batch's mean rounded to the parameters' type, weighted by its rows)."""
    _epoch(_LSTM_TAG, shape, data, m0, m1, params, moments1, moments2, steps, hp, used, ws,
           losses)  # fmt: skip


@_njit
def elman_epoch(shape, data, m0, m1, params, moments1, moments2, steps, hp, used, ws, losses):
    """`lstm_epoch` for Elman members."""
    _epoch(_ELMAN_TAG, shape, data, m0, m1, params, moments1, moments2, steps, hp, used, ws,
           losses)  # fmt: skip


@_njit
def _grads(kind, shape, data, m0, m1, params, used, ws, losses, grads):
    n_members = m1 - m0
    member_grads = [[grads[p][m0 + mi] for p in range(6)] for mi in range(n_members)]
    out = np.empty(n_members)
    _batch(kind, shape, data, 0, 0, data.xt.shape[2], m0, n_members, params, ws, used,
           member_grads, out)  # fmt: skip
    for mi in range(n_members):
        losses[m0 + mi] = out[mi]


@_njit
def lstm_grads(shape, data, m0, m1, params, used, ws, losses, grads):
    """All rows of `data` (one pass) as one batch for LSTM members m0 … m1-1, without a
    step: losses[m] its MSE, grads (`Params` of [K, size]) each member's gradient."""
    _grads(_LSTM_TAG, shape, data, m0, m1, params, used, ws, losses, grads)


@_njit
def elman_grads(shape, data, m0, m1, params, used, ws, losses, grads):
    """`lstm_grads` for Elman members."""
    _grads(_ELMAN_TAG, shape, data, m0, m1, params, used, ws, losses, grads)


@_njit
def _sse(kind, shape, data, m0, m1, params, ws, out):
    n_data = data.xt.shape[2]
    per_pass = data.rows_per_pass
    n_members = m1 - m0
    for mi in range(n_members):
        out[m0 + mi] = 0.0
    goff = 0
    for row0 in range(0, n_data, per_pass):
        nb = min(per_pass, n_data - row0)
        _spread(kind, shape, params, m0, nb, n_members * nb, ws)
        _forward(kind, shape, data, goff, row0, nb, n_members * nb, False, ws)
        goff += _groups(n_members * nb)
        for mi in range(n_members):
            for b in range(nb):
                out[m0 + mi] += ws.sq[mi * nb + b]


@_njit
def lstm_sse(shape, data, m0, m1, params, ws, out):
    """out[m] = LSTM member m's sum of squared errors (float64) on `data` (`make_data` for
    m1-m0 members), m0 ≤ m < m1, forward only (ws: a two-step `workspace` for a pass)."""
    _sse(_LSTM_TAG, shape, data, m0, m1, params, ws, out)


@_njit
def elman_sse(shape, data, m0, m1, params, ws, out):
    """`lstm_sse` for Elman members."""
    _sse(_ELMAN_TAG, shape, data, m0, m1, params, ws, out)


# --- inference ---------------------------------------------------------------------------------


@_njit
def _predict(kind, shape, data, m, params, ws, out):
    n_steps, n_in, n_data = data.xt.shape
    n_out = out.shape[2]
    _, _, n_hidden, _ = _dims(kind, shape)
    per_pass = data.rows_per_pass
    xf, xl = data.xt.reshape(data.xt.size), data.xl
    wl, ol, rows, gates, cs, tcs, hs, xs = (
        ws.wl, ws.ol, ws.rows, ws.gates, ws.cs, ws.tcs, ws.hs, ws.xs
    )  # fmt: skip
    goff = 0
    for row0 in range(0, n_data, per_pass):
        nb = min(per_pass, n_data - row0)
        n_groups = _groups(nb)
        _spread(kind, shape, params, m, nb, nb, ws)
        _lane_rows(row0, nb, nb, rows)
        for t in range(n_steps):
            for g in range(n_groups):
                _fetch_x(t, g, goff, n_steps, n_in, xl, xf, n_data, rows, xs)
                if _is_lstm(kind):
                    _lstm_forward(t, g, 2, False, shape, xs, wl, gates, cs, tcs, hs)
                else:
                    _elman_forward(t, g, 2, False, shape, xs, wl, hs)
                cur = g * 2 + (t & 1)
                for o in range(n_out):
                    ob = (g * n_out + o) * (1 + n_hidden) * L
                    y = vload(ol, ob)
                    for k in range(n_hidden):
                        hk = vload(hs, (cur * n_hidden + k) * L)
                        y = vfma(vload(ol, ob + (1 + k) * L), hk, y)
                    for lane in range(min(L, nb - g * L)):
                        out[row0 + g * L + lane, t, o] = vget(y, lane)
        goff += n_groups


@_njit
def lstm_predict(shape, data, m, params, ws, out):
    """out[n, t, :] = LSTM member m's output at step t of row n of `data` (`make_data` for
    one member; its targets unused), forward only (ws: a two-step `workspace` for a pass)."""
    _predict(_LSTM_TAG, shape, data, m, params, ws, out)


@_njit
def elman_predict(shape, data, m, params, ws, out):
    """`lstm_predict` for an Elman member."""
    _predict(_ELMAN_TAG, shape, data, m, params, ws, out)


def predict_network(kind: str, weights: Any, x: Any, pack_budget: int = 64 << 20) -> Any:
    """y [B, T, O] of one network from its six weights (`Params` order, torch tensors of
    x's type, on the CPU) for x [B, T, I] (a torch tensor), forward only: memory is x, y
    and (at most pack_budget bytes of) x laid out per lane."""
    import torch

    k = KINDS[kind]
    params = Params(*(w.detach().reshape(1, -1).contiguous().numpy() for w in weights))
    n_out = weights[5].shape[0]
    n_hidden = weights[4].shape[1]
    n_batch, n_steps, n_in = x.shape
    shape = tuple(size_tag(n) for n in (n_in, n_hidden, n_out))
    xn = x.detach().contiguous().numpy()
    rows = min(n_batch, 512)
    # (the targets are not read: x stands in for them, packed or not alike)
    data = make_data(xn, xn[:, :, :1], rows, 1, pack_budget)
    ws = workspace(k, n_in, n_hidden, n_out, -(-rows // L), 2, xn.dtype)
    out = torch.empty(n_batch, n_steps, n_out, dtype=x.dtype)
    (lstm_predict if k == LSTM else elman_predict)(shape, data, 0, params, ws, out.numpy())
    return out
