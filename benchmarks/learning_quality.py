"""Does a recipe learn the adding problem on every seed? Error ratios over many run seeds.

Run from the repository root:  python -m benchmarks.learning_quality [--seeds 20] [--jobs 1]

Each candidate recipe is a set of TrainConfig fields over the defaults; everything else (hidden
size 2, 9 × 3000 steps per split, batch 3) stays as the notebook has it. Each run trains with
`models.fit` from its own run seed (its own data, its own initial weights) and is judged on
its own test split by the error ratio: test MSE / the zero predictor's test MSE. Printed per
recipe: the ratios' min, median, 90th percentile and max, how many runs are at or below
1.5 %, how many the verdict calls "learned", and the wall time per run (one process, one torch
thread, so the figures do not depend on --jobs beyond machine load).

`--recipes` picks candidates by name (default: all); `--epochs` overrides every recipe's epoch
count (for a quick check that the script runs, as CI does).
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import fields

import numpy as np
import torch

from models import TrainConfig, fit

TARGET = 0.015  # error ratio a run must reach: at most 1.5 % of the zero predictor's error

# name → TrainConfig fields over the defaults. "notebook" is the setting before populations;
# the candidates start from it (restore_best off), "default" is TrainConfig's defaults now.
LEGACY = {
    "population": 1,
    "learning_rate": 0.01,
    "lr_schedule": "constant",
    "clip_grad_norm": 0.0,
    "restore_best": False,
}
RECIPES: dict[str, dict[str, object]] = {
    "notebook": {**LEGACY},
    "lr0.03": {**LEGACY, "learning_rate": 0.03},
    "lr0.03-pop4": {**LEGACY, "learning_rate": 0.03, "population": 4},
    "lr0.03-pop8": {**LEGACY, "learning_rate": 0.03, "population": 8},
    "lr0.03-pop8-cos": {**LEGACY, "learning_rate": 0.03, "population": 8, "lr_schedule": "cosine"},
    "lr0.05-pop8-cos-clip": {
        **LEGACY,
        "learning_rate": 0.05,
        "population": 8,
        "lr_schedule": "cosine",
        "clip_grad_norm": 1.0,
    },
    "lr0.03-pop4-cos": {**LEGACY, "learning_rate": 0.03, "population": 4, "lr_schedule": "cosine"},
    "lr0.04-pop4": {**LEGACY, "learning_rate": 0.04, "population": 4},
    "lr0.03-pop3": {**LEGACY, "learning_rate": 0.03, "population": 3},
    "lr0.03-pop4-ep200": {**LEGACY, "learning_rate": 0.03, "population": 4, "epochs": 200},
    "lr0.05-pop4-cos-clip": {
        **LEGACY,
        "learning_rate": 0.05,
        "population": 4,
        "lr_schedule": "cosine",
        "clip_grad_norm": 1.0,
    },
    "default": {},  # whatever TrainConfig's defaults are now
}


def one_run(
    args: tuple[str, dict[str, object], int, int | None],
) -> tuple[str, str, int, float, float]:
    """(recipe, model, seed, error ratio, seconds) of one run with one torch thread."""
    name, fields_, seed, model_and_epochs = args[0], args[1], args[2], args[3]
    torch.set_num_threads(1)
    model, epochs = model_and_epochs  # type: ignore[misc]
    overrides = {**fields_, "model": model, "seed": seed, "device": "cpu"}
    if epochs is not None:
        overrides["epochs"] = epochs
    cfg = TrainConfig(**overrides)  # type: ignore[arg-type]
    start = time.perf_counter()
    result = fit(cfg)
    seconds = time.perf_counter() - start
    ratio = result.metrics.error_ratio
    return name, model, seed, float("nan") if ratio is None else ratio, seconds


def summarise(name: str, model: str, ratios: list[float], seconds: list[float]) -> str:
    r = np.array(ratios)
    hits = int((r <= TARGET).sum())
    learned = int((r <= 0.05).sum())
    return (
        f"{name:<22} {model:<6} {r.min() * 100:7.2f} {np.median(r) * 100:7.2f} "
        f"{np.percentile(r, 90) * 100:7.2f} {r.max() * 100:7.2f}   {hits:>3}/{len(r):<3} "
        f"{learned:>3}/{len(r):<3} {statistics.median(seconds):7.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=20, help="how many run seeds")
    parser.add_argument("--first-seed", type=int, default=1, help="seeds first … first+N-1")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel processes")
    parser.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated names")
    parser.add_argument("--models", default="lstm,elman", help="lstm, elman or both")
    parser.add_argument("--elman-recipes", default="notebook,default", help="recipes for Elman")
    parser.add_argument("--epochs", type=int, default=None, help="override every recipe's")
    args = parser.parse_args()
    known = {f.name for f in fields(TrainConfig)}
    jobs = []
    for model in args.models.split(","):
        names = args.recipes.split(",") if model == "lstm" else args.elman_recipes.split(",")
        for name in names:
            if name not in RECIPES:
                parser.error(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
            assert set(RECIPES[name]) <= known
            jobs += [
                (name, RECIPES[name], seed, (model, args.epochs))
                for seed in range(args.first_seed, args.first_seed + args.seeds)
            ]
    print(f"defaults: {TrainConfig()}")
    print(
        f"{'recipe':<22} {'model':<6} {'min%':>7} {'median%':>7} {'p90%':>7} {'max%':>7}"
        f"   ≤{TARGET * 100:g}%   learned  s/run"
    )
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    expected = {(j[0], j[3][0]): 0 for j in jobs}
    for j in jobs:
        expected[(j[0], j[3][0])] += 1
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for name, model, _seed, ratio, seconds in pool.map(one_run, jobs):
            key = (name, model)
            results.setdefault(key, []).append((ratio, seconds))
            if len(results[key]) == expected[key]:
                ratios = [r for r, _ in results[key]]
                print(summarise(name, model, ratios, [s for _, s in results[key]]), flush=True)
                print("    ratios %: " + " ".join(f"{x * 100:.2f}" for x in ratios), flush=True)


if __name__ == "__main__":
    main()
