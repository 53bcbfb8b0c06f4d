"""Training and validation passes with one sequence's pre-activation rows per vector: for larger
hidden sizes and small batches, where one sequence per lane (`lanes`) leaves lanes idle.

Layout. Rows r of a layer (LSTM: gates i, f, g, o of H units each; Elman: H units) are laid
out in blocks padded to a multiple of LANES (Hp units a block, Rp = 4·Hp or Hp rows), so a
step of one sequence is Rp / LANES vectors: z = b + W_in x_t + W_rec h_{t-1}, a weight column
(`wt[c]`, over the rows) times a broadcast input, then the activations and, for the LSTM, the
cell update on whole vectors (unit j's i, f, g and o sit in the same lane of four vectors).
Padded rows have zero weights, so their units stay 0 and never reach a real one. A member's
sequences run one after the other inside each step, sharing each weight vector from L1.

Members run one at a time (their weights differ), the sequences of a member in order, so
every sum, and therefore every result, is the same whatever the number of threads a
population's members are spread over (`paths.FusedPath`). Sums over time run in the working
type for _CHUNK steps, then go into float64; the step arithmetic, the read-out, the loss and
Adam are as in `lanes`, whose parameter views (`lanes.Params`), Adam and clipping this
module shares.
"""

from __future__ import annotations

from collections import namedtuple
from typing import Any

import numpy as np

from models.kernels.compile import _njit
from models.kernels.lanes import (
    _CHUNK,
    _ELMAN_TAG,
    _LSTM_TAG,
    LANES,
    LSTM,
    _adam,
    _clip,
    _dims,
    _flush,
    _is_lstm,
    _member_arrays,
    as_type,
    rows_of,
)
from models.kernels.simd import vfma, vload, vsigmoid, vsplat, vstore, vsum, vtanh

L = LANES

# A member's weights laid out by row: wt[c, Rp] (c: b_in, b_rec, W_in[:, k], W_rec[:, k]),
# wrec[Rp, Hp] (W_rec by row, for dL/dh), wo[O, Hp] and bo[O] (the read-out), flat.
# The working arrays of a pass over a member's B' sequences (`workspace`), flat.
Workspace = namedtuple(
    "Workspace",
    ["wt", "wrec", "wo", "bo", "z", "cs", "tcs", "hs", "err", "dh", "dc", "dz",
     "accp", "acc", "oaccp", "oacc", "sq"],
)  # fmt: skip


def padded(n: int) -> int:
    return -(-n // L) * L


def workspace(
    kind: int, n_in: int, n_hidden: int, n_out: int, n_seq: int, n_steps: int, dtype: Any
) -> Workspace:
    """The arrays for passes over up to n_seq sequences of one member and n_steps steps (2
    for forward-only passes: two steps of state)."""
    hp = padded(n_hidden)
    rp = 4 * hp if kind == LSTM else hp
    cols = 2 + n_in + n_hidden
    lstm = kind == LSTM

    def arr(n: int, dt: Any = dtype) -> np.ndarray:
        return np.zeros(n, dtype=dt)

    return Workspace(
        wt=arr(cols * rp),
        wrec=arr(rp * hp),
        wo=arr(n_out * hp),
        bo=arr(n_out),
        z=arr(n_seq * n_steps * rp),
        cs=arr(n_seq * n_steps * hp if lstm else 1),
        tcs=arr(n_seq * n_steps * hp if lstm else 1),
        hs=arr(n_seq * n_steps * hp),
        err=arr(n_seq * n_steps * n_out),
        dh=arr(n_seq * hp),
        dc=arr(n_seq * hp),
        dz=arr(n_seq * rp),
        accp=arr(cols * rp),
        acc=arr(cols * rp, np.float64),
        oaccp=arr(n_out * (1 + hp)),
        oacc=arr(n_out * (1 + hp), np.float64),
        sq=arr(n_seq, np.float64),
    )


@_njit(inline="always")
def _layout(kind, shape):
    """(R, I, H, O, Hp, Rp, C)."""
    n_rows, n_in, n_hidden, n_out = _dims(kind, shape)
    hp = (n_hidden + L - 1) // L * L
    rp = 4 * hp if _is_lstm(kind) else hp
    return n_rows, n_in, n_hidden, n_out, hp, rp, 2 + n_in + n_hidden


@_njit(inline="always")
def _pos(kind, r, n_hidden, hp):
    """The padded position of row r: gate block r // H, unit r % H."""
    return (r // n_hidden) * hp + r % n_hidden if _is_lstm(kind) else r


@_njit
def _spread(kind, shape, params, m, ws):
    """Member m's weights by row into ws.wt, ws.wrec, ws.wo, ws.bo (padding zero)."""
    n_rows, n_in, n_hidden, n_out, hp, rp, cols = _layout(kind, shape)
    wt, wrec, wo, bo = ws.wt, ws.wrec, ws.wo, ws.bo
    wt[: cols * rp] = 0.0
    wrec[: rp * hp] = 0.0
    wo[: n_out * hp] = 0.0
    for r in range(n_rows):
        q = _pos(kind, r, n_hidden, hp)
        wt[q] = params.b_in[m, r]
        wt[rp + q] = params.b_rec[m, r]
        for k in range(n_in):
            wt[(2 + k) * rp + q] = params.w_in[m, r * n_in + k]
        for k in range(n_hidden):
            w = params.w_rec[m, r * n_hidden + k]
            wt[(2 + n_in + k) * rp + q] = w
            wrec[q * hp + k] = w
    for o in range(n_out):
        bo[o] = params.b_out[m, o]
        for k in range(n_hidden):
            wo[o * hp + k] = params.w_out[m, o * n_hidden + k]


@_njit(inline="always")
def _step(kind, shape, x, row, t, s, n_slots, keep, ws):
    """Step t of the member's sequence s (data row `row`): its pre-activations, activations
    and (LSTM) cell into slot `lanes._slot(t, keep)` of ws.z, cs, tcs, hs."""
    _, n_in, n_hidden, _, hp, rp, _ = _layout(kind, shape)
    wt, z, cs, tcs, hs = ws.wt, ws.z, ws.cs, ws.tcs, ws.hs
    cur = s * n_slots + (t if keep else t & 1)
    prev = s * n_slots + (t - 1 if keep else (t - 1) & 1)
    lstm = _is_lstm(kind)
    for v in range(0, rp, L):
        acc = vload(wt, v)
        if lstm or t > 0:
            acc = acc + vload(wt, rp + v)
        for k in range(n_in):
            acc = vfma(vload(wt, (2 + k) * rp + v), vsplat(x[row, t, k], wt), acc)
        if t > 0:
            for k in range(n_hidden):
                hk = vsplat(hs[prev * hp + k], wt)
                acc = vfma(vload(wt, (2 + n_in + k) * rp + v), hk, acc)
        if not lstm or 2 * hp <= v < 3 * hp:
            vstore(z, cur * rp + v, vtanh(acc))
        else:
            vstore(z, cur * rp + v, vsigmoid(acc))
    if lstm:
        for u in range(0, hp, L):
            zb = cur * rp
            c = vload(z, zb + u) * vload(z, zb + 2 * hp + u)  # i g
            if t > 0:
                c = vfma(vload(z, zb + hp + u), vload(cs, prev * hp + u), c)
            tc = vtanh(c)
            vstore(cs, cur * hp + u, c)
            vstore(tcs, cur * hp + u, tc)
            vstore(hs, cur * hp + u, vload(z, zb + 3 * hp + u) * tc)
    else:
        for u in range(0, hp, L):
            vstore(hs, cur * hp + u, vload(z, cur * rp + u))


@_njit(inline="always")
def _readout(shape, target, row, t, s, n_slots, keep, ws, sqp):
    """Step t's read-out of sequence s against its target: sqp[s] += e², err kept."""
    _, _, _, n_out, hp, _, _ = _layout(_LSTM_TAG, shape)
    wo, bo, hs, err = ws.wo, ws.bo, ws.hs, ws.err
    cur = s * n_slots + (t if keep else t & 1)
    for o in range(n_out):
        y = _dot(wo, o * hp, hs, cur * hp, hp) + bo[o]
        e = y - target[row, t, o]
        if keep:
            err[(s * n_slots + t) * n_out + o] = e
        sqp[s] += e * e


@_njit(inline="always")
def _dot(a, a0, b, b0, n):
    """Σ a[a0 + i] b[b0 + i] for i < n (n a multiple of LANES), lanes summed in a fixed
    order."""
    acc = vload(a, a0) * vload(b, b0)
    for i in range(L, n, L):
        acc = vfma(vload(a, a0 + i), vload(b, b0 + i), acc)
    return vsum(acc)


@_njit
def _forward(kind, shape, x, target, row0, nb, keep, ws, sqp):
    """The forward pass and read-out of the member's sequences (rows row0 … row0+nb-1,
    weights spread): ws.sq[s] each one's sum of squared errors (float64); with `keep` every
    step's states and errors are kept for `_backward`."""
    n_steps = x.shape[1]
    n_slots = n_steps if keep else 2
    sq = ws.sq
    sq[:nb] = 0.0
    sqp[:nb] = 0.0
    for t in range(n_steps):
        for s in range(nb):
            _step(kind, shape, x, row0 + s, t, s, n_slots, keep, ws)
            _readout(shape, target, row0 + s, t, s, n_slots, keep, ws, sqp)
        if t % _CHUNK == _CHUNK - 1 or t == n_steps - 1:
            _flush(sqp, sq, nb)


@_njit
def _backward(kind, shape, x, row0, nb, ws, scale):
    """BPTT of the member's sequences after `_forward` kept every step: the member's gradient
    sums in ws.acc [C, Rp] (b_in, b_rec, W_in columns, W_rec columns) and ws.oacc [O, 1+Hp]
    (b_out, W_out), float64, for dL/dy_t = scale · err_t."""
    n_rows, n_in, n_hidden, n_out, hp, rp, cols = _layout(kind, shape)
    n_steps = x.shape[1]
    lstm = _is_lstm(kind)
    wrec, wo, z, cs, tcs, hs, err = ws.wrec, ws.wo, ws.z, ws.cs, ws.tcs, ws.hs, ws.err
    dh, dc, dz, accp, acc, oaccp, oacc = ws.dh, ws.dc, ws.dz, ws.accp, ws.acc, ws.oaccp, ws.oacc
    acc[: cols * rp] = 0.0
    accp[: cols * rp] = 0.0
    oacc[: n_out * (1 + hp)] = 0.0
    oaccp[: n_out * (1 + hp)] = 0.0
    dh[: nb * hp] = 0.0
    dc[: nb * hp] = 0.0
    for t in range(n_steps - 1, -1, -1):
        for s in range(nb):
            row = row0 + s
            cur = s * n_steps + t
            # dL/dh_t: through step t + 1 (dh) and from the read-out.
            for o in range(n_out):
                e = err[cur * n_out + o] * scale
                for u in range(0, hp, L):
                    d = vfma(vsplat(e, wo), vload(wo, o * hp + u), vload(dh, s * hp + u))
                    vstore(dh, s * hp + u, d)
                    oa = o * (1 + hp) + 1 + u
                    vstore(
                        oaccp, oa, vfma(vsplat(e, wo), vload(hs, cur * hp + u), vload(oaccp, oa))
                    )
                oaccp[o * (1 + hp)] += e
            zb = cur * rp
            if lstm:
                for u in range(0, hp, L):
                    d = vload(dh, s * hp + u)
                    tc = vload(tcs, cur * hp + u)
                    i = vload(z, zb + u)
                    f = vload(z, zb + hp + u)
                    gg = vload(z, zb + 2 * hp + u)
                    o_ = vload(z, zb + 3 * hp + u)
                    c = vfma(d * o_, 1.0 - tc * tc, vload(dc, s * hp + u))
                    vstore(dz, s * rp + u, c * gg * (i * (1.0 - i)))
                    if t > 0:
                        cp = vload(cs, (cur - 1) * hp + u)
                        vstore(dz, s * rp + hp + u, c * cp * (f * (1.0 - f)))
                    else:
                        vstore(dz, s * rp + hp + u, vsplat(0.0, dz))
                    vstore(dz, s * rp + 2 * hp + u, c * i * (1.0 - gg * gg))
                    vstore(dz, s * rp + 3 * hp + u, d * tc * (o_ * (1.0 - o_)))
                    vstore(dc, s * hp + u, c * f)
            else:
                for u in range(0, hp, L):
                    h = vload(hs, cur * hp + u)
                    vstore(dz, s * rp + u, vload(dh, s * hp + u) * (1.0 - h * h))
            # The gradient sums' terms (partial sums in the working type).
            for v in range(0, rp, L):
                d = vload(dz, s * rp + v)
                vstore(accp, v, vload(accp, v) + d)
                if not lstm and t > 0:
                    vstore(accp, rp + v, vload(accp, rp + v) + d)
                for k in range(n_in):
                    a = (2 + k) * rp + v
                    vstore(accp, a, vfma(d, vsplat(x[row, t, k], d), vload(accp, a)))
                if t > 0:
                    for k in range(n_hidden):
                        a = (2 + n_in + k) * rp + v
                        hk = vsplat(hs[(cur - 1) * hp + k], d)
                        vstore(accp, a, vfma(d, hk, vload(accp, a)))
            # dL/dh_{t-1} = Σ_r dz[r] W_rec[r, :]
            if t > 0:
                for u in range(0, hp, L):
                    vstore(dh, s * hp + u, vsplat(0.0, dh))
                for r in range(n_rows):
                    q = _pos(kind, r, n_hidden, hp)
                    dq = vsplat(dz[s * rp + q], dz)
                    for u in range(0, hp, L):
                        vstore(
                            dh, s * hp + u, vfma(dq, vload(wrec, q * hp + u), vload(dh, s * hp + u))
                        )
        if t % _CHUNK == 0:
            _flush(accp, acc, cols * rp)
            _flush(oaccp, oacc, n_out * (1 + hp))


@_njit(inline="always")
def _member_grads(kind, shape, ws, out):
    """out[p][:] = the member's gradient of parameter p (Params order), from the sums."""
    n_rows, n_in, n_hidden, n_out, hp, rp, _ = _layout(kind, shape)
    acc, oacc = ws.acc, ws.oacc
    for r in range(n_rows):
        q = _pos(kind, r, n_hidden, hp)
        out[1][r] = acc[q]
        out[3][r] = acc[q] if _is_lstm(kind) else acc[rp + q]
        for k in range(n_in):
            out[0][r * n_in + k] = acc[(2 + k) * rp + q]
        for k in range(n_hidden):
            out[2][r * n_hidden + k] = acc[(2 + n_in + k) * rp + q]
    for o in range(n_out):
        out[5][o] = oacc[o * (1 + hp)]
        for k in range(n_hidden):
            out[4][o * n_hidden + k] = oacc[o * (1 + hp) + 1 + k]


@_njit
def _batch(kind, shape, x, target, row0, nb, m, params, ws, used, grads):
    """One batch for member m: its mean squared error (float64 of the value rounded to the
    parameters' type); grads[p] its gradient of parameter p (zeros where not used[p])."""
    n_steps, n_out = x.shape[1], target.shape[2]
    count = nb * n_steps * n_out
    scale = as_type(2.0 / count, ws.wt)
    sqp = np.zeros(nb, dtype=ws.wt.dtype)
    _spread(kind, shape, params, m, ws)
    _forward(kind, shape, x, target, row0, nb, True, ws, sqp)
    _backward(kind, shape, x, row0, nb, ws, scale)
    total = 0.0
    for s in range(nb):
        total += ws.sq[s]
    _member_grads(kind, shape, ws, grads)
    for p in range(6):
        if not used[p]:
            grads[p][:] = 0.0
    return np.float64(as_type(total / count, ws.wt))


@_njit(inline="always")
def _epoch(kind, shape, x, target, batch_size, m0, m1, params, moments1, moments2, steps, hp,
           used, ws, losses):  # fmt: skip
    n_data = x.shape[0]
    n_members = m1 - m0
    grads = _member_arrays(params, 1)[0]
    weighted = np.zeros(n_members)
    step = steps.copy()
    for row0 in range(0, n_data, batch_size):
        nb = min(batch_size, n_data - row0)
        for p in range(6):
            if used[p]:
                step[p] += 1
        for mi in range(n_members):
            loss = _batch(kind, shape, x, target, row0, nb, m0 + mi, params, ws, used, grads)
            weighted[mi] += loss * nb
            if hp.clip > 0:
                _clip(grads, used, hp.clip)
            _adam(params, moments1, moments2, m0 + mi, grads, used, step, hp)
    for mi in range(n_members):
        losses[m0 + mi] = weighted[mi] / n_data


@_njit
def lstm_epoch(shape, x, target, batch_size, m0, m1, params, moments1, moments2, steps, hp,
               used, ws, losses):  # fmt: skip
    """`lanes.lstm_epoch` in the row layout, on x [N, T, I], target [N, T, O] as they are
    (ws: a `workspace` for a batch of one member)."""
    _epoch(_LSTM_TAG, shape, x, target, batch_size, m0, m1, params, moments1, moments2, steps,
           hp, used, ws, losses)  # fmt: skip


@_njit
def elman_epoch(shape, x, target, batch_size, m0, m1, params, moments1, moments2, steps, hp,
                used, ws, losses):  # fmt: skip
    """`lstm_epoch` for Elman members."""
    _epoch(_ELMAN_TAG, shape, x, target, batch_size, m0, m1, params, moments1, moments2, steps,
           hp, used, ws, losses)  # fmt: skip


@_njit
def _grads(kind, shape, x, target, m0, m1, params, used, ws, losses, grads):
    for m in range(m0, m1):
        member = [grads[p][m] for p in range(6)]
        losses[m] = _batch(kind, shape, x, target, 0, x.shape[0], m, params, ws, used, member)


@_njit
def lstm_grads(shape, x, target, m0, m1, params, used, ws, losses, grads):
    """All rows as one batch for LSTM members m0 … m1-1, without a step (`lanes.lstm_grads`)."""
    _grads(_LSTM_TAG, shape, x, target, m0, m1, params, used, ws, losses, grads)


@_njit
def elman_grads(shape, x, target, m0, m1, params, used, ws, losses, grads):
    """`lstm_grads` for Elman members."""
    _grads(_ELMAN_TAG, shape, x, target, m0, m1, params, used, ws, losses, grads)


@_njit
def _sse(kind, shape, x, target, m0, m1, params, ws, out):
    n_data = x.shape[0]
    per_pass = ws.sq.shape[0]
    sqp = np.zeros(per_pass, dtype=ws.wt.dtype)
    for m in range(m0, m1):
        _spread(kind, shape, params, m, ws)
        out[m] = 0.0
        for row0 in range(0, n_data, per_pass):
            nb = min(per_pass, n_data - row0)
            _forward(kind, shape, x, target, row0, nb, False, ws, sqp)
            for s in range(nb):
                out[m] += ws.sq[s]


@_njit
def lstm_sse(shape, x, target, m0, m1, params, ws, out):
    """out[m] = LSTM member m's sum of squared errors on (x, target), forward only (ws: a
    two-step `workspace`; its sequences bound the rows per pass)."""
    _sse(_LSTM_TAG, shape, x, target, m0, m1, params, ws, out)


@_njit
def elman_sse(shape, x, target, m0, m1, params, ws, out):
    """`lstm_sse` for Elman members."""
    _sse(_ELMAN_TAG, shape, x, target, m0, m1, params, ws, out)


__all__ = ["Workspace", "elman_epoch", "lstm_epoch", "padded", "rows_of", "workspace"]
