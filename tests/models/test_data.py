"""The dynamic adding problem: sequences, targets and reproducible splits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models import adding_sequence, adding_targets, make_split, make_splits


def rule(values, markers):
    """The adding rule, written out: at a marker-1 step with an earlier marker-1 step, the
    target is the value at that previous marker-1 step plus the value here; else 0."""
    targets = [0.0] * len(values)
    previous = None
    for t in range(len(values)):
        if markers[t] == 1.0:
            if previous is not None:
                targets[t] = previous + float(values[t])
            previous = float(values[t])
    return targets


def assert_follows_rule(X, T):
    expected = np.array(rule(X[:, 0], X[:, 1]), dtype=np.float32)[:, None]
    np.testing.assert_array_equal(T, expected)


# --- one sequence -------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 17, 1000])
def test_sequence_dtypes_shapes_and_ranges(n):
    X, T = adding_sequence(n, np.random.default_rng(3))
    assert X.dtype == np.float32
    assert T.dtype == np.float32
    assert X.shape == (n, 2)
    assert T.shape == (n, 1)
    assert np.all((X[:, 0] >= -1.0) & (X[:, 0] <= 1.0))
    assert set(np.unique(X[:, 1])) <= {-1.0, 0.0, 1.0}


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_targets_follow_the_rule(seed):
    X, T = adding_sequence(500, np.random.default_rng(seed))
    assert_follows_rule(X, T)
    # Sanity of the fixture itself: there are non-zero targets to compare.
    assert np.count_nonzero(T) > 100


def test_targets_by_hand():
    values = np.array([0.5, 0.25, -0.5, 0.75, 0.125, -1.0])
    markers = np.array([1.0, 0.0, 1.0, -1.0, 1.0, 0.0])
    # marker-1 steps are 0, 2 and 4: targets at 2 and 4 only.
    expected = [0.0, 0.0, 0.5 + -0.5, 0.0, -0.5 + 0.125, 0.0]
    np.testing.assert_array_equal(adding_targets(values, markers), expected)
    assert rule(values, markers) == expected


@pytest.mark.parametrize(
    "markers",
    [
        [0.0, 0.0, -1.0, 0.0, -1.0],  # no marker-1 step
        [0.0, 1.0, -1.0, 0.0, 0.0],  # exactly one
        [-1.0, -1.0, -1.0, -1.0, 1.0],  # one, at the very end
    ],
)
def test_fewer_than_two_markers_give_zero_targets_by_hand(markers):
    values = np.array([0.9, -0.3, 0.4, 0.8, -0.7])
    np.testing.assert_array_equal(adding_targets(values, np.array(markers)), np.zeros(5))


def test_all_zero_markers_give_zero_targets():
    X, T = adding_sequence(300, np.random.default_rng(0), marker_probs=(0.0, 1.0, 0.0))
    np.testing.assert_array_equal(X[:, 1], 0.0)
    np.testing.assert_array_equal(T, 0.0)


def test_no_one_markers_give_zero_targets():
    X, T = adding_sequence(2000, np.random.default_rng(0), marker_probs=(0.5, 0.5, 0.0))
    assert not np.any(X[:, 1] == 1.0)
    assert np.any(X[:, 1] == -1.0)
    assert np.any(X[:, 1] == 0.0)
    np.testing.assert_array_equal(T, 0.0)


def test_all_one_markers_sum_neighbours():
    X, T = adding_sequence(50, np.random.default_rng(5), marker_probs=(0.0, 0.0, 1.0))
    np.testing.assert_array_equal(X[:, 1], 1.0)
    assert T[0, 0] == 0.0
    np.testing.assert_array_equal(T[1:, 0], (X[1:, 0].astype(np.float64) + X[:-1, 0]).astype("f"))


@pytest.mark.parametrize(
    "probs", [(0.25, 0.25, 0.5), (0.1, 0.6, 0.3), (0.7, 0.0, 0.3), (1 / 3, 1 / 3, 1 / 3)]
)
def test_marker_frequencies_match_probabilities(probs):
    n = 200_000
    X, T = adding_sequence(n, np.random.default_rng(11), marker_probs=probs)
    for marker, p in zip((-1.0, 0.0, 1.0), probs, strict=True):
        assert np.mean(X[:, 1] == marker) == pytest.approx(p, abs=0.01)
    # Values are uniform on [-1, 1]: mean near 0, and both ends are reached.
    values = X[:, 0]
    assert abs(float(values.mean())) < 0.01
    assert float(np.mean(values < 0.5)) == pytest.approx(0.75, abs=0.01)
    assert values.min() < -0.999
    assert values.max() > 0.999
    assert_follows_rule(X, T)


def test_probabilities_rounded_by_a_client_still_generate():
    # The sum is 0.9999999: within check_marker_probs' tolerance, though not numpy's.
    probs = (0.3333333, 0.3333333, 0.3333333)
    X, _ = adding_sequence(30_000, np.random.default_rng(0), marker_probs=probs)
    for marker in (-1.0, 0.0, 1.0):
        assert np.mean(X[:, 1] == marker) == pytest.approx(1 / 3, abs=0.015)
    splits = make_splits(0, 2, 10, marker_probs=probs)
    assert splits.train.X.shape == (2, 10, 2)


@pytest.mark.parametrize("n", [0, -1, 2.5, True, "3"])
def test_bad_length_is_rejected(n):
    with pytest.raises(ValueError, match=r"^n must be a positive integer"):
        adding_sequence(n, np.random.default_rng(0))


BAD_PROBS = [
    ((-0.1, 0.6, 0.5), "must not be negative"),
    ((0.3, 0.3, 0.3), "must sum to 1"),
    ((0.5, 0.5, 0.5), "must sum to 1"),
    ((0.5, 0.5), "must hold 3 probabilities"),
    ((0.25, 0.25, 0.25, 0.25), "must hold 3 probabilities"),
    ((math.nan, 0.5, 0.5), "must be finite"),
    ((math.inf, 0.0, 0.0), "must be finite"),
]


@pytest.mark.parametrize(("probs", "why"), BAD_PROBS)
def test_bad_marker_probs_are_rejected(probs, why):
    with pytest.raises(ValueError, match=rf"^marker_probs {why}"):
        adding_sequence(10, np.random.default_rng(0), marker_probs=probs)
    with pytest.raises(ValueError, match=rf"^marker_probs {why}"):
        make_splits(0, 2, 10, marker_probs=probs)


@pytest.mark.parametrize("rng", [np.random.RandomState(0), 0, None, torch.Generator()])
def test_rng_must_be_a_generator(rng):
    with pytest.raises(ValueError, match=r"^rng must be a numpy.random.Generator"):
        adding_sequence(10, rng)
    with pytest.raises(ValueError, match=r"^rng must be a numpy.random.Generator"):
        make_split(2, 10, rng)


# --- splits -------------------------------------------------------------------------------------


def test_split_shapes_and_dtypes():
    splits = make_splits(4, n_sequences=5, seq_len=37)
    for split in (splits.train, splits.valid, splits.test):
        assert split.X.shape == (5, 37, 2)
        assert split.T.shape == (5, 37, 1)
        assert split.X.dtype == np.float32
        assert split.T.dtype == np.float32
        assert len(split) == 5
        for X, T in zip(split.X, split.T, strict=True):
            assert_follows_rule(X, T)


def test_default_split_sizes():
    splits = make_splits(0)
    assert splits.train.X.shape == (9, 3000, 2)
    assert splits.test.T.shape == (9, 3000, 1)


def test_same_seed_same_splits_bitwise():
    a, b = make_splits(123, 4, 50), make_splits(123, 4, 50)
    for name in ("train", "valid", "test"):
        sa, sb = getattr(a, name), getattr(b, name)
        assert sa.X.tobytes() == sb.X.tobytes()
        assert sa.T.tobytes() == sb.T.tobytes()


def test_different_seeds_differ():
    a, b = make_splits(1, 4, 50), make_splits(2, 4, 50)
    for name in ("train", "valid", "test"):
        assert not np.array_equal(getattr(a, name).X[:, :, 0], getattr(b, name).X[:, :, 0])
        assert not np.array_equal(getattr(a, name).X[:, :, 1], getattr(b, name).X[:, :, 1])


def test_the_three_splits_differ():
    s = make_splits(7, 4, 50)
    for a, b in ((s.train, s.valid), (s.train, s.test), (s.valid, s.test)):
        assert not np.array_equal(a.X[:, :, 0], b.X[:, :, 0])
        assert not np.array_equal(a.X[:, :, 1], b.X[:, :, 1])


def test_sequences_within_a_split_differ():
    X = make_splits(7, 4, 50).train.X
    assert len({X[i].tobytes() for i in range(4)}) == 4


def test_large_seeds_are_accepted():
    # The service draws seeds below 2**63.
    a, b = make_splits(2**63 - 1, 1, 5), make_splits(2**63 - 1, 1, 5)
    np.testing.assert_array_equal(a.train.X, b.train.X)


def test_global_rng_state_is_not_read():
    np.random.seed(1)
    torch.manual_seed(1)
    a = make_splits(42, 3, 40)
    np.random.seed(999)
    torch.manual_seed(999)
    np.random.rand(17)
    b = make_splits(42, 3, 40)
    for name in ("train", "valid", "test"):
        assert getattr(a, name).X.tobytes() == getattr(b, name).X.tobytes()
        assert getattr(a, name).T.tobytes() == getattr(b, name).T.tobytes()


def test_global_rng_state_is_not_changed():
    np.random.seed(5)
    np_before = np.random.get_state()
    torch_before = torch.get_rng_state().clone()
    make_splits(3, 3, 40)
    np_after = np.random.get_state()
    assert np_before[0] == np_after[0]
    np.testing.assert_array_equal(np_before[1], np_after[1])
    assert np_before[2:] == np_after[2:]
    assert torch.equal(torch_before, torch.get_rng_state())


@pytest.mark.parametrize("seed", [-1, 1.5, "3", True, None])
def test_bad_seed_is_rejected(seed):
    with pytest.raises(ValueError, match=r"^seed must be a non-negative integer"):
        make_splits(seed, 2, 10)


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"n_sequences": 0}, "n_sequences"),
    ({"n_sequences": -2}, "n_sequences"),
    ({"seq_len": 0}, "seq_len"),
    ({"seq_len": -5}, "seq_len"),
])  # fmt: skip
def test_bad_split_sizes_are_rejected(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name} must be a positive integer"):
        make_splits(0, **{"n_sequences": 2, "seq_len": 10, **kwargs})
    with pytest.raises(ValueError, match=rf"^{name} must be a positive integer"):
        make_split(rng=np.random.default_rng(0), **{"n_sequences": 2, "seq_len": 10, **kwargs})


def test_custom_marker_probs_reach_every_split():
    splits = make_splits(0, 3, 200, marker_probs=(0.5, 0.5, 0.0))
    for split in (splits.train, splits.valid, splits.test):
        assert not np.any(split.X[:, :, 1] == 1.0)
        np.testing.assert_array_equal(split.T, 0.0)
