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


def _assert_same_bits(stored: Stored, actual: golden.Arrays, prefix: str) -> None:
    """`actual` equals the stored arrays whose names start with `prefix`, bit for bit."""
    arrays, env = stored
    expected = {k: v for k, v in arrays.items() if k.startswith(prefix)}
    assert expected, f"nothing stored under {prefix}"
    lines = golden.differences(expected, actual)
    assert not lines, "\n".join(lines) + "\n" + golden.environment_note(env)


@pytest.mark.parametrize("family", golden.FAMILIES)
def test_kernels_give_the_stored_bits(family: str, stored: Stored) -> None:
    _assert_same_bits(stored, golden.family(family), family + "/")


@pytest.mark.parametrize("threads", golden.THREADS[1:])
@pytest.mark.parametrize("family", ["autograd", "lanes", "rows"])
def test_kernels_give_the_stored_bits_on_any_number_of_threads(
    family: str, threads: int, stored: Stored
) -> None:
    _assert_same_bits(stored, golden.family(family, threads), family + "/")


def test_a_changed_bit_is_reported() -> None:
    a = np.array([1.0, -0.0, np.nan, 3.0], dtype=np.float32)
    b = a.copy()
    assert golden.differences({"k": a}, {"k": b}) == []
    b[3] = np.nextafter(b[3], np.float32(4.0))
    b[1] = 0.0
    (line,) = golden.differences({"k": a}, {"k": b})
    assert line.startswith("k: 2 of 4 values differ, by up to 1 ulp")
    assert golden.differences({"k": a}, {}) == ["k: not computed (stored only)"]
