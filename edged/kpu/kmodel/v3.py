"""kmodel v3: the KPU-native format of nncase 0.1 and the Kendryte standalone SDK.

Layout (``kpu.h``): ``kpu_kmodel_header_t`` (7 x u32), ``output_count`` x
``kpu_model_output_t`` {address, size}, ``layers_length`` x ``kpu_model_layer_header_t``
{type, body_size}, then the layer bodies back to back. Addresses in bodies point into the
model's working memory ("main memory", ``main_mem_usage`` bytes) or, in 64-byte rows, into
the KPU's 2 MiB RAM; a convolution's register block, weights, batch-norm and activation
tables are at absolute offsets in the file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
import numpy.typing as npt

from edged.kpu.errors import FirstLayerError, KmodelFormatError
from edged.kpu.kmodel.kpu_regs import (
    KPU_RAM_BYTES,
    KpuConv,
    RowLayout,
    decode_conv,
    decode_layer_argument,
)
from edged.kpu.kmodel.model import (
    CHIP_SRAM_BYTES,
    MAX_TENSORS,
    DType,
    Layer,
    LayerSummary,
    Parsed,
    Program,
    TensorSpec,
    element_count,
)
from edged.kpu.kmodel.reader import Span

HEADER_BYTES = 7 * 4


class V3LayerType(IntEnum):
    """``kpu_model_layer_type_t``."""

    INVALID = 0
    ADD = 1
    QUANTIZED_ADD = 2
    GLOBAL_MAX_POOL2D = 3
    QUANTIZED_GLOBAL_MAX_POOL2D = 4
    GLOBAL_AVERAGE_POOL2D = 5
    QUANTIZED_GLOBAL_AVERAGE_POOL2D = 6
    MAX_POOL2D = 7
    QUANTIZED_MAX_POOL2D = 8
    AVERAGE_POOL2D = 9
    QUANTIZED_AVERAGE_POOL2D = 10
    QUANTIZE = 11
    DEQUANTIZE = 12
    REQUANTIZE = 13
    L2_NORMALIZATION = 14
    SOFTMAX = 15
    CONCAT = 16
    QUANTIZED_CONCAT = 17
    FULLY_CONNECTED = 18
    QUANTIZED_FULLY_CONNECTED = 19
    TENSORFLOW_FLATTEN = 20
    QUANTIZED_TENSORFLOW_FLATTEN = 21
    RESIZE_NEAREST_NEIGHBOR = 22
    QUANTIZED_RESIZE_NEAREST_NEIGHBOR = 23
    CHANNELWISE_DEQUANTIZE = 24
    LOGISTIC = 25
    K210_CONV = 10240
    K210_ADD_PADDING = 10241
    K210_REMOVE_PADDING = 10242
    K210_UPLOAD = 10243


NO_REFERENCE = frozenset(
    {
        V3LayerType.INVALID,
        V3LayerType.GLOBAL_MAX_POOL2D,
        V3LayerType.QUANTIZED_GLOBAL_MAX_POOL2D,
        V3LayerType.QUANTIZED_GLOBAL_AVERAGE_POOL2D,
        V3LayerType.MAX_POOL2D,
        V3LayerType.QUANTIZED_AVERAGE_POOL2D,
        V3LayerType.QUANTIZED_FULLY_CONNECTED,
        V3LayerType.QUANTIZED_TENSORFLOW_FLATTEN,
    }
)
"""Enum values with no body layout in ``kpu.h`` and no case in ``kpu.c``'s dispatcher:
the SDK stops on them ("Layer is not supported") and nncase 0.1 never writes them."""


class Activation(IntEnum):
    """``kpu_model_activation_t`` of the float CPU layers."""

    LINEAR = 0
    RELU = 1
    RELU6 = 2


@dataclass(frozen=True)
class Shape3:
    """``kpu_model_shape_t``: width, height, channels (stored in that order)."""

    width: int
    height: int
    channels: int

    @property
    def chw(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    @property
    def count(self) -> int:
        return self.width * self.height * self.channels


@dataclass(frozen=True)
class V3Layer(Layer):
    type: V3LayerType


@dataclass(frozen=True)
class Conv(V3Layer):
    main_mem_out: int | None
    conv: KpuConv


@dataclass(frozen=True)
class Add(V3Layer):
    in_a: int
    in_b: int
    out: int
    count: int


@dataclass(frozen=True)
class QuantizedAdd(V3Layer):
    in_a: int
    in_b: int
    out: int
    count: int
    a_offset: int
    a_mul: int
    a_shift: int
    b_offset: int
    b_mul: int
    b_shift: int
    out_offset: int
    out_mul: int
    out_shift: int


@dataclass(frozen=True)
class GlobalAveragePool(V3Layer):
    src: int
    out: int
    kernel_size: int
    channels: int


@dataclass(frozen=True)
class Pool2d(V3Layer):
    """QUANTIZED_MAX_POOL2D (uint8) or AVERAGE_POOL2D (float32, with an activation)."""

    src: int
    out: int
    in_shape: Shape3
    out_shape: Shape3
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    activation: Activation


@dataclass(frozen=True)
class Quantize(V3Layer):
    """QUANTIZE (float32 to uint8) or DEQUANTIZE (uint8 to float32)."""

    src: int
    out: int
    count: int
    scale: float
    bias: float


@dataclass(frozen=True)
class Requantize(V3Layer):
    src: int
    out: int
    count: int
    table: npt.NDArray[np.uint8]


@dataclass(frozen=True)
class ChannelOp(V3Layer):
    """L2_NORMALIZATION, SOFTMAX and LOGISTIC: float32 over ``channels`` values."""

    src: int
    out: int
    channels: int


@dataclass(frozen=True)
class Concat(V3Layer):
    out: int
    inputs: npt.NDArray[np.uint32]
    """(n, 2): (start, size) byte ranges, copied one after the other."""


@dataclass(frozen=True)
class FullyConnected(V3Layer):
    src: int
    out: int
    in_channels: int
    out_channels: int
    activation: Activation
    weights: npt.NDArray[np.float32]
    bias: npt.NDArray[np.float32]


@dataclass(frozen=True)
class Flatten(V3Layer):
    src: int
    out: int
    shape: Shape3


@dataclass(frozen=True)
class ResizeNearest(V3Layer):
    """RESIZE_NEAREST_NEIGHBOR (float32) or its QUANTIZED_ form (uint8)."""

    src: int
    out: int
    in_shape: Shape3
    out_width: int
    out_height: int
    align_corners: int


@dataclass(frozen=True)
class ChannelwiseDequantize(V3Layer):
    src: int
    out: int
    channels: int
    channel_size: int
    scales: npt.NDArray[np.float32]
    biases: npt.NDArray[np.float32]


@dataclass(frozen=True)
class AddPadding(V3Layer):
    src: int
    kpu_out: int
    channels: int


@dataclass(frozen=True)
class RemovePadding(V3Layer):
    src: int
    out: int
    channels: int


@dataclass(frozen=True)
class Upload(V3Layer):
    src: int
    kpu_out: int
    width: int
    height: int
    channels: int


@dataclass(frozen=True)
class V3Program(Program):
    """Everything the simulator needs to run a v3 model."""

    outputs: tuple[tuple[int, int], ...]


# --- parsing -----------------------------------------------------------------------------


@dataclass
class _Memory:
    """Tracks, while parsing, what each main-memory range holds, to infer output shapes."""

    size: int
    weight_dtype: npt.DTypeLike
    layer: int | None = 0
    tensors: dict[int, tuple[tuple[int, ...], DType]] = field(default_factory=dict)
    kpu_high: int = 0

    def check(self, start: int, nbytes: int, what: str, offset: int) -> None:
        if nbytes < 0 or start + nbytes > self.size:
            raise KmodelFormatError(
                f"{what} [{start}, {start + nbytes}) is outside the {self.size} bytes of "
                "working memory (main_mem_usage)",
                offset=offset,
                layer=self.layer,
            )

    def check_kpu(self, rows_start: int, nbytes: int, what: str, offset: int) -> None:
        end = rows_start * 64 + nbytes
        if end > KPU_RAM_BYTES:
            raise KmodelFormatError(
                f"{what} ends at byte {end} of KPU RAM, past its 2 MiB", offset=offset,
                layer=self.layer,
            )
        self.kpu_high = max(self.kpu_high, end)

    def write(self, start: int, shape: tuple[int, ...], dtype: DType, offset: int,
              what: str) -> None:
        self.read(start, shape, dtype, offset, what)
        self.tensors[start] = (shape, dtype)

    def shape_at(self, start: int, count: int, default: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of the tensor last written at ``start`` if it has ``count`` values."""
        shape = self.tensors.get(start, (default, "uint8"))[0]
        return shape if element_count(shape) == count else default

    def read(self, start: int, shape: tuple[int, ...], dtype: DType, offset: int,
             what: str) -> None:
        self.check(start, element_count(shape) * np.dtype(dtype).itemsize, what, offset)


_Parser = Callable[[Span, int, V3LayerType, _Memory], tuple[V3Layer, LayerSummary]]


def _summary(
    layer: V3Layer, in_shape: tuple[int, ...], out_shape: tuple[int, ...], *, macs: int = 0,
    on_kpu: bool = False,
) -> LayerSummary:
    elements = element_count(in_shape) + element_count(out_shape)
    return LayerSummary(layer.index, layer.type.name, on_kpu, in_shape, out_shape, macs, elements)


def _conv(span: Span, idx: int, t: V3LayerType, mem: _Memory) -> tuple[V3Layer, LayerSummary]:
    flags, main_out, layer_off, weights_off, bn_off, act_off = span.u32s(span.start, 6, "conv")
    whole = Span(span.data, 0, len(span.data), idx)  # conv parameters live anywhere in the file
    arg = decode_layer_argument(whole, layer_off)
    conv = decode_conv(whole, arg, weights_offset=weights_off, bn_offset=bn_off,
                       act_offset=act_off, weight_dtype=mem.weight_dtype)
    mem.check_kpu(arg.src_addr, arg.in_rows * 64, "conv input", span.start)
    mem.check_kpu(arg.dst_addr, arg.out_rows * 64, "conv output", span.start)
    out_shape = (arg.out_channels, arg.out_height, arg.out_width)
    main_mem_out = None
    if flags & 1:
        main_mem_out = main_out
        mem.write(main_out, out_shape, "uint8", span.start, "conv output")
    layer = Conv(idx, span.start, t, main_mem_out, conv)
    in_shape = (arg.in_channels, arg.in_height, arg.in_width)
    return layer, _summary(layer, in_shape, out_shape, macs=arg.macs, on_kpu=True)


def _add(span: Span, idx: int, t: V3LayerType, mem: _Memory) -> tuple[V3Layer, LayerSummary]:
    if t is V3LayerType.ADD:
        _, a, b, out, count = span.u32s(span.start, 5, "add")
        shape: tuple[int, ...] = (count,)
        for src in (a, b):
            mem.read(src, shape, "float32", span.start, "add input")
        mem.write(out, shape, "float32", span.start, "add output")
        layer: V3Layer = Add(idx, span.start, t, a, b, out, count)
        return layer, _summary(layer, (2, count), shape)
    fields = span.unpack("5I9i", span.start, "quantized add")
    _, a, b, out, count, *params = (int(v) for v in fields)
    padded = (-(-count // 8) * 8,)  # kpu.c processes whole groups of eight
    for src in (a, b):
        mem.read(src, padded, "uint8", span.start, "quantized add input")
    mem.write(out, padded, "uint8", span.start, "quantized add output")
    for name, shift in (("in_a", params[2]), ("in_b", params[5]), ("out", params[8])):
        if not 0 <= shift < 64:
            raise KmodelFormatError(f"quantized add {name} shift {shift} outside 0..63",
                                    offset=span.start, layer=idx)
    layer = QuantizedAdd(idx, span.start, t, a, b, out, count, *params)
    return layer, _summary(layer, (2, count), (count,))


def _gap(span: Span, idx: int, t: V3LayerType, mem: _Memory) -> tuple[V3Layer, LayerSummary]:
    _, src, out, kernel, channels = span.u32s(span.start, 5, "global average pool")
    if kernel == 0:
        raise KmodelFormatError("global average pool over 0 values", offset=span.start,
                                layer=idx)
    mem.read(src, (channels, kernel), "float32", span.start, "pool input")
    mem.write(out, (channels,), "float32", span.start, "pool output")
    layer = GlobalAveragePool(idx, span.start, t, src, out, kernel, channels)
    return layer, _summary(layer, (channels, kernel), (channels,))


def _pool(span: Span, idx: int, t: V3LayerType, mem: _Memory) -> tuple[V3Layer, LayerSummary]:
    quantized = t is V3LayerType.QUANTIZED_MAX_POOL2D
    count = 15 if quantized else 16
    v = span.u32s(span.start, count, t.name.lower())
    in_shape, out_shape = Shape3(*v[3:6]), Shape3(*v[6:9])
    if in_shape.channels != out_shape.channels:
        raise KmodelFormatError("pooling changes the channel count", offset=span.start,
                                layer=idx)
    kernel, stride, padding = (v[9], v[10]), (v[11], v[12]), (v[13], v[14])
    if 0 in kernel or 0 in stride:
        raise KmodelFormatError("pooling with a zero kernel or stride", offset=span.start,
                                layer=idx)
    act = Activation.LINEAR
    if not quantized:
        try:
            act = Activation(v[15])
        except ValueError:
            raise KmodelFormatError(f"unknown activation {v[15]}", offset=span.start,
                                    layer=idx) from None
    dtype: DType = "uint8" if quantized else "float32"
    mem.read(v[1], in_shape.chw, dtype, span.start, "pool input")
    mem.write(v[2], out_shape.chw, dtype, span.start, "pool output")
    layer = Pool2d(idx, span.start, t, v[1], v[2], in_shape, out_shape, kernel, stride,
                   padding, act)
    return layer, _summary(layer, in_shape.chw, out_shape.chw)


def _quantize(span: Span, idx: int, t: V3LayerType,
              mem: _Memory) -> tuple[V3Layer, LayerSummary]:
    _, src, out, count, scale, bias = span.unpack("4I2f", span.start, t.name.lower())
    src, out, count = int(src), int(out), int(count)
    if t is V3LayerType.QUANTIZE:
        mem.read(src, (count,), "float32", span.start, "quantize input")
        mem.write(out, (count,), "uint8", span.start, "quantize output")
        shape: tuple[int, ...] = (count,)
    else:
        shape = mem.shape_at(src, count, (count,))
        mem.read(src, shape, "uint8", span.start, "dequantize input")
        mem.write(out, shape, "float32", span.start, "dequantize output")
    layer = Quantize(idx, span.start, t, src, out, count, float(scale), float(bias))
    return layer, _summary(layer, shape, shape)


def _requantize(span: Span, idx: int, t: V3LayerType,
                mem: _Memory) -> tuple[V3Layer, LayerSummary]:
    _, src, out, count = span.u32s(span.start, 4, "requantize")
    table = span.array(span.start + 16, np.uint8, 256, "requantize table")
    mem.read(src, (count,), "uint8", span.start, "requantize input")
    mem.write(out, (count,), "uint8", span.start, "requantize output")
    layer = Requantize(idx, span.start, t, src, out, count, table)  # type: ignore[arg-type]
    return layer, _summary(layer, (count,), (count,))


def _channel_op(span: Span, idx: int, t: V3LayerType,
                mem: _Memory) -> tuple[V3Layer, LayerSummary]:
    _, src, out, channels = span.u32s(span.start, 4, t.name.lower())
    mem.read(src, (channels,), "float32", span.start, "input")
    mem.write(out, (channels,), "float32", span.start, "output")
    layer = ChannelOp(idx, span.start, t, src, out, channels)
    return layer, _summary(layer, (channels,), (channels,))


def _concat(span: Span, idx: int, t: V3LayerType,
            mem: _Memory) -> tuple[V3Layer, LayerSummary]:
    _, out, count = span.u32s(span.start, 3, "concat")
    inputs = span.array(span.start + 12, np.uint32, 2 * count, "concat inputs").reshape(-1, 2)
    ends = inputs[:, 0].astype(np.int64) + inputs[:, 1].astype(np.int64)
    if count and int(ends.max()) > mem.size:
        bad = int(np.argmax(ends > mem.size))
        mem.check(int(inputs[bad, 0]), int(inputs[bad, 1]), f"concat input {bad}", span.start)
    total = int(inputs[:, 1].astype(np.int64).sum())
    dtype: DType = "uint8" if t is V3LayerType.QUANTIZED_CONCAT or total % 4 else "float32"
    count_out = total // np.dtype(dtype).itemsize
    mem.write(out, (count_out,), dtype, span.start, "concat output")
    layer = Concat(idx, span.start, t, out, inputs)  # type: ignore[arg-type]
    return layer, _summary(layer, (total,), (count_out,))


def _fully_connected(span: Span, idx: int, t: V3LayerType,
                     mem: _Memory) -> tuple[V3Layer, LayerSummary]:
    _, src, out, ic, oc, act_raw = span.u32s(span.start, 6, "fully connected")
    try:
        act = Activation(act_raw)
    except ValueError:
        raise KmodelFormatError(f"unknown activation {act_raw}", offset=span.start,
                                layer=idx) from None
    params = span.array(span.start + 24, np.float32, ic * oc + oc, "fully connected weights")
    mem.read(src, (ic,), "float32", span.start, "fully connected input")
    mem.write(out, (oc,), "float32", span.start, "fully connected output")
    weights = params[: ic * oc].reshape(oc, ic)
    layer = FullyConnected(idx, span.start, t, src, out, ic, oc, act,
                           weights, params[ic * oc :])  # type: ignore[arg-type]
    summary = LayerSummary(idx, t.name, False, (ic,), (oc,), 0, ic * oc + oc)
    return layer, summary


def _flatten(span: Span, idx: int, t: V3LayerType,
             mem: _Memory) -> tuple[V3Layer, LayerSummary]:
    _, src, out, *shape = span.u32s(span.start, 6, "flatten")
    s = Shape3(*shape)
    mem.read(src, s.chw, "float32", span.start, "flatten input")
    mem.write(out, (s.height, s.width, s.channels), "float32", span.start, "flatten output")
    layer = Flatten(idx, span.start, t, src, out, s)
    return layer, _summary(layer, s.chw, (s.height, s.width, s.channels))


def _resize(span: Span, idx: int, t: V3LayerType,
            mem: _Memory) -> tuple[V3Layer, LayerSummary]:
    _, src, out, w, h, c, ow, oh, align = span.u32s(span.start, 9, "resize")
    s = Shape3(w, h, c)
    if 0 in (w, h, ow, oh):
        raise KmodelFormatError("resize to or from an empty image", offset=span.start,
                                layer=idx)
    dtype: DType = "uint8" if t is V3LayerType.QUANTIZED_RESIZE_NEAREST_NEIGHBOR else "float32"
    mem.read(src, s.chw, dtype, span.start, "resize input")
    mem.write(out, (c, oh, ow), dtype, span.start, "resize output")
    layer = ResizeNearest(idx, span.start, t, src, out, s, ow, oh, align)
    return layer, _summary(layer, s.chw, (c, oh, ow))


def _channelwise_dequantize(span: Span, idx: int, t: V3LayerType,
                            mem: _Memory) -> tuple[V3Layer, LayerSummary]:
    _, src, out, channels, size = span.u32s(span.start, 5, "channelwise dequantize")
    params = span.array(span.start + 20, np.float32, 2 * channels, "quantization parameters")
    shape = mem.shape_at(src, channels * size, (channels, size))
    mem.read(src, shape, "uint8", span.start, "dequantize input")
    mem.write(out, shape, "float32", span.start, "dequantize output")
    layer = ChannelwiseDequantize(idx, span.start, t, src, out, channels, size,
                                  params[0::2], params[1::2])  # type: ignore[arg-type]
    return layer, _summary(layer, shape, shape)


def _add_padding(span: Span, idx: int, t: V3LayerType,
                 mem: _Memory) -> tuple[V3Layer, LayerSummary]:
    _, src, kpu_out, channels = span.u32s(span.start, 4, "add padding")
    mem.read(src, (channels,), "uint8", span.start, "add padding input")
    rows = RowLayout(4, 1, 16).rows(4, channels)
    mem.check_kpu(kpu_out, rows * 64, "add padding output", span.start)
    layer = AddPadding(idx, span.start, t, src, kpu_out, channels)
    return layer, _summary(layer, (channels,), (channels, 1, 1))


def _remove_padding(span: Span, idx: int, t: V3LayerType,
                    mem: _Memory) -> tuple[V3Layer, LayerSummary]:
    _, src, out, channels = span.u32s(span.start, 4, "remove padding")
    mem.read(src, (channels * 16,), "uint8", span.start, "remove padding input")
    mem.write(out, (channels,), "uint8", span.start, "remove padding output")
    layer = RemovePadding(idx, span.start, t, src, out, channels)
    return layer, _summary(layer, (channels, 16), (channels,))


def _upload(span: Span, idx: int, t: V3LayerType,
            mem: _Memory) -> tuple[V3Layer, LayerSummary]:
    _, src, kpu_out, w, h, c = span.u32s(span.start, 6, "upload")
    mem.read(src, (c, h, w), "uint8", span.start, "upload input")
    mem.check_kpu(kpu_out, RowLayout.for_width(w).rows(h, c) * 64 if w else 0,
                  "upload output", span.start)
    layer = Upload(idx, span.start, t, src, kpu_out, w, h, c)
    return layer, _summary(layer, (c, h, w), (c, h, w))


_PARSERS: dict[V3LayerType, _Parser] = {
    V3LayerType.K210_CONV: _conv,
    V3LayerType.ADD: _add,
    V3LayerType.QUANTIZED_ADD: _add,
    V3LayerType.GLOBAL_AVERAGE_POOL2D: _gap,
    V3LayerType.QUANTIZED_MAX_POOL2D: _pool,
    V3LayerType.AVERAGE_POOL2D: _pool,
    V3LayerType.QUANTIZE: _quantize,
    V3LayerType.DEQUANTIZE: _quantize,
    V3LayerType.REQUANTIZE: _requantize,
    V3LayerType.L2_NORMALIZATION: _channel_op,
    V3LayerType.SOFTMAX: _channel_op,
    V3LayerType.LOGISTIC: _channel_op,
    V3LayerType.CONCAT: _concat,
    V3LayerType.QUANTIZED_CONCAT: _concat,
    V3LayerType.FULLY_CONNECTED: _fully_connected,
    V3LayerType.TENSORFLOW_FLATTEN: _flatten,
    V3LayerType.RESIZE_NEAREST_NEIGHBOR: _resize,
    V3LayerType.QUANTIZED_RESIZE_NEAREST_NEIGHBOR: _resize,
    V3LayerType.CHANNELWISE_DEQUANTIZE: _channelwise_dequantize,
    V3LayerType.K210_ADD_PADDING: _add_padding,
    V3LayerType.K210_REMOVE_PADDING: _remove_padding,
    V3LayerType.K210_UPLOAD: _upload,
}


def parse_v3(data: bytes) -> Parsed:
    """Decode and validate a v3 kmodel; raises :class:`KmodelFormatError` on any flaw."""
    whole = Span.of(data)
    version, flags, arch, n_layers, _max_start, main_mem, n_outputs = whole.u32s(
        0, 7, "kmodel v3 header")
    assert version == 3
    if arch != 0:
        raise KmodelFormatError(f"arch {arch} is not the K210 KPU (0)", offset=8)
    if n_layers == 0:
        raise KmodelFormatError("a model with no layers", offset=12)
    if main_mem > CHIP_SRAM_BYTES:
        raise KmodelFormatError(
            f"working memory of {main_mem} bytes is more than the K210's 8 MiB of SRAM",
            offset=20)
    if n_outputs > MAX_TENSORS:
        raise KmodelFormatError(f"{n_outputs} outputs: more than any K210 model declares "
                                f"(at most {MAX_TENSORS} accepted)", offset=24)
    outputs_raw = whole.u32s(HEADER_BYTES, 2 * n_outputs, "output table")
    headers_at = HEADER_BYTES + 8 * n_outputs
    # a numpy view, not Python ints: a forged count costs no more than the file backs
    headers = whole.array(headers_at, np.uint32, 2 * n_layers, "layer headers")
    # flags bit 0 is the KPU's eight_bit_mode; otherwise weights are 16 bits wide.
    mem = _Memory(main_mem, np.uint8 if flags & 1 else np.uint16)
    layers: list[V3Layer] = []
    summaries: list[LayerSummary] = []
    body = headers_at + 8 * n_layers
    for idx in range(n_layers):
        raw_type, size = int(headers[2 * idx]), int(headers[2 * idx + 1])
        mem.layer = idx
        # body_size may count alignment padding past the end of the file (iris_v3's last
        # layer does): the body's own fields are what must be there, and they are checked.
        span = whole.sub(body, min(size, max(0, len(data) - body)), layer=idx,
                         what=f"layer {idx} body")
        try:
            layer_type = V3LayerType(raw_type)
        except ValueError:
            raise KmodelFormatError(f"unknown layer type {raw_type}", offset=headers_at + 8 * idx,
                                    layer=idx) from None
        if layer_type in NO_REFERENCE:
            raise KmodelFormatError(
                f"layer type {layer_type.name} has no reference semantics: kpu.h defines no "
                "body for it and the SDK's kpu.c refuses it ('Layer is not supported')",
                offset=headers_at + 8 * idx, layer=idx)
        layer, summary = _PARSERS[layer_type](span, idx, layer_type, mem)
        layers.append(layer)
        summaries.append(summary)
        body += size
    outputs = []
    mem.layer = None
    for i in range(n_outputs):
        start, size = outputs_raw[2 * i], outputs_raw[2 * i + 1]
        mem.check(start, size, f"output {i}", HEADER_BYTES + 8 * i)
        shape, dtype = mem.tensors.get(start, ((size,), "uint8"))
        spec = TensorSpec(shape, dtype)
        outputs.append(spec if spec.nbytes == size else TensorSpec((size,), "uint8"))
    first = layers[0]
    if isinstance(first, Conv):
        a = first.conv.arg
        inputs = (TensorSpec((a.in_channels, a.in_height, a.in_width), "uint8"),)
    elif isinstance(first, FullyConnected):
        inputs = (TensorSpec((first.in_channels,), "float32"),)
    else:
        raise FirstLayerError(f"first layer is {first.type.name}, not K210_CONV or "
                              "FULLY_CONNECTED")
    program = V3Program(tuple(layers), tuple(zip(outputs_raw[::2], outputs_raw[1::2],
                                                 strict=True)))
    return Parsed(program, main_mem, inputs, tuple(outputs), tuple(summaries), mem.kpu_high)
