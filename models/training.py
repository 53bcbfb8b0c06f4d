"""Training, evaluation and prediction: MSE + Adam, per-epoch losses, cooperative stop."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
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
from models.networks import MODEL_KINDS, build_model

DEVICES = ("auto", "cpu", "cuda")
# Sequences evaluated per forward pass outside training; bounds memory, not results.
EVAL_BATCH = 64


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run; the same config gives the same run."""

    model: str = "lstm"
    hidden_size: int = 2  # the notebook's setting
    epochs: int = 300
    learning_rate: float = 0.01  # 1e-3 (the notebook's) learns far too slowly in 300 epochs
    batch_size: int = 3
    seed: int = 0
    device: str = "auto"
    n_sequences: int = 9  # per split
    seq_len: int = 3000
    marker_probs: tuple[float, float, float] = DEFAULT_MARKER_PROBS

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
class History:
    """Per-epoch losses: element k is epoch k+1's mean, never a running mean across epochs."""

    train_loss: list[float] = field(default_factory=list)
    valid_loss: list[float] = field(default_factory=list)
    stopped: bool = False  # True when should_stop() ended training early

    @property
    def epochs_completed(self) -> int:
        return len(self.train_loss)


@dataclass(frozen=True)
class Metrics:
    """Test-set figures: the model's MSE, the all-zeros predictor's, and MSE on marker-1 steps."""

    test_mse: float
    baseline_mse: float
    marker_mse: float | None  # None when the split has no marker-1 step


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


def model_seed(seed: int) -> int:
    """The weight-initialisation seed derived from a run seed (apart from the data streams)."""
    return int(np.random.SeedSequence([int(seed), 1]).generate_state(1)[0])


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


def _mse_in_chunks(model: nn.Module, X: torch.Tensor, T: torch.Tensor) -> float:
    total = 0.0
    for i in range(0, X.shape[0], EVAL_BATCH):
        y = model(X[i : i + EVAL_BATCH])
        total += float(((y - T[i : i + EVAL_BATCH]) ** 2).sum())
    return total / T.numel()


def make_optimizer(model: nn.Module, learning_rate: float) -> torch.optim.Optimizer:
    """Adam over all parameters, as `train` uses it.

    fused=True (one kernel over all parameters per step, on the CPU since torch 2.4) where
    every parameter is a floating-point tensor on a device that supports it; it is the same
    algorithm as the default per-parameter loop, equal within float rounding, and as
    deterministic. Elsewhere torch's default implementation.
    """
    params = list(model.parameters())
    fusable = all(p.dtype.is_floating_point and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=learning_rate, fused=fusable or None)


def train(
    model: nn.Module,
    splits: Splits,
    config: TrainConfig,
    on_epoch: Callable[[int, float, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> History:
    """Train with MSE and Adam; report each epoch's mean train and validation loss."""
    device = _model_device(model)
    X, T = _as_tensors(splits.train, device)
    Xv, Tv = _as_tensors(splits.valid, device)
    optimizer = make_optimizer(model, config.learning_rate)
    loss_fn = nn.MSELoss()
    history = History()
    n = X.shape[0]
    for epoch in range(1, config.epochs + 1):
        if should_stop is not None and should_stop():
            history.stopped = True
            break
        model.train()
        # Batches in a fixed order: no shuffling, so no RNG state enters training.
        weighted = 0.0
        for i in range(0, n, config.batch_size):
            xb, tb = X[i : i + config.batch_size], T[i : i + config.batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), tb)
            loss.backward()
            optimizer.step()
            weighted += loss.item() * xb.shape[0]
        train_loss = weighted / n
        model.eval()
        with torch.no_grad():
            valid_loss = _mse_in_chunks(model, Xv, Tv)
        if not (math.isfinite(train_loss) and math.isfinite(valid_loss)):
            raise FloatingPointError(
                f"training diverged at epoch {epoch}: train loss {train_loss}, "
                f"valid loss {valid_loss}; try a smaller learning_rate"
            )
        history.train_loss.append(train_loss)
        history.valid_loss.append(valid_loss)
        if on_epoch is not None:
            on_epoch(epoch, train_loss, valid_loss)
    model.eval()
    return history


def evaluate(model: nn.Module, split: Split) -> Metrics:
    """Test MSE, the zero predictor's MSE on the same split, and MSE on marker-1 steps."""
    X, T = _as_tensors(split, _model_device(model))
    model.eval()
    with torch.no_grad():
        Y = torch.cat([model(X[i : i + EVAL_BATCH]) for i in range(0, X.shape[0], EVAL_BATCH)])
    sq = ((Y - T) ** 2).double()
    marker = X[:, :, 1] == 1.0  # (n, T)
    marker_mse = float(sq[marker].mean()) if bool(marker.any()) else None
    return Metrics(
        test_mse=float(sq.mean()),
        baseline_mse=float((T.double() ** 2).mean()),
        marker_mse=marker_mse,
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
                y = model(torch.from_numpy(batch).to(device)).float().cpu().numpy()
                for row, i in enumerate(bucket):
                    out[i] = y[row, : arrays[i].shape[0]].copy()
    finally:
        model.train(was_training)
    return out  # type: ignore[return-value]


@dataclass
class TrainResult:
    model: nn.Module
    history: History
    metrics: Metrics
    device: torch.device


def fit(
    config: TrainConfig,
    on_epoch: Callable[[int, float, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Build the data and the model from `config`, train, and evaluate on the test split."""
    device = resolve_device(config.device)
    splits = make_splits(config.seed, config.n_sequences, config.seq_len, config.marker_probs)
    model = build_model(config.model, n_hidden=config.hidden_size, seed=model_seed(config.seed))
    model.to(device)
    history = train(model, splits, config, on_epoch=on_epoch, should_stop=should_stop)
    return TrainResult(model, history, evaluate(model, splits.test), device)
