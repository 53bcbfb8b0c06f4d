"""A trained network as an ONNX model: a standard graph any ONNX runtime can run.

The graph is written node by node with `onnx.helper` from the network's weights, not traced
by `torch.onnx`, so a change in PyTorch's exporters cannot change it, and it uses only
standard operators of opset `OPSET` (17). The same weights always give the same bytes.

- Input `x`: float32 [batch, time, n_input]; output `y`: float32 [batch, time, n_out], the
  output of every step. `batch` and `time` are symbolic: one file serves any batch and length.
- LSTM: one ONNX `LSTM` node (PyTorch's gates i, f, g, o reordered to ONNX's i, o, f, c; both
  biases in `B`), then the read-out `fc` as MatMul + Add.
- Elman: one ONNX `RNN` node (tanh), then `l2` as MatMul + Add. The network's first step is
  tanh(l1(x_0)), without hr's bias, where the RNN node would add its recurrence bias at every
  step; so the node gets one more input feature, 0 at step 0 and 1 after, whose input weight
  is hr's bias (W = [l1.weight | hr.bias], B = [l1.bias, 0]).
- The recurrent node runs with `layout` 0 (time first), the layout every runtime implements
  (onnxruntime's CPU kernels refuse layout 1): `x` is transposed on the way in, `y` on the way
  out.

There is no lengths input: every sequence of a batch runs for `time` steps. The networks are
causal, so a sequence padded at its end gets its own outputs at its own steps; the outputs
past its end are to be ignored.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from models.networks import ElmanRNN, LSTMModel

OPSET = 17  # the default ONNX domain's version the graph is written for
IR_VERSION = 8  # the oldest file format opset 17 allows, for older runtimes' sake
INPUT, OUTPUT = "x", "y"
BATCH, TIME = "batch", "time"  # the symbolic dimensions of the input and the output

# PyTorch's LSTM gate blocks are i, f, g, o; ONNX's are i, o, f, c (c is PyTorch's g).
_LSTM_GATES = (0, 3, 1, 2)


def _array(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().to("cpu", torch.float32).numpy())


def _tensor(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(value), name)


def _lstm_gates(w: np.ndarray, n_hidden: int) -> np.ndarray:
    """PyTorch's [4H, ...] gate blocks (i, f, g, o) in ONNX's order (i, o, f, c)."""
    return np.concatenate([w[g * n_hidden : (g + 1) * n_hidden] for g in _LSTM_GATES])


def _lstm(model: LSTMModel) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """One LSTM node from `x_tbi` [T, B, I] to `h` [T, 1, B, H]."""
    n_hidden = model.n_hidden
    p = {name: _array(t) for name, t in model.lstm.named_parameters()}
    w_ih, w_hh, b_ih, b_hh = p["weight_ih_l0"], p["weight_hh_l0"], p["bias_ih_l0"], p["bias_hh_l0"]
    weights = [
        _tensor("lstm_W", _lstm_gates(w_ih, n_hidden)[None]),  # [1, 4H, I]
        _tensor("lstm_R", _lstm_gates(w_hh, n_hidden)[None]),  # [1, 4H, H]
        # [1, 8H]: the input bias, then the recurrent one, ONNX adds both at every step
        _tensor("lstm_B", np.concatenate([_lstm_gates(b, n_hidden) for b in (b_ih, b_hh)])[None]),
    ]
    node = helper.make_node(
        "LSTM",
        ["x_tbi", "lstm_W", "lstm_R", "lstm_B"],
        ["h"],
        hidden_size=n_hidden,
        direction="forward",
        layout=0,
    )
    return [node], weights


def _elman(model: ElmanRNN) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The feature `after` (0 at step 0, 1 after) and one RNN node, from `x_tbi` [T, B, I] to
    `h` [T, 1, B, H]."""
    n_hidden = model.n_hidden
    w = np.concatenate([_array(model.l1.weight), _array(model.hr.bias)[:, None]], axis=1)
    b = np.concatenate([_array(model.l1.bias), np.zeros(n_hidden, dtype=np.float32)])
    weights = [
        _tensor("rnn_W", w[None]),  # [1, H, I + 1]: l1's weight, then hr's bias
        _tensor("rnn_R", _array(model.hr.weight)[None]),  # [1, H, H]
        _tensor("rnn_B", b[None]),  # [1, 2H]: l1's bias, then zeros (hr's bias is in rnn_W)
        _tensor("zero", np.array(0, dtype=np.int64)),
        _tensor("one", np.array(1, dtype=np.int64)),
        _tensor("one_1d", np.array([1], dtype=np.int64)),
        _tensor("after_axes", np.array([1, 2], dtype=np.int64)),
    ]
    nodes = [
        helper.make_node("Shape", ["x_tbi"], ["steps_1d"], start=0, end=1),  # [T]
        helper.make_node("Shape", ["x_tbi"], ["steps_batch"], start=0, end=2),  # [T, B]
        helper.make_node("Squeeze", ["steps_1d"], ["steps"]),  # T
        helper.make_node("Range", ["zero", "steps", "one"], ["step"]),  # [T]: 0, 1, …, T-1
        helper.make_node("Greater", ["step", "zero"], ["after_bool"]),  # [T]
        helper.make_node("Cast", ["after_bool"], ["after_t"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["after_t", "after_axes"], ["after_t11"]),  # [T, 1, 1]
        helper.make_node("Concat", ["steps_batch", "one_1d"], ["after_shape"], axis=0),
        helper.make_node("Expand", ["after_t11", "after_shape"], ["after"]),  # [T, B, 1]
        helper.make_node("Concat", ["x_tbi", "after"], ["x_rnn"], axis=2),  # [T, B, I + 1]
        helper.make_node(
            "RNN",
            ["x_rnn", "rnn_W", "rnn_R", "rnn_B"],
            ["h"],
            hidden_size=n_hidden,
            activations=["Tanh"],
            direction="forward",
            layout=0,
        ),
    ]
    return nodes, weights


def to_onnx(model: nn.Module) -> onnx.ModelProto:
    """The network as a checked ONNX model: `x` [batch, time, n_input] → `y` [batch, time,
    n_out], float32, the network's outputs at every step (see the module's docstring)."""
    if isinstance(model, LSTMModel):
        kind = "lstm"
        nodes, weights = _lstm(model)
        readout = model.fc
    elif isinstance(model, ElmanRNN):
        kind = "elman"
        nodes, weights = _elman(model)
        readout = model.l2
    else:
        raise ValueError(f"model must be an ElmanRNN or an LSTMModel, got {type(model).__name__}")
    weights += [
        _tensor("readout_W", _array(readout.weight).T),  # [H, O]
        _tensor("readout_b", _array(readout.bias)),  # [O]
        _tensor("direction_axis", np.array([1], dtype=np.int64)),
    ]
    nodes = [
        helper.make_node("Transpose", [INPUT], ["x_tbi"], perm=[1, 0, 2]),  # [T, B, I]
        *nodes,  # → h [T, 1, B, H] (the recurrent node's Y: one direction)
        helper.make_node("Squeeze", ["h", "direction_axis"], ["h_tbh"]),  # [T, B, H]
        helper.make_node("MatMul", ["h_tbh", "readout_W"], ["y_tbo_w"]),  # [T, B, O]
        helper.make_node("Add", ["y_tbo_w", "readout_b"], ["y_tbo"]),
        helper.make_node("Transpose", ["y_tbo"], [OUTPUT], perm=[1, 0, 2]),  # [B, T, O]
    ]
    graph = helper.make_graph(
        nodes,
        f"rnnlab_{kind}",
        [
            helper.make_tensor_value_info(
                INPUT,
                TensorProto.FLOAT,
                [BATCH, TIME, model.n_input],
                doc_string="per step: the value in [-1, 1], the marker in {-1, 0, 1}",
            )
        ],
        [
            helper.make_tensor_value_info(
                OUTPUT,
                TensorProto.FLOAT,
                [BATCH, TIME, model.n_out],
                doc_string="the network's output at every step",
            )
        ],
        initializer=weights,
    )
    onnx_model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="rnnlab",
        doc_string=f"rnnlab {kind} network, hidden size {model.n_hidden}: y[b, t] is the "
        f"network's output after x[b, 0..t]",
    )
    helper.set_model_props(
        onnx_model, {"rnnlab.model": kind, "rnnlab.hidden_size": str(model.n_hidden)}
    )
    onnx.checker.check_model(onnx_model, full_check=True)
    return onnx_model


def onnx_bytes(model: nn.Module) -> bytes:
    """`to_onnx(model)` serialised: the file's bytes, the same for the same weights."""
    return to_onnx(model).SerializeToString()
