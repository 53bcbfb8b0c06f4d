"""Training loss in the fused path: the read-out, the MSE and their backward next to the recurrence.

With 2 hidden units the torch operations around a recurrence kernel (the read-out matmul, the
squared error, its mean, and the backward of each, plus the Elman network's input projection)
cost more than the recurrence itself: each is a dispatch and an allocation for a few thousand
multiply-adds. Here one autograd Function gives each member's MSE for a batch, and its
backward every parameter's gradient, from compiled loops over the same sequence groups as the
kernels (so results are the same bit for bit whatever the number of threads).

Most of that work runs inside the recurrence kernels' own time loops, where each step's
values are at hand: the Elman input projection and read-out in `_elman_forward`, the
read-out's gradient dL/dh_t (from the errors) and the projection's gradient sums in the
backward kernels, and the validation loss in `_lstm_sse` / `_elman_forward` without storing
any state. The read-out's own gradient comes from two error sums per sequence kept by the
forward pass (`glue._readout_chunk`), scaled by the loss's weight once that is known.

Shapes as in the kernels: x[B,T,I], target[B,T,O]; K members; sequence n = m·B + b.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.autograd.function import FunctionCtx, once_differentiable

from models.kernels.elman import backward_kernel, forward_kernel
from models.kernels.glue import (
    _check,
    _np,
    _readout_forward,
    reduce_members,
    reduce_members_into,
    run_groups,
    sequence_groups,
)
from models.kernels.lstm import (
    _lstm_backward,
    _lstm_forward_train,
    _lstm_sse,
    bias_like,
)

LSTM_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "fc.weight", "fc.bias")
ELMAN_NAMES = ("l1.weight", "l1.bias", "hr.weight", "hr.bias", "l2.weight", "l2.bias")


def _losses(sq: np.ndarray, n_members: int, n_batch: int, count: int, dtype: torch.dtype) -> Any:
    per_member = sq.reshape(n_members, n_batch).sum(axis=1) / count  # sequence order
    return torch.from_numpy(per_member).to(dtype)


# --- one pass's work, per group of sequences ----------------------------------------------
# Shared by the autograd Functions (forward, then backward when autograd asks) and by
# `*_population_grads`, which runs both halves in one go for `sum(losses)` (each member's
# gradient is its own loss's), without autograd: the same kernels in the same order, so the
# same bits, minus the autograd machinery, which costs as much as the kernels for 2 units.


class _Pass:
    """What both networks' passes share: the batch as numpy arrays, each sequence's errors
    err[N,T,O], summed squares sq[N] and error sums se[N,O], seh[N,O,H] (Σ_t err, Σ_t err
    h_tᵀ), the sequence groups, the gradient lanes."""

    def __init__(
        self, x: torch.Tensor, target: torch.Tensor, n_members: int, n_out: int, n_hidden: int
    ) -> None:
        self.xn, self.tn = _np(x), _np(target)
        self.n_batch, self.n_steps, _ = x.shape
        self.n_members, self.n_out = n_members, n_out
        self.n_seq = n_members * self.n_batch
        self.err = np.empty((self.n_seq, self.n_steps, n_out))
        self.sq = np.empty(self.n_seq)
        self.n_hidden = n_hidden
        self.se = np.empty((self.n_seq, n_out))
        self.seh = np.empty((self.n_seq, n_out, n_hidden))
        self.groups = sequence_groups(self.n_seq)
        self.lanes: list[np.ndarray] = []

    @property
    def count(self) -> int:
        return self.n_batch * self.n_steps * self.n_out

    def losses(self, dtype: torch.dtype) -> Any:
        return _losses(self.sq, self.n_members, self.n_batch, self.count, dtype)

    def _readout_grads(
        self, n0: int, n1: int, scale: np.ndarray, lw2: np.ndarray, lb2: np.ndarray
    ) -> None:
        """The read-out's per-sequence gradient sums from the forward's error sums: for
        dL/dy = scale_m err, lw2 = scale_m Σ_t err h_tᵀ and lb2 = scale_m Σ_t err."""
        s = scale[np.arange(n0, n1) // self.n_batch]
        np.multiply(self.seh[n0:n1], s[:, None, None], out=lw2)
        np.multiply(self.se[n0:n1], s[:, None], out=lb2)


class _LSTMPass(_Pass):
    """A batch's arrays (numpy views of the tensors) and per-sequence results for the LSTM."""

    def __init__(self, x: torch.Tensor, target: torch.Tensor, weights: Any) -> None:
        n_members, _, n_hidden = weights[1].shape
        super().__init__(x, target, n_members, weights[4].shape[1], n_hidden)
        self.w = [_np(t) for t in weights[:4]]  # weight_ih, weight_hh, bias_ih, bias_hh
        self.w2, self.b2 = _np(weights[4]), _np(weights[5])
        self.hs = np.empty((self.n_seq, self.n_steps, self.n_hidden), dtype=self.xn.dtype)
        self.saved: dict[tuple[int, int], tuple[np.ndarray, ...]] = {}

    def forward(self, n0: int, n1: int) -> None:
        """The recurrence, the read-out and its errors, keeping what the backward pass needs."""
        units = (n1 - n0) * self.n_hidden
        cs = np.empty((self.n_steps, units), dtype=self.xn.dtype)
        tcs = np.empty_like(cs)
        gates = np.empty((self.n_steps, 4 * units), dtype=self.xn.dtype)
        rows = slice(n0, n1)
        _lstm_forward_train(self.xn, *self.w, n0, self.hs[rows], cs, tcs, gates)
        _readout_forward(
            self.hs[rows], self.w2, self.b2, self.tn, self.n_batch, n0, self.err[rows],
            self.sq[rows], self.se[rows], self.seh[rows],
        )  # fmt: skip
        self.saved[(n0, n1)] = (cs, tcs, gates)

    def forward_only(self, n0: int, n1: int) -> None:
        """The squared errors only: no states, gates or errors kept."""
        _lstm_sse(self.xn, *self.w, n0, n1 - n0, self.w2, self.b2, self.tn, self.sq[n0:n1])

    def make_lanes(self, weights: Any) -> None:
        """Per-sequence gradient sums: W_ih, W_hh, bias, fc weight, fc bias."""
        n, g = self.n_seq, weights[1].shape[1]
        shapes = ((n, *weights[0].shape[1:]), (n, *weights[1].shape[1:]), (n, g))
        shapes += ((n, *weights[4].shape[1:]), (n, self.n_out))
        self.lanes = [np.empty(s) for s in shapes]

    def backward(self, n0: int, n1: int, scale: np.ndarray) -> None:
        cs, tcs, gates = self.saved[(n0, n1)]
        lw_ih, lw_hh, lb, lw2, lb2 = (lane[n0:n1] for lane in self.lanes)
        rows = slice(n0, n1)
        hs, dx = self.hs[rows], np.empty((1, 1, 1), dtype=self.xn.dtype)
        err = self.err[rows]
        _lstm_backward(
            err, True, err, self.w2, scale, self.xn, hs, cs, tcs, gates, self.w[0], self.w[1],
            n0, False, dx, lw_ih, lw_hh, lb,
        )  # fmt: skip
        self._readout_grads(n0, n1, scale, lw2, lb2)


class _ElmanPass(_Pass):
    """A batch's arrays and per-sequence results for the Elman network (l1, hr, l2)."""

    def __init__(self, x: torch.Tensor, target: torch.Tensor, weights: Any) -> None:
        n_members, n_hidden, _ = weights[2].shape
        super().__init__(x, target, n_members, weights[4].shape[1], n_hidden)
        self.w1, self.b1, self.wr, self.br, self.w2, self.b2 = (_np(t) for t in weights)
        self.hs = np.empty((self.n_seq, self.n_steps, n_hidden), dtype=self.xn.dtype)
        self.h = np.empty((self.n_seq, n_hidden), dtype=self.xn.dtype)

    def _forward(self, n0: int, n1: int, grads: bool) -> None:
        """Projection, recurrence, read-out and errors in one pass (states and errors kept
        for the backward pass when `grads`)."""
        rows = slice(n0, n1)
        forward_kernel(n1 - n0)(
            self.xn, True, self.xn, self.w1, self.b1, self.wr, self.br, self.n_batch, n0,
            self.h[rows], True, grads, self.hs[rows], True, self.w2, self.b2, self.tn, grads,
            self.err[rows], self.sq[rows], self.se[rows], self.seh[rows],
        )  # fmt: skip

    def forward(self, n0: int, n1: int) -> None:
        self._forward(n0, n1, True)

    def forward_only(self, n0: int, n1: int) -> None:
        self._forward(n0, n1, False)

    def make_lanes(self, weights: Any) -> None:
        """Per-sequence gradient sums: l1 weight and bias, hr weight and bias, l2 ditto."""
        self.lanes = [np.empty((self.n_seq, *w.shape[1:])) for w in weights]

    def backward(self, n0: int, n1: int, scale: np.ndarray) -> None:
        lw1, lb1, lwr, lbr, lw2, lb2 = (lane[n0:n1] for lane in self.lanes)
        rows = slice(n0, n1)
        err = self.err[rows]
        backward_kernel(n1 - n0)(
            err, True, err, self.w2, scale, True, self.xn, self.hs[rows], self.wr,
            self.n_batch, n0, err, lwr, lbr, lw1, lb1,
        )  # fmt: skip
        self._readout_grads(n0, n1, scale, lw2, lb2)


def _scale(dloss: np.ndarray, count: int) -> np.ndarray:
    """dL/dy = scale_m · err for member m's outputs, from dL/d(loss_m)."""
    return dloss * 2.0 / count


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
        weights = (weight_ih, weight_hh, bias_ih, bias_hh, fc_weight, fc_bias)
        ctx.pass_ = work = _LSTMPass(x, target, weights)
        run_groups(work.forward, work.groups)
        ctx.shapes = weights
        return work.losses(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dloss: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        work: _LSTMPass = ctx.pass_
        weights = ctx.shapes
        scale = _scale(dloss.detach().double().numpy(), work.count)
        work.make_lanes(weights)
        run_groups(lambda n0, n1: work.backward(n0, n1, scale), work.groups)
        dw_ih, dw_hh, db, dfc_w, dfc_b = (
            reduce_members(lane, work.n_batch, like)
            for lane, like in zip(
                work.lanes, (weights[0], weights[1], bias_like(weights[1]), *weights[4:]),
                strict=True,
            )
        )  # fmt: skip
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
        weights = (l1_weight, l1_bias, hr_weight, hr_bias, l2_weight, l2_bias)
        ctx.pass_ = work = _ElmanPass(x, target, weights)
        run_groups(work.forward, work.groups)
        ctx.shapes = weights
        return work.losses(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dloss: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        work: _ElmanPass = ctx.pass_
        weights = ctx.shapes
        scale = _scale(dloss.detach().double().numpy(), work.count)
        work.make_lanes(weights)
        run_groups(lambda n0, n1: work.backward(n0, n1, scale), work.groups)
        grads = [
            reduce_members(lane, work.n_batch, like)
            for lane, like in zip(work.lanes, weights, strict=True)
        ]
        if work.n_steps == 1:  # one step never uses hr: no gradient, as in the reference
            grads[2] = grads[3] = None  # type: ignore[call-overload]
        return None, None, *grads


def _check_loss(
    x: torch.Tensor, target: torch.Tensor, names: tuple[str, ...], weights: Any
) -> None:
    """x [B,T,I], target [B,T,O] and the weights (stacked, `names` order): one dtype, CPU."""
    if x.dim() != 3:
        raise ValueError(f"x must be [batch, time, input], got {tuple(x.shape)}")
    _check("x", x, x.dtype, tuple(x.shape))
    _check("target", target, x.dtype, (x.shape[0], x.shape[1], weights[4].shape[1]))
    for name, t in zip(names, weights, strict=True):
        _check(name, t, x.dtype, tuple(t.shape))


def lstm_population_mse(x: torch.Tensor, target: torch.Tensor, *weights: torch.Tensor) -> Any:
    """[K]: each member's MSE; weights: stacked weight_ih, weight_hh, bias_ih, bias_hh, fc."""
    _check_loss(x, target, LSTM_NAMES, weights)
    return LSTMLossFunction.apply(x, target, *weights)


def elman_population_mse(x: torch.Tensor, target: torch.Tensor, *weights: torch.Tensor) -> Any:
    """[K]: each member's MSE; weights: stacked l1, hr and l2 weights and biases."""
    _check_loss(x, target, ELMAN_NAMES, weights)
    return ElmanLossFunction.apply(x, target, *weights)


def _forward_backward(work: _Pass, weights: Any) -> None:
    """Both halves of a pass, each group's backward right after its forward (one hand-off
    per group), for dL/d(loss_m) = 1: the gradient of the sum of the members' losses."""
    scale = _scale(np.ones(work.n_members), work.count)
    work.make_lanes(weights)

    def both(n0: int, n1: int) -> None:
        work.forward(n0, n1)
        work.backward(n0, n1, scale)

    run_groups(both, work.groups)


def _check_grads(names: tuple[str, ...], weights: Any, grads: Any, x: torch.Tensor) -> None:
    for name, w, g in zip(names, weights, grads, strict=True):
        _check(f"{name} gradient", g, x.dtype, tuple(w.shape))
        if not g.is_contiguous():
            raise ValueError(f"{name} gradient must be contiguous: it is written in place")


def lstm_population_grads(
    x: torch.Tensor, target: torch.Tensor, weights: Any, grads: Any
) -> torch.Tensor:
    """[K]: each member's MSE, as `lstm_population_mse`; writes into `grads` (one tensor per
    weight, same shapes) the gradient of their sum, i.e. what `.sum().backward()` on that
    would leave in the weights' .grad, bit for bit, without autograd (no graph, one thread
    hand-off per group instead of two)."""
    _check_loss(x, target, LSTM_NAMES, weights)
    _check_grads(LSTM_NAMES, weights, grads, x)
    work = _LSTMPass(x, target, weights)
    _forward_backward(work, weights)
    targets = (grads[0], grads[1], grads[2], grads[4], grads[5])
    for lane, out in zip(work.lanes, targets, strict=True):
        reduce_members_into(lane, work.n_batch, out)
    grads[3].copy_(grads[2])  # b_ih and b_hh enter every gate as a sum
    return work.losses(x.dtype)


def elman_population_grads(
    x: torch.Tensor, target: torch.Tensor, weights: Any, grads: Any
) -> torch.Tensor:
    """As `lstm_population_grads`, for stacked l1, hr and l2 weights and biases. For a
    one-step x the hr gradients are zeros here, where autograd gives none (the caller
    decides: an optimizer skips a parameter without .grad)."""
    _check_loss(x, target, ELMAN_NAMES, weights)
    _check_grads(ELMAN_NAMES, weights, grads, x)
    work = _ElmanPass(x, target, weights)
    _forward_backward(work, weights)
    for lane, out in zip(work.lanes, grads, strict=True):
        reduce_members_into(lane, work.n_batch, out)
    return work.losses(x.dtype)


def population_sse(kind: str, x: torch.Tensor, target: torch.Tensor, weights: Any) -> np.ndarray:
    """[K] float64: each member's sum of squared errors over (x, target), no autograd, in
    one pass of compiled loops (recurrence, read-out, error) per group of sequences.
    `kind` "lstm" or "elman", weights as `*_population_mse` takes them."""
    _check_loss(x, target, LSTM_NAMES if kind == "lstm" else ELMAN_NAMES, weights)
    work = (_LSTMPass if kind == "lstm" else _ElmanPass)(x, target, weights)
    run_groups(work.forward_only, work.groups)
    return work.sq.reshape(work.n_members, work.n_batch).sum(axis=1)  # sequence order
