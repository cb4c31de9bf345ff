"""Executing kmodel v3 as the standalone SDK's ``kpu.c`` does, layer by layer.

The model works in two memories: its main memory (``main_mem_usage`` bytes, where CPU
layers read and write float32 or uint8 at byte addresses) and the KPU's 2 MiB RAM (where
convolutions read and write feature maps in 64-byte rows). Both are private to the
executor and zeroed before each run, so a run depends on its input alone. A convolution's
map that only the next convolution reads is handed to it directly, skipping the row layout
both ways: what KPU RAM holds is never observable, only what is read from it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numba
import numpy as np
import numpy.typing as npt

from edged.kpu.kmodel import v3
from edged.kpu.kmodel.kpu_regs import KPU_RAM_BYTES, RowLayout
from edged.kpu.kmodel.model import KModel, Layer
from edged.kpu.sim.executor import LayerObserver, Rounding, check_inputs
from edged.kpu.sim.handover import Access, HandOff, conv_access
from edged.kpu.sim.kpu_kernels import PreparedConv, kpu_carry_shift, kpu_download, kpu_upload
from edged.kpu.sim.lanes import Lanes

F32 = np.float32
FLT_MIN = F32(1.17549435e-38)
"""``kpu_softmax`` starts its running maximum at FLT_MIN (not -FLT_MAX); kept as is."""


@numba.njit(nogil=True, cache=True)
def _fully_connected(
    src: npt.NDArray[np.float32], weights: npt.NDArray[np.float32],
    bias: npt.NDArray[np.float32], out: npt.NDArray[np.float32],
) -> None:  # pragma: no cover - jitted
    """``kpu_kmodel_fully_connected``: float32 dot products summed in input order."""
    oc, ic = weights.shape
    for o in range(oc):
        acc = np.float32(0.0)
        for i in range(ic):
            acc += src[i] * weights[o, i]
        out[o] = acc + bias[o]


@numba.njit(nogil=True, cache=True)
def _quantized_add(
    a: npt.NDArray[np.uint8], b: npt.NDArray[np.uint8], p: npt.NDArray[np.int64],
    out: npt.NDArray[np.uint8],
) -> None:  # pragma: no cover - jitted
    """``kpu_quantized_add``, both of its paths (shared or separate input shifts)."""
    off_a, mul_a, sh_a, off_b, mul_b, sh_b, off_o, mul_o, sh_o = p
    for i in range(a.size):
        va = (np.int64(a[i]) + off_a) * mul_a
        vb = (np.int64(b[i]) + off_b) * mul_b
        v = (va + vb) >> sh_a if sh_a == sh_b else (va >> sh_a) + (vb >> sh_b)
        v = kpu_carry_shift(v * mul_o, sh_o) + off_o
        out[i] = min(255, max(0, v))


@numba.njit(nogil=True, cache=True)
def _sum_f32(values: npt.NDArray[np.float32]) -> np.float32:  # pragma: no cover - jitted
    """A float32 sum in index order, as the C loops accumulate."""
    acc = np.float32(0.0)
    for v in values:
        acc += v
    return acc


def _activate(values: npt.NDArray[np.float32], act: v3.Activation) -> None:
    if act is v3.Activation.RELU:
        np.maximum(values, F32(0), out=values)
    elif act is v3.Activation.RELU6:
        np.clip(values, F32(0), F32(6), out=values)


def _access(layer: Layer) -> Access:
    """What a v3 layer does to KPU RAM: only convolutions read it; uploads and padding
    write it too, left out of the overwrites (a conservative list)."""
    if not isinstance(layer, v3.Conv):
        return Access(layer.index)
    return conv_access(layer.index, layer.conv.arg)


def _window_origins(out_size: int, stride: int, padding: int, kernel: int,
                    in_size: int) -> list[tuple[int, int]]:
    """Per output index, the clipped input range ``[start, end)`` a pooling window covers."""
    spans = []
    for o in range(out_size):
        origin = o * stride - padding
        spans.append((origin + max(0, -origin), origin + min(kernel, in_size - origin)))
    return spans


class V3Executor:
    """One loaded v3 model: its memories and its layers, ready to run."""

    def __init__(self, model: KModel, rounding: Rounding, lanes: Lanes) -> None:
        assert isinstance(model.program, v3.V3Program)
        self.model = model
        self._lanes = lanes
        self._program = model.program
        self._main = np.zeros(model.main_mem, np.uint8)
        self._kpu = np.zeros(KPU_RAM_BYTES, np.uint8)
        self._convs = {
            layer.index: PreparedConv.from_conv(layer.conv, rounding)
            for layer in self._program.layers
            if isinstance(layer, v3.Conv)
        }
        self._handoff = HandOff([_access(layer) for layer in self._program.layers])
        self._steps: dict[type[Layer], Callable[[Any], npt.NDArray[np.generic] | None]] = {
            v3.Conv: self._conv,
            v3.Add: self._add,
            v3.QuantizedAdd: self._quantized_add,
            v3.GlobalAveragePool: self._global_average_pool,
            v3.Pool2d: self._pool2d,
            v3.Quantize: self._quantize,
            v3.Requantize: self._requantize,
            v3.ChannelOp: self._channel_op,
            v3.Concat: self._concat,
            v3.FullyConnected: self._fully_connected,
            v3.Flatten: self._flatten,
            v3.ResizeNearest: self._resize,
            v3.ChannelwiseDequantize: self._channelwise_dequantize,
            v3.AddPadding: self._add_padding,
            v3.RemovePadding: self._remove_padding,
            v3.Upload: self._upload,
        }

    # -- memory ----------------------------------------------------------------------------

    def _u8(self, address: int, count: int) -> npt.NDArray[np.uint8]:
        return self._main[address : address + count]

    def _f32(self, address: int, count: int) -> npt.NDArray[np.float32]:
        return self._main[address : address + 4 * count].view(F32)

    # -- the run loop ----------------------------------------------------------------------

    def run(
        self, inputs: Sequence[npt.NDArray[np.generic]], observer: LayerObserver | None = None
    ) -> list[npt.NDArray[np.generic]]:
        (value,) = check_inputs(self.model.inputs, inputs)
        self._main.fill(0)
        self._kpu.fill(0)
        self._handoff.map = None
        first = self._program.layers[0]
        if isinstance(first, v3.Conv):  # kpu_kmodel_input_with_padding / the input DMA
            kpu_upload(self._kpu, first.conv.arg.src_addr * 64, value)  # type: ignore[arg-type]
        else:
            assert isinstance(first, v3.FullyConnected)
            self._f32(first.src, first.in_channels)[:] = value
        for layer in self._program.layers:
            started = time.perf_counter()
            produced = self._steps[type(layer)](layer)
            if observer is not None:
                observer(layer.index, time.perf_counter() - started, produced)
        outputs = []
        for (address, size), spec in zip(self._program.outputs, self.model.outputs, strict=True):
            raw = self._main[address : address + size]
            outputs.append(raw.view(spec.dtype).reshape(spec.shape).copy())
        return outputs

    # -- KPU layers ------------------------------------------------------------------------

    def _conv(self, layer: v3.Conv) -> npt.NDArray[np.uint8]:
        arg = layer.conv.arg
        x = self._handoff.map
        if x is None:
            x = kpu_download(self._kpu, arg.src_addr * 64, arg.in_channels, arg.in_height,
                             arg.in_width)
        y = self._convs[layer.index].run(x, self._lanes)
        if not self._handoff.keep(layer.index, y):
            kpu_upload(self._kpu, arg.dst_addr * 64, y)
        if layer.main_mem_out is not None:
            self._u8(layer.main_mem_out, y.size)[:] = y.reshape(-1)
        return y

    def _add_padding(self, layer: v3.AddPadding) -> None:
        # one value per channel, at (x, y) = (0, 0) of a 16-wide, 4-high layout
        layout = RowLayout(4, 1, 16)
        base = layer.kpu_out * 64
        src = self._u8(layer.src, layer.channels)
        for oc in range(layer.channels):
            offset = oc // layout.groups * 4 * 64 + oc % layout.groups * layout.row_pitch
            self._kpu[base + offset] = src[oc]

    def _remove_padding(self, layer: v3.RemovePadding) -> npt.NDArray[np.uint8]:
        src = self._u8(layer.src, layer.channels * 16)
        out = self._u8(layer.out, layer.channels)
        out[:] = src[::16][: layer.channels]
        return out

    def _upload(self, layer: v3.Upload) -> None:
        c, h, w = layer.channels, layer.height, layer.width
        kpu_upload(self._kpu, layer.kpu_out * 64, self._u8(layer.src, c * h * w).reshape(c, h, w))

    # -- CPU layers ------------------------------------------------------------------------

    def _add(self, layer: v3.Add) -> npt.NDArray[np.float32]:
        out = self._f32(layer.out, layer.count)
        np.add(self._f32(layer.in_a, layer.count), self._f32(layer.in_b, layer.count), out=out)
        return out

    def _quantized_add(self, layer: v3.QuantizedAdd) -> npt.NDArray[np.uint8]:
        n = -(-layer.count // 8) * 8  # kpu.c works in whole groups of eight
        params = np.array([layer.a_offset, layer.a_mul, layer.a_shift, layer.b_offset,
                           layer.b_mul, layer.b_shift, layer.out_offset, layer.out_mul,
                           layer.out_shift], np.int64)
        out = np.empty(n, np.uint8)
        _quantized_add(self._u8(layer.in_a, n).copy(), self._u8(layer.in_b, n).copy(), params,
                       out)
        self._u8(layer.out, n)[:] = out
        return out[: layer.count]

    def _global_average_pool(self, layer: v3.GlobalAveragePool) -> npt.NDArray[np.float32]:
        src = self._f32(layer.src, layer.channels * layer.kernel_size)
        src = src.reshape(layer.channels, layer.kernel_size)
        out = self._f32(layer.out, layer.channels)
        for oc in range(layer.channels):
            out[oc] = _sum_f32(src[oc]) / F32(layer.kernel_size)
        return out

    def _pool2d(self, layer: v3.Pool2d) -> npt.NDArray[np.generic]:
        quantized = layer.type is v3.V3LayerType.QUANTIZED_MAX_POOL2D
        ins, outs = layer.in_shape, layer.out_shape
        if quantized:
            src: npt.NDArray[Any] = self._u8(layer.src, ins.count).reshape(ins.chw)
            out: npt.NDArray[Any] = self._u8(layer.out, outs.count).reshape(outs.chw)
        else:
            src = self._f32(layer.src, ins.count).reshape(ins.chw)
            out = self._f32(layer.out, outs.count).reshape(outs.chw)
        rows = _window_origins(outs.height, layer.stride[1], layer.padding[1], layer.kernel[1],
                               ins.height)
        cols = _window_origins(outs.width, layer.stride[0], layer.padding[0], layer.kernel[0],
                               ins.width)
        result = np.empty(outs.chw, out.dtype)
        for oy, (y0, y1) in enumerate(rows):
            for ox, (x0, x1) in enumerate(cols):
                window = src[:, y0:y1, x0:x1].reshape(ins.channels, -1)
                if quantized:  # kpu_quantized_max_pool2d: starts from 0, empty windows give 0
                    result[:, oy, ox] = window.max(axis=1, initial=0)
                else:  # kpu_average_pool2d: float sum in row order over the clipped window
                    count = F32(window.shape[1])
                    for c in range(ins.channels):
                        result[c, oy, ox] = _sum_f32(np.ascontiguousarray(window[c])) / count
        if not quantized:
            _activate(result, layer.activation)
        out[:] = result
        return out

    def _quantize(self, layer: v3.Quantize) -> npt.NDArray[np.generic]:
        if layer.type is v3.V3LayerType.QUANTIZE:
            src = self._f32(layer.src, layer.count)
            scaled = (src - F32(layer.bias)) * (F32(1) / F32(layer.scale))
            # roundf: halves away from zero
            rounded = np.trunc(scaled + np.copysign(F32(0.5), scaled))
            out8 = self._u8(layer.out, layer.count)
            out8[:] = np.clip(rounded, 0, 255).astype(np.uint8)
            return out8
        out = self._f32(layer.out, layer.count)
        out[:] = self._u8(layer.src, layer.count).astype(F32) * F32(layer.scale) + F32(layer.bias)
        return out

    def _requantize(self, layer: v3.Requantize) -> npt.NDArray[np.uint8]:
        out = self._u8(layer.out, layer.count)
        out[:] = layer.table[self._u8(layer.src, layer.count)]
        return out

    def _channel_op(self, layer: v3.ChannelOp) -> npt.NDArray[np.float32]:
        src = self._f32(layer.src, layer.channels).copy()
        out = self._f32(layer.out, layer.channels)
        if layer.type is v3.V3LayerType.LOGISTIC:
            out[:] = F32(1) / (F32(1) + np.exp(-src))
        elif layer.type is v3.V3LayerType.SOFTMAX:
            peak = max(FLT_MIN, src.max()) if src.size else FLT_MIN
            exps = np.exp(src - peak)
            out[:] = exps / _sum_f32(exps)
        else:  # L2_NORMALIZATION
            total = max(_sum_f32(src * src), F32(1e-10))
            out[:] = src * (F32(1) / np.sqrt(total))
        return out

    def _concat(self, layer: v3.Concat) -> None:
        chunks = [self._main[int(start) : int(start) + int(size)].copy()
                  for start, size in layer.inputs]
        joined = np.concatenate(chunks) if chunks else np.empty(0, np.uint8)
        self._main[layer.out : layer.out + joined.size] = joined

    def _fully_connected(self, layer: v3.FullyConnected) -> npt.NDArray[np.float32]:
        out = np.empty(layer.out_channels, F32)
        _fully_connected(self._f32(layer.src, layer.in_channels).copy(), layer.weights,
                         layer.bias, out)
        _activate(out, layer.activation)
        self._f32(layer.out, layer.out_channels)[:] = out
        return out

    def _flatten(self, layer: v3.Flatten) -> npt.NDArray[np.float32]:
        s = layer.shape
        src = self._f32(layer.src, s.count).reshape(s.chw)
        out = self._f32(layer.out, s.count)
        out[:] = src.transpose(1, 2, 0).reshape(-1)  # CHW to HWC, TensorFlow's order
        return out

    def _resize(self, layer: v3.ResizeNearest) -> npt.NDArray[np.generic]:
        s = layer.in_shape
        quantized = layer.type is v3.V3LayerType.QUANTIZED_RESIZE_NEAREST_NEIGHBOR
        count = s.channels * layer.out_height * layer.out_width
        if quantized:
            src: npt.NDArray[Any] = self._u8(layer.src, s.count).reshape(s.chw)
            out: npt.NDArray[Any] = self._u8(layer.out, count)
        else:
            src = self._f32(layer.src, s.count).reshape(s.chw)
            out = self._f32(layer.out, count)
        # in = min(floor(out * (in / out)), in - 1), the scale and product in float32
        ys = np.minimum(np.floor(np.arange(layer.out_height, dtype=F32)
                                 * (F32(s.height) / F32(layer.out_height))), s.height - 1)
        xs = np.minimum(np.floor(np.arange(layer.out_width, dtype=F32)
                                 * (F32(s.width) / F32(layer.out_width))), s.width - 1)
        out[:] = src[:, ys.astype(np.intp)][:, :, xs.astype(np.intp)].reshape(-1)
        return out

    def _channelwise_dequantize(self, layer: v3.ChannelwiseDequantize) -> npt.NDArray[np.float32]:
        n = layer.channels * layer.channel_size
        src = self._u8(layer.src, n).reshape(layer.channels, layer.channel_size)
        out = self._f32(layer.out, n)
        values = src.astype(F32) * layer.scales[:, None] + layer.biases[:, None]
        out[:] = values.reshape(-1)
        return out
