"""Training, evaluation and prediction: MSE + Adam, per-epoch losses, cooperative stop."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from models.data import (
    DEFAULT_MARKER_PROBS,
    Split,
    Splits,
    check_marker_probs,
    check_positive_int,
    make_splits,
)
from models.kernels import adam as kernel_adam
from models.networks import MODEL_KINDS, ElmanRNN, LSTMModel
from models.paths import PATHS, FusedPath, TorchPath, ValidationRun, torch_forward
from models.population import Population, build_population

DEVICES = ("auto", "cpu", "cuda")
LR_SCHEDULES = ("constant", "cosine")
MAX_POPULATION = 64
# What `train` steps: torch's Adam, or its compiled form for CPU parameters (make_optimizer).
Optimizer = torch.optim.Optimizer | kernel_adam.Adam
# Sequences evaluated per forward pass outside training; bounds memory, not results.
EVAL_BATCH = 64


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run; the same config gives the same run."""

    model: str = "lstm"
    hidden_size: int = 2  # the notebook's setting
    epochs: int = 300
    # The default recipe (docs/recipe.md, benchmarks/learning_quality.py): lr 0.03 and a
    # population of 4 learn the task on every run seed tried; one network at lr 0.01 stays on
    # a plateau on most seeds, and 1e-3 (the notebook's own) learns far too slowly.
    learning_rate: float = 0.03
    batch_size: int = 3
    seed: int = 0
    device: str = "auto"
    n_sequences: int = 9  # per split
    seq_len: int = 3000
    marker_probs: tuple[float, float, float] = DEFAULT_MARKER_PROBS
    # Initialisations trained side by side; successive halving keeps the best one.
    population: int = 4
    clip_grad_norm: float = 0.0  # per member; 0: no clipping
    lr_schedule: str = "constant"  # "cosine": decays to 0 over the epochs
    # The model is the kept member's weights at its lowest validation loss, not at the last
    # epoch: at a constant rate Adam can spike in the last epochs (seen on 2 of 40 seeds).
    restore_best: bool = True

    def __post_init__(self) -> None:
        if self.model not in MODEL_KINDS:
            raise ValueError(f"model must be one of {', '.join(MODEL_KINDS)}; got {self.model!r}")
        for name in ("hidden_size", "epochs", "batch_size", "n_sequences", "seq_len"):
            check_positive_int(name, getattr(self, name))
        lr = self.learning_rate
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr):
            raise ValueError(f"learning_rate must be a finite number, got {lr!r}")
        if lr <= 0:
            raise ValueError(f"learning_rate must be positive, got {lr!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}; got {self.device!r}")
        object.__setattr__(self, "marker_probs", check_marker_probs(self.marker_probs))
        check_positive_int("population", self.population)
        if self.population > MAX_POPULATION:
            raise ValueError(f"population must be at most {MAX_POPULATION}, got {self.population}")
        clip = self.clip_grad_norm
        if isinstance(clip, bool) or not isinstance(clip, int | float) or not math.isfinite(clip):
            raise ValueError(f"clip_grad_norm must be a finite number, got {clip!r}")
        if clip < 0:
            raise ValueError(f"clip_grad_norm must be 0 (off) or positive, got {clip!r}")
        if not isinstance(self.restore_best, bool):
            raise ValueError(f"restore_best must be true or false, got {self.restore_best!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}; got {self.lr_schedule!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["marker_probs"] = list(self.marker_probs)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        if "marker_probs" in d:
            d["marker_probs"] = tuple(d["marker_probs"])
        return cls(**d)


@dataclass
class Member:
    """One initialisation of a run's population: where it started and how far it got."""

    index: int  # its place in the population, 0 … population-1
    seed: int | None  # its initial-weight seed (`member_seed`); None for a network passed in
    epochs: int = 0  # epochs it trained before it was stopped (or the run ended)
    train_loss: float | None = None  # its last epoch's, None before its first
    valid_loss: float | None = None
    kept: bool = False  # the member that became the run's model
    diverged: bool = False  # stopped because its loss became non-finite
    best_epoch: int | None = None  # the epoch of its lowest validation loss so far
    best_valid_loss: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class History:
    """Per-epoch losses: element k is epoch k+1's mean, never a running mean across epochs.

    For a population, each epoch's figures are those of the member with the lowest
    validation loss at that epoch (`best_member[k]` is its index): the curve a user watching
    the best run would have seen.
    """

    train_loss: list[float] = field(default_factory=list)
    valid_loss: list[float] = field(default_factory=list)
    best_member: list[int] = field(default_factory=list)
    members: list[Member] = field(default_factory=list)
    stopped: bool = False  # True when should_stop() ended training early
    path: str | None = None  # how the epochs were computed (`models.paths`)
    layout: str | None = None  # the fused path's layout ("lanes" or "rows")

    @property
    def epochs_completed(self) -> int:
        return len(self.train_loss)

    @property
    def kept(self) -> Member | None:
        return next((m for m in self.members if m.kept), None)


@dataclass(frozen=True)
class EpochReport:
    """What `train` tells `on_report` after each epoch."""

    epoch: int
    train_loss: float  # the best member's (lowest validation loss this epoch)
    valid_loss: float
    member: int  # that member's index
    members: list[Member]  # every member's state now (copies)


# A run's verdict from error_ratio, the fraction of the zero predictor's test error that
# remains: at most 5 % is "learned", at most 50 % "partly", more "not learned".
VERDICT_LEARNED = 0.05
VERDICT_PARTLY = 0.5


def verdict(error_ratio: float) -> str:
    """ "learned" (≤ 5 % of the zero predictor's error), "partly" (≤ 50 %) or "not learned"."""
    if error_ratio <= VERDICT_LEARNED:
        return "learned"
    if error_ratio <= VERDICT_PARTLY:
        return "partly"
    return "not learned"


@dataclass(frozen=True)
class Evaluation:
    """Test-set figures: the model's MSE, the all-zeros predictor's, and both on marker-1 steps."""

    test_mse: float
    baseline_mse: float
    marker_mse: float | None  # None when the split has no marker-1 step
    marker_baseline_mse: float | None = None  # the zero predictor's on marker-1 steps

    @property
    def error_ratio(self) -> float | None:
        """test_mse / baseline_mse; None when the targets are all 0 (nothing to learn)."""
        return self.test_mse / self.baseline_mse if self.baseline_mse > 0 else None

    @property
    def marker_error_ratio(self) -> float | None:
        if self.marker_mse is None or not self.marker_baseline_mse:
            return None
        return self.marker_mse / self.marker_baseline_mse

    @property
    def verdict(self) -> str | None:
        ratio = self.error_ratio
        return None if ratio is None else verdict(ratio)

    def to_dict(self) -> dict[str, Any]:
        return {
            "test_mse": self.test_mse,
            "baseline_mse": self.baseline_mse,
            "marker_mse": self.marker_mse,
            "marker_baseline_mse": self.marker_baseline_mse,
            "error_ratio": self.error_ratio,
            "marker_error_ratio": self.marker_error_ratio,
            "verdict": self.verdict,
        }


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Map "auto" to CUDA when available, else CPU; "cuda" without a GPU is a ValueError."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' was requested but CUDA is not available here")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise ValueError(f"device must be one of {', '.join(DEVICES)}; got {name!r}")


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _as_tensors(split: Split, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    X = torch.as_tensor(split.X, dtype=torch.float32, device=device)
    T = torch.as_tensor(split.T, dtype=torch.float32, device=device)
    if X.dim() != 3 or T.shape != (*X.shape[:2], T.shape[-1]):
        raise ValueError(f"split must be X [n, T, F] with T [n, T, out]; got {X.shape}, {T.shape}")
    if not (torch.isfinite(X).all() and torch.isfinite(T).all()):
        raise ValueError("split must hold only finite numbers")
    return X, T


def make_optimizer(model: nn.Module, learning_rate: float) -> Optimizer:
    """Adam over all parameters, as `train` uses it.

    For dense, contiguous float32/float64 CPU parameters `models.kernels.adam.Adam`: torch's
    algorithm as one compiled loop per parameter, ~15 µs a step where torch.optim.Adam takes
    ~0.1 ms (equal within float rounding, as deterministic). Elsewhere torch.optim.Adam, fused
    (one kernel over all parameters per step) where every parameter is a floating-point
    tensor on a device that supports it.
    """
    params = list(model.parameters())
    if kernel_adam.supports(params):
        return kernel_adam.Adam(params, lr=learning_rate)
    fusable = all(p.dtype.is_floating_point and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=learning_rate, fused=fusable or None)


def halving_epochs(epochs: int, population: int) -> list[int]:
    """After which epochs the worse half of a population stops (successive halving).

    ⌈log2 K⌉ rungs at epochs · r / (rungs + 1), r = 1 … rungs: each stage between two rungs
    (and the last, the survivor alone) trains for the same number of epochs. An epoch may
    appear more than once (very short runs): it halves that many times.
    """
    rungs = math.ceil(math.log2(population)) if population > 1 else 0
    return [max(1, epochs * r // (rungs + 1)) for r in range(1, rungs + 1)]


def learning_rate_at(config: TrainConfig, epoch: int) -> float:
    """Epoch `epoch`'s (1-based) learning rate under the config's schedule."""
    if config.lr_schedule == "cosine":
        return config.learning_rate * 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / config.epochs))
    return config.learning_rate


def _clip_per_member(params: Sequence[torch.Tensor], max_norm: float) -> None:
    """clip_grad_norm_ for each member apart: its gradient's norm over all its parameters."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    sq = torch.stack([g.double().pow(2).flatten(1).sum(1) for g in grads]).sum(0)  # (K,)
    scale = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.to(g.dtype).view(-1, *[1] * (g.dim() - 1)))


def _shrink(
    pop: Population, optimizer: Optimizer, keep: list[int], learning_rate: float
) -> Optimizer:
    """Keep the members at positions `keep`; a new optimizer carries their Adam moments."""
    old_state = [dict(optimizer.state.get(p, {})) for p in pop.parameters()]
    size = pop.size
    new_params = pop.select(keep)
    new = make_optimizer(pop, learning_rate)
    index = torch.tensor(keep, dtype=torch.long)
    for state, p in zip(old_state, new_params, strict=True):
        carried = {}
        for key, value in state.items():
            if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == size:
                carried[key] = value.index_select(0, index.to(value.device))
            else:
                carried[key] = value.clone() if torch.is_tensor(value) else value
        if carried:
            new.state[p] = carried
    return new


def train(
    model: nn.Module,
    splits: Splits,
    config: TrainConfig,
    on_epoch: Callable[[int, float, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_report: Callable[[EpochReport], None] | None = None,
    path: str | None = None,
) -> History:
    """Train with MSE and Adam; report each epoch's mean train and validation loss.

    `model` is one network or a `Population`. A population trains every member on the same
    batches with its own Adam moments; at the epochs of `halving_epochs` the worse half (by
    validation loss) stops, down to one member, which is the one left in `model` at the end
    (`history.kept`), with its weights from its best validation epoch when
    `config.restore_best` (else from the last epoch). A member whose loss turns non-finite
    stops at once; when every member's does, FloatingPointError. A single network is
    trained as a population of one and its weights are written back into it.

    `path` ("fused", "torch"; None: `models.chooser.choose_path`) is how an epoch is
    computed (`models.paths`); `history.path` says which. A single network's validation runs
    beside the next epoch's training where a second thread is available (the epoch's report
    comes after it; it uses a copy of that epoch's weights).
    """
    pop = model if isinstance(model, Population) else Population([model])
    device = _model_device(pop)
    X, T = _as_tensors(splits.train, device)
    Xv, Tv = _as_tensors(splits.valid, device)
    optimizer = make_optimizer(pop, config.learning_rate)
    engine = make_path(path, pop, X, T, Xv, Tv, config)
    history = History(
        members=[Member(index=i, seed=s) for i, s in zip(pop.indices, pop.seeds, strict=True)],
        path=engine.name,
        layout=getattr(engine, "layout", None),
    )
    halvings = halving_epochs(config.epochs, pop.size)
    best_weights: dict[int, list[torch.Tensor]] = {}  # member index → its best epoch's weights

    def record(epoch: int, train_losses: list[float], run: ValidationRun, lr: float) -> None:
        """Epoch `epoch`'s bookkeeping and reports; halving or the end shrink the population."""
        nonlocal optimizer
        valid_losses = run.result()
        finite, improved = [], []
        for pos, idx in enumerate(pop.indices):
            rec = history.members[idx]
            rec.epochs = epoch
            tl, vl = train_losses[pos], valid_losses[pos]
            if math.isfinite(tl) and math.isfinite(vl):
                rec.train_loss, rec.valid_loss = tl, vl
                finite.append(pos)
                if rec.best_valid_loss is None or vl < rec.best_valid_loss:
                    rec.best_valid_loss, rec.best_epoch = vl, epoch
                    improved.append(pos)
            else:
                rec.diverged = True
        if config.restore_best and improved:
            # One copy per parameter of the members that improved, not one per member and
            # parameter (~50 small copies an epoch with 8 members).
            rows = torch.tensor(improved, dtype=torch.long, device=device)
            snaps = [w.detach().index_select(0, rows) for w in run.weights]
            for r, pos in enumerate(improved):
                best_weights[pop.indices[pos]] = [snap[r] for snap in snaps]
        if not finite:
            raise FloatingPointError(
                f"training diverged at epoch {epoch}: train loss {train_losses[0]}, "
                f"valid loss {valid_losses[0]}; try a smaller learning_rate"
            )
        best = min(finite, key=lambda p: (valid_losses[p], pop.indices[p]))
        history.train_loss.append(train_losses[best])
        history.valid_loss.append(valid_losses[best])
        history.best_member.append(pop.indices[best])
        if on_epoch is not None:
            on_epoch(epoch, train_losses[best], valid_losses[best])
        if on_report is not None:
            on_report(
                EpochReport(
                    epoch=epoch,
                    train_loss=train_losses[best],
                    valid_loss=valid_losses[best],
                    member=pop.indices[best],
                    members=[replace(m) for m in history.members],
                )
            )
        keep = finite
        for _ in range(halvings.count(epoch)):
            ranked = sorted(keep, key=lambda p: (valid_losses[p], pop.indices[p]))
            keep = sorted(ranked[: math.ceil(len(ranked) / 2)])
        if epoch == config.epochs:  # the end: the best survivor is the run's model
            keep = [best] if best in keep else keep[:1]
        if keep != list(range(pop.size)):
            optimizer = _shrink(pop, optimizer, keep, lr)

    # An epoch whose validation runs beside the next epoch's training, not yet recorded.
    pending: tuple[int, list[float], ValidationRun, float] | None = None
    with engine.threads():
        for epoch in range(1, config.epochs + 1):
            if should_stop is not None and should_stop():
                history.stopped = True
                break
            lr = learning_rate_at(config, epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            pop.train()
            train_losses = engine.train_epoch(pop, optimizer, lr, config.clip_grad_norm)
            if pending is not None:
                record(*pending)
                pending = None
            pop.eval()
            # Beside the next epoch only where nothing waits on this epoch's result: one
            # member (no halving) and not the last epoch.
            beside = pop.size == 1 and epoch < config.epochs
            run = engine.validate(pop, beside_training=beside)
            if run.pending:
                pending = (epoch, train_losses, run, lr)
            else:
                record(epoch, train_losses, run, lr)
        if pending is not None:
            record(*pending)
    pop.eval()
    if not history.stopped and history.epochs_completed:
        history.members[pop.indices[0]].kept = True
        if config.restore_best and pop.indices[0] in best_weights:
            with torch.no_grad():
                for p, saved in zip(pop.params, best_weights[pop.indices[0]], strict=True):
                    p[0].copy_(saved)
    if pop is not model:  # a population of one shares the network's storage: already updated
        model.eval()
    return history


def make_path(
    name: str | None,
    pop: Population,
    X: torch.Tensor,
    T: torch.Tensor,
    Xv: torch.Tensor,
    Tv: torch.Tensor,
    config: TrainConfig,
) -> FusedPath | TorchPath:
    """The training path `name` ("fused", "torch"; None: `choose_path`'s) for this run."""
    from models.chooser import plan

    if name is not None and name not in PATHS:
        raise ValueError(f"path must be one of {', '.join(PATHS)}; got {name!r}")
    fused_ok = FusedPath.supports(pop, X)
    if name == "fused" and not fused_ok:
        raise ValueError("the fused path needs float32 or float64 parameters on the CPU")
    chosen = plan(
        model=pop.kind,
        hidden_size=pop.n_hidden,
        batch_size=config.batch_size,
        population=pop.size,
        n_sequences=(X.shape[0], Xv.shape[0]),
        seq_len=X.shape[1],
        device=X.device.type,
        fused_ok=fused_ok,
        path=name,
    )
    if chosen.path == "fused":
        return FusedPath(pop, X, T, Xv, Tv, config.batch_size, chosen.layout)
    return TorchPath(pop, X, T, Xv, Tv, config.batch_size, _clip_per_member, split=chosen.split)


def evaluate(model: nn.Module, split: Split) -> Evaluation:
    """Test MSE and the zero predictor's MSE on the same split, overall and on marker-1 steps."""
    X, T = _as_tensors(split, _model_device(model))
    model.eval()
    with torch.no_grad():
        Y = torch.cat([model(X[i : i + EVAL_BATCH]) for i in range(0, X.shape[0], EVAL_BATCH)])
    sq = ((Y - T) ** 2).double()
    marker = X[:, :, 1] == 1.0  # (n, T)
    zero = T.double() ** 2
    has_marker = bool(marker.any())
    return Evaluation(
        test_mse=float(sq.mean()),
        baseline_mse=float(zero.mean()),
        marker_mse=float(sq[marker].mean()) if has_marker else None,
        marker_baseline_mse=float(zero[marker].mean()) if has_marker else None,
    )


def _to_sequence(i: int, seq: Any, n_input: int) -> np.ndarray:
    arr = np.asarray(seq, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != n_input:
        raise ValueError(f"sequences[{i}] must be [steps, {n_input}], got shape {tuple(arr.shape)}")
    if arr.shape[0] < 1:
        raise ValueError(f"sequences[{i}] must hold at least one step")
    if not np.isfinite(arr).all():
        raise ValueError(f"sequences[{i}] must hold only finite numbers (no NaN or infinity)")
    return arr.astype(np.float32)


def _length_buckets(lengths: Sequence[int]) -> list[list[int]]:
    """Group sequence indices so that padding never more than doubles the work of a batch."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    buckets: list[list[int]] = []
    for i in order:
        if buckets:
            b = buckets[-1]
            longest = lengths[b[0]]
            if longest * (len(b) + 1) <= 2 * (sum(lengths[j] for j in b) + lengths[i]):
                b.append(i)
                continue
        buckets.append([i])
    return buckets


def _predict_batch(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """model(x) on the path `models.chooser.predict_path` picks for this shape: the fused
    kernels (what model(x) runs on the CPU) or torch's own layers (`paths.torch_forward`)."""
    from models.chooser import predict_path

    kind = "lstm" if isinstance(model, LSTMModel) else "elman"
    if x.device.type == "cpu" and isinstance(model, ElmanRNN | LSTMModel):
        path = predict_path(
            model=kind, hidden_size=model.n_hidden, n_sequences=x.shape[0], seq_len=x.shape[1]
        )
        if path == "torch":
            return torch_forward(kind, dict(model.named_parameters()), x)
    return model(x)


def predict(model: nn.Module, sequences: Sequence[Any]) -> list[np.ndarray]:
    """Per-step outputs [steps, n_out] for each sequence [steps, n_input], at its own length."""
    if isinstance(sequences, np.ndarray | torch.Tensor) and sequences.ndim == 2:
        raise ValueError("sequences must be a batch of sequences, got a single 2-D array")
    if len(sequences) == 0:
        raise ValueError("sequences must hold at least one sequence")
    n_input = getattr(model, "n_input", 2)
    arrays = [_to_sequence(i, s, n_input) for i, s in enumerate(sequences)]
    device = _model_device(model)
    out: list[np.ndarray | None] = [None] * len(arrays)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for bucket in _length_buckets([a.shape[0] for a in arrays]):
                longest = arrays[bucket[0]].shape[0]
                batch = np.zeros((len(bucket), longest, n_input), dtype=np.float32)
                for row, i in enumerate(bucket):
                    batch[row, : arrays[i].shape[0]] = arrays[i]
                # Padding sits after each sequence's end, and the networks are causal,
                # so it cannot change any real step's output.
                yt = _predict_batch(model, torch.from_numpy(batch).to(device))
                y = yt.float().cpu().numpy()
                for row, i in enumerate(bucket):
                    out[i] = y[row, : arrays[i].shape[0]].copy()
    finally:
        model.train(was_training)
    return out  # type: ignore[return-value]


@dataclass
class Prepared:
    """What a run has before its first epoch: its device, data, members and training path."""

    config: TrainConfig
    device: torch.device
    splits: Splits
    population: Population
    path: str  # "fused" or "torch" (`models.paths`)


def prepare(config: TrainConfig, *, path: str = "auto") -> Prepared:
    """Resolve the device, generate the data, build the population and pick the training
    path ("auto": `models.chooser.choose_path` for this shape on this machine; the fused
    kernels are the CPU's, so "fused" on another device is "torch")."""
    from models.chooser import choose_path

    if path != "auto" and path not in PATHS:
        raise ValueError(f"path must be auto or one of {', '.join(PATHS)}; got {path!r}")
    device = resolve_device(config.device)
    if path == "auto":
        path = choose_path(
            model=config.model,
            hidden_size=config.hidden_size,
            batch_size=config.batch_size,
            population=config.population,
            n_sequences=(config.n_sequences, config.n_sequences),
            seq_len=config.seq_len,
            device=device.type,
        )
    if path == "fused" and device.type != "cpu":
        path = "torch"
    splits = make_splits(config.seed, config.n_sequences, config.seq_len, config.marker_probs)
    pop = build_population(
        config.model, seed=config.seed, size=config.population, n_hidden=config.hidden_size
    ).to(device)
    return Prepared(config, device, splits, pop, path)


@dataclass
class TrainResult:
    model: nn.Module  # the kept member, a plain network
    kept: int  # its index in the population
    history: History
    device: torch.device
    test: Split

    @functools.cached_property
    def metrics(self) -> Evaluation:
        """The kept member's scores on the test split (computed when first read)."""
        return evaluate(self.model, self.test)


def fit(
    config: TrainConfig | Prepared,
    on_epoch: Callable[[int, float, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_report: Callable[[EpochReport], None] | None = None,
    *,
    path: str = "auto",
) -> TrainResult:
    """Train a run from its config (or from `prepare`'s result): the one training entry point
    of the worker, `rnnlab train` and the benchmarks.

    The callbacks are `train`'s. The model is the kept member; a run stopped early keeps the
    member with the lowest validation loss so far (the initial weights of member 0 if no
    epoch ended)."""
    run = config if isinstance(config, Prepared) else prepare(config, path=path)
    pop = run.population
    history = train(
        pop,
        run.splits,
        run.config,
        on_epoch=on_epoch,
        should_stop=should_stop,
        on_report=on_report,
        path=run.path,
    )
    position = 0
    if history.stopped and history.epochs_completed:
        losses = [history.members[i].valid_loss for i in pop.indices]
        position = min(
            range(pop.size), key=lambda p: (math.inf if losses[p] is None else losses[p], p)
        )
    model = pop.member(position).to(run.device)
    return TrainResult(model, pop.indices[position], history, run.device, run.splits.test)
