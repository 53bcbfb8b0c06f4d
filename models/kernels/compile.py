"""numba compilation for the kernels: a disk cache that works from read-only installs, and
the branch-free math (exp, fma) that lets LLVM vectorize a time step's activations."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import numba
import numpy as np
from llvmlite import ir as llvm_ir
from numba.core import cgutils, types
from numba.core import config as numba_config
from numba.extending import intrinsic, overload

# --- numba compile cache --------------------------------------------------------------------


def _private_dir(path: str) -> str | None:
    """`path`, created if needed, if it is a directory only we can write, else None.

    Numba's cache holds pickles and machine code, so a directory someone else could have
    planted in a shared /tmp must not be loaded: it must be ours and writable by us only.
    """
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_mode & 0o022:
        return None
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        return None
    return path


_HERE = os.path.dirname(os.path.abspath(__file__))


def _sources_digest(package: str = _HERE) -> str:
    """A digest of every module of the package: numba checks only the source file of the
    function it caches, so an edit to a helper it inlines from another file (an intrinsic in
    `simd`, an exp here) would otherwise load stale machine code."""
    digest = hashlib.sha256()
    for name in sorted(os.listdir(package)):
        if name.endswith(".py"):
            with open(os.path.join(package, name), "rb") as f:
                digest.update(name.encode() + b"\0" + f.read())
    return digest.hexdigest()[:16]


def _cache_dirs() -> list[str]:
    """Where the compiled kernels may be cached, in order of preference: a directory named by
    `_sources_digest` under NUMBA_CACHE_DIR if set, else beside this package (`__pycache__`),
    else in a private per-user directory under the temp dir."""
    version = f"numba-{_sources_digest()}"
    if numba_config.CACHE_DIR:
        return [os.path.join(numba_config.CACHE_DIR, "rnnlab", version)]
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return [
        os.path.join(_HERE, "__pycache__", version),
        os.path.join(tempfile.gettempdir(), f"rnnlab-numba-cache-{uid}", version),
    ]


@functools.cache
def _cache_dir() -> str | None:
    """The first usable of `_cache_dirs` (`usable_cache_dir`)."""
    return usable_cache_dir(_cache_dirs())


def usable_cache_dir(candidates: list[str]) -> str | None:
    """The first candidate whose parent and itself are private directories (created if
    needed); older versions' directories beside it are removed."""
    for path in candidates:
        if _private_dir(os.path.dirname(path)) and _private_dir(path):
            parent = os.path.dirname(path)
            for name in os.listdir(parent):
                if name.startswith("numba-") and name != os.path.basename(path):
                    shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
            return path
    return None


@contextlib.contextmanager
def _numba_cache_dir(path: str) -> Iterator[None]:
    # Numba's locators read config.CACHE_DIR when a dispatcher is created and keep the path,
    # so overriding it just around the decoration affects our functions only.
    saved = numba_config.CACHE_DIR
    numba_config.CACHE_DIR = path
    try:
        yield
    finally:
        numba_config.CACHE_DIR = saved


def _njit(fn: Callable[..., Any] | None = None, **options: Any) -> Any:
    """`numba.njit(cache=True, ...)`, cached in `_cache_dir` (a directory per version of these
    sources, writable even from a read-only install), else compiled in memory: once per
    process, slower to start but still correct.

    error_model="numpy": IEEE division instead of a ZeroDivisionError check in every step.
    nogil: the loops touch only arrays, so other threads (a web server's event loop, other
    requests) run while a long sequence is computed.

    No `parallel=True`: prange's threads would compete with torch's for the cores, it brings
    an OpenMP runtime that is not fork-safe, and numba's fallback "workqueue" layer aborts
    the process when two threads launch parallel kernels at once (a threaded web server
    does). Sequences are spread over threads by the callers instead (`glue.run_groups`).
    """
    if fn is None:
        return lambda f: _njit(f, **options)
    options = {"cache": True, "error_model": "numpy", "nogil": True, **options}
    path = _cache_dir()
    if path is not None:
        with _numba_cache_dir(path):
            try:
                return numba.njit(**options)(fn)
            except RuntimeError:  # "cannot cache function ...: no locator available"
                pass
    return numba.njit(**{**options, "cache": False})(fn)


# --- activations ----------------------------------------------------------------------------
# The cost of a recurrent step is its activations (an exp and a division each), not the few
# multiply-adds: libm's exp is a call LLVM cannot vectorize, so the kernels walk time on the
# outside and do a step's activations for every sequence (and member) at once in one flat loop
# with `_exp`, a branch-free exp that LLVM vectorizes; tanh(z) = 1 - 2 / (exp(2z) + 1) and
# σ(z) = 1 / (1 + exp(-z)) from it. The kernels compute in their arrays' type: float32 (the
# models' type; 8 lanes per AVX2 vector, and a shorter polynomial) or float64 (gradcheck).
# exp saturating at its type's range still gives the right limits (tanh → ±1, σ → 0 or 1).

_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01  # ln 2 in two parts (fdlibm): k·_LN2_HI is exact
_LN2_LO = 1.90821492927058770002e-10
_TWO52 = 4503599627370496.0  # 2^52: k + 2^52 + 1023 holds k + 1023 in its low mantissa bits


def _bitcast(name: str, src: Any, dst: Any) -> Any:
    """An intrinsic `name(x)`: the `dst` value with the IEEE bit pattern of the `src` value x
    (one register bitcast, no conversion)."""

    def typer(typingctx: Any, x: Any) -> Any:
        if x != src:
            return None

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            return builder.bitcast(args[0], context.get_value_type(dst))

        return dst(src), codegen

    typer.__name__ = typer.__qualname__ = name
    return intrinsic(typer)


_float_from_bits = _bitcast("_float_from_bits", types.int64, types.float64)
_bits_from_float = _bitcast("_bits_from_float", types.float64, types.int64)
_float32_from_bits = _bitcast("_float32_from_bits", types.int32, types.float32)
_bits_from_float32 = _bitcast("_bits_from_float32", types.float32, types.int32)


@intrinsic
def _fma(typingctx: Any, a: Any, b: Any, c: Any) -> Any:
    """a·b + c with one rounding (LLVM's fma intrinsic; vectorizes to vfmadd)."""
    if not all(t == types.float64 for t in (a, b, c)):
        return None

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        f64 = llvm_ir.DoubleType()
        fnty = llvm_ir.FunctionType(f64, [f64, f64, f64])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.fma.f64")
        return builder.call(fn, args)

    return types.float64(types.float64, types.float64, types.float64), codegen


@_njit(inline="always")
def _exp64(z):
    """exp(z) in float64 within 1 ulp of libm's for |z| ≤ 708, vectorizable (no call).

    Beyond that it saturates at exp(±708.x) (≈1e±307) instead of 0 or inf, which leaves
    σ and tanh below exactly as they are (0 or 1 to float64 precision). NaN stays NaN.
    z = k ln2 + r with |r| ≤ ln2 / 2; exp(r) by its Taylor series to r^13 (error < 1e-17),
    evaluated by Estrin's scheme (short dependency chains: each time step waits on two
    exps), times 2^k built from its bits. k's biased exponent k + 1023 is read from the low
    mantissa bits of k + 2^52 + 1023 (exact: k is an integer in [-1022, 1023]) instead of a
    float→int64 conversion, which AVX2 lacks (LLVM would do it one lane at a time): the same
    bits, ~15 % faster in a vectorized loop.
    """
    v = min(max(np.float64(z), -708.0), 709.0)  # (NaN stays NaN: tested)
    kf = np.floor(v * _LOG2E + 0.5)  # (NaN: r is NaN, and so is the result)
    r = _fma(-kf, _LN2_LO, _fma(-kf, _LN2_HI, v))
    r2 = r * r
    r4 = r2 * r2
    p01 = _fma(r, 1.0, 1.0)
    p23 = _fma(r, 1.0 / 6.0, 0.5)
    p45 = _fma(r, 1.0 / 120.0, 1.0 / 24.0)
    p67 = _fma(r, 1.0 / 5040.0, 1.0 / 720.0)
    p89 = _fma(r, 1.0 / 362880.0, 1.0 / 40320.0)
    p1011 = _fma(r, 1.0 / 39916800.0, 1.0 / 3628800.0)
    p1213 = _fma(r, 1.0 / 6227020800.0, 1.0 / 479001600.0)
    q0 = _fma(r2, p23, p01)
    q1 = _fma(r2, p67, p45)
    q2 = _fma(r2, p1011, p89)
    s0 = _fma(r4, q1, q0)
    s1 = _fma(r4, p1213, q2)
    p = _fma(r4 * r4, s1, s0)
    biased = _bits_from_float(kf + (_TWO52 + 1023.0)) - _bits_from_float(_TWO52)
    return p * _float_from_bits(biased << 52)


_F = np.float32


@_njit(inline="always")
def _exp32(z):
    """exp(z) in float32, within 1e-7 relative of the exact value for |z| ≤ 87 (measured on a
    million points), vectorizable. Saturates at exp(±87.x) like `_exp64` at ±708; NaN stays
    NaN. Cephes' expf: z = k ln2 + r (ln 2 in two parts), exp(r) by a degree-7 polynomial,
    times 2^k from k + 2^23 + 127's low mantissa bits (k in [-126, 127])."""
    v = min(max(z, _F(-87.0)), _F(88.0))  # (NaN stays NaN)
    kf = np.floor(v * _F(_LOG2E) + _F(0.5))
    r = v - kf * _F(0.693359375) - kf * _F(-2.12194440e-4)
    p = _F(1.9875691500e-4)
    p = p * r + _F(1.3981999507e-3)
    p = p * r + _F(8.3334519073e-3)
    p = p * r + _F(4.1665795894e-2)
    p = p * r + _F(1.6666665459e-1)
    p = p * r + _F(5.0000001201e-1)
    p = p * (r * r) + r + _F(1.0)
    biased = _bits_from_float32(kf + _F(8388608.0 + 127.0)) - _bits_from_float32(_F(8388608.0))
    return p * _float32_from_bits(np.int32(biased << 23))


def _exp(z: Any) -> Any:
    """exp(z) in z's own type: `_exp32` for float32, `_exp64` for float64 (compiled code)."""
    raise NotImplementedError("_exp runs in compiled code only")


@overload(_exp, inline="always")
def _exp_overload(z):  # (unannotated: numba compares the signatures)
    if z == types.float32:
        return _exp32.py_func
    if isinstance(z, types.Float | types.Integer):
        return _exp64.py_func
    return None


def _one(arr: Any) -> Any:
    """1 in the type of `arr`'s elements (compiled code): the kernels' constants in their
    arrays' type, so float32 arithmetic stays float32 (a float literal would widen it)."""
    raise NotImplementedError("_one runs in compiled code only")


@overload(_one, inline="always")
def _one_overload(arr):
    if isinstance(arr, types.Array) and arr.dtype == types.float32:
        return _one32
    if isinstance(arr, types.Array):
        return _one64
    return None


def _one32(arr):
    return np.float32(1.0)


def _one64(arr):
    return 1.0
