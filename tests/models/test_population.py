"""Populations: the member dimension of the kernels, successive halving, the verdict."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from models import (
    Population,
    TrainConfig,
    build_model,
    build_population,
    evaluate,
    fit,
    halving_epochs,
    make_splits,
    member_seed,
    model_seed,
    train,
    verdict,
)
from models.networks import reference_mode
from models.training import Evaluation, _clip_per_member, learning_rate_at

KINDS = ("elman", "lstm")


def _grads(y: torch.Tensor, inputs: list[torch.Tensor], dy: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(y, inputs, dy))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", range(6))
def test_population_equals_separate_members(kind: str, case: int) -> None:
    """Forward and every gradient of a K-member pass equal K separate networks' (reference)."""
    rng = random.Random(case * 7 + len(kind))
    k = [1, 16, rng.randint(2, 16), rng.randint(2, 16), 3, 8][case]
    b, t, h = rng.randint(1, 4), rng.choice([1, 2, rng.randint(3, 120)]), rng.randint(1, 5)
    pop = build_population(kind, seed=case, size=k, n_hidden=h)
    gen = torch.Generator().manual_seed(case)
    x = torch.randn(b, t, 2, generator=gen)
    dy = torch.randn(k, b, t, 1, generator=gen)
    y = pop(x)
    assert y.shape == (k, b, t, 1)
    params = list(pop.parameters())
    grads = _grads(y, params, dy) if t > 1 or kind == "lstm" else None
    with torch.no_grad():
        y_infer = pop(x)
    for m in range(k):
        member = pop.member(m)
        with reference_mode():
            y_m = member(x)
        torch.testing.assert_close(y[m], y_m, rtol=0, atol=1e-5)
        torch.testing.assert_close(y_infer[m], y_m, rtol=0, atol=1e-5)
        if grads is None:  # one Elman step never reaches hr: nothing more to compare
            continue
        with reference_mode():
            g_m = _grads(member(x), list(member.parameters()), dy[m])
        for name, g, gm in zip(pop.names, grads, g_m, strict=True):
            torch.testing.assert_close(g[m], gm, rtol=1e-4, atol=1e-5, msg=f"{name}[{m}]")


@pytest.mark.parametrize("kind", KINDS)
def test_population_reference_mode_equals_fast_path(kind: str) -> None:
    pop = build_population(kind, seed=4, size=5, n_hidden=3)
    x = torch.randn(2, 30, 2, generator=torch.Generator().manual_seed(0))
    with reference_mode():
        y_ref = pop(x)
    torch.testing.assert_close(pop(x), y_ref, rtol=0, atol=1e-5)


def test_member_seeds_and_member_zero_is_the_single_network() -> None:
    assert member_seed(5, 0) == model_seed(5)
    seeds = [member_seed(5, i) for i in range(64)]
    assert len(set(seeds)) == 64
    pop = build_population("lstm", seed=5, size=3)
    assert pop.seeds == seeds[:3] and pop.indices == [0, 1, 2]
    single = build_model("lstm", seed=model_seed(5))
    for name, p in single.named_parameters():
        assert torch.equal(pop.member(0).get_parameter(name), p)
    for i in (1, 2):
        other = build_model("lstm", seed=member_seed(5, i))
        assert torch.equal(pop.member(i).lstm.weight_hh_l0, other.lstm.weight_hh_l0)


def test_population_rejects_mixed_members() -> None:
    with pytest.raises(ValueError, match="same kind"):
        Population([build_model("lstm", seed=0), build_model("lstm", n_hidden=3, seed=0)])
    with pytest.raises(ValueError, match="same kind"):
        Population([build_model("lstm", seed=0), build_model("elman", seed=0)])
    with pytest.raises(ValueError, match="at least one"):
        Population([])
    with pytest.raises(ValueError, match="size must be a positive integer"):
        build_population("lstm", seed=0, size=0)


def test_halving_epochs() -> None:
    assert halving_epochs(300, 1) == []
    assert halving_epochs(300, 2) == [150]
    assert halving_epochs(300, 4) == [100, 200]
    assert halving_epochs(300, 8) == [75, 150, 225]
    assert halving_epochs(300, 5) == [75, 150, 225]  # 5 → 3 → 2 → 1
    assert halving_epochs(2, 8) == [1, 1, 1]  # too short: several halvings at once
    with pytest.raises(ValueError, match="population must be at most 64"):
        TrainConfig(population=65)
    with pytest.raises(ValueError, match="population must be a positive integer"):
        TrainConfig(population=0)


SMALL = {"n_sequences": 6, "seq_len": 120, "batch_size": 3, "learning_rate": 0.05}


@pytest.mark.parametrize("kind", KINDS)
def test_successive_halving_keeps_the_best_and_the_kept_member_is_as_if_trained_alone(
    kind: str,
) -> None:
    cfg = TrainConfig(model=kind, epochs=12, population=6, seed=3, **SMALL)
    splits = make_splits(cfg.seed, cfg.n_sequences, cfg.seq_len)
    pop = build_population(kind, seed=cfg.seed, size=cfg.population)
    reports = []
    history = train(pop, splits, cfg, on_report=reports.append)
    rungs = halving_epochs(12, 6)
    assert rungs == [3, 6, 9]
    alive = set(range(6))
    for r in reports:
        trained = {m.index for m in r.members if m.epochs == r.epoch}
        assert trained == alive
        best = min(trained, key=lambda i: (r.members[i].valid_loss, i))
        assert r.member == best and r.valid_loss == r.members[best].valid_loss
        assert r.train_loss == r.members[best].train_loss
        for _ in range(rungs.count(r.epoch)):
            ranked = sorted(alive, key=lambda i: (r.members[i].valid_loss, i))
            alive = set(ranked[: (len(ranked) + 1) // 2])
    assert len(alive) == 1
    kept = history.kept
    assert kept is not None and kept.index in alive and kept.epochs == 12
    assert [m.kept for m in history.members].count(True) == 1
    assert sorted(m.epochs for m in history.members if not m.kept) == [
        3,
        3,
        3,
        6,
        9,
    ]  # 6 → 3 → 2 → 1
    assert history.valid_loss == [r.valid_loss for r in reports]
    assert history.best_member == [r.member for r in reports]
    # Members never interact: the kept one's weights are those of that member trained alone.
    assert pop.size == 1 and pop.indices == [kept.index]
    alone = build_model(kind, seed=member_seed(cfg.seed, kept.index))
    alone_history = train(alone, splits, cfg)
    for name, p in alone.named_parameters():
        torch.testing.assert_close(pop.member(0).get_parameter(name), p, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(alone_history.valid_loss[-1], kept.valid_loss, rtol=1e-5)


def test_population_fit_is_reproducible_bit_for_bit() -> None:
    cfg = TrainConfig(model="lstm", epochs=8, population=5, seed=11, **SMALL)
    a, b = fit(cfg), fit(cfg)
    assert a.history.train_loss == b.history.train_loss
    assert a.history.valid_loss == b.history.valid_loss
    assert a.history.members == b.history.members
    for (name, p), q in zip(a.model.named_parameters(), b.model.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert a.metrics == b.metrics


def test_fit_reports_the_kept_member_and_its_metrics() -> None:
    cfg = TrainConfig(model="lstm", epochs=6, population=4, seed=2, **SMALL)
    result = fit(cfg)
    kept = result.history.kept
    assert kept is not None
    assert kept.seed == member_seed(2, kept.index)
    assert result.history.valid_loss[-1] == kept.valid_loss
    assert result.metrics.error_ratio == result.metrics.test_mse / result.metrics.baseline_mse


def test_a_population_run_stops_when_every_member_diverges() -> None:
    cfg = TrainConfig(
        model="lstm", epochs=3, population=3, seed=0, **{**SMALL, "learning_rate": 1e20}
    )
    with pytest.raises(FloatingPointError, match="diverged at epoch 1"):
        fit(cfg)


def test_clipping_is_per_member() -> None:
    pop = build_population("elman", seed=0, size=3)
    big, small = 10.0, 1e-3
    for p in pop.parameters():
        p.grad = torch.ones_like(p)
        p.grad[0] *= big
        p.grad[1] *= small
    before = [p.grad.clone() for p in pop.parameters()]
    _clip_per_member(list(pop.parameters()), 1.0)
    norm = torch.stack([p.grad.double().pow(2).flatten(1).sum(1) for p in pop.parameters()])
    norm = norm.sum(0).sqrt()
    assert norm[0] == pytest.approx(1.0, rel=1e-5)  # clipped to the bound
    for p, g in zip(pop.parameters(), before, strict=True):
        assert torch.equal(p.grad[1], g[1])  # under the bound: untouched
    assert norm[2] == pytest.approx(1.0, rel=1e-5)  # ones over 15 weights: norm √15 → 1


def test_cosine_schedule() -> None:
    cfg = TrainConfig(epochs=4, learning_rate=0.1, lr_schedule="cosine")
    lrs = [learning_rate_at(cfg, e) for e in (1, 2, 3, 4)]
    assert lrs == pytest.approx([0.1, 0.1 * (1 + 2**-0.5) / 2, 0.05, 0.1 * (1 - 2**-0.5) / 2])
    assert learning_rate_at(TrainConfig(learning_rate=0.1, lr_schedule="constant"), 7) == 0.1
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        TrainConfig(lr_schedule="linear")
    with pytest.raises(ValueError, match="clip_grad_norm must be 0"):
        TrainConfig(clip_grad_norm=-1.0)


def test_verdict_thresholds_at_their_edges() -> None:
    assert verdict(0.0) == "learned"
    assert verdict(0.05) == "learned"
    assert verdict(np.nextafter(0.05, 1.0)) == "partly"
    assert verdict(0.5) == "partly"
    assert verdict(np.nextafter(0.5, 1.0)) == "not learned"
    assert verdict(3.0) == "not learned"
    m = Evaluation(test_mse=0.01, baseline_mse=0.2, marker_mse=0.02, marker_baseline_mse=0.4)
    assert m.error_ratio == pytest.approx(0.05) and m.verdict == "learned"
    assert m.marker_error_ratio == pytest.approx(0.05)
    nothing = Evaluation(test_mse=0.0, baseline_mse=0.0, marker_mse=None, marker_baseline_mse=None)
    assert nothing.error_ratio is None and nothing.verdict is None
    assert nothing.marker_error_ratio is None


@pytest.fixture
def restore_threads():
    from models import kernels

    before = kernels.get_threads()
    yield kernels
    kernels.set_threads(before)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", [1, 5])
def test_members_in_parallel_threads_give_the_same_bits(
    kind: str, size: int, restore_threads
) -> None:
    kernels = restore_threads
    pop = build_population(kind, seed=9, size=size, n_hidden=3)
    x = torch.randn(3, 80, 2, generator=torch.Generator().manual_seed(1))
    dy = torch.randn(size, 3, 80, 1, generator=torch.Generator().manual_seed(2))
    target = torch.randn(3, 80, 1, generator=torch.Generator().manual_seed(3))
    results = []
    # 15 sequences at size 5: groups of 15, 8 + 7, 5 + 5 + 5 and 8 groups of 1-2, on both
    # sides of the group sizes at which the Elman kernels change layout (elman.forward_kernel,
    # backward_kernel) and the LSTM's change path (lstm._WIDE_UNITS). (The training path's
    # own thread test: tests/models/test_paths.py.)
    for threads in (1, 2, 3, 8):
        kernels.set_threads(threads)
        y = pop(x)
        grads = torch.autograd.grad(y, list(pop.parameters()), dy)
        with torch.no_grad():
            y_infer = pop(x)
        results.append((y, grads, y_infer, pop.mse(x, target).detach()))
    for y, grads, y_infer, losses in results[1:]:
        assert torch.equal(y, results[0][0])
        assert torch.equal(y_infer, results[0][2])
        assert all(torch.equal(g, g0) for g, g0 in zip(grads, results[0][1], strict=True))
        assert torch.equal(losses, results[0][3])


def test_training_with_parallel_members_is_bit_for_bit_the_same(restore_threads) -> None:
    kernels = restore_threads
    cfg = TrainConfig(model="lstm", epochs=6, population=4, seed=3, **SMALL)
    kernels.set_threads(1)
    one = fit(cfg)
    kernels.set_threads(2)
    two = fit(cfg)
    assert one.history.valid_loss == two.history.valid_loss
    assert one.history.members == two.history.members
    for p, q in zip(one.model.parameters(), two.model.parameters(), strict=True):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        kernels.set_threads(0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", range(5))
def test_population_loss_equals_the_reference(kind: str, case: int) -> None:
    """Population.mse through the autograd kernels equals the plain expression on the
    reference path, loss and every gradient."""
    rng = random.Random(100 + case)
    k = [1, 16, rng.randint(2, 16), 4, 7][case]
    b, t, h = rng.randint(1, 4), rng.choice([1, 2, rng.randint(3, 150)]), rng.randint(1, 5)
    pop = build_population(kind, seed=case, size=k, n_hidden=h)
    gen = torch.Generator().manual_seed(case)
    x, target = torch.randn(b, t, 2, generator=gen), torch.randn(b, t, 1, generator=gen)
    weights = torch.rand(k, generator=gen) + 0.5  # members weigh differently in the sum
    loss = pop.mse(x, target)
    grads = torch.autograd.grad((loss * weights).sum(), list(pop.parameters()), allow_unused=True)
    with reference_mode():
        ref = ((pop(x) - target) ** 2).mean(dim=(1, 2, 3))
        ref_grads = torch.autograd.grad(
            (ref * weights).sum(), list(pop.parameters()), allow_unused=True
        )
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    for name, g, r in zip(pop.names, grads, ref_grads, strict=True):
        assert (g is None) == (r is None), name  # one Elman step never reaches hr
        if g is not None:
            torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("size", [1, 3])
def test_restore_best_keeps_the_kept_members_best_validation_epoch(size: int) -> None:
    cfg = TrainConfig(
        model="lstm", epochs=10, population=size, seed=4, **{**SMALL, "learning_rate": 0.2}
    )
    splits = make_splits(cfg.seed, cfg.n_sequences, cfg.seq_len)
    result = fit(cfg)
    kept = result.history.kept
    assert kept is not None and kept.best_epoch is not None
    assert kept.best_valid_loss <= kept.valid_loss
    # The model's validation MSE is that of its best epoch, not its last.
    assert evaluate(result.model, splits.valid).test_mse == pytest.approx(
        kept.best_valid_loss, rel=1e-5
    )
    last = fit(
        TrainConfig(**{**cfg.to_dict(), "marker_probs": cfg.marker_probs, "restore_best": False})
    )
    assert evaluate(last.model, splits.valid).test_mse == pytest.approx(
        last.history.kept.valid_loss, rel=1e-5
    )
    with pytest.raises(ValueError, match="restore_best must be true or false"):
        TrainConfig(restore_best=1)


@pytest.mark.parametrize("kind", KINDS)
def test_training_on_the_cpu_runs_no_autograd_function(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from models.kernels import elman, lstm

    def no_autograd(*args: object) -> None:
        raise AssertionError("train went through an autograd Function")

    cfg = TrainConfig(model=kind, epochs=3, population=2, seed=4, **SMALL)
    expected = fit(cfg)
    monkeypatch.setattr(lstm.LSTMFunction, "apply", no_autograd)
    monkeypatch.setattr(elman.ElmanFunction, "apply", no_autograd)
    monkeypatch.setattr(torch.autograd, "grad", no_autograd)
    monkeypatch.setattr(torch.Tensor, "backward", no_autograd)
    got = fit(cfg)
    assert got.history.path == "fused"
    assert got.history.train_loss == expected.history.train_loss
    assert got.history.valid_loss == expected.history.valid_loss
