"""The K210 KPU's layer registers, written down once as types (after the SDK's ``kpu.h``).

A KPU convolution is described by twelve 64-bit registers (``kpu_layer_argument_t``), a
batch-norm word per output channel (``kpu_batchnorm_argument_t``) and an 18-word
activation table (``kpu_activate_table_t``). Both kmodel v3 and v4 embed exactly these
words; this module decodes them into :class:`KpuConv`, which the simulator executes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import numpy.typing as npt

from edged.kpu.errors import KmodelFormatError
from edged.kpu.kmodel.reader import Span

KPU_RAM_BYTES = 2 * 1024 * 1024
"""The KPU's own SRAM for feature maps, addressed in 64-byte rows."""

LAYER_ARGUMENT_BYTES = 12 * 8
ACTIVATION_TABLE_BYTES = 18 * 8
ACTIVATION_SEGMENTS = 16

Int64Array = npt.NDArray[np.int64]


class PoolType(IntEnum):
    """``kpu_pool_type_t``: the pooling fused after the activation."""

    BYPASS = 0
    MAX_2_S2 = 1
    MEAN_2_S2 = 2
    MAX_4_S4 = 3
    MEAN_4_S4 = 4
    LEFT_TOP_2_S2 = 5
    RIGHT_TOP_2_S2 = 6
    LEFT_TOP_4_S4 = 7
    MEAN_2_S1 = 8
    MAX_2_S1 = 9

    @property
    def filter(self) -> int:
        return 1 if self is PoolType.BYPASS else 4 if self.name.endswith("4_S4") else 2

    @property
    def is_mean(self) -> bool:
        return self.name.startswith("MEAN")

    @property
    def stride(self) -> int:
        if self in (PoolType.BYPASS, PoolType.MEAN_2_S1, PoolType.MAX_2_S1):
            return 1
        return self.filter


@dataclass(frozen=True)
class RowLayout:
    """How a feature map of a given width is laid out in KPU RAM (``get_kpu_row_layout``).

    Narrow maps share a 64-byte row between ``groups`` channels, ``row_pitch`` bytes each;
    wide maps take ``row_len`` whole rows per image row.
    """

    groups: int
    row_len: int
    row_pitch: int

    @classmethod
    def for_width(cls, width: int) -> RowLayout:
        if width <= 16:
            return cls(4, 1, 16)
        if width <= 32:
            return cls(2, 1, 32)
        return cls(1, (width + 63) // 64, 64)

    def rows(self, height: int, channels: int) -> int:
        """64-byte rows a ``channels x height`` map occupies (``get_kpu_rows``)."""
        per_row = min(channels, self.groups)
        return self.row_len * height * -(-channels // per_row)


def kpu_rows(width: int, height: int, channels: int) -> int:
    return RowLayout.for_width(width).rows(height, channels)


# (register, field, lsb, width, signed) for every field the simulator or a report uses.
_FIELDS: tuple[tuple[int, str, int, int, bool], ...] = (
    (0, "depthwise", 3, 1, False),
    (1, "src_addr", 0, 15, False),
    (1, "dst_addr", 32, 15, False),
    (2, "in_channels", 0, 10, False),
    (2, "out_channels", 32, 10, False),
    (2, "out_channels_per_load", 48, 10, False),
    (3, "in_width", 0, 10, False),
    (3, "in_height", 10, 9, False),
    (3, "out_width", 32, 10, False),
    (3, "out_height", 42, 9, False),
    (4, "kernel_type", 0, 3, False),
    (4, "pool_type", 4, 4, False),
    (4, "pad_value", 24, 8, False),
    (4, "bwsx_base_addr", 32, 32, False),
    (5, "load_time", 1, 6, False),
    (5, "para_size", 15, 17, False),
    (5, "para_start_addr", 32, 32, False),
    (7, "channel_switch_addr", 0, 15, False),
    (7, "row_switch_addr", 16, 4, False),
    (7, "coef_group", 28, 3, False),
    (7, "active_addr", 32, 32, False),
    (8, "wb_channel_switch_addr", 0, 15, False),
    (8, "wb_row_switch_addr", 16, 4, False),
    (8, "wb_group", 20, 3, False),
    (9, "shift_w", 0, 4, False),
    (9, "shift_x", 4, 4, False),
    (9, "arg_w", 8, 24, True),
    (9, "arg_x", 32, 24, True),
    (10, "arg_add", 0, 40, True),
    (11, "send_data_out", 0, 1, False),
    (11, "channel_byte_num", 16, 16, False),
    (11, "dma_total_byte", 32, 32, False),
)


def bits(value: int, lsb: int, width: int, *, signed: bool = False) -> int:
    """Bit field ``[lsb, lsb + width)`` of ``value``, sign-extended when ``signed``."""
    field = (value >> lsb) & ((1 << width) - 1)
    if signed and field >> (width - 1):
        field -= 1 << width
    return field


@dataclass(frozen=True)
class KpuLayerArgument:
    """``kpu_layer_argument_t`` decoded; counts and sizes are the real ones (register + 1)."""

    depthwise: bool
    src_addr: int
    dst_addr: int
    in_channels: int
    out_channels: int
    out_channels_per_load: int
    in_width: int
    in_height: int
    out_width: int
    out_height: int
    kernel_type: int
    pool_type: PoolType
    pad_value: int
    bwsx_base_addr: int
    load_time: int
    para_size: int
    para_start_addr: int
    channel_switch_addr: int
    row_switch_addr: int
    coef_group: int
    active_addr: int
    wb_channel_switch_addr: int
    wb_row_switch_addr: int
    wb_group: int
    shift_w: int
    shift_x: int
    arg_w: int
    arg_x: int
    arg_add: int
    send_data_out: int
    channel_byte_num: int
    dma_total_byte: int

    @property
    def filter_size(self) -> int:
        return 3 if self.kernel_type == 1 else 1

    @property
    def weights_count(self) -> int:
        per_oc = self.filter_size**2 * (1 if self.depthwise else self.in_channels)
        return self.out_channels * per_oc

    @property
    def macs(self) -> int:
        """Multiply-accumulates per frame, counted at the convolution's (pre-pool) size."""
        return self.in_width * self.in_height * self.weights_count

    @property
    def in_rows(self) -> int:
        return kpu_rows(self.in_width, self.in_height, self.in_channels)

    @property
    def out_rows(self) -> int:
        return kpu_rows(self.out_width, self.out_height, self.out_channels)


_PLUS_ONE = {"in_channels", "out_channels", "out_channels_per_load", "in_width", "in_height",
             "out_width", "out_height", "load_time"}


def decode_layer_argument(span: Span, offset: int) -> KpuLayerArgument:
    """Decode and validate the twelve registers at ``offset``."""
    regs = span.unpack("12Q", offset, "kpu_layer_argument_t")
    values: dict[str, object] = {}
    for reg, name, lsb, width, signed in _FIELDS:
        value = bits(int(regs[reg]), lsb, width, signed=signed)
        values[name] = value + 1 if name in _PLUS_ONE else value

    def fail(reason: str) -> KmodelFormatError:
        return KmodelFormatError(f"KPU layer argument: {reason}", offset=offset, layer=span.layer)

    values["depthwise"] = bool(values["depthwise"])
    if values["kernel_type"] not in (0, 1):
        raise fail(f"kernel_type {values['kernel_type']} is neither 1x1 (0) nor 3x3 (1)")
    try:
        pool = PoolType(int(str(values["pool_type"])))
    except ValueError:
        raise fail(f"pool_type {values['pool_type']} is not a KPU pooling mode") from None
    values["pool_type"] = pool
    arg = KpuLayerArgument(**values)  # type: ignore[arg-type]
    if arg.depthwise and arg.in_channels != arg.out_channels:
        raise fail(f"depthwise layer with {arg.in_channels} in and {arg.out_channels} out channels")
    expected = (arg.in_width // pool.stride, arg.in_height // pool.stride)
    if (arg.out_width, arg.out_height) != expected:
        raise fail(
            f"output {arg.out_width}x{arg.out_height} does not follow from input "
            f"{arg.in_width}x{arg.in_height} and pool {pool.name} ({expected[0]}x{expected[1]})"
        )
    for name, addr, rows in (("input", arg.src_addr, arg.in_rows), ("output", arg.dst_addr,
                                                                     arg.out_rows)):
        if (addr + rows) * 64 > KPU_RAM_BYTES:
            raise fail(f"{name} rows {addr}..{addr + rows} run past the 2 MiB of KPU RAM")
    return arg


@dataclass(frozen=True, eq=False)
class KpuConv:
    """One KPU layer: convolution, batch-norm, 16-segment activation and pooling.

    ``weights`` is ``(out_channels, taps)`` in the SDK's order (in-channel, ky, kx), where
    ``taps`` is ``k*k`` for a depthwise layer and ``in_channels*k*k`` otherwise.
    """

    arg: KpuLayerArgument
    weights: npt.NDArray[np.uint8] | npt.NDArray[np.uint16]
    bn_mul: Int64Array
    bn_shift: Int64Array
    bn_add: Int64Array
    act_start: Int64Array
    act_mul: Int64Array
    act_shift: Int64Array
    act_add: Int64Array


def decode_batchnorm(span: Span, offset: int, channels: int) -> tuple[Int64Array, ...]:
    """``kpu_batchnorm_argument_t[channels]``: norm_mul (24, signed), norm_add (32, signed),
    norm_shift (4)."""
    words = span.array(offset, np.uint64, channels, "batch-norm table").astype(np.int64)
    mul = words & 0xFFFFFF
    mul = np.where(mul >= 1 << 23, mul - (1 << 24), mul)
    add = (words >> 24) & 0xFFFFFFFF
    add = np.where(add >= 1 << 31, add - (1 << 32), add)
    shift = (words >> 56) & 0xF
    return mul, shift, add


def decode_activation(span: Span, offset: int) -> tuple[Int64Array, ...]:
    """``kpu_activate_table_t``: 16 segments (x_start 36 signed, y_mul 16 signed, shift 8)
    followed by the 16 unsigned result biases."""
    words = span.array(offset, np.uint64, ACTIVATION_SEGMENTS, "activation table")
    biases = span.array(offset + 8 * ACTIVATION_SEGMENTS, np.uint8, ACTIVATION_SEGMENTS,
                        "activation biases")
    w = words.astype(np.int64)
    shift = w & 0xFF
    mul = (w >> 8) & 0xFFFF
    mul = np.where(mul >= 1 << 15, mul - (1 << 16), mul)
    start = (w >> 24) & ((1 << 36) - 1)
    start = np.where(start >= 1 << 35, start - (1 << 36), start)
    return start, mul, shift, biases.astype(np.int64)


def decode_conv(
    span: Span,
    arg: KpuLayerArgument,
    *,
    weights_offset: int,
    bn_offset: int,
    act_offset: int,
    weight_dtype: npt.DTypeLike = np.uint8,
) -> KpuConv:
    """Gather the weights, batch-norm and activation a layer argument refers to."""
    taps = arg.weights_count // arg.out_channels
    weights = span.array(weights_offset, weight_dtype, arg.weights_count, "KPU weights")
    bn_mul, bn_shift, bn_add = decode_batchnorm(span, bn_offset, arg.out_channels)
    act_start, act_mul, act_shift, act_add = decode_activation(span, act_offset)
    return KpuConv(
        arg=arg,
        weights=weights.reshape(arg.out_channels, taps),  # type: ignore[arg-type]
        bn_mul=bn_mul,
        bn_shift=bn_shift,
        bn_add=bn_add,
        act_start=act_start,
        act_mul=act_mul,
        act_shift=act_shift,
        act_add=act_add,
    )
