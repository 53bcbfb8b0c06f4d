"""The notebook's two networks: an Elman RNN from nn.Linear layers, and an LSTM + linear head."""

from __future__ import annotations

import math

import torch
from torch import nn


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
        return self.forward_reference(x)

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
        return self.forward_reference(x)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """PyTorch's own nn.LSTM, the reference every faster path must equal."""
        check_input(x, self.n_input)
        out, _ = self.lstm(x)  # (B, T, H), zero initial state
        return self.fc(out)  # (B, T, n_out)


MODELS: dict[str, type[nn.Module]] = {"elman": ElmanRNN, "lstm": LSTMModel}
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
) -> nn.Module:
    """Build an "elman" or "lstm" network; with `seed`, its initial weights are reproducible."""
    if kind not in MODELS:
        raise ValueError(f"kind must be one of {', '.join(MODEL_KINDS)}; got {kind!r}")
    for name, value in (("n_input", n_input), ("n_hidden", n_hidden), ("n_out", n_out)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    model = MODELS[kind](n_input, n_hidden, n_out)
    if seed is not None:
        init_parameters(model, torch.Generator().manual_seed(int(seed)))
    return model
