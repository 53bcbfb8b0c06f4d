"""Latency of `POST /predict` on a running rnnlab server, against an HTTP + JSON floor.

Run from the repository root:  python -m benchmarks.predict_latency [--requests 200]

What it does, all in one run:

1. starts `rnnlab serve` (as `python -m service.cli serve`) on a free local port, with
   RNNLAB_DATA_DIR in a fresh temporary directory, and waits for GET /readyz;
2. trains one tiny run per model kind (POST /runs, then GET /runs/{id} until it succeeds);
3. starts the floor: a minimal FastAPI app (`create_floor_app`) served by uvicorn in another
   subprocess, whose POST /predict parses the same body (the service's own PredictRequest
   schema when importable, else an equivalent one) and answers zeros of the same shape, with
   no database, model or torch: what HTTP and JSON alone cost;
4. starts the naive eager server (`create_eager_app`): the same FastAPI body parsing, then
   torch.nn.LSTM / torch.nn.RNN (tanh) + nn.Linear of the run's kind and hidden size under
   inference_mode, at torch's default thread count: what two lines of PyTorch behind an
   endpoint give;
5. sends one 3000-step sequence per request, from 1 and then 8 concurrent clients (threads,
   each with its own keep-alive httpx connection), after warm-up requests, and prints p50 and
   p99 latency, requests/s, the p50 ratio to the floor's at the same concurrency, and
   rnnlab's p50 against the eager server's for the same model (≤ 1.0: rnnlab is faster),
   for each hidden size in --hidden (the issue's bar: not slower at hidden size 128).

The request body is serialised once, so client-side JSON encoding is not timed. Client and
servers share the machine's cores: on a 2-core machine 8 clients compete with the server
for CPU, which the floor suffers alike.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel

from tests.support.servers import free_port

KINDS = ("elman", "lstm")


try:  # the floor validates with the service's own schema, so both servers parse alike
    from service.schemas import PredictRequest as FloorRequest
except ImportError:  # pragma: no cover - the service is not importable

    class FloorRequest(BaseModel):  # type: ignore[no-redef]
        run_id: str
        sequences: list[list[tuple[float, float]]]


class FloorResponse(BaseModel):
    run_id: str
    outputs: list[list[float]]


def create_floor_app() -> FastAPI:
    """The floor: parse the /predict body, answer zeros; no database, model or torch."""
    app = FastAPI()

    @app.post("/predict", response_model=FloorResponse)
    def floor_predict(body: FloorRequest) -> FloorResponse:  # sync: a threadpool hop, as rnnlab
        zeros = [[0.0] * len(seq) for seq in body.sequences]
        return FloorResponse(run_id=body.run_id, outputs=zeros)

    return app


def create_eager_app() -> FastAPI:
    """The naive eager server: parse the /predict body as the floor does; run_id names the
    network ("lstm-128": kind and hidden size; random weights: only the time matters)."""
    import torch
    from torch import nn

    app = FastAPI()
    networks: dict[str, nn.Module] = {}
    lock = threading.Lock()

    def network(name: str) -> nn.Module:
        with lock:
            if name not in networks:
                kind, hidden = name.split("-")
                layer = nn.LSTM if kind == "lstm" else nn.RNN
                rnn = layer(2, int(hidden), batch_first=True)
                networks[name] = nn.ModuleDict({"rnn": rnn, "fc": nn.Linear(int(hidden), 1)})
            return networks[name]

    @app.post("/predict", response_model=FloorResponse)
    def eager_predict(body: FloorRequest) -> FloorResponse:
        net = network(body.run_id)
        outputs = []
        with torch.inference_mode():
            for seq in body.sequences:
                x = torch.tensor([[list(step) for step in seq]], dtype=torch.float32)
                outputs.append(net["fc"](net["rnn"](x)[0])[0, :, 0].tolist())
        return FloorResponse(run_id=body.run_id, outputs=outputs)

    return app


@contextmanager
def _process(cmd: list[str], env: dict[str, str], log_path: str) -> Iterator[subprocess.Popen]:
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            proc.terminate()  # SIGTERM: uvicorn shuts down gracefully (and its workers)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def serve_with_floor(env: dict[str, str], tmp: str) -> Iterator[tuple[str, str, str]]:
    """`rnnlab serve`, the floor and the naive eager server, each on a free port with its
    log in `tmp`, all ready; yields their base URLs."""
    port, floor_port, eager_port = free_port(), free_port(), free_port()
    server_cmd = [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1"]
    app_cmd = [sys.executable, "-m", "uvicorn", "--factory", "--log-level", "warning"]
    floor_cmd = [*app_cmd, "benchmarks.predict_latency:create_floor_app"]
    eager_cmd = [*app_cmd, "benchmarks.predict_latency:create_eager_app"]
    logs = [os.path.join(tmp, f"{name}.log") for name in ("server", "floor", "eager")]
    with (
        _process([*server_cmd, "--port", str(port)], env, logs[0]) as server,
        _process([*floor_cmd, "--port", str(floor_port)], env, logs[1]) as floor,
        _process([*eager_cmd, "--port", str(eager_port)], env, logs[2]) as eager,
    ):
        urls = [f"http://127.0.0.1:{p}" for p in (port, floor_port, eager_port)]
        _wait_ready(f"{urls[0]}/readyz", server, logs[0])
        _wait_ready(f"{urls[1]}/docs", floor, logs[1])
        _wait_ready(f"{urls[2]}/docs", eager, logs[2])
        yield urls[0], urls[1], urls[2]


def _wait_ready(url: str, proc: subprocess.Popen, log_path: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            with open(log_path) as f:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{f.read()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout} s")


def _train(base: str, kind: str, hidden: int = 2, timeout: float = 300) -> str:
    body = {"model": kind, "epochs": 1, "seed": 0, "hidden_size": hidden}
    body["data"] = {"n_sequences": 3, "seq_len": 50}
    r = httpx.post(f"{base}/runs", json=body, timeout=30)
    if r.status_code != 202:
        raise RuntimeError(f"POST /runs answered {r.status_code}: {r.text}")
    run_id = r.json()["id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = httpx.get(f"{base}/runs/{run_id}", timeout=30).json()["status"]
        if status == "succeeded":
            return run_id
        if status in ("failed", "cancelled"):
            raise RuntimeError(f"run {run_id} ({kind}) ended {status}")
        time.sleep(0.2)
    raise TimeoutError(f"run {run_id} ({kind}) not done after {timeout} s")


def _body(run_id: str, steps: int) -> bytes:
    rng = np.random.default_rng(0)
    values = rng.uniform(-1, 1, steps).round(6)
    markers = rng.choice([-1.0, 0.0, 1.0], steps, p=[0.25, 0.25, 0.5])
    seq = [[float(v), float(m)] for v, m in zip(values, markers, strict=True)]
    return json.dumps({"run_id": run_id, "sequences": [seq]}).encode()


def _load(url: str, body: bytes, clients: int, requests: int, warmup: int) -> dict[str, float]:
    """`requests` POSTs spread over `clients` threads; latencies of each, and the rate."""
    headers = {"content-type": "application/json"}
    per_client = max(1, requests // clients)
    latencies: list[float] = []
    lock = threading.Lock()
    start_gate = threading.Barrier(clients + 1)
    errors: list[str] = []

    def client() -> None:
        mine: list[float] = []
        with httpx.Client(timeout=60) as http:
            for _ in range(warmup):
                http.post(url, content=body, headers=headers)
            start_gate.wait()
            for _ in range(per_client):
                t0 = time.perf_counter()
                r = http.post(url, content=body, headers=headers)
                mine.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    errors.append(f"{r.status_code}: {r.text[:200]}")
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    start_gate.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} failed requests, e.g. {errors[0]}")
    qs = np.quantile(np.array(latencies), [0.5, 0.99])
    return {"p50": qs[0], "p99": qs[1], "rps": len(latencies) / wall, "n": len(latencies)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000, help="steps of the one sequence")
    parser.add_argument("--requests", type=int, default=200, help="timed, per measurement")
    parser.add_argument("--warmup", type=int, default=5, help="untimed, per client")
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--hidden", default="2,128", help="comma-separated hidden sizes")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    sizes = [int(h) for h in args.hidden.split(",")]

    with tempfile.TemporaryDirectory(prefix="rnnlab-bench-") as tmp:
        env = {**os.environ, "RNNLAB_DATA_DIR": tmp, "RNNLAB_LOG_LEVEL": "warning"}
        with serve_with_floor(env, tmp) as (base, floor_base, eager_base):
            targets: dict[str, tuple[str, bytes]] = {}
            for hidden in sizes:
                for kind in KINDS:
                    run_id = _train(base, kind, hidden)
                    targets[f"{kind}/{hidden}"] = (f"{base}/predict", _body(run_id, args.steps))
                    targets[f"{kind}/{hidden} eager"] = (
                        f"{eager_base}/predict",
                        _body(f"{kind}-{hidden}", args.steps),
                    )
            targets["floor"] = (f"{floor_base}/predict", _body("floor", args.steps))
            results: dict[tuple[str, int], dict[str, float]] = {}
            for clients in levels:
                for name, (url, body) in targets.items():
                    results[name, clients] = _load(url, body, clients, args.requests, args.warmup)

    print(
        f"predict_latency: POST /predict, one {args.steps}-step sequence "
        f"({len(targets['floor'][1]) / 1024:.0f} KiB body), {args.requests} requests each; "
        "'eager': the naive eager server"
    )
    print(
        f"{'target':<16} {'clients':>7} {'p50 ms':>9} {'p99 ms':>9} {'req/s':>8} "
        f"{'p50 / floor':>12} {'p50 / eager':>12}"
    )
    for clients in levels:
        floor_p50 = results["floor", clients]["p50"]
        for name in targets:
            r = results[name, clients]
            eager = results.get((f"{name} eager", clients))
            versus = f"{r['p50'] / eager['p50']:11.2f}x" if eager else ""
            print(
                f"{name:<16} {clients:7d} {r['p50'] * 1e3:9.2f} {r['p99'] * 1e3:9.2f} "
                f"{r['rps']:8.1f} {r['p50'] / floor_p50:11.2f}x {versus:>12}"
            )


if __name__ == "__main__":
    main()
