"""The load test is a benchmark, not a test: this only proves that it runs, on a small setting."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.subprocess

ROOT = Path(__file__).resolve().parents[2]
MIXED = {"POST /predict", "GET /runs/{id}", "GET /runs/{id}/losses", "POST /runs"}


def test_load_benchmark_runs_on_a_small_setting(tmp_path: Path) -> None:
    out_json = tmp_path / "load.json"
    cmd = [sys.executable, "-m", "benchmarks.load", "--clients", "4", "--requests", "12"]
    cmd += ["--steps", "200", "--warmup", "1", "--workers", "2", "--json", str(out_json)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    assert "target: 0 errors, /predict throughput with 16 clients >= the floor's" in out.stdout

    report = json.loads(out_json.read_text())
    phases = report["phases"]
    assert set(phases) == {"mixed", "predict alone", "floor"}
    assert set(phases["mixed"]) == MIXED | {"all"}
    assert set(phases["predict alone"]) == set(phases["floor"]) == {"POST /predict"}
    for phase, rows in phases.items():
        for route, r in rows.items():
            where = f"{phase} {route}: {r}"
            assert r["n"] == 12 * (len(MIXED) if route == "all" else 1), where
            assert r["errors"] == 0 and r["throttled_429"] == 0, where
            assert r["rps"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"], where
    assert report["errors"] == 0
    alone, floor = phases["predict alone"]["POST /predict"], phases["floor"]["POST /predict"]
    assert report["predict_vs_floor"] == alone["rps"] / floor["rps"]
    assert report["target_met"] == (report["predict_vs_floor"] >= 1)

    # Two long runs trained (one per worker) through the measurement, then were cancelled.
    training = report["training"].values()
    assert len(training) == 2
    assert all(t["status"] == "running" and t["after_cancel"] == "cancelled" for t in training)
    assert sum(t["epochs_during"] for t in training) > 0
