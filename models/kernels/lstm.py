"""torch.nn.LSTM's cell (gates i, f, g, o) as compiled loops, forward and BPTT.

The input projection x_t W_ih^T + b_ih + b_hh is folded into the loop (n_input is tiny, so it
is a few multiply-adds a step), which saves a (B, T, 4H) tensor and two torch ops per pass.
A population of K members (independent networks trained side by side on the same batches)
is one more leading dimension of the weights, W_ih[K,G,I], W_hh[K,G,H], biases [K,G], and of
the outputs, hs[K,B,T,H]; the input x[B,T,I] is shared.

Each step does its activations for all K·B sequences at once: one flat loop over the K·B·4H
gates (then K·B·H cells) with the vectorizable `_exp`; tanh(z) is written as 2 σ(2z) - 1 so
one loop handles all four gate kinds. Each sequence's arithmetic is the same whatever the
batch or the population, so results depend on neither.
"""

from __future__ import annotations

from collections import namedtuple
from typing import Any

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from models.kernels.compile import _exp, _njit, _one
from models.kernels.glue import (
    _CHUNK,
    Record,
    _check,
    _load_units,
    _np,
    reduce_members,
    reduce_rows,
    run_groups,
    sequence_groups,
)


class LSTMTraining(Record, namedtuple("LSTMTraining", "x w_ih w_hh b_ih b_hh n0 hs cs tcs gates")):
    """`_lstm_forward_train`'s arguments: sequences n0 … n0+N'-1 (sequence n = m·B + b:
    member m on row b of x[B,T,I]) with the members' weights w_ih[K,G,I], w_hh[K,G,H],
    b_ih[K,G], b_hh[K,G], from zero state; out: their states hs[N',T,H] and, for the
    backward pass, the activated gates[T,4P] (layout of `_lstm_setup`), the cells cs[T,P]
    and tcs = tanh(cs)."""

    __slots__ = ()


class LSTMInference(Record, namedtuple("LSTMInference", "x w_ih w_hh b_ih b_hh n0 h c hs")):
    """`_lstm_forward_infer`'s arguments: `LSTMTraining`'s sequences and weights; h[N',H]
    and c[N',H] carry their state in and out, hs[N',T,H] gets their states."""

    __slots__ = ()


class LSTMBackward(
    Record,
    namedtuple("LSTMBackward", "dhs x hs cs tcs gates w_ih w_hh n0 lx lw_ih lw_hh lb"),
):
    """`_lstm_backward`'s arguments: dL/dhs[N',T,H] of `LSTMTraining`'s sequences, their x,
    hs, cs, tcs, gates and weights w_ih, w_hh; out, per sequence and in float64: dL/dx_t in
    lx[N',T,I] (no rows when x needs no gradient) and the gradient sums lw_ih[N',G,I],
    lw_hh[N',G,H], lb[N',G]."""

    __slots__ = ()


# A pass's constants over the flat gate vector (`_lstm_setup`) and a forward pass's step
# buffers (`_lstm_buffers`), built in compiled code.
_Layout = namedtuple("_Layout", "wix whx biasx scale xb sb")
_Steps = namedtuple("_Steps", "st z xr xe he")


@_njit(inline="always")
def _lstm_setup(w_ih, w_hh, b_ih, b_hh, n_batch, n0, n_seq):
    """Constants of a pass over sequences n0 … n0+n_seq-1 (sequence n = m·B + b is row b of
    x run by member m), laid out over a step's flat gate vector z[q], q = gate·P + j·N' + n'
    (gate-major, then unit j, then local sequence n' = n - n0; N' = n_seq, P = N'·H), so
    that each per-step loop is one flat loop over the group (LLVM vectorizes `_exp`) and a
    unit's sequences are contiguous:

    wix[k, q] = W_ih[m, gate·H + j, k], whx[k, q] = W_hh[m, gate·H + j, k], biasx[q] = b_ih +
    b_hh, scale[q] = 2 for g (tanh z = 2 σ(2z) - 1) and 1 for the σ gates, xb[q] = b (the
    lane's row of x) and sb[q] = n' (its sequence); xb[:P] and sb[:P] are those of the
    units p = j·N' + n' of the flat [P] state.
    """
    n_hidden = w_hh.shape[2]
    n_input = w_ih.shape[2]
    units = n_seq * n_hidden
    wt = w_hh.dtype  # the arithmetic's type: the storage type (float32, or float64)
    wix = np.zeros((n_input, 4 * units), dtype=wt)
    whx = np.zeros((n_hidden, 4 * units), dtype=wt)
    biasx = np.zeros(4 * units, dtype=wt)
    scale = np.ones(4 * units, dtype=wt)
    xb = np.zeros(4 * units, dtype=np.int64)
    sb = np.zeros(4 * units, dtype=np.int64)
    for gate in range(4):
        for local in range(n_seq):
            m = (n0 + local) // n_batch
            bi = (n0 + local) % n_batch
            for j in range(n_hidden):
                q = gate * units + j * n_seq + local
                r = gate * n_hidden + j
                biasx[q] = np.float64(b_ih[m, r]) + np.float64(b_hh[m, r])
                for k in range(n_input):
                    wix[k, q] = w_ih[m, r, k]
                for k in range(n_hidden):
                    whx[k, q] = w_hh[m, r, k]
                xb[q] = bi
                sb[q] = local
        if gate == 2:
            scale[2 * units : 3 * units] = 2.0
    return _Layout(wix=wix, whx=whx, biasx=biasx, scale=scale, xb=xb, sb=sb)


@_njit(inline="always")
def _lstm_buffers(n_batch, n_input, n_hidden, units, like):
    """A forward pass's step buffers in `like`'s type (the arithmetic's): the state st[3, P]
    (c, tanh c, h; zero), the gates z[4P], and x_t and h_t as `_lstm_step` reads them
    (xr[B, I], xe[I, P], he[H, P])."""
    wt = like.dtype
    st = np.zeros((3, units), dtype=wt)
    z = np.zeros(4 * units, dtype=wt)
    xr = np.zeros((n_batch, n_input), dtype=wt)
    xe = np.zeros((n_input, units), dtype=wt)
    he = np.zeros((n_hidden, units), dtype=wt)
    return _Steps(st=st, z=z, xr=xr, xe=xe, he=he)


@_njit(inline="always")
def _lstm_dh_setup(w_hh, n_batch, n0, n_seq):
    """For dL/dh_{t-1} = W_hhᵀ dz_t over the units p = k·N' + n': with j = (k + r) mod H,
    whr[r, gate·P + p] = W_hh[m, gate·H + j, k], so that dh[p] = Σ_r Σ_gate
    whr[r, gate·P + p] dz[gate·P + (p + r·N') mod P]: for each r the gate block of dz
    rotated by r units, two contiguous runs (no gathers)."""
    n_hidden = w_hh.shape[2]
    units = n_seq * n_hidden
    whr = np.zeros((n_hidden, 4 * units), dtype=w_hh.dtype)
    for r in range(n_hidden):
        for gate in range(4):
            for local in range(n_seq):
                m = (n0 + local) // n_batch
                for k in range(n_hidden):
                    j = (k + r) % n_hidden
                    whr[r, gate * units + k * n_seq + local] = w_hh[m, gate * n_hidden + j, k]
    return whr


@_njit(inline="always")
def _rows(x, t, xb, n_seq, xe):
    """xe[k, j·N' + n'] = x[b, t, k] for every unit j of local sequence n' on row b
    (xb[n'] = b): gathered once per sequence, then copied per unit (contiguous)."""
    for k in range(xe.shape[0]):
        row = xe[k]
        for n in range(n_seq):
            row[n] = x[xb[n], t, k]
        for j in range(1, xe.shape[1] // n_seq):
            for n in range(n_seq):
                row[j * n_seq + n] = row[n]


@_njit(inline="always")
def _expand_units(v, n_seq, out):
    """out[k, j·N' + n'] = v[k·N' + n'] for every j: each sequence's state value k at each of
    its units' positions (unit-major: H contiguous copies of v's block k)."""
    for k in range(out.shape[0]):
        for j in range(out.shape[1] // n_seq):
            for n in range(n_seq):
                out[k, j * n_seq + n] = v[k * n_seq + n]


# Up to this many units (P = sequences · H) a step's loops run flat over the 4P gate lanes and
# gather each lane's x and h values; beyond, they run per gate block over the P units and read
# x and h expanded per unit (`_rows`, `_expand_units`: block copies, but 4 × (I + H) short
# loops a step instead of I + H), and the backward's cell loop is split into short loops.
# The short loops pay for themselves from 8 units on; up to 6 the gathers cost less (timed on
# the passes of 2-10 sequences at H = 2). Both do the same operations in the same order per
# lane: the same bits.
_WIDE_UNITS = 6


@_njit(inline="always")
def _lstm_step(x, t, layout, steps):
    """Step t for the whole population in place, with the pass's `_Layout` and `_Steps`:
    z[4P] ← the activated gates (layout of `_lstm_setup`), st[0] = c, st[1] = tanh(c),
    st[2] = h [P] ← step t's from step t-1's.

    Shapes the compiler vectorizes: every loop is flat, with the input or hidden index
    outside it. With few units (P ≤ _WIDE_UNITS) over the 4P lanes, gathering x_t (its rows
    first copied to xr[B, I]) and h_{t-1}; otherwise per gate block over the P units, reading
    xe[I, P] and he[H, P] (`_expand_units`(h), kept up to date here): a sequence's values
    repeated over its units. The cell update reads z and writes one state array only. Per lane the
    sums run bias, x terms, h terms either way.
    """
    wix, whx, biasx, scale = layout.wix, layout.whx, layout.biasx, layout.scale
    xb, sb = layout.xb, layout.sb
    st, z, xr, xe, he = steps.st, steps.z, steps.xr, steps.xe, steps.he
    units = st.shape[1]
    n_hidden = he.shape[0]
    n_seq = units // n_hidden
    one = _one(z)
    two = one + one
    for q in range(z.shape[0]):
        z[q] = biasx[q]
    if units > _WIDE_UNITS:
        _rows(x=x, t=t, xb=xb, n_seq=n_seq, xe=xe)
        for gate in range(4):
            base = gate * units
            for k in range(xe.shape[0]):
                for p in range(units):
                    z[base + p] += wix[k, base + p] * xe[k, p]
            for k in range(n_hidden):
                for p in range(units):
                    z[base + p] += whx[k, base + p] * he[k, p]
    else:
        for bi in range(xr.shape[0]):
            for k in range(xr.shape[1]):
                xr[bi, k] = x[bi, t, k]
        for k in range(xr.shape[1]):
            for q in range(z.shape[0]):
                z[q] += wix[k, q] * xr[xb[q], k]
        for k in range(n_hidden):
            for q in range(z.shape[0]):
                z[q] += whx[k, q] * st[2, k * n_seq + sb[q]]
    for q in range(z.shape[0]):  # σ(scale z) · scale - (scale - 1): σ or tanh
        a = scale[q]
        z[q] = a / (one + _exp(-a * z[q])) - (a - one)
    for p in range(units):  # unit p's i, f, g, o: z[p], z[P + p], z[2P + p], z[3P + p]
        c = z[units + p] * st[0, p] + z[p] * z[2 * units + p]
        tc = one - two / (_exp(two * c) + one)
        st[0, p] = c
        st[1, p] = tc
        st[2, p] = z[3 * units + p] * tc
    if units > _WIDE_UNITS:
        _expand_units(st[2], n_seq, he)


@_njit
def _lstm_forward_train(args):
    """The forward pass of an `LSTMTraining`'s sequences, keeping what the backward needs."""
    x, hs = args.x, args.hs
    n_batch, n_steps, n_input = x.shape
    n_seq, _, n_hidden = hs.shape
    layout = _lstm_setup(
        w_ih=args.w_ih, w_hh=args.w_hh, b_ih=args.b_ih, b_hh=args.b_hh, n_batch=n_batch,
        n0=args.n0, n_seq=n_seq,
    )  # fmt: skip
    units = n_seq * n_hidden
    steps = _lstm_buffers(  # in hs's type
        n_batch=n_batch, n_input=n_input, n_hidden=n_hidden, units=units, like=hs
    )
    st, z = steps.st, steps.z
    for t in range(n_steps):
        _lstm_step(x, t, layout, steps)
        for q in range(4 * units):
            args.gates[t, q] = z[q]
        for p in range(units):
            args.cs[t, p] = st[0, p]
            args.tcs[t, p] = st[1, p]
        for n in range(n_seq):
            for j in range(n_hidden):
                hs[n, t, j] = st[2, j * n_seq + n]


@_njit
def _lstm_forward_infer(args):
    """The forward pass of an `LSTMInference`'s sequences from args.h and args.c, which get
    their final state. Stores no gates or cells: memory is hs plus O(N'·G).
    """
    x, hs, h_io, c_io = args.x, args.hs, args.h, args.c
    n_batch, n_steps, n_input = x.shape
    n_seq, _, n_hidden = hs.shape
    layout = _lstm_setup(
        w_ih=args.w_ih, w_hh=args.w_hh, b_ih=args.b_ih, b_hh=args.b_hh, n_batch=n_batch,
        n0=args.n0, n_seq=n_seq,
    )  # fmt: skip
    units = n_seq * n_hidden
    steps = _lstm_buffers(n_batch=n_batch, n_input=n_input, n_hidden=n_hidden, units=units, like=hs)
    st = steps.st
    for n in range(n_seq):
        for j in range(n_hidden):
            st[2, j * n_seq + n] = h_io[n, j]
            st[0, j * n_seq + n] = c_io[n, j]
    _expand_units(st[2], n_seq, steps.he)
    for t in range(n_steps):
        _lstm_step(x, t, layout, steps)
        for n in range(n_seq):
            for j in range(n_hidden):
                hs[n, t, j] = st[2, j * n_seq + n]
    for n in range(n_seq):
        for j in range(n_hidden):
            h_io[n, j] = st[2, j * n_seq + n]
            c_io[n, j] = st[0, j * n_seq + n]


@_njit(inline="always")
def _dh_rotated(w, dz, dh, p0, p1, off, first):
    """dh[p] (= when `first`, else +=) Σ_gate w[gate·P + p] dz[gate·P + p + off] for
    p0 ≤ p < p1: one contiguous run of a rotation (`_lstm_dh_setup`), the gates summed in
    order. Through slices, so that the loop indexes with its own counter only (numba's
    handling of computed, possibly negative, indices keeps LLVM from vectorizing)."""
    units = dh.shape[0]
    d = dh[p0:p1]
    w0, w1 = w[p0:p1], w[units + p0 : units + p1]
    w2, w3 = w[2 * units + p0 : 2 * units + p1], w[3 * units + p0 : 3 * units + p1]
    a, b = p0 + off, p1 + off
    z0, z1 = dz[a:b], dz[units + a : units + b]
    z2, z3 = dz[2 * units + a : 2 * units + b], dz[3 * units + a : 3 * units + b]
    for i in range(p1 - p0):
        v = w0[i] * z0[i] + w1[i] * z1[i] + w2[i] * z2[i] + w3[i] * z3[i]
        d[i] = v if first else d[i] + v


@_njit
def _lstm_backward(args):
    """BPTT of an `LSTMBackward`'s sequences from dL/dhs: per sequence dL/dx_t (when lx has
    rows; `glue.reduce_rows` adds up the sequences that read a row of x) and the weights'
    gradient sums (`glue.reduce_members` adds up each member's sequences).

    gates, cs, tcs as `_lstm_forward_train` keeps them. With c_t = f c_{t-1} + i g and
    h_t = o tanh(c_t), walking back in time:
    dh = dhs_t + W_hh^T dz_{t+1};  dc = dc_{t+1} f_{t+1} + dh o (1 - tanh²c_t);
    dz = [dc g · i(1-i), dc c_{t-1} · f(1-f), dc i · (1-g²), dh tanh c_t · o(1-o)];
    dx_t = W_ih^T dz_t, dW_ih += dz_t x_t^T, db += dz_t, dW_hh += dz_t h_{t-1}^T.
    Sums are kept per lane (gate, sequence, unit) in float64.
    """
    dhs, x, hs, cs, tcs, gates = args.dhs, args.x, args.hs, args.cs, args.tcs, args.gates
    lx = args.lx
    want_dx = lx.shape[0] > 0
    n_seq, n_steps, n_hidden = hs.shape
    n_batch = x.shape[0]
    n_input = args.w_ih.shape[2]
    units = n_seq * n_hidden
    # (the biases do not enter the backward pass: any [K, G] array stands in for them)
    b_any = args.w_ih[:, :, 0]
    layout = _lstm_setup(
        w_ih=args.w_ih, w_hh=args.w_hh, b_ih=b_any, b_hh=b_any, n_batch=n_batch, n0=args.n0,
        n_seq=n_seq,
    )  # fmt: skip
    wix, xb, sb = layout.wix, layout.xb, layout.sb
    wide = units > _WIDE_UNITS
    dwix = np.zeros((n_input, 4 * units))
    dwhx = np.zeros((n_hidden, 4 * units))
    dbx = np.zeros(4 * units)
    # Per-step arithmetic in the storage type, as the forward pass; the sums over time
    # (dwix, dwhx, dbx) and dx's over the gates in float64.
    wt = hs.dtype
    one = _one(hs)
    dz = np.zeros(4 * units, dtype=wt)
    dh = np.zeros(units, dtype=wt)  # dL/dh_t: dhs_t + W_hh^T dz_{t+1}
    dc_carry = np.zeros(units, dtype=wt)  # dL/dc_t through c_{t+1} = f_{t+1} c_t + ...
    dcv = np.zeros(units, dtype=wt)  # dL/dc_t
    czero = np.zeros(units, dtype=wt)  # c_{-1}
    xr = np.zeros((n_batch, n_input), dtype=wt)  # x_t and h_{t-1}, as `_lstm_step` reads them
    hr = np.zeros((n_seq, n_hidden), dtype=wt)
    xe = np.zeros((n_input, units), dtype=wt)
    he = np.zeros((n_hidden, units), dtype=wt)
    hprev = np.zeros(units, dtype=wt)
    whr = _lstm_dh_setup(w_hh=args.w_hh, n_batch=n_batch, n0=args.n0, n_seq=n_seq)
    gc = np.zeros((_CHUNK, units))  # dL/dhs_t of a chunk of steps, float64
    t1 = n_steps
    while t1 > 0:  # time backwards, in chunks
        t0 = max(0, t1 - _CHUNK)
        _load_units(dhs, t0, t1, gc, 0)
        for t in range(t1 - 1, t0 - 1, -1):
            s = t - t0
            if wide:
                # The cell's backward as short loops over the units through slices, each
                # loop touching few arrays (one loop over them all touched too many for LLVM
                # to check for overlap, and stayed scalar); the same expressions per unit.
                gs, tct = gc[s], tcs[t]
                cp = cs[t - 1] if t > 0 else czero  # c_{t-1}
                gi, gf = gates[t, :units], gates[t, units : 2 * units]
                gg, go = gates[t, 2 * units : 3 * units], gates[t, 3 * units :]
                z0, z1 = dz[:units], dz[units : 2 * units]
                z2, z3 = dz[2 * units : 3 * units], dz[3 * units :]
                for p in range(units):
                    dh[p] += gs[p]  # (rounded to the storage type, then used)
                for p in range(units):
                    tc = tct[p]
                    dcv[p] = dc_carry[p] + dh[p] * go[p] * (one - tc * tc)
                for p in range(units):
                    i = gi[p]
                    z0[p] = dcv[p] * gg[p] * i * (one - i)
                for p in range(units):
                    f = gf[p]
                    z1[p] = dcv[p] * cp[p] * f * (one - f)
                for p in range(units):
                    g = gg[p]
                    z2[p] = dcv[p] * gi[p] * (one - g * g)
                for p in range(units):
                    o = go[p]
                    z3[p] = dh[p] * tct[p] * o * (one - o)
                for p in range(units):
                    dc_carry[p] = dcv[p] * gf[p]
            else:  # with few units one loop costs less
                for p in range(units):
                    dh[p] += gc[s, p]
                    i = gates[t, p]
                    f = gates[t, units + p]
                    g = gates[t, 2 * units + p]
                    o = gates[t, 3 * units + p]
                    c_prev = cs[t - 1, p] if t > 0 else czero[p]
                    tc = tcs[t, p]
                    dc = dc_carry[p] + dh[p] * o * (one - tc * tc)
                    dz[p] = dc * g * i * (one - i)
                    dz[units + p] = dc * c_prev * f * (one - f)
                    dz[2 * units + p] = dc * i * (one - g * g)
                    dz[3 * units + p] = dh[p] * tc * o * (one - o)
                    dc_carry[p] = dc * f
            for q in range(4 * units):
                dbx[q] += dz[q]
            if wide:
                _rows(x=x, t=t, xb=xb, n_seq=n_seq, xe=xe)
                for gate in range(4):
                    base = gate * units
                    for k in range(n_input):
                        for p in range(units):
                            dwix[k, base + p] += dz[base + p] * xe[k, p]
            else:
                for bi in range(n_batch):
                    for k in range(n_input):
                        xr[bi, k] = x[bi, t, k]
                for k in range(n_input):
                    for q in range(4 * units):
                        dwix[k, q] += dz[q] * xr[xb[q], k]
            if want_dx:
                for n in range(n_seq):
                    for k in range(n_input):
                        sx = 0.0
                        for gate in range(4):
                            for j in range(n_hidden):
                                q = gate * units + j * n_seq + n
                                sx += wix[k, q] * dz[q]
                        lx[n, t, k] = sx
            if t == 0:
                break  # h_{-1} = 0: step 0 adds nothing to dW_hh and reaches nothing earlier
            if wide:
                for n in range(n_seq):
                    for k in range(n_hidden):
                        hprev[k * n_seq + n] = hs[n, t - 1, k]
                _expand_units(hprev, n_seq, he)
                for k in range(n_hidden):
                    for gate in range(4):
                        base = gate * units
                        for p in range(units):
                            dwhx[k, base + p] += dz[base + p] * he[k, p]
            else:
                for n in range(n_seq):
                    for k in range(n_hidden):
                        hr[n, k] = hs[n, t - 1, k]
                for k in range(n_hidden):
                    for q in range(4 * units):
                        dwhx[k, q] += dz[q] * hr[sb[q], k]
            # dh[p] = Σ_r Σ_gate whr[r, gate·P + p] dz[gate·P + (p + r·N') mod P]
            # (`_lstm_dh_setup`): per r, flat loops over the units, the same sums whatever
            # the path above.
            _dh_rotated(w=whr[0], dz=dz, dh=dh, p0=0, p1=units, off=0, first=True)
            for r in range(1, n_hidden):
                shift = r * n_seq
                w = whr[r]
                _dh_rotated(w=w, dz=dz, dh=dh, p0=0, p1=units - shift, off=shift, first=False)
                _dh_rotated(
                    w=w, dz=dz, dh=dh, p0=units - shift, p1=units, off=shift - units, first=False
                )
        t1 = t0
    for n in range(n_seq):
        for gate in range(4):
            for j in range(n_hidden):
                q = gate * units + j * n_seq + n
                r = gate * n_hidden + j
                args.lb[n, r] = dbx[q]
                for k in range(n_input):
                    args.lw_ih[n, r, k] = dwix[k, q]
                for k in range(n_hidden):
                    args.lw_hh[n, r, k] = dwhx[k, q]


def bias_like(weight_hh: torch.Tensor) -> torch.Tensor:
    """An empty [K, G] tensor: the shape and type of the members' stacked biases."""
    return weight_hh.new_empty(weight_hh.shape[:2])


def _check_lstm(
    x: torch.Tensor,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_ih: torch.Tensor,
    bias_hh: torch.Tensor,
) -> None:
    if x.dim() != 3:
        raise ValueError(f"x must be [batch, time, input], got {tuple(x.shape)}")
    if weight_hh.dim() != 3 or weight_hh.shape[1] != 4 * weight_hh.shape[2]:
        raise ValueError(
            f"weight_hh must be [members, 4 * hidden, hidden], got {tuple(weight_hh.shape)}"
        )
    n_members, n_gates, _ = weight_hh.shape
    _check("x", x, x.dtype, tuple(x.shape))
    _check("weight_hh", weight_hh, x.dtype, tuple(weight_hh.shape))
    _check("weight_ih", weight_ih, x.dtype, (n_members, n_gates, x.shape[2]))
    _check("bias_ih", bias_ih, x.dtype, (n_members, n_gates))
    _check("bias_hh", bias_hh, x.dtype, (n_members, n_gates))


class LSTMFunction(torch.autograd.Function):
    """hs[K,B,T,H] = LSTMs of (x, weight_ih, weight_hh, bias_ih, bias_hh); see `lstm_population`.

    The K·B sequences run in groups, one per thread (`glue.set_threads`), each group with its
    own saved gates and cells; gradients are summed per sequence, then in sequence order per
    member (the weights') or per row of x (the input's, over the members that read it), so
    the result is the same bit for bit whatever the number of groups.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight_ih: torch.Tensor,
        weight_hh: torch.Tensor,
        bias_ih: torch.Tensor,
        bias_hh: torch.Tensor,
    ) -> torch.Tensor:
        n_batch, n_steps, _ = x.shape
        n_members, _, n_hidden = weight_hh.shape
        hs = torch.empty(n_members * n_batch, n_steps, n_hidden, dtype=x.dtype)
        x, weight_ih, weight_hh = x.contiguous(), weight_ih.contiguous(), weight_hh.contiguous()
        w_ih, w_hh, b_ih, b_hh = (_np(t) for t in (weight_ih, weight_hh, bias_ih, bias_hh))
        xn, hn = _np(x), hs.numpy()
        groups = sequence_groups(n_members * n_batch)
        saved: dict[tuple[int, int], list[torch.Tensor]] = {}

        def work(n0: int, n1: int) -> None:
            units = (n1 - n0) * n_hidden
            cs = torch.empty(n_steps, units, dtype=x.dtype)
            tcs = torch.empty_like(cs)
            gates = torch.empty(n_steps, 4 * units, dtype=x.dtype)
            call = LSTMTraining(
                x=xn, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, n0=n0, hs=hn[n0:n1],
                cs=cs.numpy(), tcs=tcs.numpy(), gates=gates.numpy(),
            )  # fmt: skip
            _lstm_forward_train(call)
            saved[(n0, n1)] = [cs, tcs, gates]

        run_groups(work, groups)
        ctx.groups = groups
        per_group = [t for g in groups for t in saved[g]]
        ctx.save_for_backward(x, weight_ih, weight_hh, hs, *per_group)
        return hs.view(n_members, n_batch, n_steps, n_hidden)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dhs: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight_ih, weight_hh, hs, *per_group = ctx.saved_tensors
        groups = ctx.groups
        n_seq = hs.shape[0]
        want_dx = bool(ctx.needs_input_grad[0])
        # Per-sequence gradient sums, filled by the groups, then added up per member (dx: per
        # row of x).
        lw_ih = np.empty((n_seq, *weight_ih.shape[1:]))
        lw_hh = np.empty((n_seq, *weight_hh.shape[1:]))
        lb = np.empty((n_seq, weight_hh.shape[1]))
        lx = np.empty((n_seq if want_dx else 0, *x.shape[1:]))
        dhn, xn, hn = _np(dhs.reshape(hs.shape)), _np(x), _np(hs)
        wih, whh = _np(weight_ih), _np(weight_hh)

        def work(n0: int, n1: int) -> None:
            i = groups.index((n0, n1))
            cs, tcs, gates = per_group[3 * i : 3 * i + 3]
            call = LSTMBackward(
                dhs=dhn[n0:n1], x=xn, hs=hn[n0:n1], cs=_np(cs), tcs=_np(tcs), gates=_np(gates),
                w_ih=wih, w_hh=whh, n0=n0, lx=lx[n0:n1], lw_ih=lw_ih[n0:n1],
                lw_hh=lw_hh[n0:n1], lb=lb[n0:n1],
            )  # fmt: skip
            _lstm_backward(call)

        run_groups(work, groups)
        n_batch = x.shape[0]
        dw_ih = reduce_members(lw_ih, n_batch, weight_ih)
        dw_hh = reduce_members(lw_hh, n_batch, weight_hh)
        db = reduce_members(lb, n_batch, bias_like(weight_hh))
        dx = reduce_rows(lx, n_batch, x) if want_dx else None
        # b_ih and b_hh enter every gate as a sum: the same gradient, as separate tensors
        # (one shared tensor could end up as both parameters' .grad and be accumulated twice).
        return dx, dw_ih, dw_hh, db, db.clone()


def lstm_population(
    x: torch.Tensor,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_ih: torch.Tensor,
    bias_hh: torch.Tensor,
) -> torch.Tensor:
    """hs[K,B,T,H] of K one-layer torch.nn.LSTMs (batch_first) from zero state on the same x.

    x[B,T,I]; weight_ih[K,4H,I], weight_hh[K,4H,H], bias_ih[K,4H], bias_hh[K,4H] stack the
    members' weight_ih_l0 ... bias_hh_l0. Differentiable in all five. CPU only.
    """
    _check_lstm(x, weight_ih, weight_hh, bias_ih, bias_hh)
    return LSTMFunction.apply(x, weight_ih, weight_hh, bias_ih, bias_hh)


def _one_member(*weights: torch.Tensor) -> list[torch.Tensor]:
    if weights[1].dim() != 2 or weights[1].shape[0] != 4 * weights[1].shape[1]:
        raise ValueError(f"weight_hh must be [4 * hidden, hidden], got {tuple(weights[1].shape)}")
    return [w[None] for w in weights]


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
    return lstm_population(x, *_one_member(weight_ih, weight_hh, bias_ih, bias_hh))[0]


def lstm_population_inference(
    x: torch.Tensor,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_ih: torch.Tensor,
    bias_hh: torch.Tensor,
    h: torch.Tensor,
    c: torch.Tensor,
) -> torch.Tensor:
    """hs[K,B,T,H] for one time chunk, no autograd; h[K,B,H] and c[K,B,H] carry the state in
    and out. Zero h and c on entry give torch.nn.LSTM's default initial state."""
    _check_lstm(x, weight_ih, weight_hh, bias_ih, bias_hh)
    n_members, _, n_hidden = weight_hh.shape
    n_batch = x.shape[0]
    for name, t in (("h", h), ("c", c)):
        _check(name, t, x.dtype, (n_members, n_batch, n_hidden))
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous: it is updated in place")
    n_seq = n_members * n_batch
    hs = torch.empty(n_seq, x.shape[1], n_hidden, dtype=x.dtype)
    w_ih, w_hh, b_ih, b_hh = (_np(t) for t in (weight_ih, weight_hh, bias_ih, bias_hh))
    xn, hn = _np(x), hs.numpy()
    hv, cv = h.view(n_seq, n_hidden).numpy(), c.view(n_seq, n_hidden).numpy()

    def work(n0: int, n1: int) -> None:
        call = LSTMInference(
            x=xn, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, n0=n0, h=hv[n0:n1], c=cv[n0:n1],
            hs=hn[n0:n1],
        )  # fmt: skip
        _lstm_forward_infer(call)

    run_groups(work, sequence_groups(n_seq))
    return hs.view(n_members, n_batch, x.shape[1], n_hidden)


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
    weights = _one_member(weight_ih, weight_hh, bias_ih, bias_hh)
    # (mypy maps a *list onto every parameter left, h and c too; _one_member gives the four)
    return lstm_population_inference(x, *weights, h[None], c[None])[0]  # type: ignore[call-arg]
