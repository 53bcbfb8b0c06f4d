"""Every compiled kernel's outputs and gradients on fixed inputs, kept bit for bit.

`kernels.npz` beside this file holds, for a fixed set of cases (below), what each kernel
family computes, as arrays named "<family>/<case>/<output>":

- autograd: `kernels.elman_population` and `kernels.lstm_population` (the autograd Functions
  behind `model(x)` with autograd on the CPU): the states, and the gradients of every input
  for a given upstream gradient (the LSTM's with and without dx); the chunked inference
  (`*_population_inference`, two time chunks, the state carried in between). Groups of
  sequences on both sides of the Elman kernels' layout switch and the LSTM's wide path.
- lanes, rows: one epoch with Adam (`lstm_epoch`, `elman_epoch`: parameters, Adam's moments,
  losses), one batch's gradients (`*_grads`), the validation sums (`*_sse`) and, for lanes,
  prediction (`predict_network`, what `model(x)` runs without autograd).
- adam: `kernels.adam.Adam`, a few steps on float32 and float64 parameters.

Kinds lstm and elman, float32 and float64, populations of 1, 3 and 8 members, 1, 7 and 100
steps (the kernels move time in chunks of 32), hidden sizes compiled in and not
(`lanes.UNROLL_MAX`). Inputs come from numpy's legacy `RandomState` (its stream is frozen),
and their SHA-256 is stored too, so a changed input is told apart from a changed kernel.

The results must not depend on the number of threads (`kernels.set_threads`: 1, 2 and 3
threads for the autograd family; members split into ranges for lanes and rows, as
`models.paths` runs them): the test checks every one against the same stored bits, and
`--write` refuses to store results that differ between them.

Regenerate only for an intended numerical change, and say so in the commit message (which
kernels, why, and the size of the change against the old file):

    python -m tests.models.golden            # compare, one line per differing array
    python -m tests.models.golden --write --overwrite

Machines. The kernels use no fast-math flags and no reductions whose order depends on the
vector width (`simd.vsum` sums its lanes in a fixed order, `vfma` is LLVM's fused
multiply-add on every target, and without fast-math LLVM neither reassociates nor contracts
the scalar loops it vectorizes), so the bits do not depend on the CPU's vector extensions:
the file, made on an AVX-512 machine, passed with the kernels compiled for other targets
(NUMBA_CPU_NAME=haswell: AVX2; skylake-avx512; x86-64: SSE2, no FMA unit). So the test
compares on every machine, and fails on any difference. What can legitimately differ is the
environment: another libm (Adam's bias corrections use Python's float power), another numba
or LLVM (a changed lowering, a code generator bug). The file records the environment it was
made in, and a failure's message says what differs between that environment and this one.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

PATH = Path(__file__).with_name("kernels.npz")
FAMILIES = ("autograd", "lanes", "rows", "adam")
THREADS = (1, 2, 3)

Arrays = dict[str, np.ndarray]


# --- inputs -------------------------------------------------------------------------------------


class Inputs:
    """Uniform values in [-scale, scale) from a frozen stream; a digest of all drawn so far."""

    def __init__(self, seed: int) -> None:
        self._rs = np.random.RandomState(seed)
        self._digest = hashlib.sha256()

    def __call__(self, *shape: int, dtype: Any, scale: float = 1.0) -> np.ndarray:
        a = (self._rs.uniform(-1.0, 1.0, size=shape) * scale).astype(dtype)
        self._digest.update(a.tobytes())
        return a

    def digest(self) -> np.ndarray:
        return np.frombuffer(self._digest.digest(), dtype=np.uint8).copy()


F32, F64 = np.float32, np.float64
TORCH_DTYPE = {F32: torch.float32, F64: torch.float64}


def _name(kind: str, dtype: Any, **dims: int) -> str:
    return f"{kind}-{np.dtype(dtype).name}-" + "".join(f"{k}{v}" for k, v in dims.items())


@contextmanager
def kernel_threads(n: int) -> Iterator[None]:
    from models import kernels

    saved = kernels.get_threads()
    kernels.set_threads(n)
    try:
        yield
    finally:
        kernels.set_threads(saved)


# --- the autograd family --------------------------------------------------------------------------

# kind, dtype, members K, batch B, steps T, hidden H. Sequences per pass K·B: the Elman
# forward is unit-major from 8 sequences a group, its backward from 6; the LSTM's wide path
# from 7 units (sequences · H) a group. With 2 or 3 threads the groups are smaller, so most
# cases run both layouts.
AUTOGRAD_CASES = [
    ("elman", F32, 1, 1, 1, 2),
    ("elman", F32, 1, 3, 7, 2),
    ("elman", F32, 3, 3, 100, 2),
    ("elman", F32, 8, 4, 100, 3),
    ("elman", F64, 3, 2, 7, 3),
    ("elman", F64, 8, 1, 100, 2),
    ("lstm", F32, 1, 1, 1, 2),
    ("lstm", F32, 1, 3, 7, 2),
    ("lstm", F32, 3, 3, 100, 2),
    ("lstm", F32, 8, 2, 100, 3),
    ("lstm", F64, 3, 1, 7, 3),
    ("lstm", F64, 8, 1, 100, 1),
]


def _np_out(t: torch.Tensor | None) -> np.ndarray:
    """A result as stored: a copy, or an empty array for a gradient that is None."""
    return np.zeros(0) if t is None else t.detach().numpy().copy()


def _elman_autograd(dtype: Any, k: int, b: int, t: int, h: int, seed: int) -> Arrays:
    from models import kernels

    draw = Inputs(seed)
    td = TORCH_DTYPE[dtype]
    a = draw(k, b, t, h, dtype=dtype, scale=1.5)
    w = draw(k, h, h, dtype=dtype, scale=0.9 / np.sqrt(h))
    bias = draw(k, h, dtype=dtype, scale=0.5)
    dhs = draw(k, b, t, h, dtype=dtype)
    h0 = draw(k, b, h, dtype=dtype)
    out: Arrays = {}
    at, wt, bt = (torch.tensor(v, dtype=td, requires_grad=True) for v in (a, w, bias))
    hs = kernels.elman_population(at, wt, bt)
    grads = torch.autograd.grad(hs, [at, wt, bt], torch.tensor(dhs), allow_unused=True)
    out["hs"] = _np_out(hs)
    out["grad_a"], out["grad_w"], out["grad_b"] = (_np_out(g) for g in grads)
    # Inference in two chunks (the second mid-sequence, from the first's final state), then
    # from a given state.
    with torch.no_grad():
        state = torch.zeros(k, b, h, dtype=td)
        split = max(1, t // 2)
        parts = [kernels.elman_population_inference(at[:, :, :split], wt, bt, state, True)]
        if split < t:
            parts.append(kernels.elman_population_inference(at[:, :, split:], wt, bt, state, False))
        out["infer_hs"] = _np_out(torch.cat(parts, dim=2))
        out["infer_h"] = _np_out(state)
        given = torch.tensor(h0)
        out["infer_from_h"] = _np_out(kernels.elman_population_inference(at, wt, bt, given, False))
        out["infer_from_h_h"] = _np_out(given)
    out["inputs_sha256"] = draw.digest()
    return out


def _lstm_autograd(dtype: Any, k: int, b: int, t: int, h: int, seed: int) -> Arrays:
    from models import kernels

    draw = Inputs(seed)
    td = TORCH_DTYPE[dtype]
    n_in = 2
    x = draw(b, t, n_in, dtype=dtype)
    scale = 1.0 / np.sqrt(h)
    w_ih = draw(k, 4 * h, n_in, dtype=dtype, scale=scale)
    w_hh = draw(k, 4 * h, h, dtype=dtype, scale=scale)
    b_ih = draw(k, 4 * h, dtype=dtype, scale=scale)
    b_hh = draw(k, 4 * h, dtype=dtype, scale=scale)
    dhs = draw(k, b, t, h, dtype=dtype)
    h0, c0 = draw(k, b, h, dtype=dtype), draw(k, b, h, dtype=dtype)
    out: Arrays = {}
    weights = [torch.tensor(v, dtype=td, requires_grad=True) for v in (w_ih, w_hh, b_ih, b_hh)]
    names = ["grad_w_ih", "grad_w_hh", "grad_b_ih", "grad_b_hh"]
    for with_dx in (True, False):
        xt = torch.tensor(x, dtype=td, requires_grad=with_dx)
        hs = kernels.lstm_population(xt, *weights)
        inputs = ([xt] if with_dx else []) + weights
        grads = torch.autograd.grad(hs, inputs, torch.tensor(dhs))
        suffix = "" if with_dx else "_no_dx"
        out["hs" + suffix] = _np_out(hs)
        if with_dx:
            out["grad_x"] = _np_out(grads[0])
        for name, g in zip(names, grads[-4:], strict=True):
            out[name + suffix] = _np_out(g)
    with torch.no_grad():
        xt = torch.tensor(x, dtype=td)
        hc = [torch.zeros(k, b, h, dtype=td), torch.zeros(k, b, h, dtype=td)]
        split = max(1, t // 2)
        parts = [kernels.lstm_population_inference(xt[:, :split], *weights, *hc)]
        if split < t:
            parts.append(kernels.lstm_population_inference(xt[:, split:], *weights, *hc))
        out["infer_hs"] = _np_out(torch.cat(parts, dim=2))
        out["infer_h"], out["infer_c"] = _np_out(hc[0]), _np_out(hc[1])
        given = [torch.tensor(h0), torch.tensor(c0)]
        out["infer_from_hc"] = _np_out(kernels.lstm_population_inference(xt, *weights, *given))
        out["infer_from_hc_h"], out["infer_from_hc_c"] = _np_out(given[0]), _np_out(given[1])
    out["inputs_sha256"] = draw.digest()
    return out


def autograd_family(threads: int = 1) -> Arrays:
    """The autograd family's results on `threads` threads (`kernels.set_threads`)."""
    out: Arrays = {}
    with kernel_threads(threads):
        for seed, (kind, dtype, k, b, t, h) in enumerate(AUTOGRAD_CASES):
            run = _elman_autograd if kind == "elman" else _lstm_autograd
            case = _name(kind, dtype, K=k, B=b, T=t, H=h)
            for key, value in run(dtype, k, b, t, h, 100 + seed).items():
                out[f"autograd/{case}/{key}"] = value
    return out


# --- the fused kernels: lanes and rows ----------------------------------------------------------

# kind, dtype, members K, rows N, steps T, hidden H, batch size, clip, packed inputs (lanes):
# several batches with a short last one, hidden sizes compiled in (2, 3) and not (9, over
# lanes.UNROLL_MAX and one row block), one step (the Elman network then never uses hr).
FUSED_CASES = [
    ("lstm", F32, 1, 5, 7, 2, 2, 0.5, True),
    ("lstm", F32, 3, 4, 100, 9, 4, 0.0, False),
    ("lstm", F64, 8, 3, 1, 3, 3, 1.0, True),
    ("lstm", F32, 8, 9, 100, 2, 3, 0.0, True),
    ("elman", F32, 1, 5, 7, 2, 2, 0.5, True),
    ("elman", F32, 3, 4, 100, 9, 4, 0.0, False),
    ("elman", F64, 8, 3, 1, 3, 3, 1.0, True),
    ("elman", F32, 8, 9, 100, 2, 3, 0.0, True),
    # float64 through time (added after a perturbation of the lanes backward's dL/dh sum
    # left the float64 cases above, of one step, unchanged)
    ("lstm", F64, 3, 4, 100, 3, 2, 0.0, False),
    ("elman", F64, 3, 4, 100, 3, 2, 0.5, True),
]
N_IN, N_OUT = 2, 1


def member_ranges(k: int, parts: int) -> list[tuple[int, int]]:
    """[m0, m1) member ranges as `models.paths.even_ranges` makes them for `parts` threads."""
    parts = max(1, min(parts, k))
    edges = [round(i * k / parts) for i in range(parts + 1)]
    return [(edges[i], edges[i + 1]) for i in range(parts)]


class _Net:
    """A case's parameters in `lanes.Params` order as [K, size] arrays, with Adam's state."""

    def __init__(self, kind: str, dtype: Any, k: int, h: int, draw: Inputs) -> None:
        rows = 4 * h if kind == "lstm" else h
        sizes = [rows * N_IN, rows, rows * h, rows, N_OUT * h, N_OUT]
        scale = 1.0 / np.sqrt(h)
        self.params = [draw(k, n, dtype=dtype, scale=scale) for n in sizes]
        # Adam part-way through: moments of some earlier steps.
        self.moments1 = [draw(k, n, dtype=dtype, scale=0.01) for n in sizes]
        self.moments2 = [np.abs(draw(k, n, dtype=dtype, scale=1e-4)) for n in sizes]
        self.steps = np.full(6, 3, dtype=np.int64)


def _fused_data(kind: str, dtype: Any, n: int, t: int, draw: Inputs) -> tuple[np.ndarray, ...]:
    x, target = draw(n, t, N_IN, dtype=dtype), draw(n, t, N_OUT, dtype=dtype)
    xv, tv = draw(n + 2, t, N_IN, dtype=dtype), draw(n + 2, t, N_OUT, dtype=dtype)
    return x, target, xv, tv


def _fused_case(layout: str, case: tuple[Any, ...], seed: int, parts: int) -> Arrays:
    from models.kernels import lanes, rows

    kind, dtype, k, n, t, h, batch, clip, packed = case
    draw = Inputs(seed)
    net = _Net(kind, dtype, k, h, draw)
    x, target, xv, tv = _fused_data(kind, dtype, n, t, draw)
    code = lanes.KINDS[kind]
    shape = tuple(lanes.size_tag(v) for v in (N_IN, h, N_OUT))
    used = np.ones(6, dtype=np.bool_)
    used[2] = used[3] = kind == "lstm" or t > 1
    module: Any = lanes if layout == "lanes" else rows
    lstm = kind == "lstm"
    budget = 256 << 20 if packed else 0
    ranges = member_ranges(k, parts)
    out: Arrays = {}

    # One epoch with Adam, each range of members in its own call (and workspace).
    params = lanes.Params(*(p.copy() for p in net.params))
    moments1 = lanes.Params(*(m.copy() for m in net.moments1))
    moments2 = lanes.Params(*(m.copy() for m in net.moments2))
    hp = lanes.AdamConfig(lr=0.03, beta1=0.9, beta2=0.999, eps=1e-8, clip=clip)
    losses = np.zeros(k)
    epoch = module.lstm_epoch if lstm else module.elman_epoch
    for m0, m1 in ranges:
        if layout == "lanes":
            data = lanes.make_data(x, target, batch, m1 - m0, budget)
            groups = -(-(m1 - m0) * min(batch, n) // lanes.L)
            ws = lanes.workspace(code, N_IN, h, N_OUT, groups, t, dtype)
            epoch(shape=shape, data=data, m0=m0, m1=m1, params=params, moments1=moments1,
                  moments2=moments2, steps=net.steps, hp=hp, used=used, ws=ws,
                  losses=losses)  # fmt: skip
        else:
            ws = rows.workspace(code, N_IN, h, N_OUT, min(batch, n), t, dtype)
            epoch(shape=shape, x=x, target=target, batch_size=batch, m0=m0, m1=m1,
                  params=params, moments1=moments1, moments2=moments2, steps=net.steps, hp=hp,
                  used=used, ws=ws, losses=losses)  # fmt: skip
    for i in range(6):
        out[f"epoch_param{i}"] = params[i]
        out[f"epoch_moment1_{i}"] = moments1[i]
        out[f"epoch_moment2_{i}"] = moments2[i]
    out["epoch_losses"] = losses

    # One batch of all rows, no step: losses and gradients (one call, as models.paths).
    start = lanes.Params(*(p.copy() for p in net.params))
    grads = lanes.Params(*(np.zeros_like(p) for p in net.params))
    losses = np.zeros(k)
    if layout == "lanes":
        data = lanes.make_data(x, target, n, k, budget)
        ws = lanes.workspace(code, N_IN, h, N_OUT, -(-k * n // lanes.L), t, dtype)
        (lanes.lstm_grads if lstm else lanes.elman_grads)(
            shape=shape, data=data, m0=0, m1=k, params=start, used=used, ws=ws, losses=losses,
            grads=grads,
        )  # fmt: skip
    else:
        ws = rows.workspace(code, N_IN, h, N_OUT, n, t, dtype)
        (rows.lstm_grads if lstm else rows.elman_grads)(
            shape=shape, x=x, target=target, m0=0, m1=k, params=start, used=used, ws=ws,
            losses=losses, grads=grads,
        )  # fmt: skip
    for i in range(6):
        out[f"grads_{i}"] = grads[i]
    out["grads_losses"] = losses

    # Validation sums, in passes of 2 rows (forward only, two steps of state).
    sse = np.zeros(k)
    for m0, m1 in ranges:
        if layout == "lanes":
            data = lanes.make_data(xv, tv, 2, m1 - m0, budget)
            ws = lanes.workspace(code, N_IN, h, N_OUT, -(-(m1 - m0) * 2 // lanes.L), 2, dtype)
            (lanes.lstm_sse if lstm else lanes.elman_sse)(
                shape=shape, data=data, m0=m0, m1=m1, params=start, ws=ws, out=sse
            )
        else:
            ws = rows.workspace(code, N_IN, h, N_OUT, 2, 2, dtype)
            (rows.lstm_sse if lstm else rows.elman_sse)(
                shape=shape, x=xv, target=tv, m0=m0, m1=m1, params=start, ws=ws, out=sse
            )
    out["sse"] = sse

    if layout == "lanes":  # prediction: each member's network alone, packed inputs or not
        xt = torch.from_numpy(xv)
        for m in sorted({0, k - 1}):
            weights = [torch.from_numpy(p[m].copy()) for p in net.params]
            weights[0] = weights[0].view(-1, N_IN)
            weights[2] = weights[2].view(-1, h)
            weights[4] = weights[4].view(N_OUT, h)
            y = lanes.predict_network(kind, weights, xt, 64 << 20 if packed else 0)
            out[f"predict_member{m}"] = y.numpy().copy()
    out["inputs_sha256"] = draw.digest()
    return out


def fused_family(layout: str, parts: int = 1) -> Arrays:
    """The `layout` ("lanes" or "rows") kernels' results with members split into `parts`
    ranges (as `models.paths` splits them over threads)."""
    out: Arrays = {}
    for seed, case in enumerate(FUSED_CASES):
        kind, dtype, k, n, t, h, batch, clip, packed = case
        name = _name(kind, dtype, K=k, N=n, T=t, H=h, batch=batch)
        name += f"-clip{clip}" + ("-packed" if packed and layout == "lanes" else "")
        for key, value in _fused_case(layout, case, 200 + seed, parts).items():
            out[f"{layout}/{name}/{key}"] = value
    return out


# --- Adam -------------------------------------------------------------------------------------


def adam_family() -> Arrays:
    """`kernels.adam.Adam`: five steps (the learning rate changed after the third) on
    parameters of several shapes, float32 and float64."""
    from models.kernels.adam import Adam

    out: Arrays = {}
    for seed, dtype in enumerate((F32, F64)):
        draw = Inputs(300 + seed)
        td = TORCH_DTYPE[dtype]
        params = [torch.tensor(draw(*s, dtype=dtype)) for s in ((8, 2), (8,), (1, 2), (1,))]
        grads = [[torch.tensor(draw(*p.shape, dtype=dtype)) for p in params] for _ in range(5)]
        opt = Adam(params, lr=0.03)
        for i, step_grads in enumerate(grads):
            if i == 3:
                opt.param_groups[0]["lr"] = 0.01
            for p, g in zip(params, step_grads, strict=True):
                p.grad = g.to(td)
            opt.step()
        case = f"adam/{np.dtype(dtype).name}"
        for i, p in enumerate(params):
            state = opt.state[p]
            out[f"{case}/param{i}"] = p.numpy().copy()
            out[f"{case}/exp_avg{i}"] = state["exp_avg"].numpy().copy()
            out[f"{case}/exp_avg_sq{i}"] = state["exp_avg_sq"].numpy().copy()
        out[f"{case}/inputs_sha256"] = draw.digest()
    return out


# --- all of it, compared ----------------------------------------------------------------------


def family(name: str, threads: int = 1) -> Arrays:
    """One family's results; `threads`: kernel threads (autograd) or member ranges (lanes,
    rows); ignored for adam."""
    if name == "autograd":
        return autograd_family(threads)
    if name in ("lanes", "rows"):
        return fused_family(name, threads)
    if name == "adam":
        return adam_family()
    raise ValueError(f"unknown family {name!r}")


def environment() -> dict[str, str]:
    """What the bits could depend on besides the kernels' code."""
    import llvmlite
    import llvmlite.binding as llvm
    import numba
    from numba.core import config

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "libc": " ".join(platform.libc_ver()),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "numba": numba.__version__,
        "llvmlite": llvmlite.__version__,
        "llvm": ".".join(map(str, llvm.llvm_version_info)),
        "host_cpu": llvm.get_host_cpu_name(),
        "numba_cpu_name": str(config.CPU_NAME or ""),
        "numba_cpu_features": str(config.CPU_FEATURES or ""),
    }


def _ulps(a: np.ndarray, b: np.ndarray) -> int:
    """The largest distance between a and b in units in the last place (floats only)."""
    bits = {4: np.int32, 8: np.int64}[a.itemsize]

    def ordered(v: np.ndarray) -> np.ndarray:
        i = v.view(bits).astype(np.int64)
        return np.where(i < 0, -(i & np.iinfo(bits).max), i)

    return int(np.abs(ordered(a) - ordered(b)).max())


def differences(expected: Arrays, actual: Arrays) -> list[str]:
    """One line per array that is missing, extra or not the same bits (NaNs, signed zeros
    and all), with how far apart it is."""
    lines = []
    for key in sorted(expected.keys() | actual.keys()):
        if key not in actual:
            lines.append(f"{key}: not computed (stored only)")
        elif key not in expected:
            lines.append(f"{key}: not stored (computed only)")
        else:
            e, a = expected[key], actual[key]
            if e.dtype != a.dtype or e.shape != a.shape:
                lines.append(f"{key}: {a.dtype}{a.shape}, stored {e.dtype}{e.shape}")
            elif e.tobytes() != a.tobytes():
                if key.endswith("inputs_sha256"):
                    lines.append(f"{key}: the inputs changed (numpy's RandomState or the case)")
                    continue
                same = (e == a) | (np.isnan(e) & np.isnan(a))
                diff = int(e.size - np.count_nonzero(same & (np.signbit(e) == np.signbit(a))))
                lines.append(
                    f"{key}: {diff} of {e.size} values differ, by up to {_ulps(e, a)} ulp "
                    f"(max |diff| {float(np.nanmax(np.abs(e.astype(float) - a))):.3g})"
                )
    return lines


def load(path: Path = PATH) -> tuple[Arrays, dict[str, str]]:
    """The stored arrays and the environment they were made in."""
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files if k != "environment"}
        env = json.loads(str(f["environment"]))
    return arrays, env


def environment_note(stored: dict[str, str]) -> str:
    """What differs between the stored file's environment and this one (for a failure)."""
    here = environment()
    changed = [
        f"  {k}: {stored.get(k, '?')!r} there, {here.get(k, '?')!r} here"
        for k in sorted(here.keys() | stored.keys())
        if stored.get(k) != here.get(k)
    ]
    if not changed:
        return (
            "The environment is the one the file was made in: a kernel's arithmetic changed. "
            "If intended, regenerate (python -m tests.models.golden --write --overwrite) and "
            "say so in the commit message."
        )
    return (
        "The file was made in another environment; what differs:\n"
        + "\n".join(changed)
        + "\nIf the kernels' code is unchanged (git diff of models/kernels), the difference "
        "comes from the environment (see this module's docstring); otherwise from the code."
    )


def compute(check: Callable[[str], None] = lambda msg: None) -> Arrays:
    """Every family on one thread, checked (through `check`, which may raise) to give the
    same bits on every thread count."""
    out: Arrays = {}
    for name in FAMILIES:
        first = family(name, 1)
        if name != "adam":
            for threads in THREADS[1:]:
                lines = differences(first, family(name, threads))
                if lines:
                    check(f"{name} on {threads} threads differs from 1:\n" + "\n".join(lines))
        out.update(first)
    return out


def write(path: Path = PATH, overwrite: bool = False) -> None:
    if path.exists() and not overwrite:
        raise SystemExit(f"{path} exists; pass --overwrite to replace it (see the docstring)")

    def refuse(msg: str) -> None:
        raise SystemExit(f"not written: {msg}")

    arrays = compute(refuse)
    env = np.array(json.dumps(environment(), sort_keys=True))
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, environment=env, **arrays)
    os.replace(tmp, path)
    print(f"wrote {len(arrays)} arrays to {path} ({path.stat().st_size} bytes)")
