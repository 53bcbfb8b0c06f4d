"""Peak memory of `models.predict` on one 1,000,000-step sequence, per model kind.

Run from the repository root:  python -m benchmarks.predict_memory [--steps 1000000]

Each kind is measured in a fresh subprocess, so one measurement's allocations (and the
allocator's retained free memory) cannot hide or inflate another's. In the child:

1. import models, build the model, draw the input sequence (the caller's data, not
   predict's), and run one tiny predict, so that loading the compiled kernels and torch's
   lazy initialisation are not counted as per-request memory;
2. idle = VmRSS from /proc/self/status;
3. reset the kernel's peak-RSS counter by writing "5" to /proc/self/clear_refs (Linux ≥ 4.0:
   VmHWM becomes the current RSS), run predict, and read VmHWM: the exact peak resident
   memory during predict, tracked by the kernel page by page, with no sampling to miss a
   short spike;
4. report VmHWM - idle.

Where clear_refs cannot be written (not Linux, or a restricted container) the child falls
back to resource.getrusage's ru_maxrss, the process's lifetime peak: still an upper bound of
the peak during predict, as long as nothing before predict used more, which step 1 keeps
small; the output says which method ran. Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

LIMIT_MB = 300.0


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def child(kind: str, steps: int, threads: int) -> dict[str, object]:
    """Measure one kind in this process; returns the figures (MB, s)."""
    import numpy as np
    import torch

    from models import build_model, predict

    torch.set_num_threads(threads)
    model = build_model(kind, seed=0)
    x = np.random.default_rng(0).uniform(-1, 1, (steps, 2)).astype(np.float32)
    x[:, 1] = np.round(x[:, 1])  # markers in {-1, 0, 1}, as the service's inputs
    predict(model, [x[:100]])  # warm-up: loads the compiled kernels
    idle_kb = _status_kb("VmRSS")
    method = "VmHWM after clear_refs" if _reset_peak() else "ru_maxrss (lifetime peak)"
    start = time.perf_counter()
    (y,) = predict(model, [x])
    seconds = time.perf_counter() - start
    if method.startswith("VmHWM"):
        peak_kb = _status_kb("VmHWM")
    else:
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
    assert y.shape == (steps, 1) and bool(np.isfinite(y).all())
    return {
        "kind": kind,
        "idle_mb": idle_kb / 1024,
        "peak_mb": peak_kb / 1024,
        "increase_mb": (peak_kb - idle_kb) / 1024,
        "input_mb": x.nbytes / 2**20,
        "seconds": seconds,
        "method": method,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--kinds", default="elman,lstm")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.threads)))
        return

    print(f"predict_memory: one {args.steps:,}-step sequence through models.predict")
    print(
        f"{'kind':<7} {'idle MB':>9} {'peak MB':>9} {'increase MB':>12} {'input MB':>9} "
        f"{'seconds':>8}  method"
    )
    for kind in args.kinds.split(","):
        cmd = [sys.executable, "-m", "benchmarks.predict_memory", "--child", kind]
        cmd += ["--steps", str(args.steps), "--threads", str(args.threads)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        verdict = "ok" if r["increase_mb"] < LIMIT_MB else f"OVER {LIMIT_MB:.0f} MB"
        print(
            f"{kind:<7} {r['idle_mb']:9.1f} {r['peak_mb']:9.1f} {r['increase_mb']:12.1f} "
            f"{r['input_mb']:9.1f} {r['seconds']:8.2f}  {r['method']}; {verdict}"
        )


if __name__ == "__main__":
    main()
