"""The fused recurrent kernels (models.kernels) against the reference paths they replace."""

from __future__ import annotations

import importlib.util
import os
import random
from collections.abc import Iterator
from pathlib import Path

import numba
import numpy as np
import pytest
import torch
from numba.core import config as numba_config

from models import TrainConfig, build_model, kernels, make_splits, predict, train
from models.kernels import compile as compile_module
from models.kernels.compile import _exp
from models.networks import reference_mode

KINDS = ("elman", "lstm")
# Edge cases first, then a seeded handful of random (batch, time, hidden) shapes.
_rng = random.Random(1234)
SHAPES = [(1, 1, 1), (1, 500, 2), (8, 1, 32), (1, 37, 1), (3, 2, 1)] + [
    (_rng.randint(1, 8), _rng.randint(1, 500), _rng.randint(1, 32)) for _ in range(5)
]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    # The reference paths are thousands of tiny ops; with several OpenMP threads on a busy
    # 2-core machine each one can wait for a descheduled thread, making this file 3× slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _randn(*shape: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _grads(y: torch.Tensor, inputs: list[torch.Tensor], dy: torch.Tensor) -> list[torch.Tensor]:
    # allow_unused: with one step, the reference never touches hr (its gradient is zero).
    gs = torch.autograd.grad(y, inputs, dy, allow_unused=True)
    return [torch.zeros_like(i) if g is None else g for g, i in zip(gs, inputs, strict=True)]


def _assert_fast_equals_reference(
    model: torch.nn.Module, x: torch.Tensor, dy: torch.Tensor
) -> None:
    """Outputs and the gradients of x and every parameter: fast path vs reference, 1e-5.

    Then the no-grad (inference) path against the same reference outputs.
    """
    inputs = [x, *model.parameters()]
    y = model(x)
    grads = _grads(y, inputs, dy)
    with reference_mode():
        y_ref = model(x)
        grads_ref = _grads(y_ref, inputs, dy)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-5)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        _assert_close_scaled(g, g_ref, 1e-5)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), y_ref.detach(), rtol=0, atol=1e-5)


def _assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, tol: float) -> None:
    """|actual - expected| ≤ tol · max(1, max|expected|): absolute for O(1) values, relative
    for gradients that sum thousands of steps into large numbers."""
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=0, atol=tol * scale)


# --- the autograd Functions -----------------------------------------------------------------


# (2, 70, 2): the kernels move time in chunks of 32 steps (glue._CHUNK); this crosses two
# chunk edges and ends in a partial chunk, forward and backward.
@pytest.mark.parametrize("shape", [(2, 6, 3), (1, 1, 1), (3, 4, 1), (2, 70, 2)])
def test_elman_function_gradcheck(shape: tuple[int, int, int]) -> None:
    b, t, h = shape
    a = (_randn(b, t, h, seed=1, dtype=torch.float64)).requires_grad_()
    w = (0.7 * _randn(h, h, seed=2, dtype=torch.float64)).requires_grad_()
    bias = (0.5 * _randn(h, seed=3, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(kernels.elman_recurrence, (a, w, bias))


def _lstm_args(b: int, t: int, h: int, n_in: int = 2, seed: int = 4) -> list[torch.Tensor]:
    """x, weight_ih, weight_hh, bias_ih, bias_hh in float64, all requiring gradients."""
    g = 4 * h
    shapes = [(b, t, n_in), (g, n_in), (g, h), (g,), (g,)]
    scales = [1.0, 0.7, 0.7, 0.5, 0.5]
    return [
        (s * _randn(*shape, seed=seed + k, dtype=torch.float64)).requires_grad_()
        for k, (shape, s) in enumerate(zip(shapes, scales, strict=True))
    ]


# (2, 40, 2) crosses a 32-step chunk edge of the kernels' time-major buffers.
@pytest.mark.parametrize("shape", [(2, 6, 3), (1, 1, 1), (3, 4, 1), (4, 3, 2), (2, 40, 2)])
def test_lstm_function_gradcheck(shape: tuple[int, int, int]) -> None:
    # Gradients for x, W_ih, W_hh, b_ih and b_hh, the input projection folded in.
    args = _lstm_args(*shape)
    assert torch.autograd.gradcheck(kernels.lstm_recurrence, args)


@pytest.mark.parametrize("n_in", [1, 3])
def test_lstm_function_gradcheck_other_input_sizes(n_in: int) -> None:
    assert torch.autograd.gradcheck(kernels.lstm_recurrence, _lstm_args(2, 5, 2, n_in=n_in))


def test_lstm_function_without_input_gradient() -> None:
    # Training inputs need no gradient: x gets none, the parameters the same as with one.
    args = _lstm_args(3, 7, 2)
    dy = _randn(3, 7, 2, seed=9, dtype=torch.float64)
    with_x = torch.autograd.grad(kernels.lstm_recurrence(*args), args, dy)
    x = args[0].detach()
    y = kernels.lstm_recurrence(x, *args[1:])
    without_x = torch.autograd.grad(y, args[1:], dy)
    for g1, g2 in zip(with_x[1:], without_x, strict=True):
        torch.testing.assert_close(g1, g2, rtol=0, atol=0)
    torch.testing.assert_close(with_x[3], with_x[4], rtol=0, atol=0)  # b_ih and b_hh alike
    assert with_x[3].data_ptr() != with_x[4].data_ptr()  # but not one shared tensor


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lstm_kernel_propagates_nan_and_saturates(dtype: torch.dtype) -> None:
    args = [a.detach().to(dtype) for a in _lstm_args(2, 4, 2)]
    x = args[0].clone()
    x[1, 2, 0] = float("nan")
    y = kernels.lstm_recurrence(x, *args[1:])
    assert torch.isfinite(y[0]).all() and torch.isfinite(y[1, :2]).all()
    assert torch.isnan(y[1, 2:]).all()
    big = kernels.lstm_recurrence(1e6 * args[0], *args[1:])  # exp far out of range
    assert torch.isfinite(big).all() and big.abs().max() <= 1.0


@pytest.mark.parametrize(
    ("dtype", "lo", "hi", "tol"),
    [(np.float32, -87.0, 88.0, 2e-7), (np.float64, -708.0, 709.0, 5e-16)],
)
def test_exp_computes_in_its_arguments_type(dtype: type, lo: float, hi: float, tol: float) -> None:
    # The kernels' vectorizable exp: float32 arguments get float32 arithmetic (the models'
    # type), float64 ones float64; both close to the exact value, saturating out of range.
    @numba.njit
    def apply(z, out):  # type: ignore[no-untyped-def]
        for i in range(z.size):
            out[i] = _exp(z[i])

    one = numba.njit(lambda v: _exp(v))
    one(dtype(1.0))
    assert one.nopython_signatures[0].return_type == numba.from_dtype(np.dtype(dtype))
    z = np.linspace(lo, hi, 200_001).astype(dtype)
    out = np.empty_like(z)
    apply(z, out)
    exact = np.exp(z.astype(np.float64))
    assert out.dtype == dtype
    assert float(np.max(np.abs(out - exact) / exact)) <= tol
    edges = np.array([np.nan, np.inf, -np.inf, 1e4, -1e4, 0.0], dtype=dtype)
    out = np.empty_like(edges)
    apply(edges, out)
    assert np.isnan(out[0]) and out[5] == 1.0
    assert np.isfinite(out[1:5]).all() and out[1] == out[3] > 1e37 and 0 < out[2] == out[4] < 1e-37


def test_rnn_tanh_path_gradcheck() -> None:
    # The CUDA Elman path (torch's RNN_TANH with an identity input weight) runs on the CPU too.
    a = _randn(2, 5, 3, seed=6, dtype=torch.float64).requires_grad_()
    w = (0.7 * _randn(3, 3, seed=7, dtype=torch.float64)).requires_grad_()
    bias = _randn(3, seed=8, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(kernels.elman_rnn_tanh, (a, w, bias))


@pytest.mark.parametrize("t", [1, 2, 40])
def test_rnn_tanh_path_equals_fused_kernel(t: int) -> None:
    a = _randn(3, t, 4, seed=9).requires_grad_()
    w = (0.5 * _randn(4, 4, seed=10)).requires_grad_()
    bias = _randn(4, seed=11).requires_grad_()
    dy = _randn(3, t, 4, seed=12)
    y1 = kernels.elman_recurrence(a, w, bias)
    y2 = kernels.elman_rnn_tanh(a, w, bias)
    torch.testing.assert_close(y1, y2, rtol=0, atol=1e-6)
    for g1, g2 in zip(_grads(y1, [a, w, bias], dy), _grads(y2, [a, w, bias], dy), strict=True):
        _assert_close_scaled(g1, g2, 1e-5)
    with torch.no_grad():
        torch.testing.assert_close(kernels.elman_rnn_tanh(a, w, bias), y1, rtol=0, atol=1e-6)


def test_ieee_cudnn_rnn_scope_restores_the_flag() -> None:
    rnn = torch.backends.cudnn.rnn
    before = rnn.fp32_precision
    with kernels._ieee_cudnn_rnn():
        assert rnn.fp32_precision == "ieee"
        with kernels._ieee_cudnn_rnn():
            assert rnn.fp32_precision == "ieee"
        assert rnn.fp32_precision == "ieee"
    assert rnn.fp32_precision == before


def test_kernels_reject_mismatched_inputs() -> None:
    a = torch.zeros(1, 3, 2)
    with pytest.raises(ValueError, match="weight must have shape"):
        kernels.elman_recurrence(a, torch.zeros(3, 3), torch.zeros(2))
    with pytest.raises(ValueError, match="float32 or float64"):
        kernels.elman_recurrence(a, torch.zeros(2, 2, dtype=torch.float64), torch.zeros(2))
    z4 = torch.zeros(4)
    with pytest.raises(ValueError, match="4 \\* hidden"):
        kernels.lstm_recurrence(a, torch.zeros(6, 2), torch.zeros(6, 1), z4, z4)
    with pytest.raises(ValueError, match="weight_ih must have shape"):
        kernels.lstm_recurrence(a, torch.zeros(4, 3), torch.zeros(4, 1), z4, z4)
    with pytest.raises(ValueError, match="bias_hh must have shape"):
        kernels.lstm_recurrence(a, torch.zeros(4, 2), torch.zeros(4, 1), z4, torch.zeros(3))


# --- the networks: fused path == reference path ---------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_and_gradients_equal_reference(kind: str, shape: tuple[int, int, int]) -> None:
    b, t, h = shape
    model = build_model(kind, n_hidden=h, seed=b * 1000 + t)
    x = _randn(b, t, 2, seed=t).requires_grad_()
    dy = _randn(b, t, 1, seed=h)
    _assert_fast_equals_reference(model, x, dy)


@pytest.mark.parametrize("kind", KINDS)
def test_unused_parameters_get_no_gradient_as_in_the_reference(kind: str) -> None:
    # One step never reaches the Elman recurrence: hr's .grad must stay None (not zeros), or
    # Adam would keep moving hr on momentum where the reference leaves it alone.
    model = build_model(kind, seed=0)
    x = _randn(2, 1, 2, seed=0)
    model(x).sum().backward()
    fast = {n: p.grad is None for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    with reference_mode():
        model(x).sum().backward()
    assert fast == {n: p.grad is None for n, p in model.named_parameters()}
    a = torch.zeros(2, 1, 3, requires_grad=True)
    w, b = torch.zeros(3, 3, requires_grad=True), torch.zeros(3, requires_grad=True)
    kernels.elman_rnn_tanh(a, w, b).sum().backward()
    assert a.grad is not None and w.grad is None and b.grad is None


@pytest.mark.parametrize("kind", KINDS)
def test_float64_model_equals_reference(kind: str) -> None:
    model = build_model(kind, n_hidden=3, seed=0).double()
    x = _randn(2, 50, 2, seed=0, dtype=torch.float64)
    with reference_mode():
        y_ref = model(x)
    torch.testing.assert_close(model(x), y_ref, rtol=0, atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(model(x), y_ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("case", range(6))
def test_elman_layouts_give_the_same_bits(case: int) -> None:
    """The sequence-major and unit-major Elman kernels (one picked per group by its size) give
    the same bits: states, final state, dL/da and every gradient sum; from a sequence's start
    or mid-sequence, for a group that starts at the first member or a later one."""
    from models.kernels import elman as ek

    rng = np.random.default_rng(case)
    k, b = [(1, 1), (3, 4), (16, 3), (2, 5), (5, 2), (9, 1)][case]
    t = [1, 33, 70, 2, 64, 95][case]
    h = 1 + case % 5
    dt = np.float64 if case % 2 else np.float32
    n = k * b
    n0 = b if case == 3 else 0  # a group that starts at a later member
    n = n - n0

    def arr(*shape: int, scale: float = 1.0) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(dt)

    w, bias = arr(k, h, h, scale=0.7), arr(k, h)
    a, h0, dhs = arr(n, t, h), arr(n, h), arr(n, t, h)
    for start in (True, False):
        outs = []
        for fwd, bwd in ((ek._elman_forward, ek._elman_backward),
                         (ek._elman_forward_wide, ek._elman_backward_wide)):  # fmt: skip
            hcur, hs = h0.copy(), np.empty((n, t, h), dt)
            fwd(ek.ElmanForward(a=a, w=w, b=bias, n_batch=b, n0=n0, h=hcur, start=start, hs=hs))
            da = np.empty((n, t, h), dt)
            lw, lb = np.empty((n, h, h)), np.empty((n, h))
            bwd(ek.ElmanBackward(dhs=dhs, hs=hs, w=w, n_batch=b, n0=n0, da=da, lw=lw, lb=lb))
            outs.append([hcur, hs, da, lw, lb])
        for one, other in zip(*outs, strict=True):
            np.testing.assert_array_equal(one, other)
        assert np.isfinite(outs[0][1]).all() and np.abs(outs[0][2]).max() > 0
        assert t == 1 or np.abs(outs[0][3]).max() > 0  # (one step never uses W)


@pytest.mark.parametrize("kind", KINDS)
def test_inference_carries_state_across_time_chunks(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kernels, "INFERENCE_CHUNK_ELEMENTS", 40)  # chunks of a few steps
    model = build_model(kind, n_hidden=2, seed=3)
    x = _randn(3, 61, 2, seed=3)
    with torch.no_grad():
        y = model(x)
        with reference_mode():
            y_ref = model(x)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_reference_mode_bypasses_the_kernels(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object) -> None:
        raise AssertionError("a fused kernel ran inside reference_mode()")

    model = build_model(kind, seed=0)
    x = _randn(1, 5, 2, seed=0)
    for name in ("elman_recurrence", "lstm_recurrence", "elman_inference", "lstm_inference"):
        monkeypatch.setattr(kernels, name, fail)
    with reference_mode():
        model(x)
        with torch.no_grad():
            model(x)
        with reference_mode(False), pytest.raises(AssertionError, match="fused kernel"):
            model(x)
    with pytest.raises(AssertionError, match="fused kernel"):
        model(x)


@pytest.mark.parametrize("kind", KINDS)
def test_input_is_still_validated(kind: str) -> None:
    model = build_model(kind, seed=0)
    with pytest.raises(ValueError, match="features per step"):
        model(torch.zeros(1, 4, 3))
    with pytest.raises(ValueError, match="at least one sequence"):
        model(torch.zeros(1, 0, 2))


# --- prediction -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_ragged_predict_equals_reference(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_model(kind, n_hidden=3, seed=5)
    rng = np.random.default_rng(0)
    seqs = [rng.uniform(-1, 1, (n, 2)).astype(np.float32) for n in (1, 5, 300, 17, 1, 1000, 2)]
    with reference_mode():
        expected = predict(model, seqs)

    def no_autograd(*args: object) -> None:
        raise AssertionError("predict went through an autograd Function")

    monkeypatch.setattr(kernels.ElmanFunction, "apply", no_autograd)
    monkeypatch.setattr(kernels.LSTMFunction, "apply", no_autograd)
    got = predict(model, seqs)
    assert [g.shape for g in got] == [(len(s), 1) for s in seqs]
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_long_sequence_predict(kind: str) -> None:
    n = 200_000
    model = build_model(kind, seed=7)
    x = np.random.default_rng(1).uniform(-1, 1, (n, 2)).astype(np.float32)
    (y,) = predict(model, [x])
    assert y.shape == (n, 1) and np.isfinite(y).all()
    # Independent references: torch's fused RNN_TANH over the whole sequence for the Elman
    # network; nn.LSTM (35 µs a step here) over a prefix, which causality leaves unchanged.
    xt = torch.from_numpy(x)[None]
    with torch.no_grad():
        if kind == "elman":
            a = model.l1(xt)
            expected = model.l2(kernels.elman_rnn_tanh(a, model.hr.weight, model.hr.bias))
        else:
            with reference_mode():
                expected = model(xt[:, :20_000])
    np.testing.assert_allclose(y[: expected.shape[1]], expected[0].numpy(), rtol=0, atol=1e-5)


# --- training -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_training_losses_equal_reference(kind: str) -> None:
    config = TrainConfig(model=kind, epochs=3, n_sequences=6, seq_len=200, batch_size=3)
    splits = make_splits(config.seed, config.n_sequences, config.seq_len)
    fast_model = build_model(kind, seed=11)
    ref_model = build_model(kind, seed=11)
    fast = train(fast_model, splits, config)
    with reference_mode():
        ref = train(ref_model, splits, config)
    np.testing.assert_allclose(fast.train_loss, ref.train_loss, rtol=1e-4)
    np.testing.assert_allclose(fast.valid_loss, ref.valid_loss, rtol=1e-4)
    for p, q in zip(fast_model.parameters(), ref_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


# --- numba's compile cache ------------------------------------------------------------------


def _probe_module(tmp_path: Path) -> object:
    src = tmp_path / "pkg"
    src.mkdir(parents=True)
    path = src / "rnnlab_probe.py"
    path.write_text("def plus_one(x):\n    return x + 1\n")
    spec = importlib.util.spec_from_file_location("rnnlab_probe", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kernels_are_cached_per_version_of_their_sources(tmp_path: Path) -> None:
    # numba itself checks only the cached function's own file; an edit to any module of the
    # package (an intrinsic in simd.py) must lead to another cache directory.
    package = tmp_path / "kernels"
    package.mkdir()
    (package / "a.py").write_text("x = 1\n")
    (package / "b.py").write_text("y = 1\n")
    before = compile_module._sources_digest(str(package))
    (package / "b.py").write_text("y = 2\n")
    assert compile_module._sources_digest(str(package)) != before
    assert compile_module._sources_digest() in (compile_module._cache_dir() or "")


def test_cache_falls_back_to_a_private_temp_dir(tmp_path: Path) -> None:
    blocked = tmp_path / "pkg" / "__pycache__"  # a file: nothing can be created under it
    blocked.parent.mkdir()
    blocked.write_text("")
    fallback = tmp_path / "tmp" / f"rnnlab-numba-cache-{os.getuid()}" / "numba-1"
    candidates = [str(blocked / "numba-1"), str(fallback)]
    assert compile_module.usable_cache_dir(candidates) == str(fallback)
    assert fallback.parent.stat().st_mode & 0o777 == 0o700
    older = fallback.parent / "numba-0"  # an earlier version's cache is removed
    older.mkdir()
    assert compile_module.usable_cache_dir(candidates) == str(fallback)
    assert not older.exists()


def test_cache_refuses_a_shared_temp_dir(tmp_path: Path) -> None:
    planted = tmp_path / f"rnnlab-numba-cache-{os.getuid()}"
    planted.mkdir(mode=0o777)
    planted.chmod(0o777)  # anyone could have put compiled code here: do not load from it
    assert compile_module.usable_cache_dir([str(planted / "numba-1")]) is None
    assert not any(planted.iterdir())


def test_njit_caches_in_the_chosen_dir_or_compiles_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    where = tmp_path / "cache"
    monkeypatch.setattr(compile_module, "_cache_dir", lambda: str(where))
    fn = kernels._njit(_probe_module(tmp_path).plus_one)
    assert fn(1) == 2
    assert Path(fn._cache._cache_path).is_relative_to(where)
    assert any(Path(fn._cache._cache_path).iterdir())  # the compiled function was written
    assert numba_config.CACHE_DIR == ""  # the override was only around the decoration
    monkeypatch.setattr(compile_module, "_cache_dir", lambda: None)
    fn = kernels._njit(_probe_module(tmp_path / "again").plus_one)
    assert fn(1) == 2
    assert type(fn._cache).__name__ == "NullCache"


# --- CUDA (only where a GPU is present) -----------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 300, 2), (8, 50, 32)])
def test_cuda_forward_and_gradients_equal_reference(kind: str, shape: tuple[int, ...]) -> None:
    b, t, h = shape
    model = build_model(kind, n_hidden=h, seed=1).cuda()
    x = _randn(b, t, 2, seed=2).cuda().requires_grad_()
    dy = torch.randn(b, t, 1, device=x.device)
    _assert_fast_equals_reference(model, x, dy)
