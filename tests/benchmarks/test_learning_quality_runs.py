"""The learning-quality benchmark is a benchmark, not a test: this only proves that it runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.subprocess

ROOT = Path(__file__).resolve().parents[2]


def test_learning_quality_benchmark_runs_on_a_small_seeded_setting() -> None:
    cmd = [sys.executable, "-m", "benchmarks.learning_quality", "--seeds", "2", "--epochs", "2"]
    cmd += ["--recipes", "default,notebook", "--elman-recipes", "default", "--jobs", "1"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, check=True)
    rows = [
        line.split() for line in out.stdout.splitlines() if re.match(r"^\S+ +(lstm|elman) ", line)
    ]
    assert {(r[0], r[1]) for r in rows} == {
        ("default", "lstm"),
        ("notebook", "lstm"),
        ("default", "elman"),
    }
    for r in rows:
        low, median, p90, high = map(float, r[2:6])
        assert 0 <= low <= median <= p90 <= high
        assert r[6].endswith("/2") and r[7].endswith("/2")
