"""The notebook's Exercise 1: a scalar RNN with one sigmoid hidden unit."""

from __future__ import annotations

import math

import pytest

from models import scalar_rnn

NOTEBOOK = {"w_i": 0.5, "w_h": -1.0, "w_o": -0.7, "h_bias": -1.0, "y_bias": 0.0}


def by_hand(x, w_i, w_h, w_o, h_bias, y_bias):
    """h_t = σ(w_i·x_t + w_h·h_{t-1}) + h_bias, y_t = w_o·h_t + y_bias, from h_{-1} = 0."""
    h, hs, ys = 0.0, [], []
    for x_t in x:
        h = 1.0 / (1.0 + math.exp(-(w_i * x_t + w_h * h))) + h_bias
        hs.append(h)
        ys.append(w_o * h + y_bias)
    return hs, ys


def test_notebook_values():
    h, y = scalar_rnn([9, 4, -2], **NOTEBOOK)
    assert h[2] == pytest.approx(-0.7072252802268861, abs=1e-12)
    assert y[2] == pytest.approx(0.4950576961588203, abs=1e-12)


def test_every_step_matches_the_equations():
    x = [9, 4, -2]
    h, y = scalar_rnn(x, **NOTEBOOK)
    h_ref, y_ref = by_hand(x, **NOTEBOOK)
    assert h == pytest.approx(h_ref, abs=1e-12)
    assert y == pytest.approx(y_ref, abs=1e-12)
    # The bias is added after the sigmoid: h_0 = σ(0.5·9) − 1.
    assert h[0] == pytest.approx(1.0 / (1.0 + math.exp(-4.5)) - 1.0, abs=1e-15)


@pytest.mark.parametrize("x", [[0.3], [9, 4, -2], [float(t) / 7 - 1 for t in range(25)]])
def test_one_value_per_step(x):
    h, y = scalar_rnn(x, w_i=1.3, w_h=0.4, w_o=2.0, h_bias=0.1, y_bias=-0.5)
    assert len(h) == len(x)
    assert len(y) == len(x)
    h_ref, y_ref = by_hand(x, 1.3, 0.4, 2.0, 0.1, -0.5)
    assert h == pytest.approx(h_ref, abs=1e-12)
    assert y == pytest.approx(y_ref, abs=1e-12)


def test_huge_pre_activations_do_not_overflow():
    # σ(±1e6) saturates at 1 and 0 instead of raising OverflowError in exp().
    h, y = scalar_rnn([1e6, -1e6], w_i=1.0, w_h=0.0, w_o=2.0, h_bias=0.5, y_bias=1.0)
    assert h == [1.5, 0.5]
    assert y == [4.0, 2.0]


@pytest.mark.parametrize("name", ["w_i", "w_h", "w_o", "h_bias", "y_bias"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_weight_is_rejected_by_name(name, bad):
    kwargs = dict(NOTEBOOK)
    kwargs[name] = bad
    with pytest.raises(ValueError, match=rf"^{name} must be finite"):
        scalar_rnn([9, 4, -2], **kwargs)


@pytest.mark.parametrize("name", ["w_i", "y_bias"])
def test_non_number_weight_is_rejected_by_name(name):
    kwargs = dict(NOTEBOOK)
    kwargs[name] = "0.5"
    with pytest.raises(ValueError, match=rf"^{name} must be a number"):
        scalar_rnn([9, 4, -2], **kwargs)


def test_empty_x_is_rejected():
    with pytest.raises(ValueError, match=r"^x must hold at least one value"):
        scalar_rnn([], **NOTEBOOK)


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_non_finite_x_is_rejected_naming_the_step(bad):
    with pytest.raises(ValueError, match=r"^x\[1\] must be finite"):
        scalar_rnn([9, bad, -2], **NOTEBOOK)
