"""The K210 KPU's quantization maths: float ranges and weights to one layer's integers.

The KPU computes, per output value (see :mod:`edged.kpu.sim.kpu_kernels`)::

    conv = sum(qx*qw) + (arg_x*sum(qx) >> shift_x) + (arg_w*sum(qw) >> shift_w) + arg_add*ic
    bn   = (conv*bn_mul >> bn_shift) + bn_add
    out  = clamp(carry_shift((bn - start[s])*mul[s], shift[s]) + add[s], 0, 255)

Tensors follow nncase 0.1's convention (``QuantizationRange.GetScaleBias``): a uint8 ``q``
stands for ``(q + bias) / scale``. With ``x = (qx + bx)/sx`` and ``w = (qw + bw)/sw`` the
conv terms make ``conv = sum((qx + bx)(qw + bw)) = sx*sw*sum(x*w)`` exactly: ``arg_x`` is the
weights' bias ``bw`` (it multiplies ``sum(qx)``), ``arg_w`` the input's bias ``bx`` and
``arg_add = bx*bw*k*k``. Batch-norm then rescales to the output's uint8 steps times a
post-multiplier ``2**post_shift``, and the activation table divides it back out.

Where this improves on nncase 0.1 (``K210Conv2d.cs``), it says so at the function.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edged.kpu.kmodel.kpu_regs import ACTIVATION_SEGMENTS

FloatArray = npt.NDArray[np.float64]
Int64Array = npt.NDArray[np.int64]
UInt8Array = npt.NDArray[np.uint8]

ARG_BITS, ARG_MAX_SHIFT = 24, 15
"""``conv_value``: arg_x and arg_w are 24-bit signed, shr_x and shr_w 4 bits."""
ARG_ADD_BITS = 40
BN_MUL_BITS, BN_MAX_SHIFT = 22, 15
"""nncase 0.1 and 0.2 keep ``norm_mul`` to 22 of its 24 bits; ``norm_shift`` has 4 bits."""
BN_ADD_BITS = 32
ACT_MUL_BITS, ACT_MAX_SHIFT = 16, 20
"""``y_mul`` is 16-bit signed; nncase (0.1 and 0.2) never shifts an activation by more than
20 although the field has 8 bits, so neither do we: larger shifts are untested silicon."""
ACT_START_LIMIT = 1 << 35
"""``x_start`` is 36-bit signed; batch-norm values must stay inside it."""
MAX_POST_SHIFT = 20
MIN_SPAN = 0.01
"""nncase 0.2's ``fixup_range`` floor on a range's width (a dead layer still gets a scale)."""
POST_SHIFT_TOLERANCE = 2.0**-8
"""LSB of estimated error traded for a smaller post-multiplier (smaller values, tables)."""


@dataclass(frozen=True)
class QuantParam:
    """A uint8 tensor's quantization: ``q`` stands for ``(q + bias) / scale``."""

    scale: float
    bias: float

    @classmethod
    def from_range(cls, lo: float, hi: float, *, integer_bias: bool = True) -> QuantParam:
        """nncase's ``GetScaleBias(8)`` of the range widened to hold 0 (nncase 0.2's
        ``fixup_range``), so that 0.0 has an exact code: the KPU pads with it.

        ``integer_bias=False`` keeps ``bias = lo*scale`` unrounded, for a model input whose
        codes are fixed by the camera (``q`` 0..255 must mean exactly ``lo..hi``).
        """
        lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"range [{lo}, {hi}] is not finite")
        hi = max(hi, lo + MIN_SPAN)
        scale = 255.0 / (hi - lo)
        bias = lo * scale
        return cls(scale, float(round(bias)) if integer_bias else bias)

    @property
    def zero_point(self) -> int:
        """The code nearest to 0.0 (exactly 0.0 when ``bias`` is an integer)."""
        return min(255, max(0, round(-self.bias)))

    def quantize(self, values: npt.ArrayLike) -> UInt8Array:
        codes = np.rint(np.asarray(values, np.float64) * self.scale - self.bias)
        return np.clip(codes, 0, 255).astype(np.uint8)

    def dequantize(self, codes: npt.ArrayLike) -> FloatArray:
        return (np.asarray(codes, np.float64) + self.bias) / self.scale


def extract_value_and_shift(value: float, max_bits: int, max_shift: int) -> tuple[int, int]:
    """``(mul, shift)`` with ``value ~ mul / 2**shift``, ``|mul| < 2**(max_bits - 1)`` and
    ``0 <= shift <= max_shift``, the largest shift (most precise) that fits.

    nncase's ``Quantizer.ExtractValueAndShift``, with the rounded ``mul`` checked against
    its field: nncase only asserts it, and a mantissa that rounds up overflows by one.
    """
    if value == 0:
        return 0, 0
    limit = 1 << (max_bits - 1)
    _, exponent = math.frexp(value)  # |value| < 2**exponent
    shift = min(max_shift, max_bits - 1 - exponent)
    mul = round(value * 2.0**shift)
    if abs(mul) >= limit:
        shift -= 1
        mul = round(value * 2.0**shift)
    if shift < 0:
        raise ValueError(f"{value} does not fit {max_bits} signed bits")
    return mul, shift


# --- weights ---------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class WeightQuant:
    """Per-output-channel weight codes: ``w[o] ~ (q[o] + bias) / scales[o]``.

    ``scales[o]`` is infinite for a channel whose weights are all 0 (its codes are all
    ``-bias``, which the conv terms turn into exactly 0).
    """

    q: UInt8Array
    scales: FloatArray
    bias: int

    def dequantize(self) -> FloatArray:
        return (self.q.astype(np.float64) + self.bias) / self.scales[:, None]


def quantize_weights(weights: npt.ArrayLike) -> WeightQuant:
    """Quantize ``(out_channels, taps)`` weights per output channel, one shared zero point.

    nncase 0.1 quantizes a layer's weights with one scale; its CHANNEL_WISE build (and 0.2)
    rescale each channel towards the layer's range. The KPU allows any scale per channel
    (batch-norm undoes it) but only one zero point (``arg_x`` is per layer). So here each
    channel gets the finest scale that fits 0..255 around the shared zero point ``z``, and
    ``z`` is the one of the 256 that minimises the summed squared weight step (the channels'
    rounding noise in the shared output scale), which one scale per layer never beats.
    """
    w = np.asarray(weights, np.float64)
    w = w.reshape(w.shape[0], -1)
    hi = np.maximum(w.max(axis=1), 0.0)
    lo = np.minimum(w.min(axis=1), 0.0)
    live = (hi > 0) | (lo < 0)
    z = np.arange(256, dtype=np.float64)[:, None]
    with np.errstate(divide="ignore"):
        up = np.where(hi > 0, (255.0 - z) / np.where(hi > 0, hi, 1.0), np.inf)
        down = np.where(lo < 0, z / np.where(lo < 0, -lo, 1.0), np.inf)
        scales = np.minimum(up, down)  # (256, out_channels)
        cost = (1.0 / scales[:, live] ** 2).sum(axis=1)
    zero = int(np.argmin(cost)) if live.any() else 0
    best = np.where(live, scales[zero], np.inf)
    codes = np.where(live[:, None], w * np.where(live, best, 0.0)[:, None] + zero, zero)
    q = np.clip(np.rint(codes), 0, 255).astype(np.uint8)
    return WeightQuant(q, best, -zero)


# --- the 16-segment activation ----------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ActivationTable:
    """``kpu_activate_table_t`` as integers, ascending starts, plus how well it fits:
    the KPU's output code is within ``0.5 + error`` LSB of the (clamped) target."""

    start: Int64Array
    mul: Int64Array
    shift: Int64Array
    add: Int64Array
    error: float


@dataclass(frozen=True)
class _Target:
    """``g(v) = top + (v - knee)/P`` above the knee, ``top + slope*(v - knee)/P`` below."""

    slope: float
    knee: int
    top: float
    post: int

    def __call__(self, v: float) -> float:
        rate = 1.0 if v >= self.knee else self.slope
        return self.top + rate * (v - self.knee) / self.post


def _segment_error(target: _Target, start: int, mul: int, shift: int, add: int,
                   lo: float, hi: float) -> float:
    """Bound on ``|output - target| - 0.5`` of one segment over ``[lo, hi]``.

    The pre-rounding value ``r`` and the target are linear between the ends and the knee,
    so those points give ``max |r - target|``. Where ``r`` stays inside one rounding cell,
    the output is that integer, and its own distance to the target may be the tighter
    bound: this is the case at a knee of fractional height (see :func:`fit_activation`).
    """
    rate = mul / 2.0**shift
    cuts = [lo, *([float(target.knee)] if lo < target.knee < hi else []), hi]
    worst = 0.0
    for a, b in itertools.pairwise(cuts):
        r = [add + (v - start) * rate for v in (a, b)]
        g = [target(v) for v in (a, b)]
        error = max(abs(x - y) for x, y in zip(r, g, strict=True))
        cell = round(r[0])
        if all(abs(x - cell) < 0.5 for x in r):
            error = min(error, max(0.0, *(abs(cell - y) - 0.5 for y in g)))
        worst = max(worst, error)
    return worst


def fit_activation(slope: float, zero_point: int, post_shift: int,
                   offset: float = 0.0) -> ActivationTable:
    """The activation table turning batch-norm values into output codes.

    Batch-norm values ``v`` are the pre-activation in output LSB times ``P = 2**post_shift``
    with the knee (float 0.0) at ``zero_point*P``; the target is ``zero_point + offset +``
    ``leaky(v/P - zero_point)`` with ``leaky`` of slope ``slope`` below 0 (0: ReLU, 1:
    linear). ``offset`` lifts every value before rounding (a mean pool's floor, see build).

    The identity part is exact (``1/P`` is a power of two), as in nncase. For the leaky part
    nncase 0.1 restarts 14 segments at integer output levels, each at ``floor`` of where
    the line reaches that level; the same is done here, and each start is moved so that the
    segment's slope error (``y_mul`` has at most 16 bits at shift 20) is centred, halving
    it. Every segment has to start on an integer output (``result_bias`` is a byte), so a
    knee at a fractional height (``offset`` not 0) is missed by up to ``(1 - slope)/2`` LSB
    before rounding; the rounded output there still stays within 0.5 LSB of the target.
    """
    if not 0.0 <= slope <= 1.0:
        raise ValueError(f"activation slope {slope} is outside 0..1")
    if not 0 <= zero_point <= 255 or not 0 <= post_shift <= MAX_POST_SHIFT:
        raise ValueError(f"zero point {zero_point} or post shift {post_shift} out of range")
    post = 1 << post_shift
    target = _Target(slope, zero_point * post, zero_point + offset, post)
    one_mul, one_shift = extract_value_and_shift(1.0 / post, ACT_MUL_BITS, ACT_MAX_SHIFT)
    if slope == 1.0:  # linear: one straight segment from output 0 up
        level, floor_add = 0, 0
        id_start = round(target.knee - target.top * post)
    else:
        level = min(255, max(0, round(target.top)))
        floor_add = level if slope == 0.0 else 0  # ReLU: flat at the knee's height below it
        id_start = round(target.knee + (level - target.top) * post)
    segments: list[tuple[int, int, int, int]] = []  # (start, mul, shift, add)
    errors: list[float] = []
    if 0.0 < slope < 1.0 and level > 0:
        mul, shift = extract_value_and_shift(slope / post, ACT_MUL_BITS, ACT_MAX_SHIFT)
        drift = mul / 2.0**shift - slope / post  # per batch-norm unit
        count = min(ACTIVATION_SEGMENTS - 2, level)
        levels = [k * level // count for k in range(count)]
        exact = [target.knee - (target.top - a) * post / slope for a in levels]
        ends = [*exact[1:], float(id_start)]
        for add, at, end in zip(levels, exact, ends, strict=True):
            start = round(at + (end - at) * drift * post / (2 * slope))
            segments.append((start, mul, shift, add))
            errors.append(_segment_error(target, start, mul, shift, add, start, end))
    first = segments[0][0] if segments else id_start
    # below the first start the target is flat (ReLU) or under 0 (clamped to 0)
    errors.append(_segment_error(target, first, 0, 0, floor_add, min(first, target.knee), first))
    far = max(id_start, target.knee) + 256 * post
    errors.append(_segment_error(target, id_start, one_mul, one_shift, level, id_start, far))
    rows = [(-ACT_START_LIMIT, 0, 0, floor_add), *segments, (id_start, one_mul, one_shift, level)]
    # spare segments parked past any reachable value, as nncase's 0x7FFFFFFF0.. (saturated)
    rows += [(ACT_START_LIMIT - ACTIVATION_SEGMENTS + i, 0, 0, 255)
             for i in range(ACTIVATION_SEGMENTS - len(rows))]
    starts, muls, shifts, adds = (np.array(col, np.int64) for col in zip(*rows, strict=True))
    if np.any(np.diff(starts) <= 0) or starts[-1] >= ACT_START_LIMIT:
        raise ValueError(f"activation starts {starts.tolist()} are not ascending in 36 bits")
    return ActivationTable(starts, muls, shifts, adds, max(errors))


# --- one KPU layer ------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class QuantizedConv:
    """Everything one KPU layer computes with, as the registers and tables hold it."""

    weights: WeightQuant
    arg_x: int
    shift_x: int
    arg_w: int
    shift_w: int
    arg_add: int
    pad_value: int
    bn_mul: Int64Array
    bn_shift: Int64Array
    bn_add: Int64Array
    activation: ActivationTable
    output: QuantParam
    post_shift: int
    error: float
    """Output LSB beyond the final rounding's 0.5 that batch-norm and activation may add."""


@dataclass(frozen=True, eq=False)
class _BatchNorm:
    mul: Int64Array
    shift: Int64Array
    add: Int64Array
    error: float


def _batchnorm(factors: FloatArray, offsets: FloatArray, post_shift: int, conv_lsb: float,
               conv_bound: float) -> _BatchNorm | None:
    """Batch-norm words for ``bn = conv*factor*P + offset*P``, or None when they do not fit.

    Flooring ``conv*mul >> shift`` loses up to one unit; half a unit is added back to
    ``bn_add`` to centre it (nncase does not), so with ``bn_add``'s own rounding the
    additive error is at most ``1/P`` LSB; ``mul``'s rounding is relative, times the
    largest calibrated ``|conv|`` in output LSB.
    """
    post = 1 << post_shift
    try:
        pairs = [extract_value_and_shift(float(f) * post, BN_MUL_BITS, BN_MAX_SHIFT)
                 for f in factors]
    except ValueError:
        return None
    mul = np.array([m for m, _ in pairs], np.int64)
    shift = np.array([s for _, s in pairs], np.int64)
    add = np.rint(offsets * post + np.where(shift > 0, 0.5, 0.0))
    applied = mul / 2.0**shift
    # any reachable value must stay above the first start (-2**35) and below the spare
    # segments parked at the top of the activation table (see fit_activation)
    reach = conv_bound * applied + np.abs(add) + 1
    if (np.any(np.abs(add) >= 2.0 ** (BN_ADD_BITS - 1))
            or np.any(reach >= ACT_START_LIMIT - ACTIVATION_SEGMENTS)):
        return None
    live = factors > 0
    relative = np.abs(applied[live] / (factors[live] * post) - 1.0)
    error = conv_lsb * float(relative.max(initial=0.0)) + 1.0 / post
    return _BatchNorm(mul, shift, add.astype(np.int64), error)


def quantize_conv(
    weights: npt.ArrayLike,
    bias: npt.ArrayLike,
    *,
    kernel_area: int,
    input_q: QuantParam,
    output_q: QuantParam,
    slope: float,
    conv_abs_max: float,
    output_offset: float = 0.0,
) -> QuantizedConv:
    """Quantize one KPU layer: ``(out_channels, taps)`` float weights, float bias.

    ``conv_abs_max`` is the largest ``|sum(x*w)|`` seen in calibration (it sizes the
    batch-norm error). The post-multiplier ``P = 2**post_shift`` is nncase 0.1's fixed
    ``2**10`` made a choice: a larger ``P`` gives batch-norm's 22-bit ``mul`` more bits,
    a smaller one the activation's 16-bit slope (at shift 20 at most); the smallest ``P``
    within 1/256 LSB of the lowest estimated error is taken.
    """
    w = np.asarray(weights, np.float64)
    b = np.asarray(bias, np.float64)
    wq = quantize_weights(w)
    arg_x, shift_x = extract_value_and_shift(wq.bias, ARG_BITS, ARG_MAX_SHIFT)
    arg_w, shift_w = extract_value_and_shift(input_q.bias, ARG_BITS, ARG_MAX_SHIFT)
    arg_add = round(input_q.bias * wq.bias * kernel_area)
    if abs(arg_add) >= 1 << (ARG_ADD_BITS - 1):
        raise ValueError(f"arg_add {arg_add} does not fit {ARG_ADD_BITS} bits")
    factors = output_q.scale / (input_q.scale * wq.scales)
    offsets = b * output_q.scale - output_q.bias
    conv_bound = w.shape[1] * 255.0 * 255.0  # |sum((qx + bx)(qw + bw))| for any input
    conv_lsb = conv_abs_max * output_q.scale
    fits: list[tuple[float, int, _BatchNorm, ActivationTable]] = []
    for post_shift in range(MAX_POST_SHIFT + 1):
        bn = _batchnorm(factors, offsets, post_shift, conv_lsb, conv_bound)
        if bn is None:
            break  # mul, add and reach only grow with P
        try:
            table = fit_activation(slope, output_q.zero_point, post_shift, output_offset)
        except ValueError:  # segments too short to order at this P
            continue
        fits.append((bn.error + table.error, post_shift, bn, table))
    if not fits:
        raise ValueError("batch-norm does not fit its registers at any post-multiplier: "
                         "the output range is far narrower than the weights and bias imply")
    lowest = min(error for error, *_ in fits)
    error, post_shift, bn, table = next(f for f in fits if f[0] <= lowest + POST_SHIFT_TOLERANCE)
    return QuantizedConv(
        weights=wq, arg_x=arg_x, shift_x=shift_x, arg_w=arg_w, shift_w=shift_w, arg_add=arg_add,
        pad_value=input_q.zero_point, bn_mul=bn.mul, bn_shift=bn.shift, bn_add=bn.add,
        activation=table, output=output_q, post_shift=post_shift, error=error,
    )
