"""Per-epoch training time: rnnlab's fused kernels vs eager PyTorch recurrent layers.

Run from the repository root:  python -m benchmarks.train_speed [--rounds 15] [--threads 2,1]

One epoch is exactly what `models.train` does per epoch: Adam steps with MSE over the train
split in fixed-order batches, then the validation MSE under no_grad. Every variant runs the same
loop on the same data and sizes (default 9 sequences × 3000 steps, batch 3, hidden 2, Adam lr
0.01):

- rnnlab: `models.build_model(kind)` trained as `models.train` trains it, epoch for epoch:
  the path `models.chooser` picks (`models.paths`; at these sizes the lane kernels, an epoch
  of forward, backward and Adam in one compiled call), then its validation pass;
- eager: torch.nn.RNN(nonlinearity="tanh") or torch.nn.LSTM, then nn.Linear, with torch's
  default Adam;
- reference (Elman only): the same rnnlab model under `models.networks.reference_mode()`,
  the readable per-step nn.Linear loop.

Then, with torch's default thread count:

- population: `models.train` on a population of K = 1, 2, 4, 8, 16 members (no halving inside
  the measured epochs), ms per epoch and the ratio to K = 1, set up as a worker is (torch on
  one thread, the kernels' sequence groups on every core); the sizes take turns in each
  round, and the ratio is the median of the rounds' own ratios;
- service: what a user sees through rnnlab — a real `rnnlab serve` (SQLite, one local
  worker) trains runs of E1 and E2 epochs; per-epoch cost = (duration(E2) - duration(E1)) /
  (E2 - E1) from the runs' started_at/finished_at, so setup and the final evaluation cancel
  out; the same difference for `models.fit` in-process, the population-1 and the default
  recipe's population; served and in-process pairs alternate, the figures are medians.

Variants alternate within each round after warm-up epochs, so load from other processes hits
them alike; the figures are medians over rounds. The whole table is measured once per torch
thread count in --threads: by default torch's own default (one thread per core) and 1
thread. The eager baselines depend on it a lot: their many tiny ops pay OpenMP fork/join
costs with more threads, while rnnlab's kernels run on one thread in this table either way
(the population and service rows give them every core, as a worker does).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import torch
from torch import nn

from models import (
    Population,
    TrainConfig,
    build_model,
    build_population,
    fit,
    kernels,
    make_splits,
    train,
)
from models.networks import LSTMModel, reference_mode
from models.training import make_optimizer, make_path


class EagerElman(nn.Module):
    """torch.nn.RNN (tanh) + nn.Linear: the stock-PyTorch equivalent of the Elman network."""

    def __init__(self, n_input: int, n_hidden: int) -> None:
        super().__init__()
        self.rnn = nn.RNN(n_input, n_hidden, nonlinearity="tanh", batch_first=True)
        self.fc = nn.Linear(n_hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.rnn(x)[0])


class EagerLSTM(nn.Module):
    """torch.nn.LSTM + nn.Linear."""

    def __init__(self, n_input: int, n_hidden: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(n_input, n_hidden, batch_first=True)
        self.fc = nn.Linear(n_hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.lstm(x)[0])


Epoch = Callable[[], None]


def make_epoch(
    model: nn.Module,
    data: tuple[torch.Tensor, ...],
    batch_size: int,
    lr: float,
    optimizer: Any = None,
) -> Epoch:
    """One epoch of `models.train`'s loop (train batches, then validation) as a closure.

    `optimizer` defaults to torch's default Adam (the eager baselines); the rnnlab variants
    pass `models.training.make_optimizer`'s, the one `models.train` uses.
    """
    X, T, Xv, Tv = data
    if optimizer is None:
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.MSELoss()

    def epoch() -> None:
        model.train()
        for i in range(0, X.shape[0], batch_size):
            xb, tb = X[i : i + batch_size], T[i : i + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), tb)
            loss.backward()
            optimizer.step()
            loss.item()
        model.eval()
        with torch.no_grad():
            float(((model(Xv) - Tv) ** 2).mean())

    return epoch


def rnnlab_epoch(model: nn.Module, data: tuple[torch.Tensor, ...], args: Any) -> Epoch:
    """One epoch exactly as `models.train` runs it: the chosen path's (`models.paths`)
    training epoch, then its validation pass."""
    X, T, Xv, Tv = data
    pop = Population([model])
    optimizer = make_optimizer(pop, args.lr)
    kind = "lstm" if isinstance(model, LSTMModel) else "elman"
    cfg = TrainConfig(model=kind, hidden_size=model.n_hidden, batch_size=args.batch_size)
    engine = make_path(None, pop, X, T, Xv, Tv, cfg)

    def epoch() -> None:
        with engine.threads():
            engine.train_epoch(pop, optimizer, args.lr, 0.0)
            engine.validate(pop).result()

    return epoch


def reference_epoch(model: nn.Module, data: tuple[torch.Tensor, ...], args: Any) -> Epoch:
    """The readable per-step nn.Linear loop (reference_mode) in the eager loop."""
    optimizer = make_optimizer(model, args.lr)
    return in_reference_mode(make_epoch(model, data, args.batch_size, args.lr, optimizer))


def in_reference_mode(epoch: Epoch) -> Epoch:
    def run() -> None:
        with reference_mode():
            epoch()

    return run


def measure(args: argparse.Namespace, data: tuple[torch.Tensor, ...]) -> dict[str, list[float]]:
    """Seconds per epoch of every variant, `rounds` epochs each, interleaved."""
    h = args.hidden
    variants: dict[str, tuple[Epoch, int]] = {}
    for kind, eager in (("elman", EagerElman), ("lstm", EagerLSTM)):
        torch.manual_seed(0)
        fast = rnnlab_epoch(build_model(kind, n_hidden=h, seed=0), data, args)
        slow = make_epoch(eager(2, h), data, args.batch_size, args.lr)
        variants[f"{kind}/rnnlab"] = (fast, args.rounds)
        variants[f"{kind}/eager"] = (slow, args.rounds)
        if kind == "elman":
            ref = reference_epoch(build_model(kind, n_hidden=h, seed=0), data, args)
            variants[f"{kind}/reference"] = (ref, args.reference_rounds)

    for epoch, _ in variants.values():
        for _ in range(args.warmup):
            epoch()  # compiles or loads the kernels, warms allocators and caches
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(max(n for _, n in variants.values())):
        for name, (epoch, n) in variants.items():
            if r < n:
                start = time.perf_counter()
                epoch()
                times[name].append(time.perf_counter() - start)
    return times


def report(args: argparse.Namespace, times: dict[str, list[float]]) -> None:
    print(
        f"train_speed: {args.n_sequences} sequences x {args.seq_len} steps, batch "
        f"{args.batch_size}, hidden {args.hidden}, Adam lr {args.lr}, MSE; torch "
        f"{torch.__version__}, {torch.get_num_threads()} thread(s); ms per epoch "
        "(train + validation)"
    )
    print(f"{'variant':<18} {'median':>9} {'min':>9} {'epochs':>7}   speed-up vs eager")
    for name, ts in times.items():
        kind = name.split("/")[0]
        med = statistics.median(ts)
        eager_med = statistics.median(times[f"{kind}/eager"])
        ratio = f"{eager_med / med:6.1f}x" if not name.endswith("/eager") else "     -"
        print(f"{name:<18} {med * 1e3:9.2f} {min(ts) * 1e3:9.2f} {len(ts):7d}   {ratio}")


def population_rows(args: argparse.Namespace, splits: Any) -> None:
    """ms per epoch of models.train for populations of K members, both kinds.

    The K values take turns within each round (this machine's speed drifts over seconds),
    and the ratio to K = 1 is the median of each round's own ratio."""
    sizes = (1, 2, 4, 8, 16)
    print(
        f"\npopulation: models.train, kernels on {kernels.get_threads()} thread(s), torch on "
        f"{torch.get_num_threads()}, ms per epoch (median of {args.population_rounds} "
        "rounds, the sizes alternating)"
    )
    print(f"{'kind':<6} {'K':>3} {'median':>9} {'vs K=1':>7}")
    for kind in ("lstm", "elman"):
        times: dict[int, list[float]] = {k: [] for k in sizes}
        for _ in range(args.population_rounds):
            for k in sizes:
                times[k].append(_population_epoch(args, splits, kind, k))
        for k in sizes:
            ratio = statistics.median(a / b for a, b in zip(times[k], times[1], strict=True))
            med = statistics.median(times[k])
            print(f"{kind:<6} {k:>3} {med * 1e3:9.2f} {ratio:6.2f}x")


def _population_epoch(args: argparse.Namespace, splits: Any, kind: str, k: int) -> float:
    """Seconds per epoch of `models.train` on a population of k, over population_epochs
    epochs after `warmup` untimed ones."""
    # A huge epoch count puts the first halving far away; should_stop ends it early.
    cfg = TrainConfig(model=kind, epochs=10**9, population=k, learning_rate=args.lr)
    pop = build_population(kind, seed=0, size=k)
    left = [args.warmup + args.population_epochs]
    start = [0.0]

    def stop() -> bool:
        left[0] -= 1
        if left[0] == args.population_epochs - 1:
            start[0] = time.perf_counter()
        return left[0] < 0

    train(pop, splits, cfg, should_stop=stop)
    return (time.perf_counter() - start[0]) / args.population_epochs


def _served_durations(
    base_url: str,
    kind: str,
    population: int,
    epochs: tuple[int, int],
    lr: float,
    *,
    with_path: bool = False,
) -> Any:
    """Wall seconds from started_at to finished_at of one run per epoch count (with
    with_path, also the training path the runs took)."""
    import httpx

    out, paths = [], set()
    with httpx.Client(base_url=base_url, timeout=60) as http:
        for n in epochs:
            body = {"model": kind, "epochs": n, "seed": 1, "population": population}
            body["learning_rate"] = lr
            run = http.post("/runs", json=body).json()
            while run["status"] in ("queued", "running"):
                # The durations come from the run's own timestamps, so the polling rate only
                # sets this client's load on the 2 cores: 4 requests a second, about what
                # the dashboard's event stream costs, not a request every few epochs.
                time.sleep(0.25)
                run = http.get(f"/runs/{run['id']}").json()
            if run["status"] != "succeeded":
                raise RuntimeError(f"run {run['id']} ended {run['status']}: {run['error']}")
            started = datetime.fromisoformat(run["started_at"])
            finished = datetime.fromisoformat(run["finished_at"])
            out.append((finished - started).total_seconds())
            paths.add(run.get("train_path"))
    if with_path:
        return out, ",".join(sorted(str(p) for p in paths))
    return out


@contextlib.contextmanager
def serve_for_benchmark() -> Iterator[str]:
    """A real `rnnlab serve` (SQLite in a temporary directory, one local worker) on a free
    port, ready (its worker warmed up); yields its URL."""
    import httpx

    with tempfile.TemporaryDirectory() as tmp, socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        env = {k: v for k, v in os.environ.items() if not k.startswith("RNNLAB_")}
        env.update(RNNLAB_DATA_DIR=tmp, RNNLAB_WORKERS="1", RNNLAB_LOG_LEVEL="warning")
        cmd = [sys.executable, "-m", "service.cli", "serve", "--port", str(port)]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 300  # a first start may calibrate the paths
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{url}/readyz").json().get("status") == "ok":
                        break
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("rnnlab serve did not become ready")
                time.sleep(0.2)
            yield url
        finally:
            proc.terminate()
            proc.wait(30)


def service_rows(args: argparse.Namespace) -> None:
    """Per-epoch cost through `rnnlab serve` next to models.fit in-process."""
    e1, e2 = args.service_epochs
    default_k = TrainConfig().population
    print(
        f"\nservice: per-epoch ms = (run of {e2} epochs - run of {e1}) / {e2 - e1}; "
        "rnnlab serve with 1 local worker on SQLite vs models.fit in this process"
    )
    print(f"{'kind':<6} {'K':>3} {'in-process':>11} {'service':>9} {'overhead':>9}")
    with serve_for_benchmark() as url:
        for kind in ("lstm", "elman"):
            for k in dict.fromkeys((1, default_k)):
                served, local = [], []
                for _ in range(args.service_rounds):  # alternating: a slow spell hits both
                    a, b = _served_durations(url, kind, k, (e1, e2), args.lr)
                    served.append((b - a) / (e2 - e1))
                    ts = []
                    for n in (e1, e2):
                        cfg = TrainConfig(
                            model=kind, epochs=n, seed=1, population=k, learning_rate=args.lr
                        )
                        start = time.perf_counter()
                        fit(cfg)
                        ts.append(time.perf_counter() - start)
                    local.append((ts[1] - ts[0]) / (e2 - e1))
                service = statistics.median(served)
                inproc = statistics.median(local)
                print(
                    f"{kind:<6} {k:>3} {inproc * 1e3:11.2f} {service * 1e3:9.2f} "
                    f"{(service / inproc - 1) * 100:8.1f}%"
                )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-sequences", type=int, default=9)
    parser.add_argument("--seq-len", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--rounds", type=int, default=15, help="timed epochs per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed epochs per variant")
    parser.add_argument("--reference-rounds", type=int, default=5, help="for the slow loop")
    parser.add_argument("--population-epochs", type=int, default=10)
    parser.add_argument("--population-rounds", type=int, default=5)
    parser.add_argument(
        "--service-epochs", type=int, nargs=2, default=(20, 120), metavar=("E1", "E2")
    )
    parser.add_argument(
        "--service-rounds", type=int, default=5, help="run pairs per service row (median)"
    )
    parser.add_argument("--skip", default="", help="comma-separated: eager, population, service")
    default_threads = torch.get_num_threads()
    parser.add_argument(
        "--threads",
        default=",".join(dict.fromkeys(map(str, (default_threads, 1)))),
        help="comma-separated torch thread counts, one table each (default: %(default)s)",
    )
    args = parser.parse_args(argv)

    splits = make_splits(0, args.n_sequences, args.seq_len)
    data = tuple(
        torch.as_tensor(a, dtype=torch.float32)
        for a in (splits.train.X, splits.train.T, splits.valid.X, splits.valid.T)
    )
    skip = set(args.skip.split(","))
    if "eager" not in skip:
        for i, threads in enumerate(int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            if i:
                print()
            report(args, measure(args, data))
    # As a worker runs: torch on one thread, the kernels' sequence groups on every core.
    torch.set_num_threads(1)
    kernels.set_threads(default_threads)
    if "population" not in skip:
        population_rows(args, splits)
    if "service" not in skip:
        service_rows(args)


if __name__ == "__main__":
    main()
