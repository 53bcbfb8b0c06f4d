"""Compiled recurrent kernels: the Elman and LSTM networks as numba loops (CPU), cuDNN (CUDA).

Why: with a few hidden units, each time step is a handful of multiply-adds, so PyTorch's eager
per-step ops (dispatch, autograd bookkeeping, tiny allocations) cost 100× the arithmetic.

Two families, by what they serve:

- `lanes` and `rows` (with `simd`): the fused training path (`models.paths.FusedPath`,
  which `models.chooser` picks per shape against torch's own layers) and `model(x)` without
  autograd on the CPU (`lanes.predict_network`; `models.predict` may take torch's layers
  instead, as `models.chooser.predict_path` prices them). Explicit 8-lane vectors
  (`simd.Vec`, LLVM vectors): `lanes` puts one sequence per lane, so a step is a few dozen
  vector instructions per group of 8 sequences; `rows` puts one sequence's gate rows per
  vector, for small batches of larger networks. The input projection and the read-out run
  inside: an epoch (forward, read-out, backward, Adam for every batch) is one compiled
  call per range of members, and the validation and inference passes keep two steps of
  state. Small sizes are compiled in (`lanes.size_tag`).
- `lstm`, `elman` (with `glue`): the recurrences alone as `torch.autograd.Function`s, for
  `model(x)` with autograd on the CPU (`LSTMFunction`, `ElmanFunction`) and for populations
  (`models.population`: `lstm_population`, `elman_population`, and without autograd their
  chunked inference). Around them the layers stay torch's: the Elman input projection and
  both read-outs are torch ops (nn.Linear in the networks, baddbmm in `Population`); the
  LSTM's input projection runs inside its kernel. Each recurrence kernel takes its arrays
  as one record (`ElmanForward`, `LSTMBackward`, …), built by keyword (`glue.Record`).

`cuda.py`: cuDNN's RNN_TANH for the Elman network on CUDA (nn.LSTM is cuDNN's already).
`adam.py`: Adam as one compiled loop per parameter (torch's algorithm): the optimizer
`models.training.make_optimizer` gives CPU parameters, which the torch path steps (the
fused path runs the same algorithm inside the lane kernels, on that optimizer's state).
`compile.py`: numba's disk cache (one directory per version of these sources) and the
branch-free, vectorizable exp. tests/models/golden holds every kernel's outputs and
gradients on fixed inputs, bit for bit.

Shapes: B batch, T time steps, I inputs, H hidden units, G = 4H LSTM gate rows (order i, f,
g, o as in `torch.nn.LSTM`). Each kernel is compiled for float32 (the models' type) and
float64 (gradcheck, float64 models) on first use (`warm_up`: the autograd family's now),
and computes in its arrays' type; sums over time go into float64 (in `lanes` and `rows`
after partial sums over 32 steps in the arrays' type). No kernel uses numba's parallel
loops (`compile._njit` says why): the compiled loops release the GIL and their callers
spread the work over Python threads (`glue.run_groups`), `lstm` and `elman` a pass's
sequences in groups (`set_threads`), `models.paths` the members in ranges. Results do not
depend on the number of threads.
"""

from __future__ import annotations

import torch

from models.kernels import lanes, rows
from models.kernels.compile import _njit
from models.kernels.cuda import _ieee_cudnn_rnn, elman_rnn_tanh
from models.kernels.elman import (
    ElmanFunction,
    elman_inference,
    elman_population,
    elman_population_inference,
    elman_recurrence,
)
from models.kernels.glue import DTYPES, get_threads, set_threads
from models.kernels.lstm import (
    LSTMFunction,
    lstm_inference,
    lstm_population,
    lstm_population_inference,
    lstm_recurrence,
)

__all__ = [
    "DTYPES",
    "INFERENCE_CHUNK_ELEMENTS",
    "ElmanFunction",
    "LSTMFunction",
    "_ieee_cudnn_rnn",
    "_njit",
    "chunk_steps",
    "elman_inference",
    "elman_population",
    "elman_population_inference",
    "elman_recurrence",
    "elman_rnn_tanh",
    "get_threads",
    "lanes",
    "lstm_inference",
    "lstm_population",
    "lstm_population_inference",
    "lstm_recurrence",
    "rows",
    "set_threads",
    "warm_up",
]

# Inference runs over time in chunks of about this many B×G elements, so memory stays
# proportional to the input and output, never to the per-step gates (see `chunk_steps`).
INFERENCE_CHUNK_ELEMENTS = 1 << 20


def chunk_steps(batch: int, width: int) -> int:
    """Time steps per inference chunk so one chunk holds ~INFERENCE_CHUNK_ELEMENTS values."""
    return max(1, INFERENCE_CHUNK_ELEMENTS // max(1, batch * width))


def warm_up() -> None:
    """Compile (or load from the disk cache) every kernel for float32 and float64 now."""
    for dtype in DTYPES:
        a = torch.zeros(1, 2, 1, dtype=dtype, requires_grad=True)
        w = torch.zeros(1, 1, dtype=dtype, requires_grad=True)
        b = torch.zeros(1, dtype=dtype, requires_grad=True)
        elman_recurrence(a, w, b).sum().backward()
        x = torch.zeros(1, 2, 2, dtype=dtype, requires_grad=True)
        w_ih = torch.zeros(4, 2, dtype=dtype, requires_grad=True)
        w_hh = torch.zeros(4, 1, dtype=dtype, requires_grad=True)
        b4 = torch.zeros(4, dtype=dtype, requires_grad=True)
        lstm_recurrence(x, w_ih, w_hh, b4, b4).sum().backward()  # with dx
        lstm_recurrence(x.detach(), w_ih, w_hh, b4, b4).sum().backward()  # without
        with torch.no_grad():
            elman_inference(a, w, b, torch.zeros(1, 1, dtype=dtype), True)
            z = torch.zeros(1, 1, dtype=dtype)
            lstm_inference(x, w_ih, w_hh, b4, b4, z, z.clone())
