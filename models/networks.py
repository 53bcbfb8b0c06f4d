"""The notebook's two networks: an Elman RNN from nn.Linear layers, and an LSTM + linear head.

Each network has two forward paths that compute the same function:

- `forward_reference`: the specification, the readable per-step loop (Elman) or PyTorch's own
  nn.LSTM. Slow for these tiny networks: per-step eager ops cost far more than the arithmetic.
- `forward` (what `model(x)` runs): the same layers around a fused recurrence. On the CPU the
  recurrence is one compiled loop from `models.kernels`, forward and BPTT; without autograd
  (inference_mode / no_grad, as in `predict`) it runs over time in chunks and keeps no per-step
  gates, so memory stays at the input and output size. On CUDA the Elman recurrence runs
  through cuDNN's RNN_TANH and the LSTM through nn.LSTM (cuDNN). Other devices and dtypes
  (e.g. MPS, bfloat16) fall back to the reference.

`reference_mode()` makes `forward` take the reference path, for tests and benchmarks.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from contextvars import ContextVar

import torch
from torch import nn

from models import kernels

# True inside reference_mode(). A ContextVar: per thread and per asyncio task, so forcing the
# reference in one place (a test, a benchmark) cannot change another thread's models.
_REFERENCE: ContextVar[bool] = ContextVar("rnnlab_reference_mode", default=False)


@contextlib.contextmanager
def reference_mode(enabled: bool = True) -> Iterator[None]:
    """Within the block, `model(x)` runs `forward_reference` (the readable/PyTorch path).

    Applies to the current thread (or asyncio task) only; threads started inside the block
    do not inherit it. `reference_mode(False)` re-enables the fast path inside an outer block.
    """
    token = _REFERENCE.set(bool(enabled))
    try:
        yield
    finally:
        _REFERENCE.reset(token)


def _fast_path(x: torch.Tensor, module: nn.Module) -> str | None:
    """The device type ("cpu", "cuda") whose fused path `forward` may take, else None."""
    if _REFERENCE.get() or x.dtype not in kernels.DTYPES:
        return None
    if x.device.type not in ("cpu", "cuda"):
        return None
    if any(p.dtype != x.dtype or p.device != x.device for p in module.parameters()):
        return None  # mixed dtypes/devices: let the reference raise PyTorch's own error
    return x.device.type


def _needs_grad(x: torch.Tensor, module: nn.Module) -> bool:
    if not torch.is_grad_enabled():
        return False
    return x.requires_grad or any(p.requires_grad for p in module.parameters())


def check_input(x: torch.Tensor, n_input: int) -> None:
    """Raise a ValueError naming `x` unless it is [batch, time, n_input] with batch, time ≥ 1."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"x must be [batch, time, features], got shape {tuple(x.shape)}")
    if x.shape[2] != n_input:
        raise ValueError(f"x must have {n_input} features per step, got {x.shape[2]}")
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"x must hold at least one sequence of one step, got {tuple(x.shape)}")


class ElmanRNN(nn.Module):
    """h_0 = tanh(l1(x_0)); h_t = tanh(l1(x_t) + hr(h_{t-1})); y_t = l2(h_t)."""

    def __init__(self, n_input: int = 2, n_hidden: int = 2, n_out: int = 1) -> None:
        super().__init__()
        self.n_input, self.n_hidden, self.n_out = n_input, n_hidden, n_out
        self.l1 = nn.Linear(n_input, n_hidden)  # input → hidden
        self.hr = nn.Linear(n_hidden, n_hidden)  # hidden → hidden (the recurrence)
        self.l2 = nn.Linear(n_hidden, n_out)  # hidden → output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-step outputs [B, T, n_out] for inputs [B, T, n_input]."""
        check_input(x, self.n_input)
        path = _fast_path(x, self)
        if path is None:
            return self.forward_reference(x)
        if path == "cpu" and not _needs_grad(x, self):
            return self._forward_chunked(x)
        a = self.l1(x)  # (B, T, H): the input projection of every step in one matmul
        if path == "cuda":
            return self.l2(kernels.elman_rnn_tanh(a, self.hr.weight, self.hr.bias))
        return self.l2(kernels.elman_recurrence(a, self.hr.weight, self.hr.bias))

    def _forward_chunked(self, x: torch.Tensor) -> torch.Tensor:
        # Inference on the CPU: the lane kernels' forward pass with the read-out inside, two
        # steps of state kept: memory is x and the output.
        weights = [self.l1.weight, self.l1.bias, self.hr.weight, self.hr.bias]
        return kernels.lanes.predict_network("elman", [*weights, self.l2.weight, self.l2.bias], x)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """The readable per-step loop every faster path must equal."""
        check_input(x, self.n_input)
        h = torch.tanh(self.l1(x[:, 0]))  # (B, H): the first step has no previous state
        ys = [self.l2(h)]
        for t in range(1, x.shape[1]):
            h = torch.tanh(self.l1(x[:, t]) + self.hr(h))  # (B, H)
            ys.append(self.l2(h))  # (B, n_out)
        return torch.stack(ys, dim=1)  # (B, T, n_out)


class LSTMModel(nn.Module):
    """An nn.LSTM layer followed by a linear read-out at every step, no further activation."""

    def __init__(self, n_input: int = 2, n_hidden: int = 2, n_out: int = 1) -> None:
        super().__init__()
        self.n_input, self.n_hidden, self.n_out = n_input, n_hidden, n_out
        self.lstm = nn.LSTM(n_input, n_hidden, batch_first=True)
        self.fc = nn.Linear(n_hidden, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-step outputs [B, T, n_out] for inputs [B, T, n_input]."""
        check_input(x, self.n_input)
        lstm = self.lstm
        plain = lstm.num_layers == 1 and lstm.bias and not lstm.bidirectional
        plain = plain and lstm.proj_size == 0 and lstm.batch_first
        path = _fast_path(x, self) if plain else None
        if path != "cpu":  # CUDA: nn.LSTM is cuDNN's fused LSTM already
            return self.forward_reference(x)
        weights = tuple(lstm.all_weights[0])  # the layer's weight_ih, weight_hh, bias_ih, bias_hh
        if _needs_grad(x, self):
            # The input projection x W_ih^T + b_ih + b_hh runs inside the kernel.
            return self.fc(kernels.lstm_recurrence(x, *weights))
        return self._forward_chunked(x, weights)

    def _forward_chunked(self, x: torch.Tensor, weights: tuple[torch.Tensor, ...]) -> torch.Tensor:
        # Inference on the CPU: the lane kernels' forward pass with the read-out inside, two
        # steps of state kept: memory is x and the output.
        w_ih, w_hh, b_ih, b_hh = weights
        lane_order = [w_ih, b_ih, w_hh, b_hh, self.fc.weight, self.fc.bias]
        return kernels.lanes.predict_network("lstm", lane_order, x)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """PyTorch's own nn.LSTM, the reference every faster path must equal."""
        check_input(x, self.n_input)
        out, _ = self.lstm(x)  # (B, T, H), zero initial state
        return self.fc(out)  # (B, T, n_out)


MODELS: dict[str, type[ElmanRNN | LSTMModel]] = {"elman": ElmanRNN, "lstm": LSTMModel}
MODEL_KINDS = tuple(MODELS)


def init_parameters(model: nn.Module, generator: torch.Generator) -> None:
    """Re-draw every parameter from PyTorch's default ranges using `generator`, not global RNG.

    nn.Linear and nn.LSTM both default to U(-1/√fan, 1/√fan): fan is a Linear's input size
    (weights and bias alike) and an LSTM's hidden size.
    """
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                bound = 1.0 / math.sqrt(module.in_features)
                params = [module.weight] + ([module.bias] if module.bias is not None else [])
            elif isinstance(module, nn.LSTM):
                bound = 1.0 / math.sqrt(module.hidden_size)
                params = list(module.parameters(recurse=False))
            else:
                continue
            for p in params:
                p.uniform_(-bound, bound, generator=generator)


def build_model(
    kind: str,
    n_input: int = 2,
    n_hidden: int = 2,
    n_out: int = 1,
    seed: int | None = None,
) -> ElmanRNN | LSTMModel:
    """Build an "elman" or "lstm" network; with `seed`, its initial weights are reproducible."""
    if kind not in MODELS:
        raise ValueError(f"kind must be one of {', '.join(MODEL_KINDS)}; got {kind!r}")
    for name, value in (("n_input", n_input), ("n_hidden", n_hidden), ("n_out", n_out)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if seed is None:
        return MODELS[kind](n_input, n_hidden, n_out)
    # The layers' own initialisation draws from torch's global RNG; fork it so that a seeded
    # build leaves the global state as it found it, then draw the real weights from `seed`.
    with torch.random.fork_rng(devices=[]):
        model = MODELS[kind](n_input, n_hidden, n_out)
    init_parameters(model, torch.Generator().manual_seed(int(seed)))
    return model
