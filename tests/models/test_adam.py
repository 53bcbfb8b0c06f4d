"""models.kernels.adam.Adam: torch.optim.Adam's algorithm as a compiled loop (what train uses)."""

from __future__ import annotations

import pytest
import torch

from models import build_population
from models.kernels.adam import Adam, supports
from models.training import make_optimizer


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adam_equals_torchs_adam(dtype: torch.dtype) -> None:
    """Same trajectory as torch.optim.Adam over 300 steps with a changing learning rate and a
    parameter that has no gradient on some steps (skipped, its step count held)."""
    gen = torch.Generator().manual_seed(0)
    ours = [torch.randn(shape, generator=gen, dtype=dtype) for shape in ((3, 4), (5,))]
    theirs = [p.clone() for p in ours]
    opt_ours, opt_theirs = Adam(ours, lr=0.03), torch.optim.Adam(theirs, lr=0.03)
    for step in range(300):
        lr = 0.03 * (1 - step / 300) + 1e-4
        for opt in (opt_ours, opt_theirs):
            opt.param_groups[0]["lr"] = lr
        for i, (p, q) in enumerate(zip(ours, theirs, strict=True)):
            if i == 1 and step % 3 == 0:
                p.grad = q.grad = None
            else:
                g = torch.randn(p.shape, generator=gen, dtype=dtype) * (1 + p.detach() ** 2)
                p.grad, q.grad = g.clone(), g.clone()
        opt_ours.step()
        opt_theirs.step()
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for p, q in zip(ours, theirs, strict=True):
        torch.testing.assert_close(p, q, rtol=tol, atol=tol)
    assert opt_ours.state[ours[1]]["step"] == 200
    assert float(opt_theirs.state[theirs[1]]["step"]) == 200
    for key in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(
            opt_ours.state[ours[0]][key], opt_theirs.state[theirs[0]][key], rtol=tol, atol=tol
        )


def test_adam_follows_replaced_gradients_and_zero_grad() -> None:
    p = torch.zeros(4)
    opt = Adam([p], lr=0.1)
    p.grad = torch.ones(4)
    opt.step()
    first = p.clone()
    torch.testing.assert_close(first, torch.full((4,), -0.1))  # Adam's first step: -lr·sign(g)
    p.grad = -torch.ones(4)  # a new gradient tensor: read, not the old one's stale view
    opt.step()
    assert bool((p > first).all())
    opt.zero_grad(set_to_none=False)
    assert p.grad is not None and bool((p.grad == 0).all())
    opt.zero_grad()
    assert p.grad is None
    opt.step()  # no gradient: nothing moves
    assert opt.state[p]["step"] == 2


def test_adam_rejects_what_it_does_not_handle() -> None:
    with pytest.raises(ValueError, match="contiguous float32 or float64 CPU"):
        Adam([torch.zeros(2, dtype=torch.float16)])
    with pytest.raises(ValueError, match="empty parameter list"):
        Adam([])
    with pytest.raises(ValueError, match="learning rate must be positive"):
        Adam([torch.zeros(2)], lr=0.0)
    assert not supports([torch.zeros(2, dtype=torch.int64)])
    assert not supports([torch.zeros(3, 2).t()])  # not contiguous: torch's Adam takes it


def test_training_uses_it_on_the_cpu_and_torchs_elsewhere() -> None:
    pop = build_population("lstm", seed=0, size=2)
    assert isinstance(make_optimizer(pop, 0.01), Adam)
    half = build_population("lstm", seed=0, size=2).to(torch.float16)
    assert isinstance(make_optimizer(half, 0.01), torch.optim.Adam)
