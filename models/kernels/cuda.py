"""CUDA: the Elman recurrence through cuDNN's RNN_TANH, in full float32."""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch.autograd.function import once_differentiable

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
                else:  # (saved from allow_tf32 above: a bool)
                    torch.backends.cudnn.allow_tf32 = _precision_saved  # type: ignore[assignment]


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
        out, _ = torch._VF.rnn_tanh(
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
    def forward(
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
    def backward(ctx: Any, dhs: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
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
