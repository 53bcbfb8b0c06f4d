"""The training paths (models.paths) against the reference, and the chooser (models.chooser)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from models import TrainConfig, build_model, build_population, kernels, make_splits, predict, train
from models import chooser as chooser_module
from models.chooser import Calibration, Cost, choose_path, epoch_seconds
from models.networks import reference_mode
from models.paths import PATHS, batch_grads

KINDS = ("elman", "lstm")


@pytest.fixture(autouse=True)
def _threads() -> Iterator[None]:
    torch_threads, kernel_threads = torch.get_num_threads(), kernels.get_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(torch_threads)
    kernels.set_threads(kernel_threads)


def _reference(pop: object, x: torch.Tensor, t: torch.Tensor) -> tuple[list[float], list]:
    """Each member's MSE and gradients from the readable per-step forward (reference_mode)."""
    with reference_mode():
        per_member = ((pop(x) - t) ** 2).mean(dim=(1, 2, 3))  # type: ignore[operator]
    params = list(pop.params)  # type: ignore[attr-defined]
    found = torch.autograd.grad(per_member.sum(), params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, found, strict=True)]
    return per_member.detach().double().tolist(), grads


# Hidden sizes on both sides of the fused kernels' compiled-in sizes (lanes.UNROLL_MAX = 8)
# and of the chooser's crossovers; sequences on both sides of a lane group (8 lanes); one
# step (Elman: no recurrent term at all) and several.
CASES = [
    # kind, hidden, members, batch, steps, dtype
    ("lstm", 1, 1, 1, 1, torch.float32),
    ("lstm", 2, 1, 3, 50, torch.float32),
    ("lstm", 3, 3, 3, 37, torch.float32),
    ("lstm", 8, 8, 2, 20, torch.float32),
    ("lstm", 9, 2, 5, 33, torch.float32),
    ("lstm", 20, 1, 9, 12, torch.float32),
    ("lstm", 3, 2, 4, 17, torch.float64),
    ("elman", 1, 1, 1, 1, torch.float32),
    ("elman", 2, 1, 3, 50, torch.float32),
    ("elman", 3, 3, 3, 37, torch.float32),
    ("elman", 8, 8, 2, 20, torch.float32),
    ("elman", 9, 2, 5, 33, torch.float32),
    ("elman", 20, 1, 9, 12, torch.float32),
    ("elman", 3, 2, 4, 17, torch.float64),
]


# The paths and the fused path's two layouts.
WAYS = [("fused", "lanes"), ("fused", "rows"), ("torch", "lanes")]


@pytest.mark.parametrize(("path", "layout"), WAYS)
@pytest.mark.parametrize(("kind", "hidden", "members", "batch", "steps", "dtype"), CASES)
def test_every_path_equals_the_reference(
    path: str,
    layout: str,
    kind: str,
    hidden: int,
    members: int,
    batch: int,
    steps: int,
    dtype: torch.dtype,
) -> None:
    gen = torch.Generator().manual_seed(hidden * 100 + members * 10 + batch)
    x = (torch.rand(batch, steps, 2, generator=gen, dtype=dtype) * 2 - 1).contiguous()
    t = torch.randn(batch, steps, 1, generator=gen, dtype=dtype)
    pop = build_population(kind, seed=hidden + members, size=members, n_hidden=hidden).to(dtype)
    losses, grads = batch_grads(path, pop, x, t, layout)
    ref_losses, ref_grads = _reference(pop, x, t)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(losses, ref_losses, rtol=tol, atol=tol)
    for name, g, r in zip(pop.names, grads, ref_grads, strict=True):
        scale = max(1.0, float(r.abs().max()))  # relative for sums over many steps
        torch.testing.assert_close(g, r, rtol=0, atol=tol * scale, msg=name)


def _train(kind: str, path: str, **overrides: object) -> tuple[object, list[torch.Tensor]]:
    values: dict[str, object] = dict(
        model=kind, epochs=6, n_sequences=5, seq_len=60, population=3, seed=2
    )
    cfg = TrainConfig(**{**values, **overrides})  # type: ignore[arg-type]
    splits = make_splits(cfg.seed, cfg.n_sequences, cfg.seq_len, cfg.marker_probs)
    pop = build_population(kind, seed=cfg.seed, size=cfg.population, n_hidden=cfg.hidden_size)
    history = train(pop, splits, cfg, path=path)
    return history, [p.detach().clone() for p in pop.params]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("path", PATHS)
def test_each_path_is_reproducible_bit_for_bit(kind: str, path: str) -> None:
    first, w1 = _train(kind, path, clip_grad_norm=0.5)
    second, w2 = _train(kind, path, clip_grad_norm=0.5)
    assert first.path == second.path == path  # type: ignore[attr-defined]
    assert first.train_loss == second.train_loss  # type: ignore[attr-defined]
    assert first.valid_loss == second.valid_loss  # type: ignore[attr-defined]
    for a, b in zip(w1, w2, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("population", [1, 3])
def test_fused_path_gives_the_same_bits_on_any_number_of_threads(
    kind: str, population: int
) -> None:
    # With one member and a second thread the validation runs beside the next epoch.
    runs = []
    for threads in (1, 2, 3):
        kernels.set_threads(threads)
        runs.append(_train(kind, "fused", population=population))
    for history, weights in runs[1:]:
        assert history.train_loss == runs[0][0].train_loss  # type: ignore[attr-defined]
        assert history.valid_loss == runs[0][0].valid_loss  # type: ignore[attr-defined]
        assert history.best_member == runs[0][0].best_member  # type: ignore[attr-defined]
        for a, b in zip(weights, runs[0][1], strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("population", [1, 3])
def test_the_rows_layout_gives_the_same_bits_again_and_on_any_number_of_threads(
    kind: str, population: int
) -> None:
    # The rows layout as train runs it (a few epochs of training and validation), directly.
    from models.paths import FusedPath
    from models.training import make_optimizer

    splits = make_splits(2, 5, 60)
    x, t = torch.as_tensor(splits.train.X), torch.as_tensor(splits.train.T)
    xv, tv = torch.as_tensor(splits.valid.X), torch.as_tensor(splits.valid.T)
    runs = []
    for threads in (1, 2, 1, 3):
        kernels.set_threads(threads)
        pop = build_population(kind, seed=2, size=population, n_hidden=12)
        optimizer = make_optimizer(pop, 0.03)
        engine = FusedPath(pop, x, t, xv, tv, 2, "rows")
        losses = []
        for _ in range(4):
            losses.append(engine.train_epoch(pop, optimizer, 0.03, 0.5))
            losses.append(engine.validate(pop, beside_training=True).result())
        runs.append((losses, [p.detach().clone() for p in pop.params]))
    for losses, weights in runs[1:]:
        assert losses == runs[0][0]
        for a, b in zip(weights, runs[0][1], strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("kind", KINDS)
def test_the_paths_train_alike(kind: str) -> None:
    # The same recipe on both paths: the same trajectory within float32 rounding.
    fused, wf = _train(kind, "fused")
    torch_, wt = _train(kind, "torch")
    assert (fused.path, torch_.path) == ("fused", "torch")  # type: ignore[attr-defined]
    np.testing.assert_allclose(fused.train_loss, torch_.train_loss, rtol=1e-4)  # type: ignore[attr-defined]
    np.testing.assert_allclose(fused.valid_loss, torch_.valid_loss, rtol=1e-4)  # type: ignore[attr-defined]
    for a, b in zip(wf, wt, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_an_unknown_path_is_refused() -> None:
    with pytest.raises(ValueError, match="path must be one of fused, torch"):
        _train("lstm", "gpu")


# --- the chooser --------------------------------------------------------------------------


def _calibration(fused_b: float, torch_b: float) -> Calibration:
    costs = {}
    for kind in KINDS:
        costs[f"{kind}/fused"] = Cost(2e-5, 1e-6, fused_b)
        costs[f"{kind}/fused-unrolled"] = Cost(2e-5, 1e-7, fused_b / 10)
        costs[f"{kind}/torch"] = Cost(5e-4, 2e-6, torch_b)
    return Calibration(train=dict(costs), valid=dict(costs))


NOTEBOOK = dict(batch_size=3, population=1, n_sequences=(9, 9), seq_len=3000, device="cpu")


def test_the_chooser_follows_the_cost_model_and_probes_close_calls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Fused steps cost 1 µs + 2.6 ns per unit of work, torch's 2 µs + 0.1 ns (the shape of
    # this machine's calibration): fused wins small, torch large; close calls are timed.
    probed: list[dict[str, object]] = []

    def fake_probe(shape: dict[str, object], candidates: list[str]) -> dict[str, float]:
        # Timings that disagree with the model: the lanes layout slower than it predicts,
        # the rows layout the fastest of all where it is a contender.
        probed.append(shape)
        timed = {"fused": 2.0, "fused-rows": 0.5, "torch-split": 1.0, "torch-serial": 3.0}
        return {c: timed[c] for c in candidates}

    monkeypatch.setattr(chooser_module, "probe", fake_probe)
    cal = _calibration(2.6e-9, 1e-10)
    decided = {}
    for hidden in (2, 16, 32, 48, 64, 128, 256):
        shape = dict(model="lstm", hidden_size=hidden, batch_size=3, population=1,
                     n_sequences=(9, 9), seq_len=3000, threads=kernels.get_threads())  # fmt: skip
        modelled = {
            "fused": epoch_seconds(cal, "fused", **shape),  # type: ignore[arg-type]
            "torch-split": epoch_seconds(cal, "torch", split=True, **shape),  # type: ignore[arg-type]
            "torch-serial": epoch_seconds(cal, "torch", split=False, **shape),  # type: ignore[arg-type]
        }
        rows = epoch_seconds(cal, "fused", layout="rows", **shape)  # type: ignore[arg-type]
        if rows < modelled["fused"]:  # a candidate only where it beats the lanes layout
            modelled["fused-rows"] = rows
        best = min(modelled.values())
        contenders = [c for c, v in modelled.items() if v <= chooser_module.CLOSE * best]
        close = len(contenders) > 1
        found = {**modelled, **fake_probe(shape, contenders)} if close else modelled
        if close:
            probed.pop()  # (the expectation's own call)
        fastest = min(found, key=found.__getitem__)
        expected = "fused" if fastest.startswith("fused") else "torch"
        before = len(probed)
        got = choose_path(model="lstm", hidden_size=hidden, calibration=cal, **NOTEBOOK)  # type: ignore[arg-type]
        assert got == expected, (hidden, found)
        # A close call is probed once, then decided from the stored probe: deterministic.
        assert len(probed) == before + (1 if close else 0)
        assert choose_path(model="lstm", hidden_size=hidden, calibration=cal, **NOTEBOOK) == got  # type: ignore[arg-type]
        decided[hidden] = (got, close)
        chosen = chooser_module.plan(model="lstm", hidden_size=hidden, calibration=cal,
                                     **NOTEBOOK)  # type: ignore[arg-type]  # fmt: skip
        assert chosen.path == got
        assert chosen.layout == (
            "rows" if found.get("fused-rows", 9e9) < found["fused"] else "lanes"
        )
        can_split = kernels.get_threads() > 1  # (and the batch of 3 splits)
        assert chosen.split == (can_split and found["torch-split"] < found["torch-serial"])
    # The model alone decides far calls; the probe decides the close ones (against the
    # model here: its fused timing is worse than predicted). The torch path's two ways are
    # always within CLOSE of each other: where it wins, they are timed.
    assert decided[2] == ("fused", False)
    assert decided[256] == ("torch", True)
    assert any(got == "torch" for got, close in decided.values() if close)
    assert any(got == "fused" for got, close in decided.values() if close)  # by the rows
    assert probed, "no close call in the sweep: the probe was never used"
    assert len(probed) == len(cal.probes)  # each probed shape timed once, then stored
    # A slower fused path moves the crossover down.
    slow = _calibration(2.6e-7, 1e-10)
    assert choose_path(model="lstm", hidden_size=16, calibration=slow, **NOTEBOOK) == "torch"  # type: ignore[arg-type]


def test_the_chooser_takes_torch_off_the_cpu_and_where_fused_cannot_run() -> None:
    cal = _calibration(1e-12, 1.0)  # fused would win anything
    shape = dict(model="elman", hidden_size=2, batch_size=3, population=1, n_sequences=(9, 9),
                 seq_len=30, calibration=cal)  # fmt: skip
    assert choose_path(device="cuda", **shape) == "torch"  # type: ignore[arg-type]
    assert choose_path(device="cpu", fused_ok=False, **shape) == "torch"  # type: ignore[arg-type]
    assert choose_path(device="cpu", **shape) == "fused"  # type: ignore[arg-type]


def test_calibration_is_measured_once_and_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = tmp_path / "calibration.json"
    monkeypatch.setattr(chooser_module, "calibration_path", lambda: str(stored))
    monkeypatch.setattr(chooser_module, "_memory", {})
    measured = []

    def fake_calibrate() -> Calibration:
        measured.append(1)
        return _calibration(3e-9, 2e-10)

    monkeypatch.setattr(chooser_module, "calibrate", fake_calibrate)
    assert chooser_module.load_calibration(measure=False) is None
    first = chooser_module.load_calibration()
    assert measured == [1]
    entries = json.loads(stored.read_text())
    assert list(entries) == [chooser_module._machine_key()]
    monkeypatch.setattr(chooser_module, "_memory", {})  # a new process: read from the file
    again = chooser_module.load_calibration()
    assert measured == [1]
    assert again == first


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("hidden", [2, 12])
@pytest.mark.parametrize("path", PATHS)
def test_prediction_on_either_path_equals_the_reference(
    kind: str, hidden: int, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = build_model(kind, n_hidden=hidden, seed=3)
    rng = np.random.default_rng(4)
    sequences = [
        np.stack([rng.uniform(-1, 1, n), rng.choice([-1.0, 0.0, 1.0], n)], axis=1)
        for n in (1, 7, 40, 40, 300)
    ]
    with torch.no_grad():
        expected = [
            model.forward_reference(torch.tensor(s, dtype=torch.float32)[None])[0].numpy()
            for s in sequences
        ]
    monkeypatch.setattr(chooser_module, "predict_path", lambda **_: path)
    got = predict(model, sequences)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-5)


def test_prediction_path_follows_the_calibration(monkeypatch: pytest.MonkeyPatch) -> None:
    # Fused cheap per unit of work, torch's fixed cost per step high: fused at small sizes.
    monkeypatch.setattr(chooser_module, "load_calibration", lambda **_: _calibration(1e-9, 1e-10))
    choose = chooser_module.predict_path
    assert choose(model="lstm", hidden_size=2, n_sequences=1, seq_len=3000) == "fused"
    assert choose(model="lstm", hidden_size=256, n_sequences=1, seq_len=3000) == "torch"
    # Without a calibration (none is measured for a prediction): the compiled-in sizes.
    monkeypatch.setattr(chooser_module, "load_calibration", lambda **_: None)
    assert choose(model="elman", hidden_size=8, n_sequences=4, seq_len=10) == "fused"
    assert choose(model="elman", hidden_size=9, n_sequences=4, seq_len=10) == "torch"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", KINDS)
def test_the_torch_path_on_cuda_equals_the_reference(kind: str) -> None:
    gen = torch.Generator().manual_seed(8)
    x = torch.rand(3, 60, 2, generator=gen) * 2 - 1
    t = torch.randn(3, 60, 1, generator=gen)
    pop = build_population(kind, seed=8, size=3, n_hidden=5)
    ref_losses, ref_grads = _reference(pop, x, t)
    cuda = build_population(kind, seed=8, size=3, n_hidden=5).cuda()
    losses, grads = batch_grads("torch", cuda, x.cuda(), t.cuda())
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-5)
    for name, g, r in zip(pop.names, grads, ref_grads, strict=True):
        scale = max(1.0, float(r.abs().max()))
        torch.testing.assert_close(g.cpu(), r, rtol=0, atol=1e-5 * scale, msg=name)
    cfg = TrainConfig(model=kind, epochs=2, n_sequences=3, seq_len=40, population=2, device="cuda")
    history = train(cuda, make_splits(0, 3, 40), cfg)
    assert history.path == "torch"
