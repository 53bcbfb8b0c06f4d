"""models.export: the ONNX graph, checked, with symbolic dimensions, run by onnxruntime and
compared with the networks' own forward passes at every length."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import models
from models import build_model, build_population
from models.export import BATCH, INPUT, OPSET, OUTPUT, TIME, onnx_bytes, to_onnx

KINDS = ("elman", "lstm")
HIDDEN = (1, 2, 16, 64)
# Batch and length: one step, a short and a long sequence, then a batch at a length the
# session has not run before.
SHAPES = ((1, 1), (1, 50), (4, 3000), (3, 777))
ATOL = 1e-5


def session(data: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # the machine's cores are shared; one is plenty here
    options.inter_op_num_threads = 1
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, x: torch.Tensor) -> np.ndarray:
    (y,) = sess.run([OUTPUT], {INPUT: x.numpy()})
    return y


def inputs(batch: int, steps: int, seed: int) -> torch.Tensor:
    """Adding-problem inputs: a value in [-1, 1] and a marker in {-1, 0, 1} per step."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, steps, 2, generator=g) * 2 - 1
    x[:, :, 1] = torch.randint(-1, 2, (batch, steps), generator=g).float()
    return x


def references(model: torch.nn.Module, x: torch.Tensor) -> dict[str, np.ndarray]:
    """The network's outputs by each of its paths: the specification, `model(x)` without
    autograd (the compiled kernels on the CPU) and `models.predict` (what /predict runs)."""
    with torch.no_grad():
        ref = model.forward_reference(x).numpy()
        fast = model(x).numpy()
    predicted = np.stack(models.predict(model, list(x.numpy())))
    return {"forward_reference": ref, "forward": fast, "predict": predicted}


def assert_matches(model: torch.nn.Module, y: np.ndarray, x: torch.Tensor) -> None:
    assert y.dtype == np.float32 and y.shape == (x.shape[0], x.shape[1], 1)
    for name, want in references(model, x).items():
        np.testing.assert_allclose(y, want, rtol=0, atol=ATOL, err_msg=name)


@pytest.mark.parametrize("n_hidden", HIDDEN)
@pytest.mark.parametrize("kind", KINDS)
def test_onnxruntime_equals_the_network_at_every_length(kind: str, n_hidden: int) -> None:
    model = build_model(kind, n_hidden=n_hidden, seed=100 + n_hidden).eval()
    sess = session(onnx_bytes(model))  # one session for every shape: the dims are dynamic
    for i, (batch, steps) in enumerate(SHAPES):
        x = inputs(batch, steps, seed=i)
        assert_matches(model, run(sess, x), x)


@pytest.mark.parametrize("kind", KINDS)
def test_large_weights_and_biases_are_placed_right(kind: str) -> None:
    """Weights far from the initial ranges, every bias large: a swapped gate, a bias added
    twice or at the wrong step would show at once."""
    model = build_model(kind, n_hidden=3, seed=5).eval()
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    x = inputs(2, 40, seed=7)
    assert_matches(model, run(session(onnx_bytes(model)), x), x)


def test_elman_first_step_has_no_recurrent_bias() -> None:
    """h_0 = tanh(l1(x_0)): the RNN node must not add hr's bias at step 0, and must after."""
    model = build_model("elman", n_hidden=2, seed=3).eval()
    with torch.no_grad():
        model.hr.bias.fill_(2.0)
        model.hr.weight.zero_()
    x = inputs(2, 3, seed=8)
    y = run(session(onnx_bytes(model)), x)
    with torch.no_grad():
        first = model.l2(torch.tanh(model.l1(x[:, 0])))
        later = model.l2(torch.tanh(model.l1(x[:, 1:]) + 2.0))
    np.testing.assert_allclose(y[:, 0], first.numpy(), rtol=0, atol=ATOL)
    np.testing.assert_allclose(y[:, 1:], later.numpy(), rtol=0, atol=ATOL)


@pytest.mark.parametrize("kind", KINDS)
def test_graph_is_checked_standard_and_dynamic(kind: str) -> None:
    m = to_onnx(build_model(kind, n_hidden=4, seed=1))
    onnx.checker.check_model(m, full_check=True)
    assert [(o.domain, o.version) for o in m.opset_import] == [("", OPSET)]
    ops = [n.op_type for n in m.graph.node]
    assert ops.count({"elman": "RNN", "lstm": "LSTM"}[kind]) == 1
    assert {"Scan", "Loop", "If"}.isdisjoint(ops)
    for value, width in ((m.graph.input, 2), (m.graph.output, 1)):
        assert len(value) == 1
        t = value[0].type.tensor_type
        assert t.elem_type == onnx.TensorProto.FLOAT
        dims = [d.dim_param or d.dim_value for d in t.shape.dim]
        assert dims == [BATCH, TIME, width]
    assert [i.name for i in m.graph.input] == [INPUT]
    assert [o.name for o in m.graph.output] == [OUTPUT]
    props = {p.key: p.value for p in m.metadata_props}
    assert props == {"rnnlab.model": kind, "rnnlab.hidden_size": "4"}


@pytest.mark.parametrize("kind", KINDS)
def test_same_weights_same_bytes(kind: str) -> None:
    a, b = build_model(kind, seed=1), build_model(kind, seed=1)
    assert onnx_bytes(a) == onnx_bytes(b)
    assert onnx_bytes(a) != onnx_bytes(build_model(kind, seed=2))


def test_refuses_other_modules() -> None:
    with pytest.raises(ValueError, match="ElmanRNN or an LSTMModel"):
        to_onnx(torch.nn.Linear(2, 1))


@pytest.mark.parametrize("kind", KINDS)
def test_a_population_member_exports_as_itself(kind: str) -> None:
    pop = build_population(kind, seed=4, size=3, n_hidden=5)
    x = inputs(2, 60, seed=9)
    with torch.no_grad():
        every = pop(x).numpy()  # [K, B, T, 1]
    for position in range(pop.size):
        y = run(session(onnx_bytes(pop.member(position))), x)
        np.testing.assert_allclose(y, every[position], rtol=0, atol=ATOL)
