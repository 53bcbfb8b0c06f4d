"""Fused recurrent kernels: the Elman and LSTM recurrences as compiled loops (CPU) and cuDNN (CUDA).

Why: with 2 hidden units, each time step is a handful of multiply-adds, so PyTorch's eager
per-step ops (dispatch, autograd bookkeeping, tiny allocations) cost 100× the arithmetic. Here
each recurrence is one numba-compiled loop over the whole sequence, forward and BPTT alike,
wrapped in a `torch.autograd.Function`. The Elman kernel is the recurrence only: its input
projection and read-out stay ordinary `nn.Linear` calls over whole sequences. The LSTM kernel
also does nn.LSTM's own input projection (x W_ih^T + b_ih + b_hh, a few multiply-adds a step
for 2 inputs) and returns gradients for x, W_ih, W_hh, b_ih and b_hh; its read-out (fc)
stays an nn.Linear.

Shapes: B batch, T time steps, I inputs, H hidden units, G = 4H LSTM gate rows (order i, f,
g, o as in `torch.nn.LSTM`). All arrays are C-contiguous; float32 and float64 are both
compiled (float64 for gradcheck), and each computes in its arrays' type (float32 fills 8 lanes
of an AVX2 vector, float64 4), with the gradients' sums over time in float64. No loop runs
in parallel threads: see `_njit` for why not `prange` (the LSTM loops do a step's whole batch
at once, vectorized, instead).

A population of K members (independent networks of one kind, trained side by side on the
same batches) is one more leading dimension of the weights and outputs: `elman_population`,
`lstm_population` and their `_inference` forms. The single-network functions are the K = 1
case of the same kernels.

Files: `compile.py` (numba's disk cache, the vectorizable exp), `elman.py`, `lstm.py`,
`cuda.py` (cuDNN's RNN_TANH for the Elman network on CUDA), `glue.py` (checks shared by the
torch wrappers, the sequence groups' threads, the read-out computed inside the recurrence
kernels' time loops), `loss.py` (a training batch's whole pass: projection, recurrence,
read-out, error and their backward, as an autograd Function and, for `models.train`, without
autograd: `*_population_grads`; the validation pass, `population_sse`), `adam.py` (Adam as
one compiled loop per parameter, what `models.train` steps on the CPU).

Compiled code is cached on disk (numba's `cache=True`), so a process compiles a kernel once at
its first call, or just loads it when an earlier process has already compiled it.
"""

from __future__ import annotations

import torch

from models.kernels import lanes
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
from models.kernels.loss import (
    elman_population_grads,
    elman_population_mse,
    lstm_population_grads,
    lstm_population_mse,
    population_sse,
)
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
    "elman_population_grads",
    "elman_population_inference",
    "elman_population_mse",
    "elman_recurrence",
    "elman_rnn_tanh",
    "get_threads",
    "lanes",
    "lstm_inference",
    "lstm_population",
    "lstm_population_grads",
    "lstm_population_inference",
    "lstm_population_mse",
    "lstm_recurrence",
    "population_sse",
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
