"""kmodel v4: the format of nncase 0.2 (``'KMDL'``, version 4), a graph of runtime nodes.

Layout (``runtime/interpreter.cpp``, ``try_load_model``): ``model_header`` (10 x u32),
``inputs`` x ``memory_range``, ``inputs`` x ``runtime_shape_t`` (NCHW, 4 x i32), ``outputs``
x ``memory_range``, the constants blob (``constants`` bytes), ``nodes`` x ``node_header``
{opcode, body_size}, then the bodies back to back. A ``memory_range`` {memory_type,
datatype, start, size} addresses the constants, the model's working memory (``main_mem``
bytes) or the KPU's 2 MiB RAM. Bodies are the C structs of ``*_ops_body.h`` as the
runtime's ``span_reader`` reads them: fixed fields, then arrays whose lengths follow from
those fields.

The runtime checks none of this; here every range is checked against its memory, every
kernel's reads and writes against the range it is given, and every value a kernel would
divide by, loop on or index with against what keeps the C++ defined, so that execution
never leaves a buffer.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from edged.kpu.errors import KmodelFormatError
from edged.kpu.kmodel.kpu_regs import (
    ACTIVATION_TABLE_BYTES,
    KPU_RAM_BYTES,
    LAYER_ARGUMENT_BYTES,
    KpuConv,
    decode_conv,
    decode_layer_argument,
    kpu_rows,
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

HEADER_BYTES = 10 * 4
RANGE_BYTES = 16
SHAPE_BYTES = 16
NODE_HEADER_BYTES = 8

NNIL_STACK = 64
"""``nnil_evalstack``'s fixed depth."""

Shape4 = tuple[int, int, int, int]
E = TypeVar("E", bound=IntEnum)
Padding = tuple[int, int]
ValueRange = tuple[float, float]


class Opcode(IntEnum):
    """``runtime_opcode`` (``runtime_op.def``)."""

    BINARY = 0x00
    CONCAT = 0x01
    CONV2D = 0x02
    DEQUANTIZE = 0x03
    MATMUL = 0x04
    PAD = 0x05
    QUANTIZE = 0x06
    REDUCE = 0x07
    REDUCE_WINDOW2D = 0x08
    MEMORY_COPY = 0x09
    RESIZE_IMAGE = 0x0A
    SOFTMAX = 0x0B
    TRANSPOSE = 0x0C
    STRIDED_SLICE = 0x0D
    UNARY = 0x0E
    QUANTIZED_CONV2D = 0x0F
    QUANTIZED_MATMUL = 0x10
    QUANTIZED_BINARY = 0x11
    TABLE_LOOKUP1D = 0x12
    CONV2D_TRANSPOSE = 0x13
    NNIL_UNARY_METHOD = 0x14
    CPU_CONV2D = 0x1001
    CPU_DEPTHWISE_CONV2D = 0x1002
    CPU_REDUCE_WINDOW2D = 0x1003
    CPU_QUANTIZED_CONV2D = 0x1004
    CPU_QUANTIZED_DEPTHWISE_CONV2D = 0x1005
    KPU_UPLOAD = 0x2001
    KPU_CONV2D = 0x2002


class MemoryType(IntEnum):
    """``memory_type_t``."""

    CONST = 0
    MAIN = 1
    K210_KPU = 2


class BinaryOp(IntEnum):
    ADD = 0
    SUB = 1
    MUL = 2
    DIV = 3
    MIN = 4
    MAX = 5


class ReduceOp(IntEnum):
    MEAN = 0
    MIN = 1
    MAX = 2
    SUM = 3


class UnaryOp(IntEnum):
    ABS = 0
    CEIL = 1
    COS = 2
    EXP = 3
    FLOOR = 4
    LOG = 5
    NEG = 6
    RSQRT = 7
    SIN = 8
    SQUARE = 9


class ResizeMode(IntEnum):
    BILINEAR = 0
    NEAREST_NEIGHBOR = 1


class Nnil(IntEnum):
    """``nnil_opcode_t``: the stack machine of ``nnil_unary_method``."""

    NOP = 0x00
    DUP = 0x01
    POP = 0x02
    LDA_0 = 0x03
    LDC_R4_0 = 0x04
    LDC_R4_1 = 0x05
    LDC_R4 = 0x06
    ABS = 0x20
    CEIL = 0x21
    COS = 0x22
    EXP = 0x23
    FLOOR = 0x24
    LOG = 0x25
    NEG = 0x26
    RSQRT = 0x27
    SIN = 0x28
    SQUARE = 0x29
    ADD = 0x40
    SUB = 0x41
    MUL = 0x42
    DIV = 0x43
    MIN = 0x44
    MAX = 0x45
    CLAMP = 0x80
    RET = 0xA0


def _nnil_effect(op: Nnil) -> tuple[int, int]:
    """(values popped, values pushed) of one nnil instruction."""
    if op is Nnil.NOP:
        return 0, 0
    if op is Nnil.DUP:
        return 1, 2
    if op in (Nnil.POP, Nnil.RET):
        return 1, 0
    if op in (Nnil.LDA_0, Nnil.LDC_R4_0, Nnil.LDC_R4_1, Nnil.LDC_R4):
        return 0, 1
    if op is Nnil.CLAMP:
        return 3, 1
    return (1, 1) if op < Nnil.ADD else (2, 1)


_DTYPES: dict[int, DType] = {0: "float32", 1: "uint8"}


# --- what a node refers to ----------------------------------------------------------------


@dataclass(frozen=True)
class MemRange:
    """``memory_range``: ``size`` bytes at ``start`` of one memory, holding ``dtype`` values."""

    memory: MemoryType
    dtype: DType
    start: int
    size: int
    at: int = field(compare=False)
    """Where in the file the range is declared, for messages."""

    @property
    def itemsize(self) -> int:
        return 4 if self.dtype == "float32" else 1

    @property
    def count(self) -> int:
        """Values in the range, as the runtime's ``memory_at<T>`` counts them."""
        return self.size // self.itemsize


@dataclass(frozen=True)
class Window:
    """A 2-D sliding window: filter, stride, dilation and (before, after) padding."""

    filter_h: int
    filter_w: int
    stride_h: int
    stride_w: int
    dilation_h: int
    dilation_w: int
    padding_h: Padding
    padding_w: Padding

    def out_size(self, in_h: int, in_w: int) -> tuple[int, int]:
        """``get_windowed_output_size`` for both axes (C division, so never below zero)."""

        def one(size: int, filt: int, stride: int, dilation: int, pad: Padding) -> int:
            effective = (filt - 1) * dilation + 1
            return max(0, (size + pad[0] + pad[1] - effective + stride) // stride)

        return (one(in_h, self.filter_h, self.stride_h, self.dilation_h, self.padding_h),
                one(in_w, self.filter_w, self.stride_w, self.dilation_w, self.padding_w))


# --- the nodes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class V4Node(Layer):
    opcode: Opcode


@dataclass(frozen=True)
class Binary(V4Node):
    """``binary``: float32, with the runtime's own broadcasting (see ``neutral_ops``)."""

    a: MemRange
    b: MemRange
    out: MemRange
    op: BinaryOp
    a_shape: Shape4
    b_shape: Shape4
    out_shape: Shape4
    activation: ValueRange


@dataclass(frozen=True)
class QuantizedBinary(V4Node):
    a: MemRange
    b: MemRange
    out: MemRange
    op: BinaryOp
    a_shape: Shape4
    b_shape: Shape4
    out_shape: Shape4
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
class Concat(V4Node):
    """Byte-wise: per outer index, ``inner * dims[i]`` bytes of each input in turn."""

    out: MemRange
    inner: int
    outer: int
    inputs: tuple[MemRange, ...]
    dims: tuple[int, ...]


@dataclass(frozen=True)
class Conv2d(V4Node):
    """Float32 NCHW convolution with groups (neutral ``conv2d``)."""

    input: MemRange
    output: MemRange
    in_shape: Shape4
    groups: int
    out_channels: int
    window: Window
    activation: ValueRange
    weights: npt.NDArray[np.float32]
    bias: npt.NDArray[np.float32]


@dataclass(frozen=True)
class QuantizedConv2d(V4Node):
    """uint8 NCHW convolution with groups: ``sum((x + in_off) * (w + w_off))`` requantized."""

    input: MemRange
    output: MemRange
    in_shape: Shape4
    groups: int
    out_channels: int
    window: Window
    input_offset: int
    filter_offset: int
    output_mul: int
    output_shift: int
    output_offset: int
    bias: npt.NDArray[np.int32]
    weights: npt.NDArray[np.uint8]


@dataclass(frozen=True)
class Conv2dTranspose(V4Node):
    input: MemRange
    output: MemRange
    in_shape: Shape4
    out_shape: Shape4
    groups: int
    window: Window
    activation: ValueRange
    weights: npt.NDArray[np.float32]
    bias: npt.NDArray[np.float32]


@dataclass(frozen=True)
class Quantization(V4Node):
    """QUANTIZE (float32 to uint8) or DEQUANTIZE (uint8 to float32)."""

    input: MemRange
    output: MemRange
    zero_point: int
    scale: float


@dataclass(frozen=True)
class MatMul(V4Node):
    a: MemRange
    b: MemRange
    out: MemRange
    a_rows: int
    a_cols: int
    b_cols: int
    activation: ValueRange
    bias: npt.NDArray[np.float32]


@dataclass(frozen=True)
class QuantizedMatMul(V4Node):
    a: MemRange
    b: MemRange
    out: MemRange
    a_rows: int
    a_cols: int
    b_cols: int
    a_offset: int
    b_offset: int
    out_mul: int
    out_shift: int
    out_offset: int
    bias: npt.NDArray[np.int32]


@dataclass(frozen=True)
class Pad(V4Node):
    input: MemRange
    output: MemRange
    in_shape: Shape4
    paddings: tuple[Padding, Padding, Padding, Padding]
    pad_bits: int
    """The ``scalar``'s four storage bytes as a little-endian word."""

    @property
    def out_shape(self) -> Shape4:
        s, p = self.in_shape, self.paddings
        return (s[0] + sum(p[0]), s[1] + sum(p[1]), s[2] + sum(p[2]), s[3] + sum(p[3]))


@dataclass(frozen=True)
class Reduce(V4Node):
    input: MemRange
    output: MemRange
    op: ReduceOp
    in_shape: Shape4
    out_shape: Shape4
    init_value: float


@dataclass(frozen=True)
class ReduceWindow2d(V4Node):
    """Neutral ``reduce_window2d`` (NCHW) or ``cpu_reduce_window2d`` (NHWC, ``nhwc``)."""

    input: MemRange
    output: MemRange
    op: ReduceOp
    in_shape: Shape4
    window: Window
    init_value: float
    activation: ValueRange
    nhwc: bool

    @property
    def out_shape(self) -> Shape4:
        s = self.in_shape
        if self.nhwc:
            oh, ow = self.window.out_size(s[1], s[2])
            return (s[0], oh, ow, s[3])
        oh, ow = self.window.out_size(s[2], s[3])
        return (s[0], s[1], oh, ow)


@dataclass(frozen=True)
class MemoryCopy(V4Node):
    input: MemRange
    output: MemRange


@dataclass(frozen=True)
class ResizeImage(V4Node):
    input: MemRange
    output: MemRange
    in_shape: Shape4
    out_h: int
    out_w: int
    mode: ResizeMode
    align_corners: bool


@dataclass(frozen=True)
class Softmax(V4Node):
    input: MemRange
    output: MemRange
    inner_size: int
    outer_size: int
    beta: float


@dataclass(frozen=True)
class Transpose(V4Node):
    input: MemRange
    output: MemRange
    in_shape: Shape4
    perm: Shape4

    @property
    def out_shape(self) -> Shape4:
        s, p = self.in_shape, self.perm
        return (s[p[0]], s[p[1]], s[p[2]], s[p[3]])


@dataclass(frozen=True)
class StridedSlice(V4Node):
    """The kernel walks ``range(begin, end, stride)`` per axis; the masks are not used."""

    input: MemRange
    output: MemRange
    in_shape: Shape4
    begin: Shape4
    end: Shape4
    strides: Shape4

    @property
    def axes(self) -> tuple[range, range, range, range]:
        b, e, s = self.begin, self.end, self.strides
        return (range(b[0], e[0], s[0]), range(b[1], e[1], s[1]), range(b[2], e[2], s[2]),
                range(b[3], e[3], s[3]))

    @property
    def out_shape(self) -> Shape4:
        a = self.axes
        return (len(a[0]), len(a[1]), len(a[2]), len(a[3]))


@dataclass(frozen=True)
class Unary(V4Node):
    input: MemRange
    output: MemRange
    op: UnaryOp


@dataclass(frozen=True)
class TableLookup1d(V4Node):
    input: MemRange
    table: MemRange
    output: MemRange


@dataclass(frozen=True)
class NnilUnaryMethod(V4Node):
    """A validated straight-line nnil program, one entry per instruction up to ``ret``."""

    input: MemRange
    output: MemRange
    ops: npt.NDArray[np.uint8]
    constants: npt.NDArray[np.float32]
    """The ``ldc_r4`` operand of each instruction (0 for the others)."""


@dataclass(frozen=True)
class CpuConv2d(V4Node):
    """``cpu_conv2d`` / ``cpu_depthwise_conv2d``: float32 NHWC, weights (oc, kh, kw, ic)."""

    input: MemRange
    output: MemRange
    in_shape: Shape4
    out_channels: int
    window: Window
    activation: ValueRange
    weights: npt.NDArray[np.float32]
    bias: npt.NDArray[np.float32]
    depthwise: bool


@dataclass(frozen=True)
class CpuQuantizedConv2d(V4Node):
    """``cpu_quantized_conv2d`` / its depthwise form: uint8 NHWC, offsets *subtracted*."""

    input: MemRange
    output: MemRange
    in_shape: Shape4
    out_channels: int
    window: Window
    input_offset: int
    filter_offset: int
    output_mul: int
    output_shift: int
    output_offset: int
    weights: npt.NDArray[np.uint8]
    bias: npt.NDArray[np.int32]
    depthwise: bool


@dataclass(frozen=True)
class KpuUpload(V4Node):
    """Copy an NCHW uint8 map into KPU RAM in its row layout, batch after batch."""

    input: MemRange
    output: MemRange
    in_shape: Shape4


@dataclass(frozen=True)
class KpuConv2d(V4Node):
    main_out: MemRange | None
    batches: int
    conv: KpuConv


@dataclass(frozen=True)
class V4Program(Program):
    """Everything the simulator needs to run a v4 model."""

    inputs: tuple[MemRange, ...]
    outputs: tuple[MemRange, ...]
    constants_offset: int
    constants_size: int


# --- parsing ------------------------------------------------------------------------------


def _model_fail(reason: str, at: int | None = None) -> KmodelFormatError:
    return KmodelFormatError(f"model {reason}", offset=at)


def _decode_range(span: Span, at: int, model: _Model, what: str,
                  fail: Callable[[str, int], KmodelFormatError] = _model_fail) -> MemRange:
    """A ``memory_range`` at ``at``, which must lie inside the memory it names."""
    kind, dt, start, size = (int(v) for v in span.unpack("4I", at, f"{what} memory_range"))
    try:
        memory = MemoryType(kind)
    except ValueError:
        raise fail(f"{what} has memory type {kind}, not const (0), main (1) or k210_kpu (2)",
                   at) from None
    if dt not in _DTYPES:
        raise fail(f"{what} has datatype {dt}, not float32 (0) or uint8 (1)", at)
    limit = model.memory_size(memory)
    if start + size > limit:
        raise fail(f"{what} [{start}, {start + size}) is outside the {limit} bytes of "
                   f"{memory.name.lower()} memory", at)
    r = MemRange(memory, _DTYPES[dt], start, size, at)
    model.touch(r)
    return r


class _Node:
    """One node's body as the runtime's ``span_reader`` walks it, with its validations."""

    def __init__(self, span: Span, index: int, opcode: Opcode, model: _Model) -> None:
        self.span = span
        self.index = index
        self.opcode = opcode
        self.model = model
        self.pos = span.start
        self.name = opcode.name.lower()

    def fail(self, reason: str, at: int | None = None) -> KmodelFormatError:
        return KmodelFormatError(f"{self.name}: {reason}", offset=self.span.start if at is None
                                 else at, layer=self.index)

    # -- fields --

    def ints(self, fmt: str, what: str) -> tuple[int, ...]:
        values = self.span.unpack(fmt, self.pos, f"{self.name} {what}")
        self.pos += struct.calcsize("<" + fmt)
        return tuple(int(v) for v in values)

    def floats(self, count: int, what: str) -> tuple[float, ...]:
        values = self.span.unpack(f"{count}f", self.pos, f"{self.name} {what}")
        self.pos += 4 * count
        return tuple(float(v) for v in values)

    def i32(self, what: str) -> int:
        return self.ints("i", what)[0]

    def positive(self, what: str) -> int:
        at = self.pos
        value = self.i32(what)
        if value < 1:
            raise self.fail(f"{what} is {value}, must be at least 1", at)
        return value

    def shape(self, what: str) -> Shape4:
        at = self.pos
        dims = self.ints("4i", what)
        if min(dims) < 1:
            raise self.fail(f"{what} {dims} has a dimension below 1", at)
        return dims  # type: ignore[return-value]

    def activation(self) -> ValueRange:
        lo, hi = self.floats(2, "fused activation")
        return lo, hi

    def window(self) -> Window:
        pads = self.ints("4i", "paddings")
        at = self.pos
        fh, fw, sh, sw, dh, dw = self.ints("6i", "filter, stride and dilation")
        if min(fh, fw, sh, sw, dh, dw) < 1:
            raise self.fail(f"filter {fh}x{fw}, stride {sh}x{sw}, dilation {dh}x{dw}: "
                            "each must be at least 1", at)
        return Window(fh, fw, sh, sw, dh, dw, (pads[0], pads[1]), (pads[2], pads[3]))

    def array(self, dtype: npt.DTypeLike, count: int, what: str) -> npt.NDArray[Any]:
        values = self.span.array(self.pos, dtype, count, f"{self.name} {what}")
        self.pos += values.nbytes
        return values

    def skip(self, count: int, what: str) -> None:
        self.span.check(self.pos, count, f"{self.name} {what}")
        self.pos += count

    def rest(self) -> bytes:
        data = self.span.bytes(self.pos, self.span.end - self.pos, f"{self.name} body")
        self.pos = self.span.end
        return data

    def range(self, what: str) -> MemRange:
        r = _decode_range(self.span, self.pos, self.model, what, self.fail)
        self.pos += RANGE_BYTES
        return r

    # -- what kernels do with ranges --

    def typed(self, r: MemRange, dtype: DType, what: str) -> None:
        if r.dtype != dtype:
            raise self.fail(f"{what} must hold {dtype} (the kernel reads it so), the range "
                            f"says {r.dtype}", r.at)

    def reads(self, r: MemRange, nbytes: int, what: str) -> None:
        if nbytes > r.size:
            raise self.fail(f"{what} reads {nbytes} bytes but its range has {r.size}", r.at)

    def writes(self, r: MemRange, nbytes: int, what: str,
               shape: tuple[int, ...] | None = None) -> None:
        if r.memory is MemoryType.CONST:
            raise self.fail(f"{what} would write into the model's constants", r.at)
        if nbytes > r.size:
            raise self.fail(f"{what} writes {nbytes} bytes but its range has {r.size}", r.at)
        if shape is not None:
            self.model.produced(r, shape)

    def typed_io(self, inp: MemRange, out: MemRange, dtype: DType, in_shape: tuple[int, ...],
                 out_shape: tuple[int, ...]) -> None:
        """A kernel reading ``in_shape`` values of ``dtype`` and writing ``out_shape``."""
        size = np.dtype(dtype).itemsize
        self.typed(inp, dtype, "input")
        self.typed(out, dtype, "output")
        self.reads(inp, element_count(in_shape) * size, "input")
        self.writes(out, element_count(out_shape) * size, "output", out_shape)

    def same_type_io(self, inp: MemRange, out: MemRange, in_shape: tuple[int, ...],
                     out_shape: tuple[int, ...]) -> None:
        """A data-movement kernel: it writes values of whatever type it reads."""
        if inp.dtype != out.dtype:
            raise self.fail(f"input is {inp.dtype} but output is {out.dtype}")
        self.reads(inp, element_count(in_shape) * inp.itemsize, "input")
        self.writes(out, element_count(out_shape) * out.itemsize, "output", out_shape)

    def choice(self, kind: type[E], raw: int, at: int, message: str) -> E:
        """``kind(raw)``, or a format error at ``at`` that says ``message``."""
        try:
            return kind(raw)
        except ValueError:
            raise self.fail(message, at) from None


@dataclass
class _Model:
    """The memories a model declares, and what is known of their contents while parsing."""

    main_mem: int
    constants: int
    tensors: dict[tuple[MemoryType, int], tuple[tuple[int, ...], DType]] = field(
        default_factory=dict)
    kpu_high: int = 0

    def memory_size(self, memory: MemoryType) -> int:
        if memory is MemoryType.CONST:
            return self.constants
        return self.main_mem if memory is MemoryType.MAIN else KPU_RAM_BYTES

    def touch(self, r: MemRange) -> None:
        if r.memory is MemoryType.K210_KPU:
            self.kpu_high = max(self.kpu_high, r.start + r.size)

    def produced(self, r: MemRange, shape: tuple[int, ...]) -> None:
        self.tensors[(r.memory, r.start)] = (shape, r.dtype)

    def shape_of(self, r: MemRange, count: int) -> tuple[int, ...]:
        """The shape last written at ``r`` if it has ``count`` values, else flat."""
        known = self.tensors.get((r.memory, r.start))
        if known is not None and known[1] == r.dtype and element_count(known[0]) == count:
            return known[0]
        return (count,)


_Parsed = tuple[V4Node, LayerSummary]
_Parser = Callable[[_Node], _Parsed]


def _summary(node: _Node, in_shape: tuple[int, ...], out_shape: tuple[int, ...], *,
             macs: int = 0, on_kpu: bool = False) -> LayerSummary:
    return LayerSummary(node.index, node.name, on_kpu, in_shape, out_shape, macs,
                        element_count(in_shape) + element_count(out_shape))


def _where(n: _Node) -> tuple[int, int, Opcode]:
    return n.index, n.span.start, n.opcode


def _binary(n: _Node) -> _Parsed:
    quantized = n.opcode is Opcode.QUANTIZED_BINARY
    a, b, out = n.range("input_a"), n.range("input_b"), n.range("output")
    at = n.pos
    raw_op = n.i32("binary_op")
    op = n.choice(BinaryOp, raw_op, at,
                  f"binary_op {raw_op} is not one of add, sub, mul, div, min, max")
    a_shape, b_shape, out_shape = n.shape("in_a_shape"), n.shape("in_b_shape"), n.shape(
        "out_shape")
    dtype: DType = "uint8" if quantized else "float32"
    size = 1 if quantized else 4
    for r, s, what in ((a, a_shape, "input_a"), (b, b_shape, "input_b")):
        n.typed(r, dtype, what)
        n.reads(r, element_count(s) * size, what)
    n.typed(out, dtype, "output")
    # with equal input shapes the kernel writes prod(in_a_shape) values, whatever out_shape
    written = a_shape if a_shape == b_shape else out_shape
    n.writes(out, element_count(written) * size, "output", written)
    if not quantized:
        node: V4Node = Binary(*_where(n), a, b, out, op, a_shape, b_shape, out_shape,
                              n.activation())
    else:
        at = n.pos
        a_off, a_mul, a_shift, b_off, b_mul, b_shift, out_off, out_mul, out_shift = n.ints(
            "9i", "quantization parameters")
        for name, shift in (("input_a", a_shift), ("input_b", b_shift), ("output", out_shift)):
            if not 0 <= shift < 64:
                raise n.fail(f"{name} shift {shift} is outside 0..63 (the runtime shifts an "
                             "int64 by it as a uint8)", at)
        node = QuantizedBinary(*_where(n), a, b, out, op, a_shape, b_shape, out_shape, a_off,
                               a_mul, a_shift, b_off, b_mul, b_shift, out_off, out_mul,
                               out_shift)
    return node, _summary(n, a_shape, written)


def _concat(n: _Node) -> _Parsed:
    out = n.range("output")
    inner, outer, count = n.ints("3I", "inner_size, outer_size and inputs_count")
    inputs = tuple(n.range(f"input {i}") for i in range(count))
    dims = n.ints(f"{count}i", "dims")
    total = 0
    for i, (r, d) in enumerate(zip(inputs, dims, strict=True)):
        if d < 0:
            raise n.fail(f"input {i} has a negative concat dimension {d}")
        n.reads(r, outer * inner * d, f"input {i}")
        total += outer * inner * d
    n.writes(out, total, "output", (total // out.itemsize,) if total % out.itemsize == 0
             else None)
    node = Concat(*_where(n), out, inner, outer, inputs, dims)
    return node, _summary(n, (total,), (total,))


def _requant_params(n: _Node) -> tuple[int, int, int, int, int]:
    """input offset, filter offset, output mul, output shift, output offset."""
    at = n.pos
    in_off, w_off, mul, shift, out_off = n.ints("5i", "quantization parameters")
    if not 0 <= shift < 64:
        raise n.fail(f"output shift {shift} is outside 0..63 (the runtime shifts an int64 by "
                     "it as a uint8)", at)
    return in_off, w_off, mul, shift, out_off


def _grouped(n: _Node, in_channels: int, out_channels: int, groups: int) -> None:
    if in_channels % groups or out_channels % groups:
        raise n.fail(f"{in_channels} in and {out_channels} out channels do not split into "
                     f"{groups} groups")


def _conv2d(n: _Node) -> _Parsed:
    quantized = n.opcode is Opcode.QUANTIZED_CONV2D
    inp, out = n.range("input"), n.range("output")
    in_shape = n.shape("in_shape")
    groups, oc = n.positive("groups"), n.positive("out_channels")
    window = n.window()
    _grouped(n, in_shape[1], oc, groups)
    oh, ow = window.out_size(in_shape[2], in_shape[3])
    out_shape = (in_shape[0], oc, oh, ow)
    taps = oc * in_shape[1] // groups * window.filter_h * window.filter_w
    n.typed_io(inp, out, "uint8" if quantized else "float32", in_shape, out_shape)
    node: V4Node
    if quantized:
        in_off, w_off, mul, shift, out_off = _requant_params(n)
        bias = n.array(np.int32, oc, "bias")
        weights = n.array(np.uint8, taps, "weights")
        node = QuantizedConv2d(*_where(n), inp, out, in_shape, groups, oc, window, in_off,
                               w_off, mul, shift, out_off, bias, weights)
    else:
        act = n.activation()
        weights = n.array(np.float32, taps, "weights")
        bias = n.array(np.float32, oc, "bias")
        node = Conv2d(*_where(n), inp, out, in_shape, groups, oc, window, act, weights, bias)
    macs = element_count(out_shape) * (in_shape[1] // groups) * window.filter_h * window.filter_w
    return node, _summary(n, in_shape, out_shape, macs=macs)


def _conv2d_transpose(n: _Node) -> _Parsed:
    inp, out = n.range("input"), n.range("output")
    in_shape, out_shape = n.shape("in_shape"), n.shape("out_shape")
    groups = n.positive("groups")
    window = n.window()
    _grouped(n, in_shape[1], out_shape[1], groups)
    if in_shape[0] != out_shape[0]:
        raise n.fail(f"{in_shape[0]} batches in, {out_shape[0]} out")
    taps = out_shape[1] * in_shape[1] // groups * window.filter_h * window.filter_w
    n.typed_io(inp, out, "float32", in_shape, out_shape)
    act = n.activation()
    weights = n.array(np.float32, taps, "weights")
    bias = n.array(np.float32, out_shape[1], "bias")
    node = Conv2dTranspose(*_where(n), inp, out, in_shape, out_shape, groups, window, act,
                           weights, bias)
    macs = element_count(in_shape) * (out_shape[1] // groups) * window.filter_h * window.filter_w
    return node, _summary(n, in_shape, out_shape, macs=macs)


def _quantization(n: _Node) -> _Parsed:
    inp, out = n.range("input"), n.range("output")
    zero_point = n.i32("zero_point")
    (scale,) = n.floats(1, "scale")
    if n.opcode is Opcode.QUANTIZE:
        n.typed(inp, "float32", "input")
        n.typed(out, "uint8", "output")
        count = inp.count
        shape = n.model.shape_of(inp, count)
        n.writes(out, count, "output", shape)
    else:
        n.typed(inp, "uint8", "input")
        n.typed(out, "float32", "output")
        count = inp.size
        shape = n.model.shape_of(inp, count)
        n.writes(out, 4 * count, "output", shape)
    return Quantization(*_where(n), inp, out, zero_point, scale), _summary(n, shape, shape)


def _matmul(n: _Node) -> _Parsed:
    quantized = n.opcode is Opcode.QUANTIZED_MATMUL
    a, b, out = n.range("input_a"), n.range("input_b"), n.range("output")
    rows, cols, b_cols = (n.positive(w) for w in ("a_rows", "a_cols", "b_cols"))
    dtype: DType = "uint8" if quantized else "float32"
    size = 1 if quantized else 4
    n.typed(a, dtype, "input_a")
    n.typed(b, dtype, "input_b")
    n.typed(out, dtype, "output")
    n.reads(a, rows * cols * size, "input_a")
    n.reads(b, cols * b_cols * size, "input_b")
    n.writes(out, rows * b_cols * size, "output", (rows, b_cols))
    node: V4Node
    if quantized:
        a_off, b_off, mul, shift, out_off = _requant_params(n)
        bias = n.array(np.int32, b_cols, "bias")
        node = QuantizedMatMul(*_where(n), a, b, out, rows, cols, b_cols, a_off, b_off, mul,
                               shift, out_off, bias)
    else:
        act = n.activation()
        bias = n.array(np.float32, b_cols, "bias")
        node = MatMul(*_where(n), a, b, out, rows, cols, b_cols, act, bias)
    return node, _summary(n, (rows, cols), (rows, b_cols), macs=rows * cols * b_cols)


def _pad(n: _Node) -> _Parsed:
    inp, out = n.range("input"), n.range("output")
    in_shape = n.shape("in_shape")
    p = n.ints("8i", "paddings")
    paddings = ((p[0], p[1]), (p[2], p[3]), (p[4], p[5]), (p[6], p[7]))
    _, pad_bits = n.ints("2I", "pad_value")
    node = Pad(*_where(n), inp, out, in_shape, paddings, pad_bits)
    if min(node.out_shape) < 0:
        raise n.fail(f"paddings {paddings} crop {in_shape} below nothing")
    n.same_type_io(inp, out, in_shape, node.out_shape)
    return node, _summary(n, in_shape, node.out_shape)


def _reduce_op(n: _Node, *, with_sum: bool = True) -> ReduceOp:
    at = n.pos
    raw = n.i32("reduce_op")
    op = n.choice(ReduceOp, raw, at, f"reduce_op {raw} is not mean, min, max or sum")
    if op is ReduceOp.SUM and not with_sum:
        raise n.fail("reduce_op sum: the runtime's cpu_reduce_window2d has no case for it "
                     "and fails (kcr_error)", at)
    return op


def _reduce(n: _Node) -> _Parsed:
    inp, out = n.range("input"), n.range("output")
    op = _reduce_op(n)
    in_shape, out_shape = n.shape("in_shape"), n.shape("out_shape")
    (init,) = n.floats(1, "init_value")
    n.typed_io(inp, out, "float32", in_shape, out_shape)
    if op is ReduceOp.MEAN and inp.count == 0:
        raise n.fail("mean over an input range of no values")
    node = Reduce(*_where(n), inp, out, op, in_shape, out_shape, init)
    return node, _summary(n, in_shape, out_shape)


def _reduce_window2d(n: _Node) -> _Parsed:
    nhwc = n.opcode is Opcode.CPU_REDUCE_WINDOW2D
    inp, out = n.range("input"), n.range("output")
    op = _reduce_op(n, with_sum=not nhwc)
    in_shape = n.shape("in_shape")
    window = n.window()
    (init,) = n.floats(1, "init_value")
    act = n.activation()
    node = ReduceWindow2d(*_where(n), inp, out, op, in_shape, window, init, act, nhwc)
    n.typed_io(inp, out, "float32", in_shape, node.out_shape)
    return node, _summary(n, in_shape, node.out_shape)


def _memory_copy(n: _Node) -> _Parsed:
    inp, out = n.range("input"), n.range("output")
    copied = inp.size // 4 * 4  # the runtime copies whole float32 values, whatever the type
    shape = n.model.shape_of(inp, inp.count) if copied == inp.size else (copied // out.itemsize,)
    n.writes(out, copied, "output", shape if out.dtype == inp.dtype else None)
    return MemoryCopy(*_where(n), inp, out), _summary(n, shape, shape)


def _resize_image(n: _Node) -> _Parsed:
    inp, out = n.range("input"), n.range("output")
    in_shape = n.shape("in_shape")
    out_h, out_w = n.positive("out_h"), n.positive("out_w")
    at = n.pos
    raw_mode = n.i32("mode")
    (align,) = n.ints("B", "align_corners")
    n.skip(3, "struct padding")
    mode = n.choice(ResizeMode, raw_mode, at,
                    f"mode {raw_mode} is neither bilinear (0) nor nearest (1)")
    out_shape = (in_shape[0], in_shape[1], out_h, out_w)
    n.same_type_io(inp, out, in_shape, out_shape)
    node = ResizeImage(*_where(n), inp, out, in_shape, out_h, out_w, mode, align != 0)
    return node, _summary(n, in_shape, out_shape)


def _softmax(n: _Node) -> _Parsed:
    inp, out = n.range("input"), n.range("output")
    inner, outer = n.positive("inner_size"), n.positive("outer_size")
    (beta,) = n.floats(1, "beta")
    n.typed_io(inp, out, "float32", (outer, inner), (outer, inner))
    node = Softmax(*_where(n), inp, out, inner, outer, beta)
    return node, _summary(n, (outer, inner), (outer, inner))


def _transpose(n: _Node) -> _Parsed:
    inp, out = n.range("input"), n.range("output")
    in_shape = n.shape("in_shape")
    at = n.pos
    perm = n.ints("4i", "perm")
    if sorted(perm) != [0, 1, 2, 3]:
        raise n.fail(f"perm {perm} is not a permutation of the four axes", at)
    node = Transpose(*_where(n), inp, out, in_shape, perm)  # type: ignore[arg-type]
    n.same_type_io(inp, out, in_shape, node.out_shape)
    return node, _summary(n, in_shape, node.out_shape)


def _strided_slice(n: _Node) -> _Parsed:
    inp, out = n.range("input"), n.range("output")
    in_shape = n.shape("in_shape")
    at = n.pos
    begin, end, strides = n.ints("4i", "begin"), n.ints("4i", "end"), n.ints("4i", "strides")
    n.ints("5i", "masks")  # applied by the compiler; the kernel ignores them
    if 0 in strides:
        raise n.fail(f"strides {strides}: a zero stride never ends the kernel's loop", at)
    node = StridedSlice(*_where(n), inp, out, in_shape, begin, end,  # type: ignore[arg-type]
                        strides)  # type: ignore[arg-type]
    for axis, (steps, dim) in enumerate(zip(node.axes, in_shape, strict=True)):
        if steps and not (min(steps[0], steps[-1]) >= 0 and max(steps[0], steps[-1]) < dim):
            raise n.fail(f"axis {axis} walks {steps.start}..{steps.stop} by {steps.step}, "
                         f"outside 0..{dim - 1}", at)
    n.same_type_io(inp, out, in_shape, node.out_shape)
    return node, _summary(n, in_shape, node.out_shape)


def _unary(n: _Node) -> _Parsed:
    inp, out = n.range("input"), n.range("output")
    at = n.pos
    raw = n.i32("unary_op")
    op = n.choice(UnaryOp, raw, at, f"unary_op {raw} is not a unary operation of the runtime")
    n.typed(inp, "float32", "input")
    n.typed(out, "float32", "output")
    shape = n.model.shape_of(inp, inp.count)
    n.writes(out, inp.count * 4, "output", shape)
    return Unary(*_where(n), inp, out, op), _summary(n, shape, shape)


def _table_lookup1d(n: _Node) -> _Parsed:
    inp, table, out = n.range("input"), n.range("table"), n.range("output")
    n.typed(inp, "uint8", "input")  # the runtime fails (kcr_error) on anything else
    n.reads(table, 256, "table")
    shape = n.model.shape_of(inp, inp.size)
    n.writes(out, inp.size, "output", shape)
    return TableLookup1d(*_where(n), inp, table, out), _summary(n, shape, shape)


def _nnil_program(n: _Node, code: bytes, at: int) -> tuple[list[int], list[float]]:
    """Decode up to ``ret`` and prove the stack never under- or overflows."""
    ops: list[int] = []
    consts: list[float] = []
    depth = pos = 0
    while pos < len(code):
        where = at + pos
        try:
            op = Nnil(code[pos])
        except ValueError:
            raise n.fail(f"nnil opcode 0x{code[pos]:02x} is not defined ('Invalid nnil op')",
                         where) from None
        pos += 1
        value = 0.0
        if op is Nnil.LDC_R4:
            if pos + 4 > len(code):
                raise n.fail("nnil ldc_r4 without its 4-byte operand", where)
            (value,) = struct.unpack_from("<f", code, pos)
            pos += 4
        pops, pushes = _nnil_effect(op)
        if depth < pops:
            raise n.fail(f"nnil {op.name.lower()} pops {pops} from a stack of {depth}", where)
        depth += pushes - pops
        if depth > NNIL_STACK:
            raise n.fail(f"nnil stack grows past its {NNIL_STACK} entries", where)
        ops.append(int(op))
        consts.append(value)
        if op is Nnil.RET:
            break
    return ops, consts


def _nnil_unary_method(n: _Node) -> _Parsed:
    inp, out = n.range("input"), n.range("output")
    at = n.pos
    ops, consts = _nnil_program(n, n.rest(), at)
    n.typed(inp, "float32", "input")
    n.typed(out, "float32", "output")
    shape = n.model.shape_of(inp, inp.count)
    n.writes(out, inp.count * 4, "output", shape)
    node = NnilUnaryMethod(*_where(n), inp, out, np.array(ops, np.uint8),
                           np.array(consts, np.float32))
    return node, _summary(n, shape, shape)


def _cpu_conv2d(n: _Node) -> _Parsed:
    depthwise = n.opcode in (Opcode.CPU_DEPTHWISE_CONV2D, Opcode.CPU_QUANTIZED_DEPTHWISE_CONV2D)
    quantized = n.opcode in (Opcode.CPU_QUANTIZED_CONV2D, Opcode.CPU_QUANTIZED_DEPTHWISE_CONV2D)
    inp, out = n.range("input"), n.range("output")
    in_shape = n.shape("in_shape")  # NHWC
    oc = in_shape[3] if depthwise else n.positive("out_channels")
    window = n.window()
    oh, ow = window.out_size(in_shape[1], in_shape[2])
    out_shape = (in_shape[0], oh, ow, oc)
    taps = window.filter_h * window.filter_w * (1 if depthwise else in_shape[3])
    n.typed_io(inp, out, "uint8" if quantized else "float32", in_shape, out_shape)
    node: V4Node
    if quantized:
        in_off, w_off, mul, shift, out_off = _requant_params(n)
        weights = n.array(np.uint8, oc * taps, "weights")
        bias = n.array(np.int32, oc, "bias")
        node = CpuQuantizedConv2d(*_where(n), inp, out, in_shape, oc, window, in_off, w_off,
                                  mul, shift, out_off, weights, bias, depthwise)
    else:
        act = n.activation()
        weights = n.array(np.float32, oc * taps, "weights")
        bias = n.array(np.float32, oc, "bias")
        node = CpuConv2d(*_where(n), inp, out, in_shape, oc, window, act, weights, bias,
                         depthwise)
    return node, _summary(n, in_shape, out_shape, macs=element_count(out_shape) * taps)


def _kpu_upload(n: _Node) -> _Parsed:
    inp, out = n.range("input"), n.range("output")
    in_shape = n.shape("in_shape")
    if out.memory is not MemoryType.K210_KPU:
        raise n.fail(f"output is in {out.memory.name.lower()} memory, not the KPU's", out.at)
    batch, c, h, w = in_shape
    n.reads(inp, element_count(in_shape), "input")
    n.writes(out, batch * kpu_rows(w, h, c) * 64, "output", None)
    return KpuUpload(*_where(n), inp, out, in_shape), _summary(n, in_shape, in_shape)


def _kpu_conv2d(n: _Node) -> _Parsed:
    main_out = n.range("main_mem_output")
    batches, _ = n.ints("2i", "batches and reserved0")
    if batches < 1:
        raise n.fail(f"batches is {batches}, must be at least 1")
    arg_at = n.pos
    arg = decode_layer_argument(n.span, arg_at)
    n.pos += LAYER_ARGUMENT_BYTES
    n.skip(arg.bwsx_base_addr, "padding before the batch-norm table (bwsx_base_addr)")
    bn_at = n.pos
    n.skip(8 * arg.out_channels, "batch-norm table")
    n.skip(arg.active_addr, "padding before the activation table (active_addr)")
    act_at = n.pos
    n.skip(ACTIVATION_TABLE_BYTES, "activation table")
    n.skip(arg.para_start_addr, "padding before the weights (para_start_addr)")
    conv = decode_conv(n.span, arg, weights_offset=n.pos, bn_offset=bn_at, act_offset=act_at)
    n.pos += arg.weights_count
    for what, rows_at, rows in (("input", arg.src_addr, arg.in_rows),
                                ("output", arg.dst_addr, arg.out_rows)):
        end = (rows_at + batches * rows) * 64
        if end > KPU_RAM_BYTES:
            raise n.fail(f"{batches} batches of the {what} end at byte {end} of KPU RAM, past "
                         "its 2 MiB", arg_at)
        n.model.kpu_high = max(n.model.kpu_high, end)
    in_shape = (batches, arg.in_channels, arg.in_height, arg.in_width)
    out_shape = (batches, arg.out_channels, arg.out_height, arg.out_width)
    used: MemRange | None = None
    if main_out.size:
        if main_out.memory is not MemoryType.MAIN:
            raise n.fail(f"main_mem_output is in {main_out.memory.name.lower()} memory",
                         main_out.at)
        n.writes(main_out, element_count(out_shape), "main_mem_output", out_shape)
        used = main_out
    node = KpuConv2d(*_where(n), used, batches, conv)
    return node, _summary(n, in_shape, out_shape, macs=arg.macs * batches, on_kpu=True)


_PARSERS: dict[Opcode, _Parser] = {
    Opcode.BINARY: _binary,
    Opcode.CONCAT: _concat,
    Opcode.CONV2D: _conv2d,
    Opcode.DEQUANTIZE: _quantization,
    Opcode.MATMUL: _matmul,
    Opcode.PAD: _pad,
    Opcode.QUANTIZE: _quantization,
    Opcode.REDUCE: _reduce,
    Opcode.REDUCE_WINDOW2D: _reduce_window2d,
    Opcode.MEMORY_COPY: _memory_copy,
    Opcode.RESIZE_IMAGE: _resize_image,
    Opcode.SOFTMAX: _softmax,
    Opcode.TRANSPOSE: _transpose,
    Opcode.STRIDED_SLICE: _strided_slice,
    Opcode.UNARY: _unary,
    Opcode.QUANTIZED_CONV2D: _conv2d,
    Opcode.QUANTIZED_MATMUL: _matmul,
    Opcode.QUANTIZED_BINARY: _binary,
    Opcode.TABLE_LOOKUP1D: _table_lookup1d,
    Opcode.CONV2D_TRANSPOSE: _conv2d_transpose,
    Opcode.NNIL_UNARY_METHOD: _nnil_unary_method,
    Opcode.CPU_CONV2D: _cpu_conv2d,
    Opcode.CPU_DEPTHWISE_CONV2D: _cpu_conv2d,
    Opcode.CPU_REDUCE_WINDOW2D: _reduce_window2d,
    Opcode.CPU_QUANTIZED_CONV2D: _cpu_conv2d,
    Opcode.CPU_QUANTIZED_DEPTHWISE_CONV2D: _cpu_conv2d,
    Opcode.KPU_UPLOAD: _kpu_upload,
    Opcode.KPU_CONV2D: _kpu_conv2d,
}


def parse_v4(data: bytes) -> Parsed:
    """Decode and validate a v4 kmodel; raises :class:`KmodelFormatError` on any flaw."""
    whole = Span.of(data)
    (_ident, version, _flags, target, constants, main_mem, n_nodes, n_inputs, n_outputs,
     _reserved) = whole.u32s(0, 10, "kmodel v4 header")
    assert version == 4
    if target not in (0, 1):
        raise KmodelFormatError(f"target {target} is neither CPU (0) nor K210 (1)", offset=12)
    if main_mem > CHIP_SRAM_BYTES:
        raise KmodelFormatError(f"main_mem of {main_mem} bytes is more than the K210's 8 MiB "
                                "of SRAM", offset=20)
    if max(n_inputs, n_outputs) > MAX_TENSORS:
        raise KmodelFormatError(f"{n_inputs} inputs and {n_outputs} outputs: more than any "
                                f"K210 model declares (at most {MAX_TENSORS} accepted)",
                                offset=28)
    if n_inputs == 0 or n_outputs == 0:
        raise KmodelFormatError(f"a model with {n_inputs} inputs and {n_outputs} outputs",
                                offset=28)
    model = _Model(main_mem, constants)
    at = HEADER_BYTES
    whole.check(at, (RANGE_BYTES + SHAPE_BYTES) * n_inputs + RANGE_BYTES * n_outputs,
                "input and output tables")
    input_ranges = [_decode_range(whole, at + RANGE_BYTES * i, model, f"input {i}")
                    for i in range(n_inputs)]
    at += RANGE_BYTES * n_inputs
    input_specs = []
    for i, r in enumerate(input_ranges):
        shape = whole.unpack("4i", at + SHAPE_BYTES * i, f"input {i} shape")
        dims = tuple(int(d) for d in shape)
        if min(dims) < 1 or element_count(dims) * r.itemsize != r.size:
            raise KmodelFormatError(f"input {i} shape {dims} of {r.dtype} does not fill its "
                                    f"{r.size}-byte range", offset=at + SHAPE_BYTES * i)
        if r.memory is MemoryType.CONST:
            raise KmodelFormatError(f"input {i} lies in the model's constants", offset=r.at)
        model.produced(r, dims)
        input_specs.append(TensorSpec(dims, r.dtype))
    at += SHAPE_BYTES * n_inputs
    outputs_at = at
    output_ranges = [_decode_range(whole, at + RANGE_BYTES * i, model, f"output {i}")
                     for i in range(n_outputs)]
    at += RANGE_BYTES * n_outputs
    constants_at = at
    whole.check(constants_at, constants, "constants")
    at += constants
    headers_at = at
    # a numpy view, not Python ints: a forged count costs no more than the file backs
    headers = whole.array(headers_at, np.uint32, 2 * n_nodes, "node headers")
    body = headers_at + NODE_HEADER_BYTES * n_nodes
    nodes: list[V4Node] = []
    summaries: list[LayerSummary] = []
    for idx in range(n_nodes):
        raw, size = int(headers[2 * idx]), int(headers[2 * idx + 1])
        header_at = headers_at + NODE_HEADER_BYTES * idx
        try:
            opcode = Opcode(raw)
        except ValueError:
            raise KmodelFormatError(f"unknown opcode 0x{raw:x}", offset=header_at,
                                    layer=idx) from None
        span = whole.sub(body, size, layer=idx, what=f"node {idx} body")
        node, summary = _PARSERS[opcode](_Node(span, idx, opcode, model))
        nodes.append(node)
        summaries.append(summary)
        body += size
    output_specs = []
    for i, r in enumerate(output_ranges):
        if r.size % r.itemsize:
            raise KmodelFormatError(f"output {i} has {r.size} bytes, not whole {r.dtype} "
                                    "values", offset=outputs_at + RANGE_BYTES * i)
        output_specs.append(TensorSpec(model.shape_of(r, r.count), r.dtype))
    program = V4Program(tuple(nodes), tuple(input_ranges), tuple(output_ranges), constants_at,
                        constants)
    return Parsed(program, main_mem, tuple(input_specs), tuple(output_specs),
                  tuple(summaries), model.kpu_high)
