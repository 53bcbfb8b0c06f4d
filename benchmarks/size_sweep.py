"""rnnlab against eager PyTorch at every size the schema offers: ms per epoch, the path chosen.

Run from the repository root:  python -m benchmarks.size_sweep [--hidden 2,8,16] [--only-batch3]

The grid: hidden size {2, 8, 16, 32, 64, 128, 256} × {batch 3 on 9 × 3000 (the notebook's
data), batch 32 on 96 × 1000} × {elman, lstm}, one network (population 1), Adam lr 0.01.
An epoch is what `models.train` does per epoch: Adam steps over the training split in
fixed-order batches, then the validation MSE.

- rnnlab: `models.train` on the path `models.chooser` picks (torch on one thread and the
  kernels on every core, as a worker runs); the figure is the median interval between its
  epoch reports.
- eager: torch.nn.LSTM / torch.nn.RNN (tanh) + nn.Linear, MSELoss, torch's Adam, validation
  under no_grad, at 1 thread and at torch's default thread count; eager's best is the lower.

Every figure comes from a process of its own (numba's threads beside eager slow it down),
the three of a cell one after the other in an order that alternates between cells. Then,
through the service (`rnnlab serve`, one local worker, SQLite), the notebook's shape at
population 1: per-epoch cost = (duration(E2 epochs) - duration(E1)) / (E2 - E1) from the
runs' own timestamps, against eager's best from the grid; and population 8 against
population 1 in-process (the default recipe's dimension).

Bars (issue 18): every cell ≥ 1.0× eager's best; through the service LSTM ≥ 8×, Elman
≥ 100×; population 8 ≤ 3× population 1 per epoch.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

SHAPES = {"batch 3, 9 × 3000": (9, 3000, 3), "batch 32, 96 × 1000": (96, 1000, 32)}
HIDDEN = (2, 8, 16, 32, 64, 128, 256)
LR = 0.01


# --- one measurement, in a child process ---------------------------------------------------


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from models import TrainConfig, build_population, kernels, make_splits, train

    n_seq, seq_len, batch = spec["n_sequences"], spec["seq_len"], spec["batch"]
    splits = make_splits(0, n_seq, seq_len)
    budget = spec["seconds"]
    if spec["who"] == "eager":
        from benchmarks.train_speed import EagerElman, EagerLSTM, make_epoch

        torch.set_num_threads(spec["threads"])
        data = tuple(
            torch.as_tensor(a, dtype=torch.float32)
            for a in (splits.train.X, splits.train.T, splits.valid.X, splits.valid.T)
        )
        torch.manual_seed(0)
        net = (EagerLSTM if spec["model"] == "lstm" else EagerElman)(2, spec["hidden"])
        epoch = make_epoch(net, data, batch, LR)
        epoch()  # warm-up
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < 3 or (time.perf_counter() - start < budget and len(times) < 50):
            t0 = time.perf_counter()
            epoch()
            times.append(time.perf_counter() - t0)
        return {"ms": statistics.median(times) * 1e3, "epochs": len(times)}
    # rnnlab, set up as a worker: torch on one thread, the kernels' groups on every core.
    torch.set_num_threads(1)
    kernels.set_threads(os.cpu_count() or 1)
    cfg = TrainConfig(
        model=spec["model"],
        hidden_size=spec["hidden"],
        batch_size=batch,
        n_sequences=n_seq,
        seq_len=seq_len,
        population=spec["population"],
        learning_rate=LR,
        epochs=10**9,  # stopped below; no halving inside the measured epochs
    )
    stamps: list[float] = []
    deadline = [float("inf")]

    def on_report(_: Any) -> None:
        stamps.append(time.perf_counter())
        if len(stamps) == 3:  # two epochs of warm-up (loading, caches), then the budget
            deadline[0] = time.perf_counter() + budget

    def stop() -> bool:
        return len(stamps) >= 60 or (len(stamps) >= 8 and time.perf_counter() > deadline[0])

    pop = build_population(cfg.model, seed=0, size=cfg.population, n_hidden=cfg.hidden_size)
    history = train(pop, splits, cfg, on_report=on_report, should_stop=stop)
    gaps = [b - a for a, b in itertools.pairwise(stamps[2:])]
    path = history.path + (f"/{history.layout}" if history.layout else "")
    return {"ms": statistics.median(gaps) * 1e3, "epochs": len(gaps), "path": path}


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """`_child(spec)` in a fresh Python process."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.size_sweep", "--child", json.dumps(spec)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- the table -------------------------------------------------------------------------------


def grid(args: argparse.Namespace) -> dict[tuple[str, str, int], dict[str, Any]]:
    default_threads = os.cpu_count() or 1
    thread_counts = sorted({1, default_threads})
    rows: dict[tuple[str, str, int], dict[str, Any]] = {}
    print(
        f"size_sweep: ms per epoch (train + validation), population 1, Adam lr {LR}; "
        f"eager's best of {thread_counts} torch threads; each figure a process of its own"
    )
    header = f"{'shape':<20} {'model':<6} {'H':>4} {'path':>12} {'rnnlab':>9} {'eager':>9}  ratio"
    print(header)
    turn = 0
    for shape_name, (n_seq, seq_len, batch) in SHAPES.items():
        if shape_name not in args.shapes:
            continue
        for model in ("lstm", "elman"):
            for hidden in args.hidden:
                base = dict(
                    model=model, hidden=hidden, n_sequences=n_seq, seq_len=seq_len, batch=batch,
                    seconds=args.seconds, population=1,
                )  # fmt: skip
                specs = [dict(base, who="rnnlab")] + [
                    dict(base, who="eager", threads=t) for t in thread_counts
                ]
                if turn % 2:
                    specs.reverse()
                turn += 1
                results = {json.dumps(s, sort_keys=True): measure(s) for s in specs}
                ours = next(r for s, r in results.items() if '"who": "rnnlab"' in s)
                eager = {
                    t: next(
                        r
                        for s, r in results.items()
                        if '"who": "eager"' in s and f'"threads": {t}' in s
                    )["ms"]
                    for t in thread_counts
                }
                best = min(eager.values())
                ratio = best / ours["ms"]
                rows[(shape_name, model, hidden)] = {
                    "rnnlab_ms": ours["ms"], "path": ours["path"], "eager_ms": eager,
                    "eager_best_ms": best, "ratio": ratio,
                }  # fmt: skip
                flag = "" if ratio >= 1.0 else "   < 1.0"
                print(
                    f"{shape_name:<20} {model:<6} {hidden:>4} {ours['path']:>12} "
                    f"{ours['ms']:9.2f} {best:9.2f} {ratio:6.2f}x{flag}",
                    flush=True,
                )
    return rows


def service_rows(
    args: argparse.Namespace, rows: dict[tuple[str, str, int], dict[str, Any]]
) -> None:
    """The notebook's shape at population 1 through `rnnlab serve`, against eager's best."""
    from benchmarks.train_speed import _served_durations, serve_for_benchmark

    e1, e2 = args.service_epochs
    shape = next(iter(SHAPES))
    print(
        f"\nservice: rnnlab serve (1 local worker, SQLite), {shape}, population 1; per-epoch "
        f"ms = (run of {e2} epochs - run of {e1}) / {e2 - e1}, median of {args.service_rounds}"
    )
    print(f"{'model':<6} {'path':>6} {'service':>9} {'eager best':>11}  ratio")
    with serve_for_benchmark() as url:
        for model in ("lstm", "elman"):
            per_epoch, paths = [], set()
            for _ in range(args.service_rounds):
                (a, b), path = _served_durations(url, model, 1, (e1, e2), LR, with_path=True)
                per_epoch.append((b - a) / (e2 - e1) * 1e3)
                paths.add(path)
            ms = statistics.median(per_epoch)
            cell = rows.get((shape, model, 2))
            if cell is None:
                best = min(
                    measure(dict(model=model, hidden=2, n_sequences=9, seq_len=3000, batch=3,
                                 seconds=args.seconds, population=1, who="eager", threads=t))["ms"]
                    for t in sorted({1, os.cpu_count() or 1})
                )  # fmt: skip
            else:
                best = cell["eager_best_ms"]
            print(f"{model:<6} {','.join(sorted(paths)):>6} {ms:9.2f} {best:11.2f} "
                  f"{best / ms:6.1f}x")  # fmt: skip


def population_rows(args: argparse.Namespace) -> None:
    """Population 8 against population 1 in-process, the notebook's shape, both kinds."""
    print("\npopulation: models.train as a worker runs it, batch 3 on 9 × 3000, hidden 2")
    print(f"{'model':<6} {'K=1 ms':>8} {'K=8 ms':>8}  K8/K1")
    for model in ("lstm", "elman"):
        ms: dict[int, list[float]] = {1: [], 8: []}
        for _ in range(args.population_rounds):  # the sizes take turns (drift hits both)
            for k in (1, 8):
                spec = dict(model=model, hidden=2, n_sequences=9, seq_len=3000, batch=3,
                            seconds=args.seconds, population=k, who="rnnlab")  # fmt: skip
                ms[k].append(measure(spec)["ms"])
        one, eight = statistics.median(ms[1]), statistics.median(ms[8])
        print(f"{model:<6} {one:8.2f} {eight:8.2f} {eight / one:6.2f}x")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument(
        "--hidden", default=",".join(map(str, HIDDEN)), help="comma-separated hidden sizes"
    )
    parser.add_argument("--only-batch3", action="store_true", help="skip the batch-32 shape")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per figure")
    parser.add_argument("--skip", default="", help="comma-separated: grid, service, population")
    parser.add_argument("--service-epochs", type=int, nargs=2, default=(20, 120))
    parser.add_argument("--service-rounds", type=int, default=3)
    parser.add_argument("--population-rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return
    args.hidden = [int(h) for h in args.hidden.split(",")]
    args.shapes = list(SHAPES)[:1] if args.only_batch3 else list(SHAPES)
    skip = set(args.skip.split(","))
    rows = grid(args) if "grid" not in skip else {}
    if "service" not in skip:
        service_rows(args, rows)
    if "population" not in skip:
        population_rows(args)


if __name__ == "__main__":
    main()
