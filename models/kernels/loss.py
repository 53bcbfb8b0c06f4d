"""Training loss in the fused path: the read-out, the MSE and their backward next to the recurrence.

With 2 hidden units the torch operations around a recurrence kernel (the read-out matmul, the
squared error, its mean, and the backward of each, plus the Elman network's input projection)
cost more than the recurrence itself: each is a dispatch and an allocation for a few thousand
multiply-adds. Here one autograd Function gives each member's MSE for a batch, and its
backward every parameter's gradient, from compiled loops over the same sequence groups as the
kernels (so results are the same bit for bit whatever the number of threads).

Shapes as in the kernels: x[B,T,I], target[B,T,O]; K members; sequence n = m·B + b.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.autograd.function import FunctionCtx, once_differentiable

from models.kernels.compile import _njit
from models.kernels.elman import _elman_backward, _elman_forward
from models.kernels.glue import _check, _np, reduce_members, run_groups, sequence_groups
from models.kernels.lstm import _lstm_backward, _lstm_forward_train, bias_like


@_njit
def _readout_forward(hs, w2, b2, target, n_batch, n0, err, sq):
    """err[N',T,O] = W2 h + b2 - target and sq[N'] = each sequence's sum of squared errors."""
    n_seq, n_steps, n_hidden = hs.shape
    n_out = w2.shape[1]
    for local in range(n_seq):
        m = (n0 + local) // n_batch
        bi = (n0 + local) % n_batch
        s = 0.0
        for t in range(n_steps):
            for o in range(n_out):
                y = np.float64(b2[m, o])
                for k in range(n_hidden):
                    y += np.float64(w2[m, o, k]) * hs[local, t, k]
                e = y - target[bi, t, o]
                err[local, t, o] = e
                s += e * e
        sq[local] = s


@_njit
def _readout_backward(hs, err, w2, scale, n_batch, n0, dhs, lw2, lb2):
    """From dL/dy = scale_m · err: dhs[N',T,H] and per-sequence sums lw2[N',O,H], lb2[N',O]."""
    n_seq, n_steps, n_hidden = hs.shape
    n_out = w2.shape[1]
    for local in range(n_seq):
        m = (n0 + local) // n_batch
        sw = np.zeros((n_out, n_hidden))
        sb = np.zeros(n_out)
        for t in range(n_steps):
            for k in range(n_hidden):
                dhs[local, t, k] = 0.0
            for o in range(n_out):
                d = scale[m] * err[local, t, o]
                sb[o] += d
                for k in range(n_hidden):
                    sw[o, k] += d * hs[local, t, k]
                    dhs[local, t, k] += d * w2[m, o, k]
        for o in range(n_out):
            lb2[local, o] = sb[o]
            for k in range(n_hidden):
                lw2[local, o, k] = sw[o, k]


@_njit
def _project_forward(x, w1, b1, n_batch, n0, a):
    """a[N',T,H] = W1 x + b1 for each sequence's member (the Elman network's l1)."""
    n_seq, n_steps, n_hidden = a.shape
    n_input = x.shape[2]
    for local in range(n_seq):
        m = (n0 + local) // n_batch
        bi = (n0 + local) % n_batch
        for t in range(n_steps):
            for j in range(n_hidden):
                s = np.float64(b1[m, j])
                for i in range(n_input):
                    s += np.float64(w1[m, j, i]) * x[bi, t, i]
                a[local, t, j] = s


@_njit
def _project_backward(x, da, n_batch, n0, lw1, lb1):
    """Per-sequence sums lw1[N',H,I] = Σ_t da_t x_tᵀ and lb1[N',H] = Σ_t da_t."""
    n_seq, n_steps, n_hidden = da.shape
    n_input = x.shape[2]
    for local in range(n_seq):
        bi = (n0 + local) % n_batch
        sw = np.zeros((n_hidden, n_input))
        sb = np.zeros(n_hidden)
        for t in range(n_steps):
            for j in range(n_hidden):
                d = np.float64(da[local, t, j])
                sb[j] += d
                for i in range(n_input):
                    sw[j, i] += d * x[bi, t, i]
        for j in range(n_hidden):
            lb1[local, j] = sb[j]
            for i in range(n_input):
                lw1[local, j, i] = sw[j, i]


def _losses(sq: np.ndarray, n_members: int, n_batch: int, count: int, dtype: torch.dtype) -> Any:
    per_member = sq.reshape(n_members, n_batch).sum(axis=1) / count  # sequence order
    return torch.from_numpy(per_member).to(dtype)


class LSTMLossFunction(torch.autograd.Function):
    """Each member's MSE of fc(LSTM(x)) against target: [K], differentiable in the weights."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
        x: torch.Tensor,
        target: torch.Tensor,
        weight_ih: torch.Tensor,
        weight_hh: torch.Tensor,
        bias_ih: torch.Tensor,
        bias_hh: torch.Tensor,
        fc_weight: torch.Tensor,
        fc_bias: torch.Tensor,
    ) -> torch.Tensor:
        n_batch, n_steps, _ = x.shape
        n_members, _, n_hidden = weight_hh.shape
        n_seq, n_out = n_members * n_batch, fc_weight.shape[1]
        xn, tn = _np(x), _np(target)
        w = [_np(t) for t in (weight_ih, weight_hh, bias_ih, bias_hh)]
        w2, b2 = _np(fc_weight), _np(fc_bias)
        hs = np.empty((n_seq, n_steps, n_hidden), dtype=xn.dtype)
        err = np.empty((n_seq, n_steps, n_out))
        sq = np.empty(n_seq)
        groups = sequence_groups(n_seq)
        saved: dict[tuple[int, int], tuple[np.ndarray, ...]] = {}

        def work(n0: int, n1: int) -> None:
            units = (n1 - n0) * n_hidden
            cs = np.empty((n_steps, units), dtype=xn.dtype)
            tcs = np.empty_like(cs)
            gates = np.empty((n_steps, 4 * units), dtype=xn.dtype)
            _lstm_forward_train(xn, *w, n0, hs[n0:n1], cs, tcs, gates)
            _readout_forward(hs[n0:n1], w2, b2, tn, n_batch, n0, err[n0:n1], sq[n0:n1])
            saved[(n0, n1)] = (cs, tcs, gates)

        run_groups(work, groups)
        ctx.state = (xn, w, w2, hs, err, groups, saved, n_batch)
        ctx.shapes = (weight_ih, weight_hh, fc_weight, fc_bias)
        return _losses(sq, n_members, n_batch, n_batch * n_steps * n_out, x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dloss: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        xn, w, w2, hs, err, groups, saved, n_batch = ctx.state
        weight_ih, weight_hh, fc_weight, fc_bias = ctx.shapes
        n_seq, n_steps, n_hidden = hs.shape
        n_out = w2.shape[1]
        scale = dloss.detach().double().numpy() * 2.0 / (n_batch * n_steps * n_out)
        lw_ih = np.empty((n_seq, *weight_ih.shape[1:]))
        lw_hh = np.empty((n_seq, *weight_hh.shape[1:]))
        lb = np.empty((n_seq, weight_hh.shape[1]))
        lw2 = np.empty((n_seq, *fc_weight.shape[1:]))
        lb2 = np.empty((n_seq, n_out))
        dx = np.empty((1, 1, 1), dtype=xn.dtype)

        def work(n0: int, n1: int) -> None:
            cs, tcs, gates = saved[(n0, n1)]
            dhs = np.empty((n1 - n0, n_steps, n_hidden))
            rows = slice(n0, n1)
            _readout_backward(
                hs[rows], err[rows], w2, scale, n_batch, n0, dhs, lw2[rows], lb2[rows]
            )
            _lstm_backward(
                dhs, xn, hs[rows], cs, tcs, gates, w[0], w[1], n0, False, dx,
                lw_ih[rows], lw_hh[rows], lb[rows],
            )  # fmt: skip

        run_groups(work, groups)
        dw_ih = reduce_members(lw_ih, n_batch, weight_ih)
        dw_hh = reduce_members(lw_hh, n_batch, weight_hh)
        db = reduce_members(lb, n_batch, bias_like(weight_hh))
        dfc_w = reduce_members(lw2, n_batch, fc_weight)
        dfc_b = reduce_members(lb2, n_batch, fc_bias)
        return None, None, dw_ih, dw_hh, db, db.clone(), dfc_w, dfc_b


class ElmanLossFunction(torch.autograd.Function):
    """Each member's MSE of l2(Elman(l1(x))) against target: [K], differentiable."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
        x: torch.Tensor,
        target: torch.Tensor,
        l1_weight: torch.Tensor,
        l1_bias: torch.Tensor,
        hr_weight: torch.Tensor,
        hr_bias: torch.Tensor,
        l2_weight: torch.Tensor,
        l2_bias: torch.Tensor,
    ) -> torch.Tensor:
        n_batch, n_steps, _ = x.shape
        n_members, n_hidden, _ = hr_weight.shape
        n_seq, n_out = n_members * n_batch, l2_weight.shape[1]
        xn, tn = _np(x), _np(target)
        w1, b1, wr, br = (_np(t) for t in (l1_weight, l1_bias, hr_weight, hr_bias))
        w2, b2 = _np(l2_weight), _np(l2_bias)
        a = np.empty((n_seq, n_steps, n_hidden), dtype=xn.dtype)
        hs = np.empty_like(a)
        h = np.empty((n_seq, n_hidden), dtype=xn.dtype)
        err = np.empty((n_seq, n_steps, n_out))
        sq = np.empty(n_seq)
        groups = sequence_groups(n_seq)

        def work(n0: int, n1: int) -> None:
            _project_forward(xn, w1, b1, n_batch, n0, a[n0:n1])
            _elman_forward(a[n0:n1], wr, br, n_batch, n0, h[n0:n1], True, hs[n0:n1])
            _readout_forward(hs[n0:n1], w2, b2, tn, n_batch, n0, err[n0:n1], sq[n0:n1])

        run_groups(work, groups)
        ctx.state = (xn, wr, w2, hs, err, groups, n_batch)
        ctx.shapes = (l1_weight, l1_bias, hr_weight, hr_bias, l2_weight, l2_bias)
        return _losses(sq, n_members, n_batch, n_batch * n_steps * n_out, x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dloss: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        xn, wr, w2, hs, err, groups, n_batch = ctx.state
        l1_weight, l1_bias, hr_weight, hr_bias, l2_weight, l2_bias = ctx.shapes
        n_seq, n_steps, n_hidden = hs.shape
        n_out = w2.shape[1]
        scale = dloss.detach().double().numpy() * 2.0 / (n_batch * n_steps * n_out)
        lanes = {
            "w1": np.empty((n_seq, *l1_weight.shape[1:])),
            "b1": np.empty((n_seq, n_hidden)),
            "wr": np.empty((n_seq, n_hidden, n_hidden)),
            "br": np.empty((n_seq, n_hidden)),
            "w2": np.empty((n_seq, *l2_weight.shape[1:])),
            "b2": np.empty((n_seq, n_out)),
        }

        def work(n0: int, n1: int) -> None:
            part = {k: v[n0:n1] for k, v in lanes.items()}
            dhs = np.empty((n1 - n0, n_steps, n_hidden))
            _readout_backward(
                hs[n0:n1], err[n0:n1], w2, scale, n_batch, n0, dhs, part["w2"], part["b2"]
            )
            da = np.empty((n1 - n0, n_steps, n_hidden))
            _elman_backward(dhs, hs[n0:n1], wr, n_batch, n0, da, part["wr"], part["br"])
            _project_backward(xn, da, n_batch, n0, part["w1"], part["b1"])

        run_groups(work, groups)
        grads = [
            reduce_members(lanes[k], n_batch, like)
            for k, like in zip(
                ("w1", "b1", "wr", "br", "w2", "b2"),
                (l1_weight, l1_bias, hr_weight, hr_bias, l2_weight, l2_bias),
                strict=True,
            )
        ]
        if n_steps == 1:  # one step never uses hr: no gradient, as in the reference
            grads[2] = grads[3] = None  # type: ignore[call-overload]
        return None, None, *grads


def _check_loss(x: torch.Tensor, target: torch.Tensor, n_out: int) -> None:
    if x.dim() != 3:
        raise ValueError(f"x must be [batch, time, input], got {tuple(x.shape)}")
    _check("x", x, x.dtype, tuple(x.shape))
    _check("target", target, x.dtype, (x.shape[0], x.shape[1], n_out))


def lstm_population_mse(x: torch.Tensor, target: torch.Tensor, *weights: torch.Tensor) -> Any:
    """[K]: each member's MSE; weights: stacked weight_ih, weight_hh, bias_ih, bias_hh, fc."""
    _check_loss(x, target, weights[4].shape[1])
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "fc.weight", "fc.bias")
    for name, t in zip(names, weights, strict=True):
        _check(name, t, x.dtype, tuple(t.shape))
    return LSTMLossFunction.apply(x, target, *weights)


def elman_population_mse(x: torch.Tensor, target: torch.Tensor, *weights: torch.Tensor) -> Any:
    """[K]: each member's MSE; weights: stacked l1, hr and l2 weights and biases."""
    _check_loss(x, target, weights[4].shape[1])
    names = ("l1.weight", "l1.bias", "hr.weight", "hr.bias", "l2.weight", "l2.bias")
    for name, t in zip(names, weights, strict=True):
        _check(name, t, x.dtype, tuple(t.shape))
    return ElmanLossFunction.apply(x, target, *weights)
