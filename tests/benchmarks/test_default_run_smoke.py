"""benchmarks/default_run is a benchmark, not a test: this proves it runs, on 3 epochs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.subprocess

ROOT = Path(__file__).resolve().parents[2]


def test_default_run_benchmark_runs() -> None:
    cmd = [sys.executable, "-m", "benchmarks.default_run", "--seeds", "1,2", "--epochs", "3"]
    # The bound is for a hang: with the kernels not yet compiled and calibrated (a fresh clone,
    # an edit to models/kernels) this took 257 s on a loaded 2-core machine.
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, check=True)
    runs = re.findall(r"^seed (\d): succeeded in ([\d.]+) s \(claim to end\)", out.stdout, re.M)
    assert [seed for seed, _ in runs] == ["1", "2"], out.stdout
    assert all(float(s) > 0 for _, s in runs)
    assert re.search(r"^median [\d.]+ s", out.stdout, re.M), out.stdout
