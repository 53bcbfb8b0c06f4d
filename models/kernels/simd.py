"""Fixed-width vectors for the compiled kernels: one value per lane, eight lanes, as LLVM vectors.

Why: the recurrences are latency-bound at the notebook's sizes (2 units, 3 sequences), and
LLVM's loop vectorizer leaves loops of 8-24 elements scalar (its vector body wants 32 or more,
and numba cannot tell it that the arrays do not alias). Here a kernel says what it means:
`Vec` is an LLVM `<8 x float>` (or `<8 x double>`) held in registers, and `vload`, `vstore`,
arithmetic operators, `vfma` and `vexp` compile to single vector instructions on any target
(LLVM splits or widens them to the machine's registers). A lane is an independent sequence;
every operation is elementwise IEEE arithmetic, so a lane's bits do not depend on its
neighbours, on how sequences are grouped into vectors, or on the number of threads.

Lanes hold one value each: `vload(a, i)` reads a[i : i + LANES] of a 1-D C-contiguous array
(unaligned), `vstore(a, i, v)` writes it. Mixed arithmetic with a Python or numpy scalar
broadcasts the scalar in the vector's type.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.core.datamodel import models
from numba.extending import intrinsic, overload, register_model
from numba.np.arrayobj import make_array

from models.kernels.compile import _njit

LANES = 8


class Vec(types.Type):
    """LANES values of one float type, as one LLVM vector."""

    def __init__(self, dtype: types.Float) -> None:
        self.dtype = dtype
        super().__init__(name=f"Vec{LANES}({dtype})")


@register_model(Vec)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm: Any, fe_type: Vec) -> None:
        element = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(element, LANES))


def _vector_pointer(context: Any, builder: Any, arrty: Any, arr: Any, index: Any) -> Any:
    data = make_array(arrty)(context, builder, arr).data
    element = context.get_value_type(arrty.dtype)
    pointer = ir.PointerType(ir.VectorType(element, LANES))
    return builder.bitcast(builder.gep(data, [index]), pointer)


def _is_flat(arr: Any) -> bool:
    return (
        isinstance(arr, types.Array)
        and arr.ndim == 1
        and arr.layout == "C"
        and arr.dtype in (types.float32, types.float64)
    )


@intrinsic
def vload(typingctx: Any, arr: Any, index: Any) -> Any:
    """arr[index : index + LANES] as a vector (arr 1-D, C-contiguous, float)."""
    if not (_is_flat(arr) and isinstance(index, types.Integer)):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        index = context.cast(builder, args[1], sig.args[1], types.intp)
        pointer = _vector_pointer(context, builder, sig.args[0], args[0], index)
        return builder.load(pointer, align=arr.dtype.bitwidth // 8)

    return Vec(arr.dtype)(arr, index), codegen


@intrinsic
def vstore(typingctx: Any, arr: Any, index: Any, value: Any) -> Any:
    """arr[index : index + LANES] = value (arr 1-D, C-contiguous, of value's type)."""
    if not (_is_flat(arr) and isinstance(index, types.Integer) and value == Vec(arr.dtype)):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        index = context.cast(builder, args[1], sig.args[1], types.intp)
        pointer = _vector_pointer(context, builder, sig.args[0], args[0], index)
        builder.store(args[2], pointer, align=arr.dtype.bitwidth // 8)
        return context.get_dummy_value()

    return types.none(arr, index, value), codegen


@intrinsic
def vgather(typingctx: Any, arr: Any, base: Any, index: Any, at: Any) -> Any:
    """arr[base + index[at + l]] in lane l (arr 1-D, C-contiguous, float; index: int64), as
    LANES scalar loads: a gather instruction would take its 8 int64 indices in a 512-bit
    register, and on AVX-512 cores any 512-bit instruction slows every vector instruction
    around it."""
    if not (
        _is_flat(arr)
        and isinstance(base, types.Integer)
        and isinstance(index, types.Array)
        and index.ndim == 1
        and index.layout == "C"
        and index.dtype == types.int64
        and isinstance(at, types.Integer)
    ):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        i64 = ir.IntType(64)
        at_ = context.cast(builder, args[3], sig.args[3], types.int64)
        base_ = context.cast(builder, args[1], sig.args[1], types.int64)
        index_data = make_array(sig.args[2])(context, builder, args[2]).data
        data = make_array(sig.args[0])(context, builder, args[0]).data
        vt = ir.VectorType(context.get_value_type(arr.dtype), LANES)
        v = ir.Constant(vt, ir.Undefined)
        align = arr.dtype.bitwidth // 8
        for lane in range(LANES):
            offset = builder.load(builder.gep(index_data, [builder.add(at_, i64(lane))]), align=8)
            value = builder.load(builder.gep(data, [builder.add(base_, offset)]), align=align)
            v = builder.insert_element(v, value, ir.IntType(32)(lane))
        return v

    return Vec(arr.dtype)(arr, base, index, at), codegen


def _dtype_of(like: Any) -> Any:
    if isinstance(like, Vec | types.Array):
        return like.dtype
    return None


@intrinsic
def vsplat(typingctx: Any, x: Any, like: Any) -> Any:
    """x in every lane, in the element type of `like` (a Vec or an array)."""
    dtype = _dtype_of(like)
    if dtype not in (types.float32, types.float64) or not isinstance(x, types.Number):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        value = context.cast(builder, args[0], sig.args[0], dtype)
        vt = ir.VectorType(context.get_value_type(dtype), LANES)
        v = builder.insert_element(ir.Constant(vt, ir.Undefined), value, ir.IntType(32)(0))
        mask = ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES)
        return builder.shuffle_vector(v, ir.Constant(vt, ir.Undefined), mask)

    return Vec(dtype)(x, like), codegen


@intrinsic
def as_type(typingctx: Any, x: Any, like: Any) -> Any:
    """The scalar x converted to the element type of `like` (a Vec or an array)."""
    dtype = _dtype_of(like)
    if dtype is None or not isinstance(x, types.Number):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        return context.cast(builder, args[0], sig.args[0], dtype)

    return dtype(x, like), codegen


@intrinsic
def vget(typingctx: Any, v: Any, lane: Any) -> Any:
    """The value in `lane` of v."""
    if not (isinstance(v, Vec) and isinstance(lane, types.Integer)):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        return builder.extract_element(args[0], args[1])

    return v.dtype(v, lane), codegen


@intrinsic
def vsum(typingctx: Any, v: Any) -> Any:
    """The sum of v's lanes, in a fixed order: (l0 + l4) + (l2 + l6) and (l1 + l5) + (l3 + l7),
    then those two: halves folded onto each other, so the result never depends on the
    machine."""
    if not isinstance(v, Vec):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        x = args[0]
        vt = x.type
        width = LANES
        while width > 1:
            width //= 2
            mask = [i + width for i in range(width)] + [0] * (LANES - width)
            upper = builder.shuffle_vector(
                x,
                ir.Constant(vt, ir.Undefined),
                ir.Constant(ir.VectorType(ir.IntType(32), LANES), mask),
            )
            x = builder.fadd(x, upper)
        return builder.extract_element(x, ir.IntType(32)(0))

    return v.dtype(v), codegen


def _convert(name: str, src: Any, dst: Any) -> Any:
    def typer(typingctx: Any, v: Any) -> Any:
        if v != Vec(src):
            return None

        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            to = ir.VectorType(context.get_value_type(dst), LANES)
            op = builder.fpext if dst.bitwidth > src.bitwidth else builder.fptrunc
            return op(args[0], to)

        return Vec(dst)(v), codegen

    typer.__name__ = typer.__qualname__ = name
    return intrinsic(typer)


vwiden = _convert("vwiden", types.float32, types.float64)  # exact
vnarrow = _convert("vnarrow", types.float64, types.float32)  # rounded to nearest


@intrinsic
def vf64(typingctx: Any, v: Any) -> Any:
    """v in float64 lanes (exact; v itself when it is float64 already)."""
    if not isinstance(v, Vec):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        if v.dtype == types.float64:
            return args[0]
        return builder.fpext(args[0], ir.VectorType(ir.DoubleType(), LANES))

    return Vec(types.float64)(v), codegen


def _llvm_call(builder: Any, vt: Any, name: str, args: list[Any]) -> Any:
    element = "f32" if vt.element == ir.FloatType() else "f64"
    fnty = ir.FunctionType(vt, [vt] * len(args))
    fn = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.{name}.v{LANES}{element}")
    return builder.call(fn, args)


def _elementwise(name: str, arity: int, build: Any) -> Any:
    """An intrinsic of `arity` Vec arguments of one type, built by build(builder, vt, args)."""

    def check(args: tuple[Any, ...]) -> Any:
        if not isinstance(args[0], Vec) or any(a != args[0] for a in args):
            return None

        def codegen(context: Any, builder: Any, sig: Any, llargs: Any) -> Any:
            return build(builder, context.get_value_type(args[0]), list(llargs))

        return args[0](*args), codegen

    if arity == 1:

        def typer(typingctx: Any, a: Any) -> Any:
            return check((a,))
    elif arity == 2:

        def typer(typingctx: Any, a: Any, b: Any) -> Any:  # type: ignore[misc]
            return check((a, b))
    else:

        def typer(typingctx: Any, a: Any, b: Any, c: Any) -> Any:  # type: ignore[misc]
            return check((a, b, c))

    typer.__name__ = typer.__qualname__ = name
    return intrinsic(typer)


_vadd = _elementwise("_vadd", 2, lambda b, vt, a: b.fadd(*a))
_vsub = _elementwise("_vsub", 2, lambda b, vt, a: b.fsub(*a))
_vmul = _elementwise("_vmul", 2, lambda b, vt, a: b.fmul(*a))
_vdiv = _elementwise("_vdiv", 2, lambda b, vt, a: b.fdiv(*a))
_vneg = _elementwise("_vneg", 1, lambda b, vt, a: b.fneg(a[0]))
vfma = _elementwise("vfma", 3, lambda b, vt, a: _llvm_call(b, vt, "fma", a))
"""a·b + c with one rounding, per lane."""


def _select(pred: str) -> Any:
    """a where `a pred b` holds, else b: one vminps/vmaxps on x86, whose NaN rule this is."""

    def build(builder: Any, vt: Any, args: list[Any]) -> Any:
        return builder.select(builder.fcmp_ordered(pred, args[0], args[1]), args[0], args[1])

    return build


vmin = _elementwise("vmin", 2, _select("<"))
"""a < b ? a : b per lane: b where either is NaN (so vmin(c, v) keeps a NaN in v)."""
vmax = _elementwise("vmax", 2, _select(">"))
"""a > b ? a : b per lane: b where either is NaN (so vmax(c, v) keeps a NaN in v)."""


def _operator(op: Any, impl: Any) -> None:
    def ov(a, b):
        if isinstance(a, Vec) and isinstance(b, Vec) and a == b:
            return lambda a, b: impl(a, b)
        if isinstance(a, Vec) and isinstance(b, types.Number):
            return lambda a, b: impl(a, vsplat(b, a))
        if isinstance(a, types.Number) and isinstance(b, Vec):
            return lambda a, b: impl(vsplat(a, b), b)
        return None

    overload(op)(ov)


_operator(operator.add, _vadd)
_operator(operator.sub, _vsub)
_operator(operator.mul, _vmul)
_operator(operator.truediv, _vdiv)


@overload(operator.neg)
def _neg(a):
    if isinstance(a, Vec):
        return lambda a: _vneg(a)
    return None


@intrinsic
def _pow2_from(typingctx: Any, shifted: Any, magic: Any) -> Any:
    """2^k per lane from shifted = k + magic, k integral in the normal exponent range and
    magic = 1.5·2^m (m the mantissa's bits): k is the difference of their bit patterns."""
    if not (isinstance(shifted, Vec) and isinstance(magic, types.Float)):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        bits, mantissa, bias = (32, 23, 127) if shifted.dtype == types.float32 else (64, 52, 1023)
        it = ir.VectorType(ir.IntType(bits), LANES)
        magic_bits = int(np.array(1.5 * 2.0**mantissa, dtype=f"float{bits}").view(f"int{bits}"))
        k = builder.bitcast(args[0], it)
        biased = builder.add(k, ir.Constant(it, [bias - magic_bits] * LANES))
        shifted_bits = builder.shl(biased, ir.Constant(it, [mantissa] * LANES))
        return builder.bitcast(shifted_bits, context.get_value_type(shifted))

    return shifted(shifted, magic), codegen


_LOG2E = 1.4426950408889634
_MAGIC32 = 1.5 * 2.0**23  # adding it rounds a float32 of magnitude < 2^22 to an integer
_MAGIC64 = 1.5 * 2.0**52


@_njit(inline="always")
def _vexp32(z):
    """exp per lane in float32 (Cephes' expf polynomial, as `compile._exp32`): z = k ln2 + r
    with k = round(z log2 e), saturating at exp(-87.x) and exp(88.x); NaN stays NaN."""
    v = vmin(vsplat(88.0, z), vmax(vsplat(-87.0, z), z))
    shifted = vfma(v, vsplat(_LOG2E, z), vsplat(_MAGIC32, z))
    kf = shifted - _MAGIC32
    r = vfma(kf, vsplat(-0.693359375, z), v)
    r = vfma(kf, vsplat(2.12194440e-4, z), r)
    p = vfma(vsplat(1.9875691500e-4, z), r, vsplat(1.3981999507e-3, z))
    p = vfma(p, r, vsplat(8.3334519073e-3, z))
    p = vfma(p, r, vsplat(4.1665795894e-2, z))
    p = vfma(p, r, vsplat(1.6666665459e-1, z))
    p = vfma(p, r, vsplat(5.0000001201e-1, z))
    p = vfma(p, r * r, r + 1.0)
    return p * _pow2_from(shifted, _MAGIC32)


_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10


@_njit(inline="always")
def _vexp64(z):
    """exp per lane in float64 (as `compile._exp64`: Taylor to r^13 by Estrin's scheme),
    saturating at exp(±708.x); NaN stays NaN."""
    v = vmin(vsplat(709.0, z), vmax(vsplat(-708.0, z), z))
    shifted = vfma(v, vsplat(_LOG2E, z), vsplat(_MAGIC64, z))
    kf = shifted - _MAGIC64
    r = vfma(-kf, vsplat(_LN2_LO, z), vfma(-kf, vsplat(_LN2_HI, z), v))
    r2 = r * r
    r4 = r2 * r2
    p01 = r + 1.0
    p23 = vfma(r, vsplat(1.0 / 6.0, z), vsplat(0.5, z))
    p45 = vfma(r, vsplat(1.0 / 120.0, z), vsplat(1.0 / 24.0, z))
    p67 = vfma(r, vsplat(1.0 / 5040.0, z), vsplat(1.0 / 720.0, z))
    p89 = vfma(r, vsplat(1.0 / 362880.0, z), vsplat(1.0 / 40320.0, z))
    p1011 = vfma(r, vsplat(1.0 / 39916800.0, z), vsplat(1.0 / 3628800.0, z))
    p1213 = vfma(r, vsplat(1.0 / 6227020800.0, z), vsplat(1.0 / 479001600.0, z))
    q0 = vfma(r2, p23, p01)
    q1 = vfma(r2, p67, p45)
    q2 = vfma(r2, p1011, p89)
    s0 = vfma(r4, q1, q0)
    s1 = vfma(r4, p1213, q2)
    return vfma(r4 * r4, s1, s0) * _pow2_from(shifted, _MAGIC64)


def vexp(z: Any) -> Any:
    """exp per lane in z's own type (compiled code only)."""
    raise NotImplementedError("vexp runs in compiled code only")


@overload(vexp, inline="always")
def _vexp_overload(z):  # (unannotated: numba compares the signatures)
    if z == Vec(types.float32):
        return _vexp32.py_func
    if z == Vec(types.float64):
        return _vexp64.py_func
    return None


@_njit(inline="always")
def vsigmoid(z):
    """1 / (1 + exp(-z)) per lane."""
    return 1.0 / (vexp(-z) + 1.0)


@_njit(inline="always")
def vtanh(z):
    """tanh(z) = 1 - 2 / (exp(2z) + 1) per lane (±1 where exp saturates)."""
    return 1.0 - 2.0 / (vexp(z + z) + 1.0)


__all__ = [
    "LANES",
    "Vec",
    "as_type",
    "vexp",
    "vf64",
    "vfma",
    "vgather",
    "vget",
    "vload",
    "vmax",
    "vmin",
    "vnarrow",
    "vsigmoid",
    "vsplat",
    "vstore",
    "vsum",
    "vtanh",
    "vwiden",
]
