"""nncase 0.2's ``cpu_*`` kernels (``kernels/cpu/cpu_kernels.h``): NHWC forms of the
neutral ones.

Only the float convolution sums in a different order from its neutral twin (kernel row,
kernel column, then in-channel innermost), so it has its own loop. The others are the
neutral kernels on transposed maps: the depthwise float convolution and the pools add in
the same (ky, kx) order per value, and the quantized convolutions are exact integer sums
(with the offsets *subtracted* here, where the neutral kernel adds them).
"""

from __future__ import annotations

import numba
import numpy as np
import numpy.typing as npt

from edged.kpu.sim import neutral_ops

Float32Array = npt.NDArray[np.float32]
UInt8Array = npt.NDArray[np.uint8]
Int64Array = npt.NDArray[np.int64]

TO_NCHW = (0, 3, 1, 2)
TO_NHWC = (0, 2, 3, 1)


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _conv2d_nhwc(
    x: Float32Array, weights: Float32Array, bias: Float32Array, window: Int64Array, oh: int,
    ow: int,
) -> Float32Array:  # pragma: no cover - jitted
    """``cpu_conv2d``: per output, bias then ``in * w`` over (ky, kx, in-channel).
    ``weights`` is (oc, fh, fw, ic)."""
    n, h, w, c = x.shape
    oc = weights.shape[0]
    fh, fw, sh, sw, dh, dw, pt, pl = window
    out = np.empty((n, oh, ow, oc), np.float32)
    for b in range(n):
        for oy in range(oh):
            y0 = oy * sh - pt
            ky0, ky1 = neutral_ops.window_range(y0, dh, fh, h)
            for ox in range(ow):
                x0 = ox * sw - pl
                kx0, kx1 = neutral_ops.window_range(x0, dw, fw, w)
                for o in range(oc):
                    value = bias[o]
                    for ky in range(ky0, ky1):
                        for kx in range(kx0, kx1):
                            for i in range(c):
                                value += x[b, y0 + dh * ky, x0 + dw * kx, i] * \
                                    weights[o, ky, kx, i]
                    out[b, oy, ox, o] = value
    return out


def conv2d(x: Float32Array, weights: Float32Array, bias: Float32Array, window: Int64Array,
           oh: int, ow: int, depthwise: bool) -> Float32Array:
    """``cpu_conv2d`` or ``cpu_depthwise_conv2d`` of an NHWC map (before activation)."""
    fh, fw = int(window[0]), int(window[1])
    if not depthwise:
        return _conv2d_nhwc(x, weights.reshape(-1, fh, fw, x.shape[3]), bias, window, oh, ow)
    c = x.shape[3]
    nchw = np.ascontiguousarray(x.transpose(TO_NCHW))
    out = neutral_ops.conv2d(nchw, weights.reshape(c, 1, fh, fw), bias, c, window, oh, ow)
    return np.ascontiguousarray(out.transpose(TO_NHWC))


def quantized_conv2d(
    x: UInt8Array, weights: UInt8Array, bias: npt.NDArray[np.int32], window: Int64Array,
    oh: int, ow: int, depthwise: bool, input_offset: int, filter_offset: int,
) -> Int64Array:
    """The accumulators of ``cpu_quantized_conv2d`` (or its depthwise form), NHWC:
    ``bias + sum (x - input_offset) * (w - filter_offset)``."""
    c = x.shape[3]
    fh, fw = int(window[0]), int(window[1])
    if depthwise:
        w_nchw = weights.reshape(c, 1, fh, fw)
        groups = c
    else:
        w_nchw = np.ascontiguousarray(weights.reshape(-1, fh, fw, c).transpose(0, 3, 1, 2))
        groups = 1
    nchw = np.ascontiguousarray(x.transpose(TO_NCHW))
    acc = neutral_ops.quantized_conv2d(nchw, w_nchw, bias, groups, window, oh, ow,
                                       -input_offset, -filter_offset)
    return np.ascontiguousarray(acc.transpose(TO_NHWC))


def reduce_window2d(x: Float32Array, op: int, init: np.float32, window: Int64Array, oh: int,
                    ow: int) -> Float32Array:
    """``cpu_reduce_window2d`` of an NHWC map (before activation)."""
    nchw = np.ascontiguousarray(x.transpose(TO_NCHW))
    out = neutral_ops.reduce_window2d(nchw, op, init, window, oh, ow)
    return np.ascontiguousarray(out.transpose(TO_NHWC))
