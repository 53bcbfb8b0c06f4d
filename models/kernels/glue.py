"""Checks and conversions shared by the kernels' torch wrappers."""

from __future__ import annotations

import numpy as np
import torch

DTYPES = (torch.float32, torch.float64)


def _np(t: torch.Tensor) -> np.ndarray:
    """A numpy view of a CPU tensor, made contiguous first (numba compiles per layout)."""
    return t.detach().contiguous().numpy()


def _check(name: str, t: torch.Tensor, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    if t.device.type != "cpu":
        raise ValueError(f"{name} must be on the CPU, got {t.device}")
    if t.dtype != dtype or t.dtype not in DTYPES:
        raise ValueError(f"{name} must be float32 or float64 like the input, got {t.dtype}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
