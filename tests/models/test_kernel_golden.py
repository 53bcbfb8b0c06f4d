"""Every compiled kernel against its stored outputs and gradients, bit for bit (see
tests/models/golden: what is stored, and when regenerating it is legitimate)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from tests.models import golden

Stored = tuple[golden.Arrays, dict[str, str]]


@pytest.fixture(scope="module")
def stored() -> Stored:
    return golden.load()


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _assert_same_bits(
    stored: Stored, actual: golden.Arrays, part: str, skip: str | None = None
) -> None:
    """`actual` equals the stored arrays whose names hold `part` (less those ending with
    `skip`), bit for bit."""
    arrays, env = stored
    expected = {
        k: v for k, v in arrays.items() if part in k and not (skip is not None and k.endswith(skip))
    }
    assert expected, f"nothing stored under {part}"
    lines = golden.differences(expected, actual)
    assert not lines, "\n".join(lines) + "\n" + golden.environment_note(env)


@pytest.mark.parametrize("family", golden.FAMILIES)
def test_kernels_give_the_stored_bits(family: str, stored: Stored) -> None:
    _assert_same_bits(stored, golden.family(family), family + "/")


# The LSTM's input gradient on several threads: see the test below.
_DX = "/grad_x"


@pytest.mark.parametrize("threads", golden.THREADS[1:])
@pytest.mark.parametrize("family", ["autograd", "lanes", "rows"])
def test_kernels_give_the_stored_bits_on_any_number_of_threads(
    family: str, threads: int, stored: Stored
) -> None:
    actual = {k: v for k, v in golden.family(family, threads).items() if not k.endswith(_DX)}
    _assert_same_bits(stored, actual, family + "/", skip=_DX)


@pytest.mark.xfail(
    strict=True,
    reason="LSTMFunction rounds each group's dx to x's type, then adds the groups' parts",
)
def test_the_lstm_input_gradient_is_the_same_on_any_number_of_threads(stored: Stored) -> None:
    actual = golden.family("autograd", 2)
    _assert_same_bits(stored, {k: v for k, v in actual.items() if k.endswith(_DX)}, _DX)


def test_a_changed_bit_is_reported() -> None:
    a = np.array([1.0, -0.0, np.nan, 3.0], dtype=np.float32)
    b = a.copy()
    assert golden.differences({"k": a}, {"k": b}) == []
    b[3] = np.nextafter(b[3], np.float32(4.0))
    b[1] = 0.0
    (line,) = golden.differences({"k": a}, {"k": b})
    assert line.startswith("k: 2 of 4 values differ, by up to 1 ulp")
    assert golden.differences({"k": a}, {}) == ["k: not computed (stored only)"]
