"""Adam for the CPU as one compiled loop per parameter, for networks of a few dozen weights.

torch.optim.Adam (fused or not) spends ~0.1–0.3 ms a step in Python and dispatch (parameter
grouping, device checks, step-count tensors) for arithmetic that takes a microsecond: with
a few batches an epoch, a noticeable share of a small network's epoch. This is the
same algorithm (torch.optim.Adam with its defaults: no weight decay, no amsgrad, not
maximize), elementwise, so a population's members are updated exactly as K separate
optimizers would update them; it computes each update in float64 and rounds it once into the
parameter, where torch computes in the parameter's type, so results agree within float32
rounding, not bit for bit. The state per parameter has torch's keys: `step` (a Python int
here), `exp_avg` and `exp_avg_sq`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from models.kernels.compile import _njit


@_njit
def _adam_step(p, g, m, v, lr, beta1, beta2, eps, bias1, bias2_sqrt):
    """One Adam step over flat p, its gradient g and moments m, v (all one length)."""
    for i in range(p.size):
        gi = np.float64(g[i])
        mi = m[i] + (1.0 - beta1) * (gi - m[i])  # torch's lerp(m, g, 1 - beta1)
        vi = beta2 * v[i] + (1.0 - beta2) * gi * gi
        m[i] = mi
        v[i] = vi
        denom = math.sqrt(np.float64(v[i])) / bias2_sqrt + eps
        p[i] = p[i] - (lr / bias1) * np.float64(m[i]) / denom


def supports(params: Iterable[torch.Tensor]) -> bool:
    """Whether `Adam` applies: dense, contiguous float32/float64 CPU tensors."""
    return all(
        p.device.type == "cpu"
        and p.dtype in (torch.float32, torch.float64)
        and not p.is_sparse
        and p.is_contiguous()
        for p in params
    )


class Adam:
    """torch.optim.Adam's algorithm for dense float32/float64 CPU parameters (see the module
    docstring), with the part of torch.optim.Optimizer's interface that training uses:
    `param_groups` (one group; its "lr" may change between steps), `state` (per parameter,
    torch's keys), `step()` and `zero_grad()`. Not a torch.optim.Optimizer subclass: that
    base wraps every step in a profiler record and hook calls, ~20 µs a step, more than the
    step itself here (so no step hooks, schedulers or state_dict either)."""

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        params = list(params)
        if not params:
            raise ValueError("Adam got an empty parameter list")
        if not supports(params):
            raise ValueError("Adam here takes dense, contiguous float32 or float64 CPU tensors")
        if not lr > 0.0 or not math.isfinite(lr):
            raise ValueError(f"learning rate must be positive, got {lr}")
        self.param_groups: list[dict[str, Any]] = [
            {"params": params, "lr": lr, "betas": betas, "eps": eps}
        ]
        self.state: dict[torch.Tensor, dict[str, Any]] = {}
        # numpy views of each parameter and its state, made once (a step then makes none);
        # a gradient's view is remade when the gradient is a different tensor.
        self._views: dict[torch.Tensor, tuple[Any, ...]] = {}
        self._grad_views: dict[torch.Tensor, tuple[Any, ...]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.param_groups[0]["params"]:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue  # as torch: no gradient, no step (its step count stays)
                if g.is_sparse or g.shape != p.shape:
                    raise ValueError("Adam here takes dense gradients shaped as the parameter")
                state = self.state.setdefault(p, {})
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
                views = self._views.get(p)
                if (
                    views is None
                    or views[0] != p.data_ptr()
                    or views[1] is not state["exp_avg"]
                    or views[2] is not state["exp_avg_sq"]
                ):
                    m, v = state["exp_avg"], state["exp_avg_sq"]
                    views = (p.data_ptr(), m, v, _flat(p), _flat(m), _flat(v))
                    self._views[p] = views
                cached = self._grad_views.get(p)
                if cached is None or cached[0] is not g or cached[1] != g.data_ptr():
                    cached = (g, g.data_ptr(), _flat(g))
                    self._grad_views[p] = cached
                state["step"] += 1
                t = state["step"]
                _adam_step(  # by keyword: four arrays and six floats of one type each
                    p=views[3], g=cached[2], m=views[4], v=views[5], lr=lr, beta1=beta1,
                    beta2=beta2, eps=eps, bias1=1.0 - beta1**t,
                    bias2_sqrt=math.sqrt(1.0 - beta2**t),
                )  # fmt: skip
        return loss


def _flat(t: torch.Tensor) -> np.ndarray:
    """A flat numpy view sharing t's memory (t must be contiguous: no copy is made)."""
    if not t.is_contiguous():
        raise ValueError("Adam here needs contiguous parameters and gradients")
    return t.detach().view(-1).numpy()
