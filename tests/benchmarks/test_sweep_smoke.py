"""The sweep benchmark is a benchmark, not a test: this only proves that it runs, small."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.missing import missing_server

pytestmark = [pytest.mark.subprocess, pytest.mark.servers]

ROOT = Path(__file__).resolve().parents[2]


def test_sweep_benchmark_runs_on_a_small_setting() -> None:
    cmd = [sys.executable, "-m", "benchmarks.sweep", "--runs", "2", "--workers", "1,2"]
    cmd += ["--epochs", "2", "--seq-len", "40"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, check=True)
    if "celery rows skipped" in out.stdout:
        missing_server("redis-server and postgresql for the benchmark's celery rows")
    rows = re.findall(
        r"^(local|celery)\s+(\d)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x$", out.stdout, re.M
    )
    assert [(q, int(n)) for q, n, *_ in rows] == [
        ("local", 1), ("local", 2), ("celery", 1), ("celery", 2)
    ], out.stdout  # fmt: skip
    for _q, n, wall, per_min, speed in rows:
        assert float(wall) > 0 and float(per_min) > 0
        if n == "1":
            assert float(speed) == 1.0
