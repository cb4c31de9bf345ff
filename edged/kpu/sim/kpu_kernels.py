"""The KPU's arithmetic, bit-exact to the SDK's reference (``kernels/k210/k210_kernels.h``).

Per output value the KPU computes, in 64-bit integers::

    conv = sum(x * w) + (arg_x * sum(x) >> shift_x) + (arg_w * sum(w) >> shift_w)
           + arg_add * in_channels_per_group
    bn   = (conv * bn_mul >> bn_shift) + bn_add
    act  = carry_shift((bn - start[s]) * mul[s], shift[s]) + add[s], clamped to 0..255

with ``s`` the highest activation segment whose ``start < bn``, then pools the uint8 map.

Speed comes from doing ``sum(x * w)`` as an integer GEMM into int32
(:mod:`edged.kpu.sim.int_gemm`): exact by construction. Where the CPU's uint8-by-int8
kernel is exact, the maps go in as ``x - 128`` (``x ^ 0x80``) and ``128 * sum(w)`` is added
back with the other per-channel terms. A row of ones under the weights makes the same GEMM
give ``sum(x)`` (less ``128 * taps``).

3x3 windows are read as runs of the flattened padded planes (rows ``w + 2`` apart; the two
padding columns of each output row are computed and dropped), so every loop is long and
contiguous. Depthwise layers and the epilogue (bias terms, batch-norm, activation, pool) are
numba kernels that release the GIL and run a channel at a time in cache; the activation is
one segment's formula, with a short rounding, where that is exact over every reachable
value (a ReLU), the few segments in reach evaluated as such (a leaky ReLU), else a lookup
table, all computed branch-free so that they vectorise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numba
import numpy as np
import numpy.typing as npt

from edged.kpu.kmodel.kpu_regs import KpuConv, PoolType, RowLayout
from edged.kpu.sim.executor import Rounding
from edged.kpu.sim.int_gemm import GemmWeights, exact_matmul, gemm_weights, input_offset
from edged.kpu.sim.lanes import Lanes, SplitChoice, machine_lanes

UInt8Array = npt.NDArray[np.uint8]
Int64Array = npt.NDArray[np.int64]

PIECES = 4
"""Activation segments in reach that the kernels evaluate as such (a leaky ReLU needs 2 or
3); more go through a table."""


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
"""Largest activation lookup table built; beyond it (and beyond PIECES segments in reach)
the activation is computed per value."""


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

    def only(self, s: int) -> Activation:
        """This activation with every segment replaced by segment ``s``."""
        def same(table: Int64Array) -> Int64Array:
            return np.full(16, table[s], np.int64)

        return Activation(same(self.start), same(self.threshold), same(self.mul),
                          same(self.shift), same(self.mask), same(self.half), same(self.add),
                          self.half_even, True)

    def linear_segment(self, vmin: int, vmax: int) -> int | None:
        """The segment whose formula alone gives this activation for every value in
        ``[vmin, vmax]`` (a ReLU's), or None.

        The segment is the one of ``vmax``; its formula (with a non-negative slope) is
        non-decreasing, so it matches each other segment in reach that is constant (slope
        0) exactly when it equals that constant at both ends of the segment's stretch.
        """
        if not self.sorted_starts:
            return None
        s = int(np.count_nonzero(self.threshold[1:] < vmax))
        if self.mul[s] < 0:
            return None
        formula = self.only(s)
        for t, (lowest, highest) in enumerate(self._stretches()):
            ends = np.array([max(lowest, vmin), min(highest, vmax)], np.int64)
            if t == s or ends[0] > ends[1]:
                continue
            constant = min(max(int(self.add[t]), 0), 255)
            if self.mul[t] != 0 or np.any(formula(ends) != constant):
                return None
        return s

    def relu_segment(self, vmin: int, vmax: int) -> int | None:
        """The :meth:`linear_segment` of ``[vmin, vmax]`` where every value below its start
        gives 0 (its ``add`` is not positive, or no value is below), else None: there the
        kernels may round as if the product were never negative (see
        :func:`_finish_plane`), since for a negative product either rounding gives at most
        0 before ``add``.
        """
        s = self.linear_segment(vmin, vmax)
        if s is None or (self.add[s] > 0 and vmin < self.start[s]):
            return None
        return s

    def pieces(self, vmin: int, vmax: int) -> list[int] | None:
        """The segments values in ``[vmin, vmax]`` fall in, ascending, when there are at
        most PIECES of them (and the starts ascend), else None."""
        if not self.sorted_starts:
            return None
        reached = [s for s, (lowest, highest) in enumerate(self._stretches())
                   if max(lowest, vmin) <= min(highest, vmax)]
        return reached if len(reached) <= PIECES else None

    def _stretches(self) -> list[tuple[int, int]]:
        """Per segment, the values it covers (ascending starts): ``threshold[s] < v <=
        threshold[s + 1]``, unbounded at both ends."""
        edge = [int(t) for t in self.threshold]
        return ([(-(1 << 62), edge[1])] + [(edge[s] + 1, edge[s + 1]) for s in range(1, 15)]
                + [(edge[15] + 1, 1 << 62)])

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
        bounds = self._stretches()
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


@numba.njit(inline="always")
def _mul(a: int | np.int64, b: int | np.int64,
         narrow: bool) -> int:  # pragma: no cover - jitted
    """``a * b`` in int64; ``narrow`` says both are known to fit int32, which lets the
    vectorised loops multiply 32 by 32 bits (``vpmuldq``) rather than 64 by 64: a quarter
    off the epilogue, measured. The flag is loop-invariant, so LLVM compiles each loop
    twice and picks once."""
    if narrow:
        return int(np.int64(np.int32(a)) * np.int64(np.int32(b)))
    return int(a * b)


@numba.njit(nogil=True, cache=True)
def _segment(v: int, start: int, mul: int, shift: int, mask: int, half: int, add: int,
             half_even: bool, narrow: bool) -> np.int64:  # pragma: no cover - jitted
    """One activation segment: ``carry_shift((v - start) * mul, shift) + add`` in 0..255."""
    p = _mul(v - start, mul, narrow)
    if half_even:  # nncase's carry_shift<int64_t, true>, its sign quirk included
        integral = p >> shift
        frac = p & mask
        sign = np.int64(-1) if p < 0 else np.int64(1)
        up = (frac > half) | ((frac == half) & ((integral & 1) == 1))
        r = integral + sign if up else integral
    else:
        r = kpu_carry_shift(p, shift)
    return np.int64(min(max(r + add, 0), 255))


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
        out[i] = _segment(v[i], start[s], mul[s], shift[s], mask[s], half[s], add[s],
                          half_even, False)



# --- pooling --------------------------------------------------------------------------------


@numba.njit(nogil=True, cache=True)
def _pool_plane(x: npt.NDArray[np.generic], mode: int,
                out: npt.NDArray[np.generic]) -> None:  # pragma: no cover - jitted
    """``kpu_pool2d`` of one (h, w) uint8 plane; ``mode`` is a :class:`PoolType` value."""
    h, w = x.shape
    oh, ow = out.shape
    if mode == 1:  # MAX_2_S2, the commonest: no window leaves the map
        for oy in range(oh):
            top, bottom = x[2 * oy], x[2 * oy + 1]
            for ox in range(ow):
                out[oy, ox] = max(top[2 * ox], top[2 * ox + 1], bottom[2 * ox],
                                  bottom[2 * ox + 1])
        return
    if mode in (3, 4, 7):
        size, stride = 4, 4
    elif mode in (8, 9):
        size, stride = 2, 1
    else:
        size, stride = 2, 2
    for oy in range(oh):
        for ox in range(ow):
            y0, x0 = oy * stride, ox * stride
            if mode in (3, 9):  # max; outside the map counts as 0 (the lowest)
                best = x[y0, x0]
                for ky in range(size):
                    for kx in range(size):
                        iy, ix = y0 + ky, x0 + kx
                        if iy < h and ix < w and x[iy, ix] > best:
                            best = x[iy, ix]
                out[oy, ox] = best
            elif mode in (2, 4, 8):  # mean; outside the map repeats the edge
                total = np.int64(0)
                for ky in range(size):
                    for kx in range(size):
                        total += x[min(y0 + ky, h - 1), min(x0 + kx, w - 1)]
                out[oy, ox] = total // (size * size)
            else:  # select one pixel of the window (5, 7: left top; 6: right top)
                ix = x0 + 1 if mode == 6 else x0
                out[oy, ox] = x[y0, ix] if ix < w else 0


@numba.njit(nogil=True, cache=True)
def _pool(x: UInt8Array, mode: int, out: UInt8Array) -> None:  # pragma: no cover - jitted
    for ch in range(x.shape[0]):
        _pool_plane(x[ch], mode, out[ch])


def kpu_pool(x: UInt8Array, pool: PoolType) -> UInt8Array:
    """Pool a (c, h, w) uint8 map the way the KPU's pooling stage does."""
    if pool is PoolType.BYPASS:
        return x
    c, h, w = x.shape
    out = np.empty((c, h // pool.stride, w // pool.stride), np.uint8)
    _pool(x, int(pool), out)
    return out


# --- batch-norm, activation and pooling of one output channel -------------------------------

PER_VALUE, TABLE, RELU, PIECEWISE = 0, 1, 2, 3
"""How an epilogue computes the activation (the first item of its ``act`` tuple)."""

PIECE_FIELDS = ("threshold", "start", "mul", "shift", "mask", "half", "add")
"""The fields of each piece in an ``act`` tuple, after ``(kind, table origin, half_even,
narrow)``."""
_P0, _P1, _P2, _P3 = (4 + k * len(PIECE_FIELDS) for k in range(PIECES))
"""Where each piece starts in an ``act`` tuple."""


@numba.njit(inline="always")
def _pick(j: np.int64, act: tuple[int, ...], field: int) -> int:  # pragma: no cover - jitted
    """Field ``field`` of piece ``j`` of ``act``, as selects (no indexing: vectorises)."""
    low = act[_P0 + field] if j == 0 else act[_P1 + field]
    high = act[_P2 + field] if j == 2 else act[_P3 + field]
    return low if j < 2 else high


@numba.njit(inline="always")
def _batchnorm(acc: float, x_term: int, w_term: int, bn_mul: int, bn_shift: int,
               bn_add: int, narrow: bool) -> int:  # pragma: no cover - jitted
    """``kpu_conv2d``'s batch-norm of one conv sum."""
    return int((_mul(np.int64(acc) + x_term + w_term, bn_mul, narrow) >> bn_shift) + bn_add)


@numba.njit(inline="always")
def _relu(acc: npt.NDArray[np.generic], x_term: Int64Array, bn_mul: int, k: int, shift: int,
          bn_shift: int, lsb_bit: int, add: int, narrow: bool,
          dst: UInt8Array) -> None:  # pragma: no cover - jitted
    """The RELU kind's loop (see :func:`_finish_plane`)."""
    total = bn_shift + shift
    for p in range(acc.size):
        t = _mul(np.int64(acc[p]) + x_term[p], bn_mul, narrow) + k
        dst[p] = min(max(((t + ((t >> shift) & lsb_bit)) >> total) + add, 0), 255)


@numba.njit(nogil=True, cache=True)
def _finish_plane(
    acc: npt.NDArray[np.generic], x_term: Int64Array, w_term: int, bn_mul: int, bn_shift: int,
    bn_add: int, act: tuple[int, ...], lut: UInt8Array, mode: int, h: int, w: int,
    index: npt.NDArray[np.int32], flat: UInt8Array, plane: UInt8Array, values: Int64Array,
    out: UInt8Array,
) -> None:  # pragma: no cover - jitted
    """One channel's conv sums (``acc + x_term``: ``h`` rows ``len(acc) // h`` apart, of
    which the first ``w`` columns count) through batch-norm, the activation and the pool.

    ``act`` is ``(kind, table origin, half_even, narrow)`` (see :func:`_mul`) and PIECES
    pieces of ``(threshold, start, mul, shift, mask, half, add)``. RELU computes the
    first piece's formula (see :meth:`Activation.relu_segment`), whose ``mul`` is 1 (see
    :func:`_fused_relu`), with a shorter rounding, exact where the product is not negative:
    for ``q >= 0``, half-up rounding of ``q / 2**shift`` is ``(q + half) >> shift`` and
    half-even is ``(t + lsb) >> shift`` with ``t = q + half - 1`` and ``lsb`` the last bit
    kept of ``t`` (of ``q`` too, wherever adding it can change the result). With ``q =
    ((c * bn_mul) >> bn_shift) + bn_add - start`` (``c`` the conv sum) the two shifts are
    one, ``(c * bn_mul + k) >> (bn_shift + shift)``, ``k`` folded per channel: a value
    costs one multiply and six other vector instructions. PIECEWISE picks the
    last piece whose threshold the value exceeds (the pieces are the segments in reach,
    ascending); TABLE computes indices into ``lut``, then looks them up. All three run
    branch-free over the whole plane, so they vectorise; PER_VALUE leaves the batch-norm
    values in ``values`` for :class:`Activation`.
    """
    stride = acc.size // h
    kind = act[0]
    narrow = act[3] != 0
    if kind == PER_VALUE:
        for y in range(h):
            for x in range(w):
                p = y * stride + x
                values[y, x] = _batchnorm(acc[p], x_term[p], w_term, bn_mul, bn_shift, bn_add,
                                          narrow)
        return
    direct = mode == 0 and stride == w  # the plane is the output, no copy or pool
    dst = out.reshape(-1) if direct else flat
    half_even = act[2] != 0
    if kind == RELU:
        start, shift, add = act[_P0 + 1], act[_P0 + 3], act[_P0 + 6]
        rounds = shift > 0
        bias = (act[_P0 + 5] - half_even) if rounds else 0
        lsb = 1 if rounds and half_even else 0
        k = w_term * bn_mul + ((bn_add - start + bias) << bn_shift)
        if narrow:  # two copies of the loop, each with its multiply
            _relu(acc, x_term, bn_mul, k, shift, bn_shift, lsb << bn_shift, add, True, dst)
        else:
            _relu(acc, x_term, bn_mul, k, shift, bn_shift, lsb << bn_shift, add, False, dst)
    elif kind == PIECEWISE:
        for p in range(acc.size):
            bn = _batchnorm(acc[p], x_term[p], w_term, bn_mul, bn_shift, bn_add, narrow)
            j = np.int64(bn > act[_P1]) + np.int64(bn > act[_P2]) + np.int64(bn > act[_P3])
            dst[p] = _segment(bn, _pick(j, act, 1), _pick(j, act, 2), _pick(j, act, 3),
                              _pick(j, act, 4), _pick(j, act, 5), _pick(j, act, 6), half_even,
                              narrow)
    else:
        last, origin = lut.size - 1, act[1]
        for p in range(acc.size):
            bn = _batchnorm(acc[p], x_term[p], w_term, bn_mul, bn_shift, bn_add, narrow)
            index[p] = min(max(bn - origin, 0), last)
        for p in range(acc.size):
            dst[p] = lut[index[p]]
    if direct:
        return
    if stride == w:
        _pool_plane(flat.reshape(h, w), mode, out)
        return
    grid = out if mode == 0 else plane
    for y in range(h):  # drop the padding columns
        row, dst_row = flat[y * stride : y * stride + w], grid[y]
        for x in range(w):
            dst_row[x] = row[x]
    if mode != 0:
        _pool_plane(plane, mode, out)


@numba.njit(inline="always")
def _x_terms(sums: npt.NDArray[np.generic], sum_offset: int, arg_x: int, shift_x: int,
             narrow: bool, out: Int64Array) -> None:  # pragma: no cover - jitted
    """The KPU's ``arg_x * sum(x) >> shift_x`` per pixel, ``sum(x)`` being ``sums +
    sum_offset``."""
    for p in range(out.size):
        out[p] = _mul(arg_x, np.int64(sums[p]) + sum_offset, narrow) >> shift_x


@numba.njit(nogil=True, cache=True)
def _finish_conv(
    acc: npt.NDArray[np.generic], sum_offset: int, arg_x: int, shift_x: int,
    w_term: Int64Array, bn_mul: Int64Array, bn_shift: Int64Array, bn_add: Int64Array,
    act: tuple[int, ...], lut: UInt8Array, mode: int, h: int, w: int, values: Int64Array,
    out: UInt8Array,
) -> None:  # pragma: no cover - jitted
    """The epilogue of a regular convolution whose GEMM output ``acc`` has one row per
    output channel and, last, the row of ``sum(x) - sum_offset`` per pixel."""
    oc = acc.shape[0] - 1
    n = acc.shape[1]
    x_term = np.empty(n, np.int64)
    _x_terms(acc[oc], sum_offset, arg_x, shift_x, act[3] != 0, x_term)
    index = np.empty(n, np.int32)
    flat = np.empty(n, np.uint8)
    plane = np.empty((h, w), np.uint8)
    for o in range(oc):
        _finish_plane(acc[o], x_term, w_term[o], bn_mul[o], bn_shift[o], bn_add[o], act, lut,
                      mode, h, w, index, flat, plane, values[o], out[o])


TapWeights = npt.NDArray[np.int16] | npt.NDArray[np.int32]
"""Depthwise weights: int16 where they fit (8-bit weights, folded or not), else int32."""


@numba.njit(inline="always")
def _taps(src: UInt8Array, weights: TapWeights, k: int, stride: int,
          out: npt.NDArray[np.int32]) -> None:  # pragma: no cover - jitted
    """One channel's 1x1 or 3x3 window sums over its flat padded plane ``src``, all taps of
    a pixel at once (one pass over ``out``, not one a tap).

    Each product is exact in int32 and is written as one (a pixel and an int16 weight make
    16-bit multiplies, which vectorise twice as wide): less than half the time of int32
    multiplies on the face model's large maps, measured.
    """
    n = out.size
    if k == 1:
        w0 = weights[0]
        for p in range(n):
            out[p] = np.int32(np.int16(src[p]) * w0)
        return
    w0, w1, w2, w3, w4, w5, w6, w7, w8 = (weights[0], weights[1], weights[2], weights[3],
                                          weights[4], weights[5], weights[6], weights[7],
                                          weights[8])
    mid, low = stride, 2 * stride  # the runs start at each tap, so every index is p
    t0, t1, t2 = src[0:n], src[1 : n + 1], src[2 : n + 2]
    t3, t4, t5 = src[mid : mid + n], src[mid + 1 : mid + 1 + n], src[mid + 2 : mid + 2 + n]
    t6, t7, t8 = src[low : low + n], src[low + 1 : low + 1 + n], src[low + 2 : low + 2 + n]
    for p in range(n):
        v = np.int32(np.int16(t0[p]) * w0)
        v = np.int32(v + np.int32(np.int16(t1[p]) * w1))
        v = np.int32(v + np.int32(np.int16(t2[p]) * w2))
        v = np.int32(v + np.int32(np.int16(t3[p]) * w3))
        v = np.int32(v + np.int32(np.int16(t4[p]) * w4))
        v = np.int32(v + np.int32(np.int16(t5[p]) * w5))
        v = np.int32(v + np.int32(np.int16(t6[p]) * w6))
        v = np.int32(v + np.int32(np.int16(t7[p]) * w7))
        out[p] = np.int32(v + np.int32(np.int16(t8[p]) * w8))


@numba.njit(nogil=True, cache=True)
def _depthwise(
    planes: UInt8Array, weights: TapWeights, k: int, folded: bool, arg_x: int, shift_x: int,
    w_term: Int64Array, bn_mul: Int64Array, bn_shift: Int64Array, bn_add: Int64Array,
    act: tuple[int, ...], lut: UInt8Array, mode: int, h: int, w: int, values: Int64Array,
    out: UInt8Array,
) -> None:  # pragma: no cover - jitted
    """Depthwise 1x1 or 3x3 convolution over padded planes, then the epilogue, a channel at
    a time (its sums stay in cache).

    The taps are shifted runs of the flattened padded plane (rows ``w + 2`` apart, two
    columns of each discarded), so the loop over the whole plane is long and vectorises.
    The sums are int32: :meth:`PreparedConv.from_conv` keeps them below 2**31. ``folded``
    says the weights hold the arg_x term (:func:`_x_fold`): then no sum of inputs is kept
    and the epilogue adds zeros (cheaper than a second version of its loops).
    """
    c = planes.shape[0]
    stride = w + k - 1
    n = h * stride
    acc = np.empty(n, np.int32)
    sums = np.empty(n, np.int32)
    ones = np.ones_like(weights[0])
    x_term = np.zeros(n, np.int64)
    index = np.empty(n, np.int32)
    flat = np.empty(n, np.uint8)
    plane = np.empty((h, w), np.uint8)
    for ch in range(c):
        _taps(planes[ch], weights[ch], k, stride, acc)
        if not folded:
            _taps(planes[ch], ones, k, stride, sums)
            _x_terms(sums, 0, arg_x, shift_x, act[3] != 0, x_term)
        _finish_plane(acc, x_term, w_term[ch], bn_mul[ch], bn_shift[ch], bn_add[ch], act, lut,
                      mode, h, w, index, flat, plane, values[ch], out[ch])


@numba.njit(nogil=True, cache=True)
def _columns(planes: UInt8Array, k: int, stride: int, base: int, flip: int,
             out: UInt8Array) -> None:  # pragma: no cover - jitted
    """im2col over padded planes: ``out[(c k + ky) k + kx, p] = planes[c, base + p + ky
    stride + kx] ^ flip``."""
    n = out.shape[1]
    bits = np.uint8(flip)
    for ch in range(planes.shape[0]):
        for ky in range(k):
            for kx in range(k):
                offset = base + ky * stride + kx
                row, src = out[(ch * k + ky) * k + kx], planes[ch, offset : offset + n]
                for p in range(n):
                    row[p] = src[p] ^ bits


def _padded_planes(x: UInt8Array, k: int, pad_value: int) -> UInt8Array:
    """(c, (h + k - 1) (w + k - 1) + k - 1) flat planes with a ``pad_value`` border of
    ``k // 2``; the tail lets the last tap's run reach the end of the last row."""
    c, h, w = x.shape
    if k == 1:
        return x.reshape(c, h * w)
    pad = k // 2
    hp, wp = h + 2 * pad, w + 2 * pad
    planes = np.full((c, hp * wp + k - 1), pad_value, np.uint8)
    planes[:, : hp * wp].reshape(c, hp, wp)[:, pad : pad + h, pad : pad + w] = x
    return planes


# --- the convolution -----------------------------------------------------------------------


NO_TABLE = np.zeros(0, np.uint8)
TILE_PIXELS = 8192
"""Pixels per tile of a large regular convolution: its columns and GEMM output stay in L2
from the im2col through the GEMM to the epilogue. Measured per frame, face model: 9.6 ms
whole, 9.0 in tiles of 8192 pixels, 8.9 of 12288, 11.0 of 2048 (the GEMMs get too small)."""


@dataclass(frozen=True, eq=False)
class PreparedConv:
    """A KPU layer with its constant terms precomputed once, at model load."""

    conv: KpuConv
    activation: Activation
    lut: tuple[int, UInt8Array] | None
    """The activation as a lookup table over the batch-norm values this layer can reach."""
    act: tuple[int, ...]
    """How the kernels compute the activation: see :func:`_finish_plane`."""
    w_term: Int64Array
    """Per output channel: the arg_w and arg_add terms and, for a regular conv whose maps
    go into the GEMM offset, the ``offset * sum(w)`` that adds back."""
    offset: int
    """What the maps are offset by on their way into the GEMM (see :func:`input_offset`)."""
    w_gemm: GemmWeights | None
    """Regular convs: the (oc + 1, ic taps) GEMM weights, with a last row of ones that sums
    the inputs."""
    w_int: TapWeights | None
    """Integer weights for depthwise layers, holding the arg_x term where it folds in
    (:func:`_x_fold`)."""
    x_fold: int | None
    _row_cache: dict[tuple[int, int], GemmWeights] = field(default_factory=dict, repr=False)
    _split_choices: dict[int, SplitChoice] = field(default_factory=dict, repr=False)
    """Per count of lanes, whether this layer runs faster split (see :class:`SplitChoice`)."""

    @classmethod
    def from_conv(cls, conv: KpuConv, rounding: Rounding) -> PreparedConv:
        arg = conv.arg
        w64 = conv.weights.astype(np.int64)
        sum_w = w64.sum(axis=1)
        per_group = 1 if arg.depthwise else arg.in_channels
        w_term = ((arg.arg_w * sum_w) >> arg.shift_w) + arg.arg_add * per_group
        activation = Activation.from_conv(conv, rounding)
        conv_range = _conv_range(conv, w_term, sum_w)
        reach = _reachable(conv, conv_range)
        relu = _fused_relu(conv, conv_range, w_term, activation, reach)
        pieces = None if relu is not None else activation.pieces(*reach)
        lut = activation.lookup_table(*reach) if relu is None and pieces is None else None
        chosen = [relu[0]] if relu is not None else pieces or []
        narrow = _narrow(conv, conv_range, w_term, reach, activation, chosen)
        act = _activation_params(activation, relu, pieces, lut, narrow)
        if arg.depthwise:
            fold = _x_fold(conv)
            return cls(conv, activation, lut, act, w_term, 0, None,
                       _tap_weights(w64 if fold is None else w64 + fold), fold)
        ones = np.ones((1, conv.weights.shape[1]), conv.weights.dtype)
        w_gemm = gemm_weights(np.vstack([conv.weights, ones]))
        offset = input_offset()
        return cls(conv, activation, lut, act, w_term + offset * sum_w, offset, w_gemm, None,
                   None)

    def run(self, x: UInt8Array, lanes: Lanes | None = None) -> UInt8Array:
        """Convolution, batch-norm, activation and pooling of one (ic, h, w) map, split
        across ``lanes`` (default: one per core) by output channels or, for a large map, by
        tiles of rows."""
        arg = self.conv.arg
        _, h, w = x.shape
        oc, pool = arg.out_channels, arg.pool_type
        planes = _padded_planes(x, arg.filter_size, arg.pad_value)
        out = np.empty((oc, h // pool.stride, w // pool.stride), np.uint8)
        per_value = self.act[0] == PER_VALUE
        values = np.empty((oc, h, w) if per_value else (oc, 0, 0), np.int64)
        lanes = lanes or machine_lanes()
        choice = self._split_choices.get(lanes.count)
        if choice is None:
            choice = self._split_choices[lanes.count] = SplitChoice()
        if self.w_int is not None:
            lanes.split(oc, oc * h * w,
                        lambda lo, hi: self._depthwise(planes, lo, hi, values, out), choice)
        elif (rows := self._tile_rows(h, w)) < h:
            lanes.split(-(-h // rows), oc * h * w,
                        lambda first, last: self._tiles(planes, first, last, rows, values, out),
                        choice)
        else:
            columns = self._columns(planes, 0, h)
            lanes.split(oc, oc * h * w, lambda lo, hi: self._finish(
                columns, lo, hi, h, values[lo:hi], out[lo:hi]), choice)
        if not per_value:
            return out
        return kpu_pool(self.activation(values).reshape(oc, h, w), pool)

    @property
    def _table(self) -> UInt8Array:
        return NO_TABLE if self.lut is None else self.lut[1]

    def _depthwise(self, planes: UInt8Array, lo: int, hi: int, values: Int64Array,
                   out: UInt8Array) -> None:
        """Channels ``lo:hi`` of a depthwise layer."""
        assert self.w_int is not None
        arg, conv = self.conv.arg, self.conv
        _depthwise(planes[lo:hi], self.w_int[lo:hi], arg.filter_size, self.x_fold is not None,
                   arg.arg_x, arg.shift_x,
                   self.w_term[lo:hi], conv.bn_mul[lo:hi], conv.bn_shift[lo:hi],
                   conv.bn_add[lo:hi], self.act, self._table, int(arg.pool_type),
                   arg.in_height, arg.in_width, values[lo:hi], out[lo:hi])

    def _tiles(self, planes: UInt8Array, first: int, last: int, rows: int, values: Int64Array,
               out: UInt8Array) -> None:
        """Tiles ``first:last`` of ``rows`` rows each (the last one may be short), all
        output channels, into ``out`` and ``values``."""
        h, stride = self.conv.arg.in_height, self.conv.arg.pool_type.stride
        for tile in range(first, last):
            top, bottom = tile * rows, min(h, (tile + 1) * rows)
            tile_values = np.empty((values.shape[0], bottom - top, values.shape[2]), np.int64)
            tile_out = np.empty((out.shape[0], (bottom - top) // stride, out.shape[2]),
                                np.uint8)
            self._finish(self._columns(planes, top, bottom), 0, out.shape[0], bottom - top,
                         tile_values, tile_out)
            out[:, top // stride : top // stride + tile_out.shape[1]] = tile_out
            if values.shape[1]:
                values[:, top:bottom] = tile_values

    def _finish(self, columns: UInt8Array, lo: int, hi: int, rows: int, values: Int64Array,
                out: UInt8Array) -> None:
        """Output channels ``lo:hi`` of ``rows`` rows from their columns: GEMM, then the
        epilogue."""
        arg, conv = self.conv.arg, self.conv
        _finish_conv(exact_matmul(self._weight_rows(lo, hi), columns, self.offset),
                     self.offset * conv.weights.shape[1], arg.arg_x, arg.shift_x,
                     self.w_term[lo:hi], conv.bn_mul[lo:hi], conv.bn_shift[lo:hi],
                     conv.bn_add[lo:hi], self.act, self._table, int(arg.pool_type), rows,
                     arg.in_width, values, out)

    def _tile_rows(self, h: int, w: int) -> int:
        """Rows per tile of a regular convolution: about TILE_PIXELS, a multiple of 4 (whole
        pool windows), or all ``h`` when the map is small or its pool windows overlap."""
        pool = self.conv.arg.pool_type
        stride = w + self.conv.arg.filter_size - 1
        if pool.filter != pool.stride or h * stride <= 2 * TILE_PIXELS:
            return h
        return max(4, TILE_PIXELS // stride // 4 * 4)

    def _columns(self, planes: UInt8Array, top: int, bottom: int) -> UInt8Array:
        """The im2col of output rows ``top:bottom``, offset for the GEMM: a 1x1
        convolution's are its planes."""
        arg = self.conv.arg
        k = arg.filter_size
        stride = arg.in_width + k - 1
        if k == 1 and not self.offset:
            return planes[:, top * stride : bottom * stride]
        cols = np.empty((planes.shape[0] * k * k, (bottom - top) * stride), np.uint8)
        _columns(planes, k, stride, top * stride, self.offset, cols)
        return cols

    def _weight_rows(self, lo: int, hi: int) -> GemmWeights:
        """The weight rows ``lo:hi`` and the row of ones, kept per range."""
        assert self.w_gemm is not None
        if (lo, hi) == (0, self.conv.arg.out_channels):
            return self.w_gemm
        if (lo, hi) not in self._row_cache:  # picking rows copies them, contiguous
            self._row_cache[(lo, hi)] = self.w_gemm[[*range(lo, hi), -1]]
        return self._row_cache[(lo, hi)]


def _tap_weights(weights: Int64Array) -> TapWeights:
    """Depthwise weights as :func:`_taps` multiplies them."""
    if np.abs(weights).max() < 1 << 15:
        return weights.astype(np.int16)
    return weights.astype(np.int32)


def _x_fold(conv: KpuConv) -> int | None:
    """``arg_x >> shift_x`` where adding it to a depthwise layer's weights gives its arg_x
    term exactly and keeps its sums in int32, else None.

    The KPU adds ``arg_x * sum(x) >> shift_x``; with ``arg_x`` a multiple of ``2**shift_x``
    (as nncase writes it: the weights' zero point) that is ``sum(x * fold)``, so the kernel
    needs no sum of inputs: a third off the depthwise layers, measured.
    """
    arg = conv.arg
    fold = arg.arg_x >> arg.shift_x
    widest = int(np.abs(conv.weights.astype(np.int64) + fold).max())
    exact = fold << arg.shift_x == arg.arg_x
    return fold if exact and conv.weights.shape[1] * 255 * widest < 2**31 else None


def _conv_range(conv: KpuConv, w_term: Int64Array,
                sum_w: Int64Array) -> tuple[Int64Array, Int64Array]:
    """Per output channel, bounds of the conv sum (before batch-norm) that any uint8 input
    can produce.

    With ``x`` in 0..255 and the weights fixed, ``sum(x*w)`` lies in ``[0, 255 sum(w)]`` and
    ``sum(x)`` in ``[0, 255 taps]``.
    """
    arg = conv.arg
    taps = conv.weights.shape[1]
    x_ends = [(arg.arg_x * sx) >> arg.shift_x for sx in (0, 255 * taps)]
    return w_term + min(x_ends), w_term + 255 * sum_w + max(x_ends)


def _reachable(conv: KpuConv, conv_range: tuple[Int64Array, Int64Array]) -> tuple[int, int]:
    """Bounds of the batch-norm values any uint8 input can produce in this layer, from the
    per-channel :func:`_conv_range` (batch-norm is monotone in the conv sum)."""
    ends = [((t * conv.bn_mul) >> conv.bn_shift) + conv.bn_add for t in conv_range]
    return int(np.minimum(*ends).min()), int(np.maximum(*ends).max())


def _narrow(conv: KpuConv, conv_range: tuple[Int64Array, Int64Array], w_term: Int64Array,
            reach: tuple[int, int], activation: Activation, chosen: list[int]) -> bool:
    """Whether every factor the kernels multiply fits int32 (see :func:`_mul`): ``arg_x``
    by ``sum(x)``, the conv sum (with or without ``w_term``) by ``bn_mul``, and a
    batch-norm value less a chosen segment's start by its ``mul``."""
    low, high = conv_range
    factors = [conv.arg.arg_x, 255 * conv.weights.shape[1], low.min(), high.max(),
               (low - w_term).min(), (high - w_term).max(), conv.bn_mul.min(),
               conv.bn_mul.max()]
    for s in chosen:
        factors += [reach[0] - activation.start[s], reach[1] - activation.start[s],
                    activation.mul[s]]
    return all(-(1 << 31) <= int(f) < 1 << 31 for f in factors)


def _fused_relu(conv: KpuConv, conv_range: tuple[Int64Array, Int64Array], w_term: Int64Array,
                activation: Activation, reach: tuple[int, int]) -> tuple[int, int] | None:
    """The :meth:`Activation.relu_segment` of the batch-norm values in ``reach`` and the
    shift left once its ``mul`` is taken out, where the RELU kernel computes it exactly
    (see :func:`_finish_plane`), else None.

    ``mul`` must be a power of two, ``2**k`` with ``k <= shift``: then ``(q * mul) >>
    shift`` and its rounding are ``q >> (shift - k)``'s, every compared bit scaled alike.
    Every channel's folded sum must stay in int64, and its shift below 64.
    """
    s = activation.relu_segment(*reach)
    if s is None:
        return None
    mul, shift = int(activation.mul[s]), int(activation.shift[s])
    k = mul.bit_length() - 1
    if mul <= 0 or mul != 1 << k or k > shift:
        return None
    shift -= k
    start = int(activation.start[s])
    low, high = conv_range
    for o in range(len(w_term)):
        bn_mul, bn_shift, w = int(conv.bn_mul[o]), int(conv.bn_shift[o]), int(w_term[o])
        if bn_shift + shift > 62:
            return None
        sum_c = max(abs(int(low[o]) - w), abs(int(high[o]) - w)) * abs(bn_mul)
        consts = abs(w * bn_mul) + (abs(int(conv.bn_add[o]) - start) + (2 << shift) << bn_shift)
        if sum_c + consts >= 1 << 62:
            return None
    return s, shift


def _activation_params(activation: Activation, relu: tuple[int, int] | None,
                       pieces: list[int] | None, lut: tuple[int, UInt8Array] | None,
                       narrow: bool) -> tuple[int, ...]:
    """The ``act`` tuple of :func:`_finish_plane`; ``relu`` is a segment and the shift its
    piece takes, with ``mul`` 1 (see :func:`_fused_relu`)."""
    fields = [getattr(activation, name) for name in PIECE_FIELDS]
    never = (np.iinfo(np.int64).max, 0, 0, 0, 0, 1, 0)  # a piece no value reaches

    def piece(s: int | None) -> tuple[int, ...]:
        if s is None:
            return never
        values = [int(f[s]) for f in fields]
        if relu is not None:  # the one piece
            shift = relu[1]
            values[2:6] = [1, shift, (1 << shift) - 1, 1 << shift - 1 if shift else 1]
        return tuple(values)

    if relu is not None:
        kind, chosen = RELU, [relu[0]]
    elif pieces is not None:
        kind, chosen = PIECEWISE, pieces
    else:
        kind, chosen = (PER_VALUE, []) if lut is None else (TABLE, [])
    slots = [*chosen, *[None] * (PIECES - len(chosen))]
    origin = 0 if lut is None else lut[0]
    return (kind, origin, int(activation.half_even), int(narrow),
            *(v for s in slots for v in piece(s)))
