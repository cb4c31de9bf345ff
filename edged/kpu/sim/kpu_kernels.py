"""The KPU's arithmetic, bit-exact to the SDK's reference (``kernels/k210/k210_kernels.h``).

Per output value the KPU computes, in 64-bit integers::

    conv = sum(x * w) + (arg_x * sum(x) >> shift_x) + (arg_w * sum(w) >> shift_w)
           + arg_add * in_channels_per_group
    bn   = (conv * bn_mul >> bn_shift) + bn_add
    act  = carry_shift((bn - start[s]) * mul[s], shift[s]) + add[s], clamped to 0..255

with ``s`` the highest activation segment whose ``start < bn``, then pools the uint8 map.

Speed comes from doing ``sum(x * w)`` as a float32 GEMM through BLAS and still getting the
exact integer: with ``x' = x - 128`` and ``w' = w - 128`` every product is at most 2**14 in
magnitude, so any partial sum of up to 1024 products is an integer below 2**24 and float32
holds it exactly, whatever order BLAS adds in. Longer sums are split into such chunks and
added in float64. ``sum(x*w) = sum(x'w') + 128 sum(x) + 128 sum(w) - 128**2 K`` restores the
uint8 product. Depthwise layers, the epilogue (bias terms, batch-norm, activation) and the
pools are numba kernels that release the GIL.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import numpy.typing as npt

from edged.kpu.kmodel.kpu_regs import KpuConv, PoolType, RowLayout
from edged.kpu.sim.executor import Rounding

UInt8Array = npt.NDArray[np.uint8]
Int64Array = npt.NDArray[np.int64]

EXACT_TERMS = 1024
"""Products per float32 partial sum that stay exact after centring (1024 * 2**14 = 2**24)."""


# --- KPU RAM layout ------------------------------------------------------------------------


def _blocks(ram: UInt8Array, byte_offset: int, c: int, h: int, w: int) -> UInt8Array:
    """A (blocks, groups, h, row bytes) view of a map stored in the KPU's row layout.

    Channel ``oc`` lives in block ``oc // groups`` at ``(oc % groups) * row_pitch`` within
    each 64-byte row; image row ``y`` of a block is ``row_len`` rows after row ``y - 1``.
    """
    layout = RowLayout.for_width(w)
    blocks = -(-c // layout.groups)
    region = ram[byte_offset : byte_offset + blocks * layout.row_len * h * 64]
    if layout.groups == 1:
        return region.reshape(blocks, 1, h, layout.row_len * 64)
    return region.reshape(blocks, h, layout.groups, layout.row_pitch).transpose(0, 2, 1, 3)


def kpu_download(ram: UInt8Array, byte_offset: int, c: int, h: int, w: int) -> UInt8Array:
    """Read a (c, h, w) map out of KPU RAM (``kpu_download``)."""
    if w % 64 == 0:
        return ram[byte_offset : byte_offset + c * h * w].reshape(c, h, w).copy()
    view = _blocks(ram, byte_offset, c, h, w)
    return view.reshape(-1, h, view.shape[3])[:c, :, :w].copy()


def kpu_upload(ram: UInt8Array, byte_offset: int, fmap: UInt8Array) -> None:
    """Write a (c, h, w) map into KPU RAM in its row layout (``kpu_upload``)."""
    c, h, w = fmap.shape
    if w % 64 == 0:
        ram[byte_offset : byte_offset + fmap.size] = fmap.reshape(-1)
        return
    view = _blocks(ram, byte_offset, c, h, w)
    groups = view.shape[1]
    full, rest = divmod(c, groups)
    if full:
        view[:full, :, :, :w] = fmap[: full * groups].reshape(full, groups, h, w)
    if rest:
        view[full, :rest, :, :w] = fmap[full * groups :]


# --- the per-value epilogue: batch-norm, activation, clamp ---------------------------------


LUT_LIMIT = 1 << 22
"""Largest activation lookup table built; beyond it the activation is computed per value."""


@dataclass(frozen=True, eq=False)
class Activation:
    """A layer's 16-segment activation as flat tables for the kernels.

    nncase 0.2 picks the highest segment ``s`` with ``start[s] < value``; nncase 0.1's
    emulator, whose rounding ``half-up`` follows, the highest with ``start[s] <= value``.
    ``threshold`` is ``start`` (or ``start - 1``) so that both become ``threshold[s] <
    value``; with ascending starts (every nncase table) the segment is the count of
    ``threshold[1:] < value``. ``mask``/``half`` pre-compute each segment's rounding. Two
    cases the C reference leaves undefined are made deterministic: a value below every
    segment uses segment 0, and shifts above 63 act as 63.
    """

    start: Int64Array
    threshold: Int64Array
    mul: Int64Array
    shift: Int64Array
    mask: Int64Array
    half: Int64Array
    add: Int64Array
    half_even: bool
    sorted_starts: bool

    @classmethod
    def from_conv(cls, conv: KpuConv, rounding: Rounding) -> Activation:
        shift = np.minimum(conv.act_shift, 63)
        mask = np.array([(1 << int(v)) - 1 for v in shift], np.int64)
        half = np.array([1 << (int(v) - 1) if v else 1 for v in shift], np.int64)
        ascending = bool(np.all(np.diff(conv.act_start) >= 0))
        half_even = rounding == "half-even"
        threshold = conv.act_start if half_even else conv.act_start - 1
        return cls(conv.act_start, threshold, conv.act_mul, shift.astype(np.int64), mask,
                   half, conv.act_add, half_even, ascending)

    def __call__(self, values: Int64Array) -> UInt8Array:
        out = np.empty(values.size, np.uint8)
        _activate(values.reshape(-1), self.start, self.threshold, self.mul, self.shift,
                  self.mask, self.half, self.add, self.half_even, self.sorted_starts, out)
        return out

    def lookup_table(self, vmin: int, vmax: int) -> tuple[int, UInt8Array] | None:
        """``(lo, lut)`` with ``act(v) == lut[clip(v - lo, 0, len - 1)]`` for every ``v`` in
        ``[vmin, vmax]``, or None when no table of at most LUT_LIMIT entries is exact.

        Each segment is linear, so its clamped output can change only where the unclamped
        value is within 0..255 or where it hands over to the next segment; the table spans
        those places, and the values reachable outside it are checked to equal its ends.
        """
        if not self.sorted_starts:
            return None
        edge = [int(t) for t in self.threshold]
        bounds = [(-(1 << 62), edge[1])]
        bounds += [(edge[s] + 1, edge[s + 1]) for s in range(1, 15)]
        bounds.append((edge[15] + 1, 1 << 62))
        lo, hi = vmax + 1, vmin - 1
        for s, (seg_first, seg_last) in enumerate(bounds):
            first, last = max(seg_first, vmin), min(seg_last, vmax)
            mul, add = int(self.mul[s]), int(self.add[s])
            if first > last or mul == 0:
                continue
            scale = 1 << int(self.shift[s])
            ends = ((-add - 2) * scale // mul, (257 - add) * scale // mul)
            seg_lo = max(first, int(self.start[s]) + min(ends) - 1)
            seg_hi = min(last, int(self.start[s]) + max(ends) + 1)
            if seg_lo <= seg_hi:
                lo, hi = min(lo, seg_lo), max(hi, seg_hi)
        # a step where one segment hands over to the next counts too
        for s in range(1, 16):
            step = np.array([edge[s], edge[s] + 1], np.int64)
            if vmin <= step[0] and step[1] <= vmax:
                before, after = self(step)
                if before != after:
                    lo, hi = min(lo, int(step[0])), max(hi, int(step[1]))
        if lo > hi:
            lo = hi = vmin
        if hi - lo + 1 > LUT_LIMIT:
            return None
        lut = self(np.arange(lo, hi + 1, dtype=np.int64))
        # outside [lo, hi] each segment's stretch is saturated: its two ends tell its value
        probes = [v for first, last in bounds for v in (first, last)] + [vmin, vmax]
        below = np.array([v for v in probes if vmin <= v < lo], np.int64)
        above = np.array([v for v in probes if hi < v <= vmax], np.int64)
        if np.any(self(below) != lut[0]) or np.any(self(above) != lut[-1]):
            return None
        return lo, lut


@numba.njit(inline="always")
def kpu_carry_shift(value: int, shift: int) -> int:  # pragma: no cover - jitted
    """The SDK's ``kpu_carry_shift`` (``kpu.c``): ``value / 2**shift``, an exact half
    rounded away from zero, read off the last bit shifted out."""
    if shift <= 0:
        return value
    value >>= shift - 1
    if value & 1:
        return (value >> 1) - 1 if value < 0 else (value >> 1) + 1
    return value >> 1


@numba.njit(nogil=True, cache=True)
def _activate(
    v: Int64Array, start: Int64Array, threshold: Int64Array, mul: Int64Array,
    shift: Int64Array, mask: Int64Array, half: Int64Array, add: Int64Array, half_even: bool,
    sorted_starts: bool, out: UInt8Array,
) -> None:  # pragma: no cover - jitted
    """The 16-segment activation of each value, clamped to uint8."""
    for i in range(v.size):
        if sorted_starts:
            s = np.uint64(0)
            for k in range(1, 16):
                s += np.uint64(v[i] > threshold[k])
        else:
            s = np.uint64(15)
            while s > 0 and not v[i] > threshold[s]:
                s -= np.uint64(1)
        p = (v[i] - start[s]) * mul[s]
        sft = shift[s]
        if half_even:  # nncase's carry_shift<int64_t, true>, its sign quirk included
            integral = p >> sft
            frac = p & mask[s]
            hf = half[s]
            sign = np.int64(-1) if p < 0 else np.int64(1)
            up = (frac > hf) | ((frac == hf) & ((integral & 1) == 1))
            r = integral + sign if up else integral
        else:
            r = kpu_carry_shift(p, sft)
        r += add[s]
        out[i] = min(max(r, 0), 255)


@numba.njit(nogil=True, cache=True)
def _batchnorm(
    acc: npt.NDArray[np.generic], x_term: Int64Array, w_term: Int64Array, bn_mul: Int64Array,
    bn_shift: Int64Array, bn_add: Int64Array, v: Int64Array,
) -> None:  # pragma: no cover - jitted
    """``v[o, i] = ((acc[o, i] + x_term[i] + w_term[o]) * mul >> shift) + add``."""
    oc, n = acc.shape
    for o in range(oc):
        wt, m, sh, ad = w_term[o], bn_mul[o], bn_shift[o], bn_add[o]
        for i in range(n):
            v[o, i] = (((np.int64(acc[o, i]) + x_term[i] + wt) * m) >> sh) + ad


@numba.njit(nogil=True, cache=True)
def _batchnorm_lut(
    acc: npt.NDArray[np.generic], x_term: Int64Array, w_term: Int64Array, bn_mul: Int64Array,
    bn_shift: Int64Array, bn_add: Int64Array, lo: int, lut: UInt8Array, out: UInt8Array,
) -> None:  # pragma: no cover - jitted
    """Batch-norm, then the activation through its lookup table."""
    oc, n = acc.shape
    last = lut.size - 1
    for o in range(oc):
        wt, m, sh, ad = w_term[o], bn_mul[o], bn_shift[o], bn_add[o]
        for i in range(n):
            v = (((np.int64(acc[o, i]) + x_term[i] + wt) * m) >> sh) + ad - lo
            out[o, i] = lut[min(max(v, 0), last)]


@numba.njit(nogil=True, cache=True)
def _depthwise(
    x: UInt8Array, weights: npt.NDArray[np.int64], k: int, pad_value: int, arg_x: int,
    shift_x: int, acc: Int64Array,
) -> None:  # pragma: no cover - jitted
    """Depthwise 1x1 or 3x3 (pad 1) sums, with the per-value arg_x term folded in.

    A 3x3 window sums at most 9 * 255 * 255 < 2**31, so the planes are int32 (twice the
    SIMD lanes of int64).
    """
    c, h, w = x.shape
    pad = k // 2
    padded = np.full((h + 2 * pad, w + 2 * pad), np.int32(pad_value))
    total = np.empty((h, w), np.int32)
    sums = np.empty((h, w), np.int32)
    for ch in range(c):
        padded[pad : pad + h, pad : pad + w] = x[ch]
        total[:] = 0
        sums[:] = 0
        for ky in range(k):
            for kx in range(k):
                wk = np.int32(weights[ch, ky * k + kx])
                for y in range(h):
                    row = padded[y + ky]
                    for xx in range(w):
                        value = row[xx + kx]
                        total[y, xx] += value * wk
                        sums[y, xx] += value
        for y in range(h):
            for xx in range(w):
                acc[ch, y * w + xx] = np.int64(total[y, xx]) + (
                    (arg_x * np.int64(sums[y, xx])) >> shift_x)


@numba.njit(nogil=True, cache=True)
def _depthwise_lut(
    x: UInt8Array, weights: npt.NDArray[np.int64], k: int, pad_value: int, arg_x: int,
    shift_x: int, w_term: Int64Array, bn_mul: Int64Array, bn_shift: Int64Array,
    bn_add: Int64Array, lo: int, lut: UInt8Array, out: UInt8Array,
) -> None:  # pragma: no cover - jitted
    """Depthwise convolution, batch-norm and table activation in one pass, a row at a time
    (the row sums stay in L1; no per-value int64 array is written)."""
    c, h, w = x.shape
    pad = k // 2
    padded = np.full((h + 2 * pad, w + 2 * pad), np.int32(pad_value))
    row_acc = np.empty(w, np.int32)
    row_sum = np.empty(w, np.int32)
    last = lut.size - 1
    for ch in range(c):
        padded[pad : pad + h, pad : pad + w] = x[ch]
        wt, m, sh, ad = w_term[ch], bn_mul[ch], bn_shift[ch], bn_add[ch]
        for y in range(h):
            row_acc[:] = 0
            row_sum[:] = 0
            for ky in range(k):
                row = padded[y + ky]
                for kx in range(k):
                    wk = np.int32(weights[ch, ky * k + kx])
                    for xx in range(w):
                        value = row[xx + kx]
                        row_acc[xx] += value * wk
                        row_sum[xx] += value
            for xx in range(w):
                total = np.int64(row_acc[xx]) + ((arg_x * np.int64(row_sum[xx])) >> shift_x) + wt
                index = ((total * m) >> sh) + ad - lo
                out[ch, y, xx] = lut[min(max(index, 0), last)]


@numba.njit(nogil=True, cache=True)
def _batchnorm_max2_lut(
    acc: npt.NDArray[np.generic], x_term: Int64Array, w_term: Int64Array, bn_mul: Int64Array,
    bn_shift: Int64Array, bn_add: Int64Array, w: int, lo: int, lut: UInt8Array,
    out: UInt8Array,
) -> None:  # pragma: no cover - jitted
    """Batch-norm, 2x2 stride-2 max pool and the table, fused for the commonest KPU pool:
    a quarter of the table lookups and no int64 map written."""
    oc = acc.shape[0]
    _, oh, ow = out.shape
    last = lut.size - 1
    for o in range(oc):
        wt, m, sh, ad = w_term[o], bn_mul[o], bn_shift[o], bn_add[o]
        for oy in range(oh):
            top = 2 * oy * w
            bottom = top + w
            for ox in range(ow):
                a = np.int64(acc[o, top + 2 * ox]) + x_term[top + 2 * ox]
                b = np.int64(acc[o, top + 2 * ox + 1]) + x_term[top + 2 * ox + 1]
                c = np.int64(acc[o, bottom + 2 * ox]) + x_term[bottom + 2 * ox]
                d = np.int64(acc[o, bottom + 2 * ox + 1]) + x_term[bottom + 2 * ox + 1]
                best = max(a, b, c, d)  # bn is monotone (mul >= 0): max first
                index = (((best + wt) * m) >> sh) + ad - lo
                out[o, oy, ox] = lut[min(max(index, 0), last)]


@numba.njit(nogil=True, cache=True)
def _lookup(values: Int64Array, lo: int, lut: UInt8Array, out: UInt8Array) -> None:
    """``out = lut[clip(values - lo)]``: the activation of values already batch-normed."""
    last = lut.size - 1
    flat_in, flat_out = values.reshape(-1), out.reshape(-1)
    for i in range(flat_in.size):
        flat_out[i] = lut[min(max(flat_in[i] - lo, 0), last)]


def _pool_values(v: Int64Array, pool: PoolType) -> Int64Array:
    """Max or select pooling of batch-norm values (int64), window views at a time."""
    _c, h, w = v.shape
    if pool is PoolType.MAX_2_S1:  # windows past the edge keep their in-map values only
        v = np.pad(v, ((0, 0), (0, 1), (0, 1)), constant_values=np.iinfo(np.int64).min)
    size, stride = pool.filter, pool.stride
    oh, ow = h // stride, w // stride
    if pool in _SELECT_POOLS:
        dx = 1 if pool is PoolType.RIGHT_TOP_2_S2 else 0
        return v[:, : oh * stride : stride, dx : dx + ow * stride : stride]
    best = v[:, : oh * stride : stride, : ow * stride : stride].copy()
    for ky in range(size):
        for kx in range(size):
            if ky or kx:
                np.maximum(best, v[:, ky : ky + oh * stride : stride,
                                   kx : kx + ow * stride : stride], out=best)
    return best


# --- pooling --------------------------------------------------------------------------------


@numba.njit(nogil=True, cache=True)
def _pool(x: UInt8Array, mode: int, out: UInt8Array) -> None:  # pragma: no cover - jitted
    """``kpu_pool2d`` for uint8 maps; ``mode`` is a :class:`PoolType` value."""
    c, h, w = x.shape
    _, oh, ow = out.shape
    if mode in (3, 4, 7):
        size, stride = 4, 4
    elif mode in (8, 9):
        size, stride = 2, 1
    else:
        size, stride = 2, 2
    for ch in range(c):
        for oy in range(oh):
            for ox in range(ow):
                y0, x0 = oy * stride, ox * stride
                if mode in (1, 3, 9):  # max; outside the map counts as 0 (uint8 lowest)
                    best = x[ch, y0, x0] if y0 < h and x0 < w else np.uint8(0)
                    for ky in range(size):
                        for kx in range(size):
                            iy, ix = y0 + ky, x0 + kx
                            if iy < h and ix < w and x[ch, iy, ix] > best:
                                best = x[ch, iy, ix]
                    out[ch, oy, ox] = best
                elif mode in (2, 4, 8):  # mean; outside the map repeats the edge
                    total = np.int64(0)
                    for ky in range(size):
                        for kx in range(size):
                            iy, ix = min(y0 + ky, h - 1), min(x0 + kx, w - 1)
                            total += x[ch, iy, ix]
                    out[ch, oy, ox] = total // (size * size)
                else:  # select one pixel of the window (5, 7: left top; 6: right top)
                    ix = x0 + 1 if mode == 6 else x0
                    out[ch, oy, ox] = x[ch, y0, ix] if ix < w else 0


def kpu_pool(x: UInt8Array, pool: PoolType) -> UInt8Array:
    """Pool a (c, h, w) uint8 map the way the KPU's pooling stage does."""
    if pool is PoolType.BYPASS:
        return x
    c, h, w = x.shape
    out = np.empty((c, h // pool.stride, w // pool.stride), np.uint8)
    _pool(x, int(pool), out)
    return out


# --- the convolution -----------------------------------------------------------------------

_SELECT_POOLS = frozenset({PoolType.LEFT_TOP_2_S2, PoolType.RIGHT_TOP_2_S2, PoolType.LEFT_TOP_4_S4})
_POOLS_BEFORE_ACTIVATION = _SELECT_POOLS | {PoolType.MAX_2_S2, PoolType.MAX_4_S4,
                                            PoolType.MAX_2_S1}


@dataclass(frozen=True, eq=False)
class PreparedConv:
    """A KPU layer with its constant terms precomputed once, at model load."""

    conv: KpuConv
    activation: Activation
    lut: tuple[int, UInt8Array] | None
    """The activation as a lookup table over the batch-norm values this layer can reach."""
    pool_first: bool
    """Max and select pools commute with a non-decreasing batch-norm and activation: pool the
    batch-norm values, then look up 4x (or 16x) fewer."""
    w_term: Int64Array
    """Per output channel: the arg_w and arg_add terms (plus the centring correction)."""
    w_centred: list[npt.NDArray[np.float32]] | None
    """Per chunk of in-channels: (oc, taps) float32 weights minus 128 (regular convs)."""
    chunk_channels: int
    w_int: npt.NDArray[np.int64] | None
    """Integer weights for depthwise layers and 16-bit weight mode."""

    @classmethod
    def from_conv(cls, conv: KpuConv, rounding: Rounding) -> PreparedConv:
        arg = conv.arg
        w64 = conv.weights.astype(np.int64)
        sum_w = w64.sum(axis=1)
        per_group = 1 if arg.depthwise else arg.in_channels
        w_term = ((arg.arg_w * sum_w) >> arg.shift_w) + arg.arg_add * per_group
        activation = Activation.from_conv(conv, rounding)
        lut = activation.lookup_table(*_reachable(conv, w_term, sum_w))
        taps = arg.filter_size**2
        centred = not arg.depthwise and conv.weights.dtype == np.uint8
        w_centred = None
        chunk = arg.in_channels
        if centred:
            w_term = w_term + 128 * sum_w - 128 * 128 * w64.shape[1]
            chunk = max(1, EXACT_TERMS // taps)
            wc = (w64 - 128).astype(np.float32).reshape(arg.out_channels, arg.in_channels, taps)
            w_centred = [np.ascontiguousarray(wc[:, i : i + chunk].reshape(arg.out_channels, -1))
                         for i in range(0, arg.in_channels, chunk)]
        pool_first = (
            lut is not None
            and arg.pool_type in _POOLS_BEFORE_ACTIVATION
            and (arg.pool_type in _SELECT_POOLS
                 or (bool(np.all(conv.bn_mul >= 0)) and bool(np.all(np.diff(lut[1]) >= 0))))
        )
        return cls(conv, activation, lut, pool_first, w_term.astype(np.int64), w_centred, chunk,
                   None if centred else np.ascontiguousarray(w64))

    def run(self, x: UInt8Array) -> UInt8Array:
        """Convolution, batch-norm, activation and pooling of one (ic, h, w) map."""
        arg, conv = self.conv.arg, self.conv
        _, h, w = x.shape
        n = h * w
        if arg.depthwise and self.lut is not None:
            assert self.w_int is not None
            activated = np.empty((arg.out_channels, h, w), np.uint8)
            _depthwise_lut(x, self.w_int, arg.filter_size, arg.pad_value, arg.arg_x,
                           arg.shift_x, self.w_term, conv.bn_mul, conv.bn_shift, conv.bn_add,
                           self.lut[0], self.lut[1], activated)
            return kpu_pool(activated, arg.pool_type)
        if arg.depthwise:
            assert self.w_int is not None
            sums = np.empty((arg.in_channels, n), np.int64)
            _depthwise(x, self.w_int, arg.filter_size, arg.pad_value, arg.arg_x, arg.shift_x,
                       sums)
            acc: npt.NDArray[np.generic] = sums
            x_term = np.zeros(n, np.int64)
        else:
            acc, sum_x = self._products(x)
            x_term = (arg.arg_x * sum_x) >> arg.shift_x
            if self.w_centred is not None:
                x_term += 128 * sum_x
        bn = (conv.bn_mul, conv.bn_shift, conv.bn_add)
        if self.pool_first and self.lut is not None and arg.pool_type is PoolType.MAX_2_S2:
            pooled = np.empty((arg.out_channels, arg.out_height, arg.out_width), np.uint8)
            _batchnorm_max2_lut(acc, x_term, self.w_term, *bn, w, self.lut[0], self.lut[1],
                                pooled)
            return pooled
        if self.pool_first and self.lut is not None:
            values = np.empty((arg.out_channels, n), np.int64)
            _batchnorm(acc, x_term, self.w_term, *bn, values)
            pooled_values = _pool_values(values.reshape(-1, h, w), arg.pool_type)
            pooled = np.empty(pooled_values.shape, np.uint8)
            _lookup(np.ascontiguousarray(pooled_values), self.lut[0], self.lut[1], pooled)
            return pooled
        out = np.empty((arg.out_channels, n), np.uint8)
        if self.lut is not None:
            _batchnorm_lut(acc, x_term, self.w_term, *bn, self.lut[0], self.lut[1], out)
        else:
            values = np.empty((arg.out_channels, n), np.int64)
            _batchnorm(acc, x_term, self.w_term, *bn, values)
            out = self.activation(values).reshape(arg.out_channels, n)
        return kpu_pool(out.reshape(arg.out_channels, h, w), arg.pool_type)

    def _products(self, x: UInt8Array) -> tuple[npt.NDArray[np.floating], Int64Array]:
        """``sum(x * w)`` per output value (centred when exact in float32) and ``sum(x)``.

        numpy's strided copies beat a numba im2col here: they vectorise without the
        negative-index checks numba puts on computed indices.
        """
        arg = self.conv.arg
        ic, h, w = x.shape
        n = h * w
        if arg.filter_size == 1:
            sum_x = x.reshape(ic, n).sum(axis=0, dtype=np.int64)

            def cols_of(lo: int, hi: int) -> npt.NDArray[np.uint8]:
                return x[lo:hi].reshape(hi - lo, n)
        else:
            padded = np.empty((ic, h + 2, w + 2), np.uint8)
            padded[:] = arg.pad_value
            padded[:, 1:-1, 1:-1] = x
            plane = padded.sum(axis=0, dtype=np.int64)
            rows = plane[:, :-2] + plane[:, 1:-1] + plane[:, 2:]
            sum_x = (rows[:-2] + rows[1:-1] + rows[2:]).reshape(n)

            def cols_of(lo: int, hi: int) -> npt.NDArray[np.uint8]:
                view = np.lib.stride_tricks.sliding_window_view(padded[lo:hi], (3, 3),
                                                                axis=(1, 2))
                return view.transpose(0, 3, 4, 1, 2).reshape((hi - lo) * 9, n)

        if self.w_centred is None:  # 16-bit weights: exact in float64 for any length
            assert self.w_int is not None
            return self.w_int.astype(np.float64) @ cols_of(0, ic).astype(np.float64), sum_x
        acc: npt.NDArray[np.floating] | None = None
        for i, wc in enumerate(self.w_centred):
            lo = i * self.chunk_channels
            hi = min(ic, lo + self.chunk_channels)
            cols = cols_of(lo, hi).astype(np.float32)
            cols -= 128
            part = wc @ cols
            acc = part if acc is None else acc + part.astype(np.float64)
        assert acc is not None
        return acc, sum_x


def _reachable(conv: KpuConv, w_term: Int64Array, sum_w: Int64Array) -> tuple[int, int]:
    """Bounds of the batch-norm values any uint8 input can produce in this layer.

    With ``x`` in 0..255 and the weights fixed, ``sum(x*w)`` lies in ``[0, 255 sum(w)]`` and
    ``sum(x)`` in ``[0, 255 taps]``; batch-norm is monotone in its input.
    """
    arg = conv.arg
    taps = conv.weights.shape[1]
    x_ends = [(arg.arg_x * sx) >> arg.shift_x for sx in (0, 255 * taps)]
    low = w_term + min(x_ends)
    high = w_term + 255 * sum_w + max(x_ends)
    ends = [((t * conv.bn_mul) >> conv.bn_shift) + conv.bn_add for t in (low, high)]
    return int(np.minimum(*ends).min()), int(np.maximum(*ends).max())
