"""Load test: mixed API traffic on a running rnnlab server while it trains, against a floor.

Run from the repository root:  python -m benchmarks.load [--clients 16] [--requests 400]

What it does, all in one bounded run:

1. starts `rnnlab serve` (as `python -m service.cli serve`) on a free local port, with
   RNNLAB_DATA_DIR in a fresh temporary directory, RNNLAB_WORKERS=2 (--workers) and
   RNNLAB_MAX_QUEUED high enough that POST /runs is never throttled, and the floor of
   benchmarks.predict_latency (`create_floor_app`: parses the same /predict body, answers
   zeros; no database, model or torch) in another subprocess;
2. trains one tiny LSTM run (`predict_latency._train`): the succeeded run that /predict,
   GET /runs/{id} and GET /runs/{id}/losses use;
3. starts two long LSTM runs (the default recipe, 100,000 epochs) and waits until both
   train (with one worker the second waits in the queue), so that every measurement below
   runs while the workers train; at the end it cancels them (POST /runs/{id}/cancel) and
   checks that they end `cancelled`;
4. times three phases, each after untimed warm-up requests, with --clients asyncio
   clients sharing one httpx.AsyncClient (a keep-alive pool of as many connections), each
   client sending the next request of a fixed, shuffled list until none is left:
   - mixed: --requests each of POST /predict (one --steps-step sequence), GET /runs/{id},
     GET /runs/{id}/losses and POST /runs (a tiny Elman run, 1 epoch, 3 × 20 steps; it
     queues behind the long runs and is left there);
   - /predict alone: --requests POST /predict, nothing else mixed in;
   - floor: --requests POST /predict to the floor, the same body;
   the timed requests go in --rounds slices (4), the three phases taking turns slice by
   slice, so that a change in background load falls on all of them alike;
5. prints, per route and phase, requests/s (the route's requests over the phase's wall
   time), p50 and p99 latency, errors (any non-2xx answer or exception, except 429) and 429
   answers (counted apart), then the ratio of rnnlab's /predict throughput alone to the
   floor's at the same concurrency, and the target line. --json PATH writes it all as JSON.

Request bodies are serialised once, so client-side JSON encoding is not timed. The client,
both servers and the training workers share the machine's cores: on a 2-core machine the
workers' training takes CPU from both servers alike, and the client's own event loop is
part of what limits every figure. If RNNLAB_BENCH_API_KEY is set, the server is started with
RNNLAB_API_KEYS set to it and every request carries `Authorization: Bearer <key>`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from benchmarks.predict_latency import _body, _train, serve_with_floor

LONG_RUN: dict[str, Any] = {"model": "lstm", "epochs": 100_000}  # default recipe, cancelled
TINY_RUN: dict[str, Any] = {
    "model": "elman",
    "epochs": 1,
    "seed": 0,
    "population": 1,
    "data": {"n_sequences": 3, "seq_len": 20},
}


@dataclass(frozen=True)
class Route:
    name: str
    method: str
    url: str
    body: bytes | None = None


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    throttled: int = 0
    first_error: str = ""

    def summary(self, wall: float) -> dict[str, Any]:
        p50, p99 = np.quantile(np.array(self.latencies), [0.5, 0.99]) if self.latencies else (0, 0)
        return {
            "n": len(self.latencies),
            "rps": len(self.latencies) / wall,
            "p50_ms": float(p50) * 1e3,
            "p99_ms": float(p99) * 1e3,
            "errors": self.errors,
            "throttled_429": self.throttled,
            "first_error": self.first_error,
        }


async def _phase(
    http: httpx.AsyncClient, tasks: list[Route], clients: int
) -> tuple[dict[str, Tally], float]:
    """Send every task once, from `clients` coroutines; per-route tallies and the wall time."""
    tallies = {route.name: Tally() for route in tasks}
    pending = iter(tasks)  # one event loop: each task is taken by exactly one client

    async def client() -> None:
        for route in pending:
            tally = tallies[route.name]
            t0 = time.perf_counter()
            try:
                r = await http.request(route.method, route.url, content=route.body)
                status, text = r.status_code, r.text[:200]
            except httpx.HTTPError as e:
                status, text = 0, f"{type(e).__name__}: {e}"
            tally.latencies.append(time.perf_counter() - t0)
            if status == 429:
                tally.throttled += 1
            elif not 200 <= status < 300:
                tally.errors += 1
                tally.first_error = tally.first_error or f"{status}: {text}"

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return tallies, time.perf_counter() - t0


async def _measure(
    phases: dict[str, list[Route]],
    requests: int,
    clients: int,
    warmup: int,
    headers: dict[str, str],
    rounds: int = 4,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Each phase: `warmup` untimed requests per client and route, then `requests` of each
    of its routes, shuffled, timed. The timed requests go in `rounds` slices, the phases
    taking turns slice by slice, so that a change in background load (the training runs)
    falls on every phase alike; a phase's figures are over all its slices."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"content-type": "application/json", **headers}
    tallies = {phase: {r.name: Tally() for r in routes} for phase, routes in phases.items()}
    walls = dict.fromkeys(phases, 0.0)
    async with httpx.AsyncClient(limits=limits, timeout=120, headers=headers) as http:
        for routes in phases.values():
            await _phase(http, routes * (warmup * clients), clients)
        for i in range(rounds):
            share = requests // rounds + (1 if i < requests % rounds else 0)
            for phase, routes in phases.items():
                tasks = routes * share
                random.Random(i).shuffle(tasks)
                got, wall = await _phase(http, tasks, clients)
                walls[phase] += wall
                for name, t in got.items():
                    mine = tallies[phase][name]
                    mine.latencies += t.latencies
                    mine.errors += t.errors
                    mine.throttled += t.throttled
                    mine.first_error = mine.first_error or t.first_error
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for phase, routes in phases.items():
        results[phase] = {r.name: tallies[phase][r.name].summary(walls[phase]) for r in routes}
        if len(routes) > 1:
            everything = Tally()
            for t in tallies[phase].values():
                everything.latencies += t.latencies
                everything.errors += t.errors
                everything.throttled += t.throttled
            results[phase]["all"] = everything.summary(walls[phase])
    return results


def _run(base: str, run_id: str, headers: dict[str, str]) -> dict[str, Any]:
    r = httpx.get(f"{base}/runs/{run_id}", headers=headers, timeout=30)
    r.raise_for_status()
    return r.json()


def _start_run(base: str, body: dict[str, Any], headers: dict[str, str]) -> str:
    r = httpx.post(f"{base}/runs", json=body, headers=headers, timeout=30)
    if r.status_code != 202:
        raise RuntimeError(f"POST /runs answered {r.status_code}: {r.text}")
    return r.json()["id"]


def _wait_for(
    base: str,
    run_id: str,
    headers: dict[str, str],
    until: set[str],
    timeout: float = 300,
    min_epochs: int = 0,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = _run(base, run_id, headers)
        if run["status"] in until and run["epochs_completed"] >= min_epochs:
            return run
        if run["status"] in {"succeeded", "failed", "cancelled"} - until:
            raise RuntimeError(f"run {run_id} ended {run['status']}: {run.get('error')}")
        time.sleep(0.2)
    raise TimeoutError(f"run {run_id} not {'/'.join(sorted(until))} after {timeout} s")


def _succeeded_run(base: str, headers: dict[str, str]) -> str:
    if not headers:
        return _train(base, "lstm")  # predict_latency's tiny run, POST /runs until succeeded
    body = {"model": "lstm", "epochs": 1, "seed": 0, "data": {"n_sequences": 3, "seq_len": 50}}
    run_id = _start_run(base, body, headers)
    _wait_for(base, run_id, headers, {"succeeded"})
    return run_id


def _print(report: dict[str, Any]) -> None:
    cfg = report["config"]
    print(
        f"load: {cfg['clients']} clients, {cfg['requests']} timed requests per route and phase, "
        f"/predict: one {cfg['steps']}-step sequence ({cfg['predict_body_kib']:.0f} KiB body)"
    )
    print(
        f"while {cfg['workers']} local worker(s) train: "
        + ", ".join(
            f"LSTM {rid[:8]} {t['epochs_during']} epochs during the measurement ({t['status']})"
            for rid, t in report["training"].items()
        )
    )
    print(
        f"{'phase':<15} {'route':<22} {'n':>5} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'errors':>6} {'429':>4}"
    )
    for phase, rows in report["phases"].items():
        for name, r in rows.items():
            print(
                f"{phase:<15} {name:<22} {r['n']:5d} {r['rps']:8.1f} {r['p50_ms']:8.2f} "
                f"{r['p99_ms']:8.2f} {r['errors']:6d} {r['throttled_429']:4d}"
            )
    for phase, rows in report["phases"].items():
        for name, r in rows.items():
            if r["first_error"]:
                print(f"first error, {phase} {name}: {r['first_error']}")
    phases = report["phases"]
    alone, floor = phases["predict alone"]["POST /predict"], phases["floor"]["POST /predict"]
    print(
        f"/predict req/s, rnnlab alone / floor at {cfg['clients']} clients: "
        f"{alone['rps']:.1f} / {floor['rps']:.1f} = {report['predict_vs_floor']:.2f}x; "
        f"p50 {alone['p50_ms'] / floor['p50_ms']:.2f}x the floor's; "
        f"mixed-in /predict: {phases['mixed']['POST /predict']['rps']:.1f} req/s"
    )
    print(
        "target: 0 errors, /predict throughput with 16 clients >= the floor's: "
        + ("met" if report["target_met"] else "NOT met")
        + f" ({report['errors']} errors, {report['predict_vs_floor']:.2f}x the floor's req/s"
        + f" at {cfg['clients']} clients)"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--requests", type=int, default=400, help="timed, per route and phase")
    parser.add_argument("--warmup", type=int, default=2, help="untimed, per client and route")
    parser.add_argument("--steps", type=int, default=3000, help="steps of the /predict sequence")
    parser.add_argument("--workers", type=int, default=2, help="RNNLAB_WORKERS of the server")
    parser.add_argument("--json", metavar="PATH", help="also write the results here as JSON")
    parser.add_argument(
        "--rounds", type=int, default=4, help="slices the phases take turns in (fairness)"
    )
    args = parser.parse_args(argv)

    key = os.environ.get("RNNLAB_BENCH_API_KEY", "")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with tempfile.TemporaryDirectory(prefix="rnnlab-load-") as tmp:
        env = {
            **os.environ,
            "RNNLAB_DATA_DIR": tmp,
            "RNNLAB_LOG_LEVEL": "warning",
            "RNNLAB_WORKERS": str(args.workers),
            "RNNLAB_MAX_QUEUED": str(1_000_000),
        }
        env.pop("RNNLAB_API_KEY", None)  # keys only as the benchmark sets them
        env.pop("RNNLAB_API_KEYS", None)
        if key:
            env["RNNLAB_API_KEYS"] = key
        with serve_with_floor(env, tmp) as (base, floor_base, _eager):
            run_id = _succeeded_run(base, headers)

            long_ids = [_start_run(base, {**LONG_RUN, "seed": s}, headers) for s in (1, 2)]
            for rid in long_ids[: max(1, args.workers)]:  # the rest wait in the queue
                _wait_for(base, rid, headers, {"running"}, min_epochs=1)  # past its start-up
            before = {rid: _run(base, rid, headers)["epochs_completed"] for rid in long_ids}

            body = _body(run_id, args.steps)
            predict = Route("POST /predict", "POST", f"{base}/predict", body)
            mixed = [
                predict,
                Route("GET /runs/{id}", "GET", f"{base}/runs/{run_id}"),
                Route("GET /runs/{id}/losses", "GET", f"{base}/runs/{run_id}/losses"),
                Route("POST /runs", "POST", f"{base}/runs", json.dumps(TINY_RUN).encode()),
            ]
            floor_predict = Route("POST /predict", "POST", f"{floor_base}/predict", body)
            phases = {"mixed": mixed, "predict alone": [predict], "floor": [floor_predict]}
            results = asyncio.run(
                _measure(phases, args.requests, args.clients, args.warmup, headers, args.rounds)
            )

            training: dict[str, dict[str, Any]] = {}
            for rid in long_ids:
                run = _run(base, rid, headers)
                training[rid] = {
                    "epochs_during": run["epochs_completed"] - before[rid],
                    "status": run["status"],
                }
            for rid in long_ids:
                r = httpx.post(f"{base}/runs/{rid}/cancel", headers=headers, timeout=30)
                if r.status_code != 202:
                    raise RuntimeError(f"cancel {rid} answered {r.status_code}: {r.text}")
            for rid in long_ids:
                end = _wait_for(base, rid, headers, {"cancelled"}, timeout=120)
                training[rid]["after_cancel"] = end["status"]

    errors = sum(r["errors"] for rows in results.values() for k, r in rows.items() if k != "all")
    ratio = (
        results["predict alone"]["POST /predict"]["rps"] / results["floor"]["POST /predict"]["rps"]
    )
    report = {
        "config": {
            "clients": args.clients,
            "requests": args.requests,
            "warmup": args.warmup,
            "steps": args.steps,
            "workers": args.workers,
            "predict_body_kib": len(body) / 1024,
            "run_id": run_id,
        },
        "phases": results,
        "training": training,
        "errors": errors,
        "predict_vs_floor": ratio,
        "target_met": errors == 0 and ratio >= 1.0,
    }
    _print(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
