"""nncase 0.2's neutral kernels (``kernels/neutral/neutral_kernels.h``), bit for bit.

Where the header has a RISC-V path (``#if __riscv``: quantize, dequantize) this follows it,
as the K210 runs it: those two differ from the portable path in rounding.

Float32 results must equal what the C++ computes in float32, so every sum runs in the
reference's loop order in numba with float32 accumulators (numba keeps ``float32 op
float32`` in float32 and does not contract to FMA), and ``expf``/``logf``/``sinf``/``cosf``
go through numba's ``math`` functions, which call the C library's float versions as the
C++ does (numpy's own float32 ``exp`` differs from them in the last bit). Integer kernels
compute in int64 and wrap to int32 where the C++ does int32 arithmetic, which gives the
same bits as the (in practice wrapping) C++ for any order of summation.

Kernels take input arrays and return new ones (``nnil_unary_method`` fills the output it
is given, since values without a ``ret`` keep theirs); the executor writes them to memory.
"""

from __future__ import annotations

import functools
import math
from typing import TypeVar

import numba
import numpy as np
import numpy.typing as npt

F32 = np.float32
I64 = np.int64
Float32Array = npt.NDArray[np.float32]
UInt8Array = npt.NDArray[np.uint8]
Int64Array = npt.NDArray[np.int64]
Shape4 = tuple[int, int, int, int]
Padding = tuple[int, int]
INT32_MIN = -(2**31)
G = TypeVar("G", bound=np.generic)


class KernelFault(ArithmeticError):
    """An input on which the C++ kernel traps (an integer division by zero)."""


# --- shared helpers ---------------------------------------------------------------------------


@numba.njit(inline="always")
def _wrap32(v: int) -> int:  # pragma: no cover - jitted
    """An int64 reduced to int32 the way two's-complement arithmetic wraps it."""
    return ((v + 2**31) & 0xFFFFFFFF) - 2**31


@numba.njit(inline="always")
def _mul_and_carry_shift(v: int, mul: int, shift: int) -> int:  # pragma: no cover - jitted
    """``runtime::mul_and_carry_shift`` (``carry_shift<int64_t, false>``): the product,
    plus half, arithmetically shifted right, truncated to int32 (halves round up)."""
    product = v * mul
    if shift > 0:
        product = (product + (1 << (shift - 1))) >> shift
    return _wrap32(product)


@numba.njit(inline="always")
def _requantized(acc: int, mul: int, shift: int, offset: int) -> int:  # pragma: no cover
    """The quantized kernels' epilogue of one int32 accumulator: scale, add the output
    offset, clamp to uint8."""
    return min(max(_wrap32(_mul_and_carry_shift(_wrap32(acc), mul, shift) + offset), 0), 255)


def requantize(acc: Int64Array, mul: int, shift: int, offset: int) -> UInt8Array:
    """:func:`_requantized` over every accumulator, keeping their shape."""
    out = np.empty(acc.shape, np.uint8)
    _requantize(acc.reshape(-1), mul, shift, offset, out.reshape(-1))
    return out


@numba.njit(nogil=True, cache=True)
def _requantize(acc: Int64Array, mul: int, shift: int, offset: int,
                out: UInt8Array) -> None:  # pragma: no cover - jitted
    for i in range(acc.size):
        out[i] = _requantized(acc[i], mul, shift, offset)


def clamp(values: Float32Array, activation: tuple[float, float]) -> Float32Array:
    """``std::clamp(v, lo, hi)``: ``v < lo ? lo : hi < v ? hi : v`` (NaN passes through)."""
    lo, hi = F32(activation[0]), F32(activation[1])
    return np.where(values < lo, lo, np.where(hi < values, hi, values))


@functools.cache
def reduced_index(out_shape: Shape4, in_shape: Shape4) -> Int64Array:
    """Per output position, the flat input index ``get_reduced_offset`` picks: along each
    axis the output index, or 0 where it is past the input's extent (no modulo). A node's
    shapes are fixed, so each pair is worked out once (read-only)."""
    index = np.zeros(out_shape, I64)
    stride = 1
    for axis in range(3, -1, -1):
        along = np.arange(out_shape[axis], dtype=I64)
        along[along >= in_shape[axis]] = 0
        view = [1, 1, 1, 1]
        view[axis] = out_shape[axis]
        index += (along * stride).reshape(view)
        stride *= in_shape[axis]
    flat = index.reshape(-1)
    flat.setflags(write=False)
    return flat


# --- elementwise --------------------------------------------------------------------------------

BINARY_ADD, BINARY_SUB, BINARY_MUL, BINARY_DIV, BINARY_MIN, BINARY_MAX = range(6)


def _operands(
    a: npt.NDArray[G], b: npt.NDArray[G], a_shape: Shape4, b_shape: Shape4, out_shape: Shape4,
) -> tuple[npt.NDArray[G], npt.NDArray[G]]:
    """Equal input shapes take the kernel's fast path (``prod(a_shape)`` values, whatever
    ``out_shape``); otherwise both are broadcast over ``out_shape``."""
    if a_shape == b_shape:
        n = math.prod(a_shape)
        return a[:n], b[:n]
    return a[reduced_index(out_shape, a_shape)], b[reduced_index(out_shape, b_shape)]


def binary(
    a: Float32Array, b: Float32Array, a_shape: Shape4, b_shape: Shape4, out_shape: Shape4,
    op: int, activation: tuple[float, float],
) -> Float32Array:
    """Neutral ``binary`` in float32; min/max as ``std::min``/``std::max`` order them."""
    va, vb = _operands(a, b, a_shape, b_shape, out_shape)
    with np.errstate(all="ignore"):
        if op == BINARY_ADD:
            r = va + vb
        elif op == BINARY_SUB:
            r = va - vb
        elif op == BINARY_MUL:
            r = va * vb
        elif op == BINARY_DIV:
            r = va / vb
        elif op == BINARY_MIN:
            r = np.where(vb < va, vb, va)
        else:
            r = np.where(va < vb, vb, va)
    return clamp(r.astype(F32), activation)


def quantized_binary(
    a: UInt8Array, b: UInt8Array, a_shape: Shape4, b_shape: Shape4, out_shape: Shape4,
    op: int, a_offset: int, a_mul: int, a_shift: int, b_offset: int, b_mul: int,
    b_shift: int, out_offset: int, out_mul: int, out_shift: int,
) -> UInt8Array:
    """Neutral ``quantized_binary``: both sides rescaled to a common int32 scale, combined in
    int32 (div is ``(a + b / 2) / b``), rescaled and offset into uint8. One pass in numba:
    a dozen numpy passes over int64 temporaries took 2 ms on a 77k-value map."""
    ua, ub = _operands(a, b, a_shape, b_shape, out_shape)
    out = np.empty(ua.size, np.uint8)
    if not _quantized_binary(ua, ub, op, a_offset, a_mul, a_shift, b_offset, b_mul, b_shift,
                             out_offset, out_mul, out_shift, out):
        raise KernelFault("integer division by zero (or overflow) in quantized div: "
                          "the reference traps (SIGFPE)")
    return out


@numba.njit(inline="always")
def _c_div(a: int, b: int) -> int:  # pragma: no cover - jitted
    """C's integer division, truncating towards zero."""
    q = abs(a) // abs(b)
    return -q if (a < 0) != (b < 0) else q


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _quantized_binary(
    ua: UInt8Array, ub: UInt8Array, op: int, a_offset: int, a_mul: int, a_shift: int,
    b_offset: int, b_mul: int, b_shift: int, out_offset: int, out_mul: int, out_shift: int,
    out: UInt8Array,
) -> bool:  # pragma: no cover - jitted
    """Fills ``out``; False where a division would trap."""
    for i in range(ua.size):
        va = _mul_and_carry_shift(_wrap32(int(ua[i]) + a_offset), a_mul, a_shift)
        vb = _mul_and_carry_shift(_wrap32(int(ub[i]) + b_offset), b_mul, b_shift)
        if op == BINARY_ADD:
            r = _wrap32(va + vb)
        elif op == BINARY_SUB:
            r = _wrap32(va - vb)
        elif op == BINARY_MUL:
            r = _wrap32(va * vb)
        elif op == BINARY_DIV:
            if vb == 0:
                return False
            numerator = _wrap32(va + _c_div(vb, 2))
            if vb == -1 and numerator == INT32_MIN:
                return False
            r = _c_div(numerator, vb)
        elif op == BINARY_MIN:
            r = min(va, vb)
        else:
            r = max(va, vb)
        out[i] = _requantized(r, out_mul, out_shift, out_offset)
    return True


def dequantize(x: UInt8Array, zero_point: int, scale: float) -> Float32Array:
    """``riscv_dequantize``: ``x * (1.f / scale) + (-zero_point * (1.f / scale))``, each
    step rounded to float32 (no fused multiply-add)."""
    inv = F32(1) / F32(scale)
    zero = F32(-zero_point) * inv
    return x.astype(F32) * inv + zero


def quantize(x: Float32Array, zero_point: int, scale: float) -> UInt8Array:
    """``riscv_quantize``: ``x * scale + zero_point`` in float32, converted to int32 by
    ``fcvt.w.s`` with ties to even, two values at a time; an odd last value goes through
    ``roundf`` (ties away from zero). RISC-V conversions saturate, NaN to INT32_MAX."""
    with np.errstate(all="ignore"):
        y = (x * F32(scale) + F32(zero_point)).astype(np.float64)
        rounded = np.rint(y)
        if y.size % 2:
            last = y[-1]
            whole = np.trunc(last)
            rounded[-1] = whole + (np.sign(last) if abs(last - whole) >= 0.5 else 0.0)
        rounded = np.where(np.isnan(rounded), 2.0**31 - 1, rounded)
        return np.clip(rounded, 0, 255).astype(np.uint8)


@numba.njit(inline="always", error_model="numpy")
def _unary_value(op: int, v: float) -> float:  # pragma: no cover - jitted
    """One ``unary_op_t`` (abs, ceil, cos, exp, floor, log, neg, rsqrt, sin, square) in
    float32; the transcendental ones are the C library's float functions. nnil's unary
    instructions are the same ops at 0x20 + op."""
    if op == 0:
        return abs(v)
    if op == 1:
        return np.ceil(v)  # type: ignore[no-any-return]
    if op == 2:
        return math.cos(v)
    if op == 3:
        return math.exp(v)
    if op == 4:
        return np.floor(v)  # type: ignore[no-any-return]
    if op == 5:
        return math.log(v)
    if op == 6:
        return -v
    if op == 7:
        return float(np.float32(1.0) / math.sqrt(v))
    if op == 8:
        return math.sin(v)
    return v * v


@numba.njit(nogil=True, cache=True, error_model="numpy")
def unary(x: Float32Array, op: int) -> Float32Array:  # pragma: no cover - jitted
    """Neutral ``unary`` over every value."""
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = _unary_value(op, x[i])
    return out


@numba.njit(nogil=True, cache=True, error_model="numpy")
def nnil_unary_method(
    x: Float32Array, ops: UInt8Array, constants: Float32Array, out: Float32Array,
) -> None:  # pragma: no cover - jitted
    """Run a validated nnil program per value; ``out`` keeps its value where the program
    has no ``ret`` (the C++ never writes it then)."""
    stack = np.empty(64, np.float32)
    for i in range(x.size):
        top = 0
        for k in range(ops.size):
            op = ops[k]
            if op == 0x00:
                continue
            if op == 0x01:
                stack[top] = stack[top - 1]
                top += 1
            elif op == 0x02:
                top -= 1
            elif op == 0x03:
                stack[top] = x[i]
                top += 1
            elif op == 0x04:
                stack[top] = np.float32(0.0)
                top += 1
            elif op == 0x05:
                stack[top] = np.float32(1.0)
                top += 1
            elif op == 0x06:
                stack[top] = constants[k]
                top += 1
            elif op < 0x40:  # unary: operate on the top of the stack
                stack[top - 1] = _unary_value(op - 0x20, stack[top - 1])
            elif op < 0x80:  # binary: a (below) op b (top)
                b = stack[top - 1]
                a = stack[top - 2]
                top -= 1
                if op == 0x40:
                    r = a + b
                elif op == 0x41:
                    r = a - b
                elif op == 0x42:
                    r = a * b
                elif op == 0x43:
                    r = a / b
                elif op == 0x44:
                    r = b if b < a else a
                else:
                    r = b if a < b else a
                stack[top - 1] = r
            elif op == 0x80:  # clamp(v, low, high)
                high = stack[top - 1]
                low = stack[top - 2]
                v = stack[top - 3]
                top -= 2
                stack[top - 1] = low if v < low else (high if high < v else v)
            else:  # ret
                out[i] = stack[top - 1]
                break


def table_lookup1d(x: UInt8Array, table: UInt8Array) -> UInt8Array:
    return table[x]


# --- reductions and windows ---------------------------------------------------------------------

@numba.njit(nogil=True, cache=True, error_model="numpy")
def reduce(
    x: Float32Array, in_shape: Int64Array, out_shape: Int64Array, op: int, init: np.float32,
) -> Float32Array:  # pragma: no cover - jitted
    """Neutral ``reduce`` (``op`` is ``reduce_op_t``: mean, min, max, sum): every input value
    folded, in order, into the output value its reduced offset names (mean sums here; the
    executor scales as the runtime does)."""
    out = np.full(out_shape[0] * out_shape[1] * out_shape[2] * out_shape[3], init, np.float32)
    i = 0
    for d0 in range(in_shape[0]):
        o0 = d0 if d0 < out_shape[0] else 0
        for d1 in range(in_shape[1]):
            o1 = o0 * out_shape[1] + (d1 if d1 < out_shape[1] else 0)
            for d2 in range(in_shape[2]):
                o2 = o1 * out_shape[2] + (d2 if d2 < out_shape[2] else 0)
                for d3 in range(in_shape[3]):
                    o = o2 * out_shape[3] + (d3 if d3 < out_shape[3] else 0)
                    a = x[i]
                    b = out[o]
                    if op == 1:
                        out[o] = a if a < b else b
                    elif op == 2:
                        out[o] = a if b < a else b
                    else:
                        out[o] = b + a
                    i += 1
    return out


@numba.njit(inline="always")
def window_range(origin: int, dilation: int, filt: int, size: int) -> tuple[int, int]:
    """``filter_start, filter_end``: the taps of a window that fall inside the input. (Where
    the C++ truncates a negative quotient, floor gives a smaller bound; both empty the loop
    or clamp to 0 alike.)"""
    start = max(0, (-origin + dilation - 1) // dilation)
    end = min(filt, (size - origin + dilation - 1) // dilation)
    return start, end


@numba.njit(nogil=True, cache=True, error_model="numpy")
def reduce_window2d(
    x: Float32Array, op: int, init: np.float32, window: Int64Array, oh: int, ow: int,
) -> Float32Array:  # pragma: no cover - jitted
    """Neutral ``reduce_window2d`` on an NCHW map (``op`` as for :func:`reduce`; mean
    divides by the taps inside the input). ``window`` is (filter_h, filter_w, stride_h,
    stride_w, dilation_h, dilation_w, pad_top, pad_left)."""
    n, c, h, w = x.shape
    fh, fw, sh, sw, dh, dw, pt, pl = window
    out = np.empty((n, c, oh, ow), np.float32)
    for b in range(n):
        for ch in range(c):
            for oy in range(oh):
                y0 = oy * sh - pt
                ky0, ky1 = window_range(y0, dh, fh, h)
                for ox in range(ow):
                    x0 = ox * sw - pl
                    kx0, kx1 = window_range(x0, dw, fw, w)
                    value = init
                    count = 0
                    for ky in range(ky0, ky1):
                        for kx in range(kx0, kx1):
                            v = x[b, ch, y0 + dh * ky, x0 + dw * kx]
                            if op == 1:
                                value = v if v < value else value
                            elif op == 2:
                                value = v if value < v else value
                            else:
                                value = value + v
                            count += 1
                    if op == 0:
                        value = value / np.float32(count)
                    out[b, ch, oy, ox] = value
    return out


@numba.njit(nogil=True, cache=True, error_model="numpy")
def softmax(x: Float32Array, outer: int, inner: int, beta: np.float32) -> Float32Array:
    """``exp((x - max) * beta)`` per row, summed in order, each divided by the sum."""
    out = np.empty(outer * inner, np.float32)
    for row in range(outer):
        base = row * inner
        peak = x[base]
        for i in range(1, inner):
            # std::max_element: replace only on ``peak < v`` (NaNs included), kept explicit
            if peak < x[base + i]:  # noqa: PLR1730
                peak = x[base + i]
        total = np.float32(0.0)
        for i in range(inner):
            value = math.exp((x[base + i] - peak) * beta)
            total += value
            out[base + i] = value
        for i in range(inner):
            out[base + i] /= total
    return out


# --- convolutions and matrix products -----------------------------------------------------------


@numba.njit(nogil=True, cache=True, error_model="numpy")
def conv2d(
    x: Float32Array, weights: Float32Array, bias: Float32Array, groups: int, window: Int64Array,
    oh: int, ow: int,
) -> Float32Array:  # pragma: no cover - jitted
    """Neutral float ``conv2d`` on NCHW: per output, bias then ``in * w`` over (in-channel,
    ky, kx) of its group. ``weights`` is (oc, ic / groups, fh, fw)."""
    n, c, h, w = x.shape
    oc = weights.shape[0]
    fh, fw, sh, sw, dh, dw, pt, pl = window
    g_ic = c // groups
    g_oc = oc // groups
    out = np.empty((n, oc, oh, ow), np.float32)
    for b in range(n):
        for g in range(groups):
            for o in range(g * g_oc, (g + 1) * g_oc):
                for oy in range(oh):
                    y0 = oy * sh - pt
                    ky0, ky1 = window_range(y0, dh, fh, h)
                    for ox in range(ow):
                        x0 = ox * sw - pl
                        kx0, kx1 = window_range(x0, dw, fw, w)
                        value = bias[o]
                        for i in range(g_ic):
                            ch = g * g_ic + i
                            for ky in range(ky0, ky1):
                                for kx in range(kx0, kx1):
                                    value += x[b, ch, y0 + dh * ky, x0 + dw * kx] * \
                                        weights[o, i, ky, kx]
                        out[b, o, oy, ox] = value
    return out


def quantized_conv2d(
    x: UInt8Array, weights: UInt8Array, bias: npt.NDArray[np.int32], groups: int,
    window: Int64Array, oh: int, ow: int, input_offset: int, filter_offset: int,
) -> Int64Array:
    """The int32 accumulators of neutral ``quantized_conv2d``: bias plus
    ``(x + input_offset) * (w + filter_offset)`` over the window (int64 here; the caller
    wraps). ``weights`` is (oc, ic / groups, fh, fw).

    A GEMM over the window's taps: in float64 every product and partial sum is an integer
    below 2**53 (checked), so exact in any order. Taps outside the input read zeros, adding
    nothing, as the reference's clipped window does.
    """
    n, c, h, w = x.shape
    oc = weights.shape[0]
    fh, fw, sh, sw, dh, dw, pt, pl = (int(v) for v in window)
    g_ic, g_oc = c // groups, oc // groups
    taps = g_ic * fh * fw
    largest = ((255 + abs(input_offset)) * (255 + abs(filter_offset)) * taps
               + int(np.abs(bias.astype(np.int64)).max(initial=0)))
    # else int64 without BLAS: wraps as the int32 accumulators do, modulo 2**32
    dtype = np.float64 if largest < 2**53 else np.int64
    top, left = max(pt, 0), max(pl, 0)  # input row r is row r + top of the padded map
    base_y, base_x = top - pt, left - pl  # where tap 0 of output 0 reads
    rows = max(top + h, base_y + (oh - 1) * sh + (fh - 1) * dh + 1)
    cols = max(left + w, base_x + (ow - 1) * sw + (fw - 1) * dw + 1)
    padded = np.zeros((n, c, rows, cols), dtype)
    padded[:, :, top : top + h, left : left + w] = x.astype(dtype) + input_offset
    windows = np.empty((n, c, fh, fw, oh, ow), dtype)
    for ky in range(fh):
        for kx in range(fw):
            y0, x0 = base_y + ky * dh, base_x + kx * dw
            windows[:, :, ky, kx] = padded[:, :, y0 : y0 + (oh - 1) * sh + 1 : sh,
                                           x0 : x0 + (ow - 1) * sw + 1 : sw]
    offset_weights = (weights.astype(dtype) + filter_offset).reshape(groups, g_oc, taps)
    products = np.matmul(offset_weights, windows.reshape(n, groups, taps, oh * ow))
    out: Int64Array = products.reshape(n, oc, oh, ow).astype(np.int64)
    out += bias.astype(np.int64)[None, :, None, None]
    return out


@numba.njit(nogil=True, cache=True, error_model="numpy")
def conv2d_transpose(
    x: Float32Array, weights: Float32Array, groups: int, window: Int64Array,
    out_shape: Int64Array,
) -> Float32Array:  # pragma: no cover - jitted
    """Neutral ``conv2d_transpose``: each input value scattered into the output in the
    kernel's loop order. The kernel computes a bias value and never uses it, so no bias."""
    n, c, h, w = x.shape
    oc, oh, ow = out_shape[1], out_shape[2], out_shape[3]
    fh, fw, sh, sw, dh, dw, pt, pl = window
    g_ic = c // groups
    g_oc = oc // groups
    out = np.zeros((n, oc, oh, ow), np.float32)
    for b in range(n):
        for g in range(groups):
            for i in range(g_ic):
                ch = g * g_ic + i
                for iy in range(h):
                    y0 = iy * sh - pt
                    ky0, ky1 = window_range(y0, dh, fh, oh)
                    for ix in range(w):
                        x0 = ix * sw - pl
                        kx0, kx1 = window_range(x0, dw, fw, ow)
                        v = x[b, ch, iy, ix]
                        for o in range(g * g_oc, (g + 1) * g_oc):
                            for ky in range(ky0, ky1):
                                for kx in range(kx0, kx1):
                                    out[b, o, y0 + dh * ky, x0 + dw * kx] += v * \
                                        weights[o, i, ky, kx]
    return out


@numba.njit(nogil=True, cache=True, error_model="numpy")
def matmul(a: Float32Array, b: Float32Array, bias: Float32Array) -> Float32Array:
    """``bias[x] + sum_i a[y, i] * b[i, x]`` in float32, ``i`` ascending."""
    rows, cols = a.shape
    b_cols = b.shape[1]
    out = np.empty((rows, b_cols), np.float32)
    for y in range(rows):
        for x in range(b_cols):
            value = bias[x]
            for i in range(cols):
                value += a[y, i] * b[i, x]
            out[y, x] = value
    return out


def quantized_matmul(
    a: UInt8Array, b: UInt8Array, bias: npt.NDArray[np.int32], a_offset: int, b_offset: int,
) -> Int64Array:
    """The accumulators of ``quantized_matmul``: ``bias + sum (a + a_off) * (b + b_off)``
    (exact in int64, so the order is free; the caller wraps to int32)."""
    return (a.astype(I64) + a_offset) @ (b.astype(I64) + b_offset) + bias.astype(I64)


# --- data movement ------------------------------------------------------------------------------


def pad(x: npt.NDArray[np.generic], in_shape: Shape4,
        paddings: tuple[Padding, Padding, Padding, Padding],
        value: np.generic) -> npt.NDArray[np.generic]:
    """Neutral ``pad``; a negative padding crops, as the kernel's index arithmetic does.
    Along each axis the input lands in one run of the output, so it is one slice copy."""
    src = x.reshape(in_shape)
    out_shape = [max(0, size + before + after)
                 for (before, after), size in zip(paddings, in_shape, strict=True)]
    out = np.full(out_shape, value, x.dtype)
    into, taken = [], []
    for (before, _), size, out_size in zip(paddings, in_shape, out_shape, strict=True):
        lo, hi = max(0, -before), min(size, out_size - before)  # the input indices kept
        if hi <= lo:
            return out  # all padding
        into.append(slice(lo + before, hi + before))
        taken.append(slice(lo, hi))
    out[tuple(into)] = src[tuple(taken)]
    return out


def transpose(x: npt.NDArray[np.generic], in_shape: Shape4,
              perm: Shape4) -> npt.NDArray[np.generic]:
    return np.ascontiguousarray(x.reshape(in_shape).transpose(perm))


def strided_slice(x: npt.NDArray[np.generic], in_shape: Shape4,
                  axes: tuple[range, range, range, range]) -> npt.NDArray[np.generic]:
    """Every index ``range(begin, end, stride)`` visits, per axis."""
    picks = [np.arange(r.start, r.stop, r.step, dtype=np.intp) for r in axes]
    return x.reshape(in_shape)[np.ix_(*picks)]


def concat(inputs: list[UInt8Array], dims: tuple[int, ...], inner: int,
           outer: int) -> UInt8Array:
    """Per outer index, ``inner * dims[i]`` bytes of each input in turn."""
    parts = [x[: outer * inner * d].reshape(outer, inner * d) for x, d in
             zip(inputs, dims, strict=True)]
    return np.concatenate(parts, axis=1).reshape(-1) if parts else np.empty(0, np.uint8)


def resize_nearest(x: npt.NDArray[np.generic], in_shape: Shape4, out_h: int,
                   out_w: int) -> npt.NDArray[np.generic]:
    """``min((int)floorf(o * (float)in / out), in - 1)`` per axis, in float32."""
    h, w = in_shape[2], in_shape[3]
    ys = np.minimum(np.floor(np.arange(out_h, dtype=F32) * (F32(h) / F32(out_h))), h - 1)
    xs = np.minimum(np.floor(np.arange(out_w, dtype=F32) * (F32(w) / F32(out_w))), w - 1)
    src = x.reshape(in_shape)
    return src[:, :, ys.astype(np.intp)][:, :, :, xs.astype(np.intp)]


def _bilinear_axis(size: int, out: int, align_corners: bool
                   ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], Float32Array]:
    """Per output index along one axis: the two source indices and the fraction."""
    scale = F32(size) / F32(out)
    if align_corners and out > 1:
        scale = F32(size - 1) / F32(out - 1)
    pos = np.arange(out, dtype=F32) * scale
    lo = np.floor(pos).astype(np.intp)
    frac = pos - lo.astype(F32)
    # the kernel never clamps the lower index; float32 keeps it below ``size`` anyway
    lo = np.minimum(lo, size - 1)
    return lo, np.minimum(lo + 1, size - 1), frac


def resize_bilinear(x: npt.NDArray[np.generic], in_shape: Shape4, out_h: int, out_w: int,
                    align_corners: bool) -> npt.NDArray[np.generic]:
    """``v0*a0 + v1*a1 + v2*a2 + v3*a3`` in float32, in that order; a uint8 result is the
    C++ conversion (truncation)."""
    y0, y1, fy = _bilinear_axis(in_shape[2], out_h, align_corners)
    x0, x1, fx = _bilinear_axis(in_shape[3], out_w, align_corners)
    src = x.reshape(in_shape)
    one = F32(1)
    fy2, fx2 = fy[:, None], fx[None, :]
    a0 = (one - fy2) * (one - fx2)
    a1 = fy2 * (one - fx2)
    a2 = (one - fy2) * fx2
    a3 = fy2 * fx2

    def at(ys: npt.NDArray[np.intp], xs: npt.NDArray[np.intp]) -> Float32Array:
        return src[:, :, ys][:, :, :, xs].astype(F32)

    with np.errstate(all="ignore"):
        value: Float32Array = at(y0, x0) * a0 + at(y1, x0) * a1 + at(y0, x1) * a2 + at(y1, x1) * a3
    if x.dtype == np.uint8:
        return np.clip(np.trunc(value), 0, 255).astype(np.uint8)
    return value
