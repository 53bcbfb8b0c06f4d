"""Time of a default run through the service, from claim to succeeded (the 10 s target).

Run from the repository root:  python -m benchmarks.default_run [--seeds 1,2,3] [--model lstm]

Starts `rnnlab serve` (one local worker, SQLite, a fresh data directory), waits for
/readyz, then posts `{"model": "lstm", "seed": s}` (every other field at its default: hidden
size 2, 9 × 3000 steps per split, batch 3, the default recipe's population and epochs) for
each seed in turn, the first right after the server started, and prints each run's
started_at → finished_at (claim to succeeded, from the run itself), its error ratio and
verdict, and the median.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime
from typing import Any

import httpx

from benchmarks.predict_latency import _process, _wait_ready
from tests.support.servers import free_port


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--model", default="lstm", choices=["lstm", "elman"])
    parser.add_argument("--epochs", type=int, help="(default: the server's default)")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="rnnlab-default-run-") as tmp:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("RNNLAB_")}
        env.update(RNNLAB_DATA_DIR=tmp, RNNLAB_WORKERS="1", RNNLAB_LOG_LEVEL="warning")
        log = os.path.join(tmp, "server.log")
        cmd = [sys.executable, "-m", "service.cli", "serve", "--port", str(port)]
        with _process(cmd, env, log) as proc:
            base = f"http://127.0.0.1:{port}"
            _wait_ready(f"{base}/readyz", proc, log)
            for seed in (int(s) for s in args.seeds.split(",")):
                body: dict[str, Any] = {"model": args.model, "seed": seed}
                if args.epochs:
                    body["epochs"] = args.epochs
                run_id = httpx.post(f"{base}/runs", json=body, timeout=30).json()["id"]
                while (run := httpx.get(f"{base}/runs/{run_id}", timeout=30).json())["status"] in (
                    "queued",
                    "running",
                ):
                    time.sleep(0.1)
                start = datetime.fromisoformat(run["started_at"])
                seconds = (datetime.fromisoformat(run["finished_at"]) - start).total_seconds()
                rows.append({"seed": seed, "status": run["status"], "seconds": seconds,
                             "error_ratio": run["metrics"]["error_ratio"],
                             "verdict": run["metrics"]["verdict"]})  # fmt: skip
                r = rows[-1]
                print(
                    f"seed {seed}: {r['status']} in {seconds:.2f} s (claim to end), "
                    f"error ratio {r['error_ratio']}, {r['verdict']}",
                    flush=True,
                )
    print(f"median {statistics.median(r['seconds'] for r in rows):.2f} s ({os.cpu_count()} cores)")
    return rows


if __name__ == "__main__":
    main()
