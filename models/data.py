"""The dynamic adding problem: generator and reproducible train/valid/test splits."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MARKERS = np.array([-1.0, 0.0, 1.0])
DEFAULT_MARKER_PROBS = (0.25, 0.25, 0.5)
SPLIT_NAMES = ("train", "valid", "test")


def check_marker_probs(marker_probs: Sequence[float]) -> tuple[float, float, float]:
    """Validate probabilities for the markers (-1, 0, 1); return them as a float triple."""
    probs = tuple(float(p) for p in marker_probs)
    if len(probs) != 3:
        raise ValueError(f"marker_probs must hold 3 probabilities (for -1, 0, 1), got {len(probs)}")
    if not all(math.isfinite(p) for p in probs):
        raise ValueError(f"marker_probs must be finite, got {probs}")
    if any(p < 0 for p in probs):
        raise ValueError(f"marker_probs must not be negative, got {probs}")
    if abs(sum(probs) - 1.0) > 1e-6:
        raise ValueError(f"marker_probs must sum to 1, got {probs} (sum {sum(probs)})")
    return probs


def check_positive_int(name: str, value: int) -> int:
    """Raise a ValueError naming `name` unless value is an int ≥ 1."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def adding_targets(values: np.ndarray, markers: np.ndarray) -> np.ndarray:
    """Targets for one sequence: at each marker-1 step after the first, this value plus the last."""
    targets = np.zeros(values.shape[0], dtype=np.float64)
    idx = np.flatnonzero(markers == 1.0)
    # No marker, or a single one, leaves every target at 0.
    targets[idx[1:]] = values[idx[1:]] + values[idx[:-1]]
    return targets


def adding_sequence(
    n: int,
    rng: np.random.Generator,
    marker_probs: Sequence[float] = DEFAULT_MARKER_PROBS,
) -> tuple[np.ndarray, np.ndarray]:
    """One sequence of the dynamic adding problem: X float32 [n, 2] (value, marker), T [n, 1]."""
    n = check_positive_int("n", n)
    probs = check_marker_probs(marker_probs)
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    values = rng.uniform(-1.0, 1.0, size=n)
    # Normalised so that every sum check_marker_probs accepts (within 1e-6) works here:
    # numpy's own check is far stricter. A sum of exactly 1 leaves p unchanged.
    markers = rng.choice(MARKERS, size=n, p=np.asarray(probs) / sum(probs))
    X = np.stack([values, markers], axis=1).astype(np.float32)
    # Targets come from the float32 values the network actually sees.
    T = adding_targets(X[:, 0].astype(np.float64), X[:, 1]).astype(np.float32)[:, None]
    return X, T


@dataclass(frozen=True)
class Split:
    """A batch of sequences: X float32 [n_sequences, seq_len, 2], T float32 [.., .., 1]."""

    X: np.ndarray
    T: np.ndarray

    def __len__(self) -> int:
        return int(self.X.shape[0])


@dataclass(frozen=True)
class Splits:
    train: Split
    valid: Split
    test: Split


def make_split(
    n_sequences: int,
    seq_len: int,
    rng: np.random.Generator,
    marker_probs: Sequence[float] = DEFAULT_MARKER_PROBS,
) -> Split:
    """`n_sequences` independent sequences of length `seq_len` drawn from `rng`."""
    n_sequences = check_positive_int("n_sequences", n_sequences)
    seq_len = check_positive_int("seq_len", seq_len)
    pairs = [adding_sequence(seq_len, rng, marker_probs) for _ in range(n_sequences)]
    return Split(X=np.stack([p[0] for p in pairs]), T=np.stack([p[1] for p in pairs]))


def make_splits(
    seed: int,
    n_sequences: int = 9,
    seq_len: int = 3000,
    marker_probs: Sequence[float] = DEFAULT_MARKER_PROBS,
) -> Splits:
    """Train, valid and test splits rebuilt exactly from `seed`, each from its own derived seed."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    check_marker_probs(marker_probs)
    # SeedSequence.spawn gives statistically independent streams per split; the data
    # stream is also kept apart from the model-initialisation stream (see training.py).
    data_seq = np.random.SeedSequence([int(seed), 0])
    rngs = [np.random.default_rng(s) for s in data_seq.spawn(len(SPLIT_NAMES))]
    built = [make_split(n_sequences, seq_len, rng, marker_probs) for rng in rngs]
    return Splits(*built)
