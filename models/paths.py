"""Training paths: the same epoch (Adam steps over fixed-order batches, then the validation MSE)
computed two ways, so that every size trains on whichever is faster here.

- "fused" (CPU): `models.kernels.lanes` (one sequence per vector lane) or, for small batches
  of larger networks, `models.kernels.rows` (one sequence's gate rows per vector); an epoch
  of forward, backward and Adam steps is one compiled call per thread. Far ahead at small
  hidden sizes, where each step is a few dozen instructions and torch's per-step dispatch
  dominates.
- "torch": torch's own fused recurrent layers per member, autograd, and the same Adam
  (`models.training.make_optimizer`). The LSTM is `torch.nn.LSTM`'s kernel (oneDNN on the
  CPU, cuDNN on CUDA); the Elman network runs as the one `nn.RNN` (tanh) it equals: an extra
  input that is 0 at step 0 and 1 after carries hr's bias, so step 0 is tanh(l1(x_0)) exactly.
  Ahead at large hidden sizes, where the per-step products are matrix products.

`models.chooser` picks one per shape; both give each member the losses and gradients of the
reference (`forward_reference`) within float32 rounding, and each is reproducible bit for bit
for a given thread count of the fused path's sequence groups (its results do not depend on
it) and a given torch build.

A path trains a `Population` in place: `train_epoch` steps the parameters and the optimizer's
state (torch's keys: step, exp_avg, exp_avg_sq) and returns each member's mean training loss;
`validate` returns each member's validation MSE. Members keep their dimension on both paths.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np
import torch
from torch import nn

from models import kernels
from models.kernels import glue, lanes, rows
from models.kernels.cuda import _ieee_cudnn_rnn
from models.population import Population

PATHS = ("fused", "torch")

# Parameter names in the lane kernels' order (`lanes.Params`: w_in, b_in, w_rec, b_rec,
# w_out, b_out).
LANE_ORDER = {
    "lstm": (
        "lstm.weight_ih_l0",
        "lstm.bias_ih_l0",
        "lstm.weight_hh_l0",
        "lstm.bias_hh_l0",
        "fc.weight",
        "fc.bias",
    ),
    "elman": ("l1.weight", "l1.bias", "hr.weight", "hr.bias", "l2.weight", "l2.bias"),
}
# Inputs packed per lane when they take at most this (per split and member count): plain
# vector loads instead of a gather per lane and step. Beyond it the kernels gather.
PACK_BUDGET = 256 << 20
# Sequences of one validation pass (its workspace keeps two steps of state for each): lanes
# of all members, rows of one member.
VALID_LANES = 512
VALID_ROWS = 64
LAYOUTS = ("lanes", "rows")


def even_ranges(n: int, parts: int) -> list[tuple[int, int]]:
    """[a, b) ranges splitting 0 … n-1 (members, rows) into at most `parts`, as even as
    possible."""
    parts = max(1, min(parts, n))
    edges = [round(i * n / parts) for i in range(parts + 1)]
    return [(edges[i], edges[i + 1]) for i in range(parts)]


def _adam_state(optimizer: Any, p: torch.Tensor) -> dict[str, Any]:
    """The optimizer's state for p, created (step 0, zero moments) if it has none yet."""
    state = optimizer.state.setdefault(p, {})
    if not state:
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
    return state


def _flat(t: torch.Tensor) -> np.ndarray:
    return t.detach().view(t.shape[0], -1).numpy()


class ValidationRun:
    """A validation pass, running in a pool thread (`pending`) or already done: `result()`
    gives each member's MSE; `weights` are the parameters it validated (copies when it runs
    beside the next epoch's training, which changes the population's own)."""

    def __init__(self, future: Future[list[float]] | None, losses: list[float] | None,
                 weights: list[torch.Tensor]) -> None:  # fmt: skip
        self._future, self._losses, self.weights = future, losses, weights

    @property
    def pending(self) -> bool:
        return self._future is not None

    def result(self) -> list[float]:
        if self._losses is None:
            assert self._future is not None
            self._losses = self._future.result()
        return self._losses


class FusedPath:
    """Training on the CPU with rnnlab's compiled kernels, in one of two layouts: "lanes"
    (`models.kernels.lanes`, one sequence per vector lane: small sizes, or many sequences)
    or "rows" (`models.kernels.rows`, one sequence's pre-activation rows per vector: a few
    sequences of a larger network). `models.chooser.plan` picks one per shape."""

    name = "fused"

    def __init__(
        self,
        pop: Population,
        X: torch.Tensor,
        T: torch.Tensor,
        Xv: torch.Tensor,
        Tv: torch.Tensor,
        batch_size: int,
        layout: str = "lanes",
    ) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}; got {layout!r}")
        self.layout = layout
        self.kind = lanes.KINDS[pop.kind]
        self.dims = (pop.n_input, pop.n_hidden, pop.n_out)
        self.shape = tuple(lanes.size_tag(n) for n in self.dims)
        self.order = LANE_ORDER[pop.kind]
        self.splits = {"train": (X, T), "valid": (Xv, Tv)}
        self.batch_size = min(batch_size, X.shape[0])
        self.n_steps = X.shape[1]
        self.dtype = X.dtype
        # An Elman network of one step never uses hr: no gradient, as the reference.
        self.used = np.ones(6, dtype=np.bool_)
        self.used[2] = self.used[3] = pop.kind == "lstm" or self.n_steps > 1
        self._data: dict[tuple[str, int], lanes.Data] = {}
        self._workspaces: dict[tuple[str, int, int], lanes.Workspace | rows.Workspace] = {}
        module: Any = lanes if layout == "lanes" else rows
        lstm = self.kind == lanes.LSTM
        self._epoch = module.lstm_epoch if lstm else module.elman_epoch
        self._sse = module.lstm_sse if lstm else module.elman_sse
        self._numpy = {k: (x.numpy(), t.numpy()) for k, (x, t) in self.splits.items()}

    @contextlib.contextmanager
    def threads(self) -> Iterator[None]:
        """The kernels run in their own threads (`glue`): nothing to set."""
        yield

    @staticmethod
    def supports(pop: Population, X: torch.Tensor) -> bool:
        """CPU float32/float64 parameters and data of one dtype."""
        return (
            X.device.type == "cpu"
            and X.dtype in kernels.DTYPES
            and all(
                p.device.type == "cpu" and p.dtype == X.dtype and p.is_contiguous()
                for p in pop.parameters()
            )
        )

    def _data_for(self, split: str, n_members: int) -> lanes.Data:
        key = (split, n_members)
        if key not in self._data:
            x, t = self.splits[split]
            rows = (
                self.batch_size
                if split == "train"
                else max(1, min(x.shape[0], VALID_LANES // n_members))
            )
            self._data[key] = lanes.make_data(x.numpy(), t.numpy(), rows, n_members, PACK_BUDGET)
        return self._data[key]

    def _workspace(self, split: str, n_members: int, slot: int) -> Any:
        """A workspace per concurrently running range (`slot`) and member count."""
        key = (split, n_members, slot)
        if key not in self._workspaces and self.layout == "rows":
            x = self.splits[split][0]
            n_seq = self.batch_size if split == "train" else min(x.shape[0], VALID_ROWS)
            steps = self.n_steps if split == "train" else 2
            self._workspaces[key] = rows.workspace(
                self.kind, *self.dims, n_seq, steps, self.dtype_np
            )
        if key not in self._workspaces:
            data = self._data_for(split, n_members)
            lanes_per_pass = n_members * min(data.rows_per_pass, data.xt.shape[2])
            steps = self.n_steps if split == "train" else 2
            n_groups = -(-lanes_per_pass // lanes.L)
            self._workspaces[key] = lanes.workspace(
                self.kind, *self.dims, n_groups, steps, self.dtype_np
            )
        return self._workspaces[key]

    def _params(self, pop: Population) -> tuple[list[nn.Parameter], lanes.Params]:
        ps = [pop.param(n) for n in self.order]
        return ps, lanes.Params(*(_flat(p) for p in ps))

    def train_epoch(self, pop: Population, optimizer: Any, lr: float, clip: float) -> list[float]:
        """One epoch for every member (each thread its range of members): parameters and
        Adam's state updated in place; each member's mean training loss."""
        ps, params = self._params(pop)
        states = [_adam_state(optimizer, p) for p in ps]
        moments1 = lanes.Params(*(_flat(s["exp_avg"]) for s in states))
        moments2 = lanes.Params(*(_flat(s["exp_avg_sq"]) for s in states))
        steps = np.array([s["step"] for s in states], dtype=np.int64)
        (beta1, beta2), eps = optimizer.param_groups[0]["betas"], optimizer.param_groups[0]["eps"]
        hp = lanes.AdamConfig(
            lr=float(lr), beta1=float(beta1), beta2=float(beta2), eps=float(eps), clip=float(clip)
        )
        losses = np.zeros(pop.size)
        ranges = even_ranges(pop.size, kernels.get_threads())

        def run(m0: int, m1: int) -> None:
            slot = ranges.index((m0, m1))
            ws = self._workspace("train", m1 - m0, slot)
            # By keyword: params and Adam's two moments are records of one type.
            if self.layout == "rows":
                x, t = self._numpy["train"]
                self._epoch(
                    shape=self.shape, x=x, target=t, batch_size=self.batch_size, m0=m0, m1=m1,
                    params=params, moments1=moments1, moments2=moments2, steps=steps, hp=hp,
                    used=self.used, ws=ws, losses=losses,
                )  # fmt: skip
            else:
                self._epoch(
                    shape=self.shape, data=self._data_for("train", m1 - m0), m0=m0, m1=m1,
                    params=params, moments1=moments1, moments2=moments2, steps=steps, hp=hp,
                    used=self.used, ws=ws, losses=losses,
                )  # fmt: skip

        glue.run_groups(run, ranges)
        n_batches = -(-self.splits["train"][0].shape[0] // self.batch_size)
        for state, used in zip(states, self.used, strict=True):
            if used:
                state["step"] += n_batches
        return losses.tolist()

    def _validate(self, params: lanes.Params, n_members: int, ranges: Sequence[tuple[int, int]],
                  slot0: int) -> list[float]:  # fmt: skip
        out = np.zeros(n_members)

        def run(m0: int, m1: int) -> None:
            slot = slot0 + list(ranges).index((m0, m1))
            ws = self._workspace("valid", m1 - m0, slot)
            if self.layout == "rows":
                x, t = self._numpy["valid"]
                self._sse(shape=self.shape, x=x, target=t, m0=m0, m1=m1, params=params, ws=ws,
                          out=out)  # fmt: skip
            else:
                data = self._data_for("valid", m1 - m0)
                self._sse(shape=self.shape, data=data, m0=m0, m1=m1, params=params, ws=ws,
                          out=out)  # fmt: skip

        if len(ranges) == 1:
            run(*ranges[0])
        else:
            glue.run_groups(run, list(ranges))
        count = self.splits["valid"][1].numel()
        # Reported at the data's precision like the training loss: a mean beyond float32's
        # range is inf (a diverged member), not a finite 1e40.
        return [float(np.array(v / count, dtype=self.dtype_np)) for v in out]

    @property
    def dtype_np(self) -> Any:
        return np.float32 if self.dtype == torch.float32 else np.float64

    def validate(self, pop: Population, *, beside_training: bool = False) -> ValidationRun:
        """Each member's validation MSE; with beside_training (one member and a spare
        thread), on a copy of the weights in a pool thread, while the caller trains on."""
        if beside_training and pop.size == 1 and kernels.get_threads() > 1:
            weights = [p.detach().clone() for p in pop.params]
            named = dict(zip(pop.names, weights, strict=True))
            copy = lanes.Params(*(_flat(named[n]) for n in self.order))
            future = glue.submit(lambda: self._validate(copy, 1, [(0, 1)], slot0=1))
            return ValidationRun(future, None, weights)
        _, params = self._params(pop)
        ranges = even_ranges(pop.size, kernels.get_threads())
        return ValidationRun(None, self._validate(params, pop.size, ranges, 0), list(pop.params))


# --- torch's own layers ------------------------------------------------------------------------


def _elman_as_rnn(x: torch.Tensor) -> torch.Tensor:
    """x [B, T, I] with one more input per step: 0 at step 0, 1 after (hr's bias's carrier)."""
    step = torch.ones(*x.shape[:2], 1, dtype=x.dtype, device=x.device)
    step[:, 0] = 0
    return torch.cat([x, step], dim=2)


def torch_forward(kind: str, weights: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """y [B, T, O] of one network from its weights (plain names) through torch's fused
    recurrent layer: nn.LSTM's kernel, or the Elman network as one nn.RNN (tanh)."""
    n_batch = x.shape[0]
    if kind == "lstm":
        w = [weights[f"lstm.{n}_l0"] for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        h0 = x.new_zeros(1, n_batch, w[1].shape[1])
        out, _, _ = torch._VF.lstm(x, (h0, h0), w, True, 1, 0.0, torch.is_grad_enabled(),
                                   False, True)  # fmt: skip
        return nn.functional.linear(out, weights["fc.weight"], weights["fc.bias"])
    w1, b1 = weights["l1.weight"], weights["l1.bias"]
    wr, br = weights["hr.weight"], weights["hr.bias"]
    w_ih = torch.cat([w1, br.unsqueeze(1)], dim=1)  # [H, I + 1]: hr's bias on the step input
    h0 = x.new_zeros(1, n_batch, wr.shape[0])
    # On CUDA cuDNN may round float32 to TF32 where the reference (nn.Linear) does not.
    precision = _ieee_cudnn_rnn() if x.device.type == "cuda" else contextlib.nullcontext()
    with precision:
        out, _ = torch._VF.rnn_tanh(
            _elman_as_rnn(x), h0, (w_ih, wr, b1, torch.zeros_like(b1)),
            True, 1, 0.0, torch.is_grad_enabled(), False, True,
        )  # fmt: skip
    return nn.functional.linear(out, weights["l2.weight"], weights["l2.bias"])


def population_forward(pop: Population, x: torch.Tensor) -> torch.Tensor:
    """y [K, B, T, O]: every member through `torch_forward`."""
    return torch.stack(
        [
            torch_forward(
                pop.kind, {n: p[m] for n, p in zip(pop.names, pop.params, strict=True)}, x
            )
            for m in range(pop.size)
        ]
    )


_torch_threads = threading.local()


def _one_torch_thread() -> None:
    """torch on one OpenMP thread in this thread too. A thread torch did not start keeps
    OpenMP's default team size whatever torch.set_num_threads said in another, and oneDNN's
    recurrent kernels then run many times slower in a pool thread."""
    if not getattr(_torch_threads, "set", False) and torch.get_num_threads() == 1:
        torch.set_num_threads(1)
        _torch_threads.set = True


class TorchPath:
    """Training through torch's own fused recurrent layers (any device).

    On the CPU with several threads (`kernels.get_threads`) and `split`, a batch's rows are
    split over them, each part's forward and backward on one
    torch thread, its gradient from torch.autograd.grad (its own graph, no shared .grad),
    the parts' sums added in a fixed order: no per-step synchronisation, where torch's own
    threads meet at every step of every matrix product. Validation is split the same way.
    With smaller batches one thread trains, and a single network's validation runs beside
    the next epoch's training. Results are reproducible for a given thread count (the split
    and the order of the sums depend on it).
    """

    name = "torch"

    def __init__(
        self,
        pop: Population,
        X: torch.Tensor,
        T: torch.Tensor,
        Xv: torch.Tensor,
        Tv: torch.Tensor,
        batch_size: int,
        clip_members: Callable[[Sequence[torch.Tensor], float], None],
        split: bool | None = None,
    ) -> None:
        self.X, self.T, self.Xv, self.Tv = X, T, Xv, Tv
        self.batch_size = batch_size
        self._clip_members = clip_members
        self.threads_available = kernels.get_threads() if X.device.type == "cpu" else 1
        if split is None:  # (models.chooser.plan decides for a run)
            split = min(batch_size, X.shape[0]) >= 2 * self.threads_available
        self.parts = self.threads_available if split and batch_size > 1 else 1

    @contextlib.contextmanager
    def threads(self) -> Iterator[None]:
        """One torch thread per part, or while a validation may run beside the training
        (two OpenMP teams on the same cores would wait on each other)."""
        saved = torch.get_num_threads()
        if self.threads_available > 1:
            torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(saved)

    @staticmethod
    def _part(
        pop: Population, x: torch.Tensor, t: torch.Tensor, count: int
    ) -> tuple[torch.Tensor, tuple[torch.Tensor | None, ...]]:
        """Each member's sum of squared errors on rows (x, t) [K], and the gradient of
        Σ_members sse / count (their share of the batch's mean losses) for every parameter."""
        _one_torch_thread()
        with torch.enable_grad():
            sse = ((population_forward(pop, x) - t) ** 2).sum(dim=(1, 2, 3))
            grads = torch.autograd.grad(sse.sum() / count, list(pop.params), allow_unused=True)
        return sse.detach().double().cpu(), grads

    def _parts(self, pop: Population, xb: torch.Tensor, tb: torch.Tensor, count: int,
               ranges: list[tuple[int, int]]) -> dict[tuple[int, int], Any]:  # fmt: skip
        """`_part` of each row range, in the threads."""
        parts: dict[tuple[int, int], Any] = {}

        def work(a: int, b: int) -> None:
            parts[(a, b)] = self._part(pop, xb[a:b], tb[a:b], count)

        glue.run_groups(work, ranges)
        return parts

    def train_epoch(self, pop: Population, optimizer: Any, lr: float, clip: float) -> list[float]:
        n = self.X.shape[0]
        weighted = torch.zeros(pop.size, dtype=torch.float64)
        for i in range(0, n, self.batch_size):
            xb, tb = self.X[i : i + self.batch_size], self.T[i : i + self.batch_size]
            count = tb.numel()
            ranges = even_ranges(xb.shape[0], self.parts)
            parts = self._parts(pop, xb, tb, count, ranges)
            sse = sum((parts[r][0] for r in ranges[1:]), parts[ranges[0]][0])
            optimizer.zero_grad(set_to_none=True)
            for k, p in enumerate(pop.params):
                found = [parts[r][1][k] for r in ranges if parts[r][1][k] is not None]
                p.grad = sum(found[1:], found[0]) if found else None
            if clip > 0:
                self._clip_members(list(pop.parameters()), clip)
            optimizer.step()
            # Each batch's mean at the data's precision, as the fused path reports it.
            weighted += (sse / count).to(self.X.dtype).double() * xb.shape[0]
        return (weighted / n).tolist()

    def _validate(self, pop: Population, weights: Sequence[torch.Tensor]) -> list[float]:
        names = pop.names
        ranges = even_ranges(self.Xv.shape[0], self.parts)
        totals: dict[tuple[int, int], torch.Tensor] = {}

        def work(a: int, b: int) -> None:
            _one_torch_thread()
            total = torch.zeros(pop.size, dtype=torch.float64)
            with torch.no_grad():
                for m in range(pop.size):
                    member = {n: w[m] for n, w in zip(names, weights, strict=True)}
                    for i in range(a, b, 64):
                        j = min(b, i + 64)
                        y = torch_forward(pop.kind, member, self.Xv[i:j])
                        total[m] += ((y - self.Tv[i:j]) ** 2).double().sum().cpu()
            totals[(a, b)] = total

        glue.run_groups(work, ranges)
        total = sum((totals[r] for r in ranges[1:]), totals[ranges[0]])
        return (total / self.Tv.numel()).to(self.Xv.dtype).double().tolist()

    def validate(self, pop: Population, *, beside_training: bool = False) -> ValidationRun:
        """Each member's validation MSE: its rows split over the threads as the batches' are,
        or, when one thread trains, with beside_training (one member), on a copy of the
        weights in a pool thread while the caller trains on."""
        if beside_training and self.parts == 1 and pop.size == 1 and self.threads_available > 1:
            weights = [p.detach().clone() for p in pop.params]
            return ValidationRun(glue.submit(lambda: self._validate(pop, weights)), None, weights)
        weights = list(pop.params)
        return ValidationRun(None, self._validate(pop, weights), weights)


def batch_grads(
    path: str, pop: Population, x: torch.Tensor, target: torch.Tensor, layout: str = "lanes"
) -> tuple[list[float], list[torch.Tensor]]:
    """One batch through `path` (and the fused path's `layout`) without a step: each
    member's MSE, and the gradient of the sum of the members' losses (each member's its own
    loss's) for every parameter, in `pop.params` order (zeros for a parameter the batch does
    not reach)."""
    if path == "fused":
        engine = FusedPath(pop, x, target, x, target, x.shape[0], layout)
        ps, params = engine._params(pop)
        grads = [torch.zeros_like(p) for p in ps]
        grad_views = lanes.Params(*(_flat(g) for g in grads))
        out = np.zeros(pop.size)
        lstm = engine.kind == lanes.LSTM
        ws: rows.Workspace | lanes.Workspace
        if layout == "rows":
            ws = rows.workspace(engine.kind, *engine.dims, x.shape[0], x.shape[1], engine.dtype_np)
            fn = rows.lstm_grads if lstm else rows.elman_grads
            fn(shape=engine.shape, x=x.numpy(), target=target.numpy(), m0=0, m1=pop.size,
               params=params, used=engine.used, ws=ws, losses=out, grads=grad_views)  # fmt: skip
        else:
            data = lanes.make_data(x.numpy(), target.numpy(), x.shape[0], pop.size, PACK_BUDGET)
            ws = lanes.workspace(
                engine.kind, *engine.dims, -(-pop.size * x.shape[0] // lanes.L), x.shape[1],
                engine.dtype_np,
            )  # fmt: skip
            fn = lanes.lstm_grads if lstm else lanes.elman_grads
            fn(shape=engine.shape, data=data, m0=0, m1=pop.size, params=params, used=engine.used,
               ws=ws, losses=out, grads=grad_views)  # fmt: skip
        by_name = dict(zip(engine.order, grads, strict=True))
        return out.tolist(), [by_name[n] for n in pop.names]
    if path != "torch":
        raise ValueError(f"path must be one of {', '.join(PATHS)}; got {path!r}")
    per_member = ((population_forward(pop, x) - target) ** 2).mean(dim=(1, 2, 3))
    found = torch.autograd.grad(per_member.sum(), list(pop.params), allow_unused=True)
    grads = [
        torch.zeros_like(p) if g is None else g for p, g in zip(pop.params, found, strict=True)
    ]
    return per_member.detach().double().tolist(), grads
