"""A population: K networks of one kind trained side by side, as one module with stacked weights.

Every parameter of the plain network (`l1.weight`, `lstm.weight_hh_l0`, …) becomes one tensor
with a leading member dimension, so one optimizer step (elementwise Adam) updates every
member with its own moments, exactly as K separate optimizers would. `forward(x[B,T,I])`
gives y[K,B,T,O]: each member's outputs on the same batch. On the CPU the K recurrences run
in one fused kernel pass (`models.kernels.*_population`); elsewhere, and in
`reference_mode()`, each member runs its plain network's own forward on slices of the stacked
weights.

Member i of a run with seed s starts from `member_seed(s, i)`; member 0's is `model_seed(s)`,
the seed a single-network run has always used, so a population of one is that network.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from models import kernels
from models.networks import ElmanRNN, LSTMModel, _fast_path, _needs_grad, build_model, check_input


def model_seed(seed: int) -> int:
    """The weight-initialisation seed derived from a run seed (apart from the data streams)."""
    return int(np.random.SeedSequence([int(seed), 1]).generate_state(1)[0])


def member_seed(seed: int, index: int) -> int:
    """Member `index`'s initial-weight seed: model_seed(seed) for 0, a separate stream else."""
    if index == 0:
        return model_seed(seed)
    return int(np.random.SeedSequence([int(seed), 1, int(index)]).generate_state(1)[0])


class Population(nn.Module):
    """K networks of one kind and size with stacked parameters (dim 0 = member)."""

    def __init__(
        self,
        members: Sequence[nn.Module],
        indices: Sequence[int] | None = None,
        seeds: Sequence[int | None] | None = None,
    ) -> None:
        super().__init__()
        if len(members) == 0:
            raise ValueError("members must hold at least one network")
        first = members[0]
        if not isinstance(first, ElmanRNN | LSTMModel):
            raise ValueError(f"members must be ElmanRNN or LSTMModel, got {type(first).__name__}")
        sizes: tuple[object, ...] = (type(first), first.n_input, first.n_hidden, first.n_out)
        for m in members:
            if (type(m), m.n_input, m.n_hidden, m.n_out) != sizes:
                raise ValueError("members must all be networks of the same kind and sizes")
        self.kind = "elman" if isinstance(first, ElmanRNN) else "lstm"
        self.n_input, self.n_hidden, self.n_out = first.n_input, first.n_hidden, first.n_out
        self.names = [name for name, _ in first.named_parameters()]
        # One member shares its network's storage (updates show in the network at once);
        # several are copied into stacked tensors.
        self.params = nn.ParameterList(
            nn.Parameter(
                torch.stack([dict(m.named_parameters())[n].detach() for m in members])
                if len(members) > 1
                else dict(first.named_parameters())[n].detach().unsqueeze(0)
            )
            for n in self.names
        )
        self.indices = list(range(len(members)) if indices is None else indices)
        self.seeds = list([None] * len(members) if seeds is None else seeds)
        if len(self.indices) != len(members) or len(self.seeds) != len(members):
            raise ValueError("indices and seeds must have one entry per member")
        # The plain network whose forward each member runs off the CPU fast path; kept out of
        # the module tree so that it has no parameters of its own here.
        self._template = (copy.deepcopy(first).requires_grad_(False),)

    @property
    def size(self) -> int:
        return len(self.indices)

    def param(self, name: str) -> nn.Parameter:
        return self.params[self.names.index(name)]

    def member(self, position: int) -> nn.Module:
        """The member at `position` (0 … size-1) as a plain network with copied weights."""
        model = copy.deepcopy(self._template[0]).requires_grad_(True)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(self.param(name)[position])
        return model

    def select(self, positions: Sequence[int]) -> list[nn.Parameter]:
        """Keep only the members at `positions`, in that order; returns the new parameters.

        Parameters are replaced (their optimizer state must be carried over by the caller).
        """
        if not positions or any(not 0 <= p < self.size for p in positions):
            raise ValueError(f"positions must be 0…{self.size - 1}, got {list(positions)}")
        index = torch.tensor(list(positions), dtype=torch.long, device=self.params[0].device)
        new = [nn.Parameter(p.detach().index_select(0, index)) for p in self.params]
        self.params = nn.ParameterList(new)
        self.indices = [self.indices[p] for p in positions]
        self.seeds = [self.seeds[p] for p in positions]
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-step outputs y[K,B,T,n_out] of every member for inputs x[B,T,n_input]."""
        check_input(x, self.n_input)
        if _fast_path(x, self) != "cpu":
            return self.forward_reference(x)
        if self.kind == "elman":
            hs = self._elman_hidden(x)
            w, b = self.param("l2.weight"), self.param("l2.bias")
        else:
            hs = self._lstm_hidden(x)
            w, b = self.param("fc.weight"), self.param("fc.bias")
        k, n_batch, n_steps, _ = hs.shape
        y = torch.baddbmm(b[:, None, :], hs.reshape(k, n_batch * n_steps, -1), w.transpose(1, 2))
        return y.view(k, n_batch, n_steps, self.n_out)

    def mse(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """[K]: each member's mean squared error on (x, target), differentiable (training
        itself runs on `models.paths`)."""
        return ((self(x) - target) ** 2).mean(dim=(1, 2, 3))

    def _elman_hidden(self, x: torch.Tensor) -> torch.Tensor:
        w1, b1 = self.param("l1.weight"), self.param("l1.bias")
        wr, br = self.param("hr.weight"), self.param("hr.bias")
        k, n_batch, n_steps = self.size, x.shape[0], x.shape[1]

        def project(xc: torch.Tensor) -> torch.Tensor:  # l1 of every member: [K, B, t, H]
            flat = xc.reshape(1, -1, self.n_input).expand(k, -1, -1)
            a = torch.baddbmm(b1[:, None, :], flat, w1.transpose(1, 2))
            return a.view(k, xc.shape[0], xc.shape[1], self.n_hidden)

        if _needs_grad(x, self):
            return kernels.elman_population(project(x), wr, br)
        # Without autograd, a time chunk at a time: memory is x, the output and one chunk.
        hs = x.new_empty(k, n_batch, n_steps, self.n_hidden)
        h = x.new_zeros(k, n_batch, self.n_hidden)
        step = kernels.chunk_steps(k * n_batch, self.n_hidden)
        for s in range(0, n_steps, step):
            a = project(x[:, s : s + step])
            hs[:, :, s : s + step] = kernels.elman_population_inference(a, wr, br, h, s == 0)
        return hs

    def _lstm_hidden(self, x: torch.Tensor) -> torch.Tensor:
        names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        w_ih, w_hh, b_ih, b_hh = (self.param(f"lstm.{n}_l0") for n in names)
        if _needs_grad(x, self):
            return kernels.lstm_population(x, w_ih, w_hh, b_ih, b_hh)
        k, n_batch, n_steps = self.size, x.shape[0], x.shape[1]
        hs = x.new_empty(k, n_batch, n_steps, self.n_hidden)
        h = x.new_zeros(k, n_batch, self.n_hidden)
        c = x.new_zeros(k, n_batch, self.n_hidden)
        step = kernels.chunk_steps(k * n_batch, 4 * self.n_hidden)
        for s in range(0, n_steps, step):
            xc = x[:, s : s + step]
            hs[:, :, s : s + step] = kernels.lstm_population_inference(
                xc, w_ih, w_hh, b_ih, b_hh, h, c
            )
        return hs

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """Each member's own network forward on its slice of the stacked weights, stacked."""
        template = self._template[0]
        outs = [
            functional_call(
                template, {n: p[m] for n, p in zip(self.names, self.params, strict=True)}, (x,)
            )
            for m in range(self.size)
        ]
        return torch.stack(outs)


def build_population(
    kind: str, *, seed: int, size: int, n_input: int = 2, n_hidden: int = 2, n_out: int = 1
) -> Population:
    """`size` members of `kind`, member i initialised from member_seed(seed, i)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    seeds = [member_seed(seed, i) for i in range(size)]
    members = [build_model(kind, n_input, n_hidden, n_out, seed=s) for s in seeds]
    return Population(members, seeds=seeds)
