"""The Elman recurrence h_0 = tanh(a_0), h_t = tanh(a_t + W h_{t-1} + b) as compiled loops.

`a` is the input projection l1(x); W and b are hr's. A population of K members (independent
networks trained side by side) is one more leading dimension: a[K,B,T,H], W[K,H,H], b[K,H].
Inside the kernels the K·B sequences are one flat state vector, and each time step advances
all of them together: the K·B recurrences are independent chains, so the CPU overlaps them
instead of waiting on one chain's tanh after another. With more than one thread
(`glue.set_threads`) the sequences are split into groups that run on different cores.

Two layouts of that state, the same arithmetic per unit (so the same bits), chosen per group
by its number of sequences N (`forward_kernel`, `backward_kernel`):

- sequence-major, u = n·H + j (`_elman_forward`, `_elman_backward`): for few sequences.
- unit-major, u = j·N + n (`_elman_forward_wide`, `_elman_backward_wide`): for many. Every
  loop of a step runs over the N sequences of one unit, contiguous, so LLVM vectorizes it;
  no gathers in the step (the sequence-major backward gathers W^T dz unit by unit). Below
  ~8 sequences those loops are too short to pay for their setup, which is why both exist.
"""

from __future__ import annotations

from collections import namedtuple
from typing import Any

import numpy as np
import torch
from torch.autograd.function import FunctionCtx, once_differentiable

from models.kernels.compile import _exp, _njit, _one
from models.kernels.glue import (
    _CHUNK,
    Record,
    _check,
    _expand,
    _load,
    _load_units,
    _np,
    _store,
    _store_units,
    reduce_members,
    run_groups,
    sequence_groups,
)


class ElmanForward(Record, namedtuple("ElmanForward", "a w b n_batch n0 h start hs")):
    """A forward kernel's arguments: sequences n0 … n0+N'-1 of a pass (sequence n = m·B + b,
    B = n_batch: member m on row b) from their inputs a[N',T,H] (l1(x)) with the members'
    hr, w[K,H,H] and b[K,H]; h[N',H] carries their state in and out (with `start`, step 0
    is the sequences' first and h is ignored on entry); hs[N',T,H] gets their states."""

    __slots__ = ()


class ElmanBackward(Record, namedtuple("ElmanBackward", "dhs hs w n_batch n0 da lw lb")):
    """A backward kernel's arguments: dL/dhs[N',T,H] and the forward's states hs[N',T,H] of
    sequences n0 … n0+N'-1 (as in `ElmanForward`), hr's weight w[K,H,H]; out: dL/da into
    da[N',T,H], and per sequence the float64 gradient sums lw[N',H,H] and lb[N',H] of hr's
    weight and bias."""

    __slots__ = ()


@_njit(inline="always")
def _elman_setup(w, b, n_batch, n0, n_seq):
    """Constants over the flat state of sequences n0 … n0+n_seq-1 (sequence n = m·B + b of
    member m), u = n'·H + j for local n' = n - n0: wx[k, u] = W_m[j, k], bx[u] = b_m[j],
    hb[u] = n'·H (where its state starts) and jj[u] = j."""
    n_hidden = w.shape[1]
    units = n_seq * n_hidden
    wx = np.zeros((n_hidden, units), dtype=w.dtype)  # in the storage type, as the arithmetic
    bx = np.zeros(units, dtype=w.dtype)
    hb = np.zeros(units, dtype=np.int64)
    jj = np.zeros(units, dtype=np.int64)
    for local in range(n_seq):
        m = (n0 + local) // n_batch
        for j in range(n_hidden):
            u = local * n_hidden + j
            bx[u] = b[m, j]
            hb[u] = local * n_hidden
            jj[u] = j
            for k in range(n_hidden):
                wx[k, u] = w[m, j, k]
    return wx, bx, hb, jj


@_njit
def _elman_forward(args):
    """The Elman recurrence of an `ElmanForward`'s sequences.

    With args.start, step 0 is the sequence's first step (no recurrent term, not even b) and
    args.h is ignored on entry; otherwise args.h holds the step before step 0 (chunked
    inference). Time runs in chunks of _CHUNK steps whose inputs and states are copied to and from
    time-major buffers, so each step's loops are flat and contiguous over the units (no
    gathers); the arithmetic per unit is unchanged.
    """
    h = args.h
    n_seq, n_hidden = h.shape
    n_steps = args.a.shape[1]
    wx, bx, _, _ = _elman_setup(w=args.w, b=args.b, n_batch=args.n_batch, n0=args.n0, n_seq=n_seq)
    hf = h.reshape(h.size)
    units = hf.size
    wt = h.dtype  # arithmetic in the storage type
    one = _one(h)
    two = one + one
    state = np.empty(units, dtype=wt)
    he = np.empty((n_hidden, units), dtype=wt)  # `_expand`(state)
    z = np.empty(units, dtype=wt)
    ac = np.empty((_CHUNK, units), dtype=wt)
    hc = np.empty((_CHUNK, units), dtype=wt)
    for u in range(units):
        state[u] = hf[u]
    _expand(state, n_hidden, he)
    for t0 in range(0, n_steps, _CHUNK):
        t1 = min(n_steps, t0 + _CHUNK)
        _load(args.a, t0, t1, ac, 0)
        for t in range(t0, t1):
            s = t - t0
            if t == 0 and args.start:
                for u in range(units):
                    z[u] = ac[s, u]
            else:  # hr(h_{t-1}) = W h_{t-1} + b, then + l1(x_t), as the reference
                for u in range(units):
                    z[u] = bx[u]
                for k in range(n_hidden):
                    for u in range(units):
                        z[u] += wx[k, u] * he[k, u]
                for u in range(units):
                    z[u] += ac[s, u]
            for u in range(units):
                v = one - two / (_exp(two * z[u]) + one)
                state[u] = v
                hc[s, u] = v
            _expand(state, n_hidden, he)
        _store(hc, t0, t1, args.hs)
    for u in range(units):
        hf[u] = state[u]


@_njit(inline="always")
def _dz_step(hc, gc, carry, s, one, dz, dac):
    """dz = (dL/dhs_t + W^T dz_{t+1}) (1 - h_t²) for step s of a chunk (hc row s + 1: h_t, gc
    row s: dL/dhs_t, carry: W^T dz_{t+1}), per unit, whatever the layout of the units; and
    dac[s] = dz (dL/da_t)."""
    for u in range(dz.shape[0]):
        h = hc[s + 1, u]
        dz[u] = gc[s, u]  # dL/dhs_t, rounded to the storage type
        dz[u] = (dz[u] + carry[u]) * (one - h * h)
        dac[s, u] = dz[u]


@_njit
def _elman_backward(args):
    """BPTT of an `ElmanBackward`'s sequences: dL/da, and per sequence the gradient sums of
    hr's weight and bias, which `glue.reduce_members` adds up per member.

    z_t is tanh's argument: dz_t = (dhs_t + W^T dz_{t+1}) * (1 - h_t^2), da_t = dz_t, and
    dW += dz_t h_{t-1}^T, db += dz_t for t >= 1 only (step 0 has no recurrent term). Sums are
    kept per lane in float64. Time runs backwards in chunks through time-major buffers, as
    in `_elman_forward`.
    """
    hs = args.hs
    n_seq, n_steps, n_hidden = hs.shape
    w_any = args.w[:, :, 0]  # (the bias does not enter the backward pass)
    wx, _, hb, jj = _elman_setup(w=args.w, b=w_any, n_batch=args.n_batch, n0=args.n0, n_seq=n_seq)
    units = n_seq * n_hidden
    wt = hs.dtype  # per-step arithmetic in the storage type; dwx and dbx sum in float64
    one = _one(hs)
    dwx = np.zeros((n_hidden, units))
    dbx = np.zeros(units)
    dz = np.zeros(units, dtype=wt)
    prod = np.zeros((n_hidden, units), dtype=wt)
    carry = np.zeros(units, dtype=wt)  # W^T dz_{t+1}: the gradient reaching h_t through step t+1
    he = np.empty((n_hidden, units), dtype=wt)  # `_expand`(h_{t-1})
    hc = np.empty((_CHUNK + 1, units), dtype=wt)  # row s + 1: h at step t0 + s; row 0: h_{t0-1}
    gc = np.empty((_CHUNK, units))  # dL/dhs of a chunk, in float64
    dac = np.empty((_CHUNK, units), dtype=wt)
    t1 = n_steps
    while t1 > 0:
        t0 = max(0, t1 - _CHUNK)
        _load(hs, t0, t1, hc, 1)
        if t0 > 0:
            _load(hs, t0 - 1, t0, hc, 0)
        _load(args.dhs, t0, t1, gc, 0)
        for t in range(t1 - 1, t0 - 1, -1):
            s = t - t0
            _dz_step(hc=hc, gc=gc, carry=carry, s=s, one=one, dz=dz, dac=dac)
            if t == 0:
                break
            for u in range(units):
                dbx[u] += dz[u]
            _expand(hc[s], n_hidden, he)
            for k in range(n_hidden):
                for u in range(units):
                    dwx[k, u] += dz[u] * he[k, u]
                    prod[k, u] = wx[k, u] * dz[u]
            for u in range(units):  # carry[n·H + k] = Σ_j W[j, k] dz[n·H + j]
                s2 = one - one
                for j in range(n_hidden):
                    s2 += prod[jj[u], hb[u] + j]
                carry[u] = s2
        _store(dac, t0, t1, args.da)
        t1 = t0
    for local in range(n_seq):
        for j in range(n_hidden):
            u = local * n_hidden + j
            args.lb[local, j] = dbx[u]
            for k in range(n_hidden):
                args.lw[local, j, k] = dwx[k, u]


@_njit(inline="always")
def _spread(w, n_batch, n0, n_seq, like):
    """out[a, c, n'] = w[m, a, c] in `like`'s type for local sequence n' of member m
    (w[K, A, C]): a member's weights at each of its sequences' positions, so that the loops
    over a unit's sequences run over n' (contiguous); the unit-major layout's constants."""
    out = np.empty((w.shape[1], w.shape[2], n_seq), dtype=like.dtype)
    for local in range(n_seq):
        m = (n0 + local) // n_batch
        for a in range(w.shape[1]):
            for c in range(w.shape[2]):
                out[a, c, local] = w[m, a, c]
    return out


@_njit
def _elman_forward_wide(args):
    """`_elman_forward` (the same record, the same results bit for bit) in the unit-major layout
    (u = j·N' + n'): the time-major chunk buffers hold unit j of the group's N' sequences
    contiguously, and every loop of a step runs over those N' sequences, so LLVM vectorizes
    it.
    """
    h = args.h
    n_seq, n_hidden = h.shape
    n_steps = args.a.shape[1]
    units = n_seq * n_hidden
    # wx[j, k, n'] = W_m[j, k] and bx[j·N' + n'] = b_m[j] in the storage type, as the
    # arithmetic.
    wx = _spread(w=args.w, n_batch=args.n_batch, n0=args.n0, n_seq=n_seq, like=h)
    b3 = args.b.reshape(args.b.shape[0], args.b.shape[1], 1)
    bx = _spread(w=b3, n_batch=args.n_batch, n0=args.n0, n_seq=n_seq, like=h).reshape(units)
    wt = h.dtype  # arithmetic in the storage type
    one = _one(h)
    two = one + one
    z = np.empty(units, dtype=wt)
    ac = np.empty((_CHUNK, units), dtype=wt)
    hc = np.empty((_CHUNK + 1, units), dtype=wt)  # row s + 1: h at step t0 + s; row 0: before
    for local in range(n_seq):
        for j in range(n_hidden):
            hc[0, j * n_seq + local] = h[local, j]
    last = 0
    for t0 in range(0, n_steps, _CHUNK):
        t1 = min(n_steps, t0 + _CHUNK)
        if t0 > 0:
            for u in range(units):
                hc[0, u] = hc[last, u]
        last = t1 - t0
        _load_units(args.a, t0, t1, ac, 0)
        for t in range(t0, t1):
            s = t - t0
            if t == 0 and args.start:
                for u in range(units):
                    z[u] = ac[s, u]
            else:  # hr(h_{t-1}) = W h_{t-1} + b, then + l1(x_t), as the reference
                for j in range(n_hidden):
                    zj = z[j * n_seq : (j + 1) * n_seq]
                    bj = bx[j * n_seq : (j + 1) * n_seq]
                    for n in range(n_seq):
                        zj[n] = bj[n]
                    for k in range(n_hidden):
                        wjk = wx[j, k]
                        hk = hc[s, k * n_seq : (k + 1) * n_seq]
                        for n in range(n_seq):
                            zj[n] += wjk[n] * hk[n]
                for u in range(units):
                    z[u] += ac[s, u]
            for u in range(units):
                hc[s + 1, u] = one - two / (_exp(two * z[u]) + one)
        _store_units(hc, t0, t1, args.hs, 1)
    for local in range(n_seq):
        for j in range(n_hidden):
            h[local, j] = hc[last, j * n_seq + local]


@_njit
def _elman_backward_wide(args):
    """`_elman_backward` (the same record, the same results bit for bit) in the unit-major layout,
    as `_elman_forward_wide`: the recurrent gradient sums and W^T dz (no gathers: for each
    unit k a sum over j of contiguous runs) run over the group's sequences per unit.
    """
    hs = args.hs
    n_seq, n_steps, n_hidden = hs.shape
    wx = _spread(
        w=args.w, n_batch=args.n_batch, n0=args.n0, n_seq=n_seq, like=hs
    )  # [j, k, n']: W_m[j, k]
    units = n_seq * n_hidden
    wt = hs.dtype  # per-step arithmetic in the storage type; the sums in float64
    one = _one(hs)
    dwx = np.zeros((n_hidden, n_hidden, n_seq))  # Σ_t dz_j h_{t-1,k}: lw[n', j, k]
    dbx = np.zeros(units)
    dz = np.zeros(units, dtype=wt)
    carry = np.zeros(units, dtype=wt)  # W^T dz_{t+1}: the gradient reaching h_t through step t+1
    hc = np.empty((_CHUNK + 1, units), dtype=wt)  # row s + 1: h at step t0 + s; row 0: h_{t0-1}
    gc = np.empty((_CHUNK, units))  # dL/dhs of a chunk, float64
    dac = np.empty((_CHUNK, units), dtype=wt)
    t1 = n_steps
    while t1 > 0:
        t0 = max(0, t1 - _CHUNK)
        _load_units(hs, t0, t1, hc, 1)
        if t0 > 0:
            _load_units(hs, t0 - 1, t0, hc, 0)
        _load_units(args.dhs, t0, t1, gc, 0)
        for t in range(t1 - 1, t0 - 1, -1):
            s = t - t0
            _dz_step(hc=hc, gc=gc, carry=carry, s=s, one=one, dz=dz, dac=dac)
            if t == 0:
                break
            for u in range(units):
                dbx[u] += dz[u]
            for j in range(n_hidden):
                dzj = dz[j * n_seq : (j + 1) * n_seq]
                for k in range(n_hidden):
                    dwjk = dwx[j, k]
                    hk = hc[s, k * n_seq : (k + 1) * n_seq]
                    for n in range(n_seq):
                        dwjk[n] += dzj[n] * hk[n]
            for k in range(n_hidden):  # carry_k = Σ_j W[j, k] dz_j, in j order
                ck = carry[k * n_seq : (k + 1) * n_seq]
                for n in range(n_seq):
                    ck[n] = one - one
                for j in range(n_hidden):
                    wjk = wx[j, k]
                    dzj = dz[j * n_seq : (j + 1) * n_seq]
                    for n in range(n_seq):
                        ck[n] += wjk[n] * dzj[n]
        _store_units(dac, t0, t1, args.da, 0)
        t1 = t0
    for local in range(n_seq):
        for j in range(n_hidden):
            args.lb[local, j] = dbx[j * n_seq + local]
            for k in range(n_hidden):
                args.lw[local, j, k] = dwx[j, k, local]


# Measured per sequence-step on this project's 2-core machine (H = 2, float32), when these
# kernels also ran the input projection and the read-out (8b0bb75; removed since): the
# unit-major forward is 1.2× slower than the sequence-major one at 6 sequences, 0.9× at 8
# and 0.64× at 24; the backward 1.12× at 3, 0.87× at 6, 0.49× at 24.
_WIDE_FORWARD = 8
_WIDE_BACKWARD = 6


def forward_kernel(n_seq: int) -> Any:
    """The forward kernel for a group of n_seq sequences (takes an `ElmanForward`)."""
    return _elman_forward_wide if n_seq >= _WIDE_FORWARD else _elman_forward


def backward_kernel(n_seq: int) -> Any:
    """The backward kernel for a group of n_seq sequences (takes an `ElmanBackward`)."""
    return _elman_backward_wide if n_seq >= _WIDE_BACKWARD else _elman_backward


def _forward_groups(
    a3: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    h: torch.Tensor,
    start: bool,
    hs: torch.Tensor,
) -> None:
    """`_elman_forward` over the sequences in groups, one per thread (see glue.set_threads)."""
    an, wn, bn, hn, hsn = _np(a3), _np(weight), _np(bias), h.numpy(), hs.numpy()
    n_batch = a3.shape[0] // weight.shape[0]

    def work(n0: int, n1: int) -> None:
        call = ElmanForward(
            a=an[n0:n1], w=wn, b=bn, n_batch=n_batch, n0=n0, h=hn[n0:n1], start=start,
            hs=hsn[n0:n1],
        )  # fmt: skip
        forward_kernel(n1 - n0)(call)

    run_groups(work, sequence_groups(a3.shape[0]))


def _check_elman(a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> None:
    if a.dim() != 4:
        raise ValueError(f"a must be [members, batch, time, hidden], got {tuple(a.shape)}")
    k, _, _, n = a.shape
    _check("a", a, a.dtype, tuple(a.shape))
    _check("weight", weight, a.dtype, (k, n, n))
    _check("bias", bias, a.dtype, (k, n))


class ElmanFunction(torch.autograd.Function):
    """hs[K,B,T,H] = Elman recurrence of (a[K,B,T,H], weight[K,H,H], bias[K,H])."""

    @staticmethod
    def forward(
        ctx: FunctionCtx, a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        k, b, t, n = a.shape
        hs = torch.empty(k * b, t, n, dtype=a.dtype)
        h = torch.empty(k * b, n, dtype=a.dtype)  # final state, unused here
        _forward_groups(a.reshape(k * b, t, n), weight, bias, h, True, hs)
        ctx.save_for_backward(hs, weight)
        return hs.view(k, b, t, n)

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, dhs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        hs, weight = ctx.saved_tensors
        da = torch.empty_like(hs)
        dhn, hn, wn = _np(dhs.reshape(hs.shape)), _np(hs), _np(weight)
        dan = da.numpy()
        n_seq = hs.shape[0]
        n_batch = n_seq // weight.shape[0]
        # Per-sequence gradient sums, filled by the groups, then added up per member.
        lw = np.empty((n_seq, *weight.shape[1:]))
        lb = np.empty((n_seq, weight.shape[1]))

        def work(n0: int, n1: int) -> None:
            call = ElmanBackward(
                dhs=dhn[n0:n1], hs=hn[n0:n1], w=wn, n_batch=n_batch, n0=n0, da=dan[n0:n1],
                lw=lw[n0:n1], lb=lb[n0:n1],
            )  # fmt: skip
            backward_kernel(n1 - n0)(call)

        run_groups(work, sequence_groups(n_seq))
        dw = reduce_members(lw, n_batch, weight)
        db = reduce_members(lb, n_batch, weight.new_empty(weight.shape[:2]))
        da = da.view(*weight.shape[:1], -1, *hs.shape[1:])
        if hs.shape[1] == 1:
            # One step never uses hr: no gradient at all (None), as in the reference, so that
            # an optimizer skips hr exactly as it does there instead of seeing zeros.
            return da, None, None
        return da, dw, db


def elman_population(a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """hs[K,B,T,H] of K members' Elman recurrences, differentiable in a, weight and bias.

    a[K,B,T,H] is each member's input projection l1(x); weight[K,H,H] and bias[K,H] are the
    members' hr. CPU only.
    """
    _check_elman(a, weight, bias)
    return ElmanFunction.apply(a, weight, bias)


def elman_recurrence(a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """hs[B,T,H]: h_0 = tanh(a_0), h_t = tanh(a_t + weight h_{t-1} + bias), differentiable.

    a[B,T,H] is the input projection l1(x); weight[H,H] and bias[H] are hr's. CPU only.
    """
    if a.dim() != 3:
        raise ValueError(f"a must be [batch, time, hidden], got {tuple(a.shape)}")
    return elman_population(a[None], weight[None], bias[None])[0]


def elman_population_inference(
    a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, h: torch.Tensor, start: bool
) -> torch.Tensor:
    """hs[K,B,T,H] for one time chunk, no autograd; h[K,B,H] carries the state in and out.

    `start` marks a[:, :, 0] as the sequences' first step (h is then ignored on entry).
    """
    _check_elman(a, weight, bias)
    k, b, t, n = a.shape
    _check("h", h, a.dtype, (k, b, n))
    if not h.is_contiguous():
        raise ValueError("h must be contiguous: it is updated in place")
    hs = torch.empty(k * b, t, n, dtype=a.dtype)
    _forward_groups(a.reshape(k * b, t, n), weight, bias, h.view(k * b, n), bool(start), hs)
    return hs.view(k, b, t, n)


def elman_inference(
    a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, h: torch.Tensor, start: bool
) -> torch.Tensor:
    """hs[B,T,H] for one time chunk, no autograd; h[B,H] carries the state in and out.

    `start` marks a[:, 0] as the sequence's first step (h is then ignored on entry).
    """
    if a.dim() != 3:
        raise ValueError(f"a must be [batch, time, hidden], got {tuple(a.shape)}")
    if h.dim() != 2:
        raise ValueError(f"h must be [batch, hidden], got {tuple(h.shape)}")
    return elman_population_inference(a[None], weight[None], bias[None], h[None], start)[0]
