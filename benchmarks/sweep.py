"""A sweep of short runs through 1, 2 and 4 worker processes, on the local pool and on Celery.

Run from the repository root:  python -m benchmarks.sweep [--runs 16] [--workers 1,2,4]

For each queue (local: `rnnlab serve` with RNNLAB_WORKERS=N on SQLite; celery: `rnnlab
serve` with RNNLAB_QUEUE=celery on PostgreSQL plus N `rnnlab worker` processes, Redis between
them; both servers started here, tests/support/servers.py) and each worker count N:

1. a fresh database, the server, and its workers;
2. warm-up: N runs, so that every worker has loaded torch and the compiled kernels;
3. timed: POST /sweeps with --runs seeds of one short run (LSTM, population 1, 9 × 1000
   steps, 40 epochs by default), then GET /sweeps/{id} until it has ended;
4. wall time from the POST to the sweep's end, runs per minute, and the speed-up against one
   worker of the same queue.

Every process shares this machine's cores: on 2 cores, two workers are the most that can
train at once, so expect about 2× at best, and 4 workers no faster than 2 (they take turns
on the cores, and the API, Redis and PostgreSQL want some too).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.support.servers import Unavailable, free_port, postgres_server, redis_server

CLI = [sys.executable, "-m", "service.cli"]


def _start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


@contextlib.contextmanager
def _cluster(queue: str, workers: int, extra_env: dict[str, str], tmp: Path) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RNNLAB_")}
    env.update(extra_env, RNNLAB_DATA_DIR=str(tmp / "data"), RNNLAB_LOG_LEVEL="warning")
    env.update(RNNLAB_MAX_QUEUED="100000")
    procs = []
    if queue == "local":
        env["RNNLAB_WORKERS"] = str(workers)
    else:
        env.update(RNNLAB_QUEUE="celery", RNNLAB_WORKERS="0")
    try:
        procs.append(_start([*CLI, "serve", "--port", str(port)], env, tmp / "api.log"))
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            if time.monotonic() > deadline or procs[0].poll() is not None:
                raise RuntimeError(f"server did not start: {(tmp / 'api.log').read_text()}")
            time.sleep(0.2)
        if queue == "celery":
            for i in range(workers):
                procs.append(_start([*CLI, "worker"], env, tmp / f"worker{i}.log"))
        yield url
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)


def _sweep(url: str, base: dict[str, Any], seeds: list[int], timeout: float = 1800) -> float:
    """Seconds from POST /sweeps to its end (every run succeeded)."""
    start = time.perf_counter()
    r = httpx.post(f"{url}/sweeps", json={"base": base, "grid": {"seed": seeds}}, timeout=60)
    r.raise_for_status()
    sweep_id = r.json()["id"]
    deadline = time.monotonic() + timeout
    while True:
        sweep = httpx.get(f"{url}/sweeps/{sweep_id}", timeout=30).json()
        if sweep["status"] == "ended":
            wall = time.perf_counter() - start
            if sweep["counts"]["succeeded"] != len(seeds):
                raise RuntimeError(f"sweep ended with {sweep['counts']}")
            return wall
        if time.monotonic() > deadline:
            raise RuntimeError(f"sweep did not end: {sweep['counts']}")
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=16)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--queues", default="local,celery")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seq-len", type=int, default=1000)
    args = parser.parse_args(argv)
    counts = [int(w) for w in args.workers.split(",")]
    queues = args.queues.split(",")
    base = {
        "model": "lstm",
        "epochs": args.epochs,
        "population": 1,
        "data": {"n_sequences": 9, "seq_len": args.seq_len},
    }
    results: dict[str, dict[int, float]] = {}
    with contextlib.ExitStack() as stack:
        extra: dict[str, dict[str, str]] = {"local": {}}
        new_db = None
        if "celery" in queues:
            try:
                broker = stack.enter_context(redis_server())
                new_db = stack.enter_context(postgres_server())
                extra["celery"] = {"RNNLAB_BROKER_URL": broker}
            except Unavailable as e:
                print(f"celery rows skipped: needs {e}")
                queues = [q for q in queues if q != "celery"]
        for queue in queues:
            results[queue] = {}
            for n in counts:
                env = dict(extra[queue])
                if queue == "celery" and new_db is not None:
                    env["RNNLAB_DATABASE_URL"] = new_db()
                with (
                    tempfile.TemporaryDirectory(prefix="rnnlab-sweep-") as tmp,
                    _cluster(queue, n, env, Path(tmp)) as url,
                ):
                    _sweep(url, base, list(range(1000, 1000 + n)))  # warm-up: one run each
                    results[queue][n] = _sweep(url, base, list(range(args.runs)))
                print(f"{queue:<7} {n} worker(s): {results[queue][n]:.1f} s", flush=True)
    print(
        f"\nsweep: {args.runs} runs of LSTM(2), population 1, 9 × {args.seq_len} steps, "
        f"{args.epochs} epochs; {os.cpu_count()} cores"
    )
    print(f"{'queue':<8} {'workers':>7} {'wall s':>8} {'runs/min':>9} {'speed-up':>9}")
    for queue, rows in results.items():
        one = rows.get(1)
        for n, wall in rows.items():
            speed = f"{one / wall:8.2f}x" if one else "       -"
            print(f"{queue:<8} {n:7d} {wall:8.1f} {60 * args.runs / wall:9.1f} {speed}")
    return {"results": results, "runs": args.runs}


if __name__ == "__main__":
    main()
