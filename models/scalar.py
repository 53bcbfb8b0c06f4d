"""The notebook's Exercise 1: a scalar RNN with one sigmoid hidden unit, worked step by step."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence


def _sigmoid(z: float) -> float:
    # Two branches keep exp() from overflowing for large |z|.
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def _finite(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def scalar_rnn(
    x: Sequence[float],
    w_i: float,
    w_h: float,
    w_o: float,
    h_bias: float,
    y_bias: float,
) -> tuple[list[float], list[float]]:
    """Run h_t = σ(w_i·x_t + w_h·h_{t-1}) + h_bias, y_t = w_o·h_t + y_bias from h_{-1} = 0."""
    w_i, w_h, w_o = _finite("w_i", w_i), _finite("w_h", w_h), _finite("w_o", w_o)
    h_bias, y_bias = _finite("h_bias", h_bias), _finite("y_bias", y_bias)
    xs = [_finite(f"x[{t}]", v) for t, v in enumerate(x)]
    if not xs:
        raise ValueError("x must hold at least one value")
    h_prev = 0.0
    hs: list[float] = []
    ys: list[float] = []
    for x_t in xs:
        # The bias is added after the sigmoid, exactly as the exercise's equations state.
        h_prev = _sigmoid(w_i * x_t + w_h * h_prev) + h_bias
        hs.append(h_prev)
        ys.append(w_o * h_prev + y_bias)
    return hs, ys
