"""Our own K210 models: a float network description, calibrated, quantized, written as v3.

The pipeline is ``calibrate`` (a float forward pass collecting each layer's output range),
``quantize_network`` (:mod:`edged.kpu.kmodel.quantize` per layer) and ``write_kmodel``
(KPU RAM layout, registers, tables and the file); ``build_kmodel`` runs all three. The
file is laid out as nncase 0.1 writes it (``Generator.cs``, ``K210Conv2d.GenerateBin*``):
the header, the output table, the layer headers, then each body with its register block
(8-aligned), weights (128), batch-norm (128) and activation table (256) inside it.
"""

from __future__ import annotations

import itertools
import math
import struct
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from edged.kpu.kmodel.kpu_regs import KPU_RAM_BYTES, PoolType, RowLayout, kpu_rows
from edged.kpu.kmodel.quantize import QuantizedConv, QuantParam, quantize_conv
from edged.kpu.kmodel.v3 import V3LayerType

Float32Array = npt.NDArray[np.float32]
Shape = tuple[int, int, int]
"""(channels, height, width)."""

KPU_RAM_ROWS = KPU_RAM_BYTES // 64
MAX_CHANNELS = 1024
MAX_WIDTH, MAX_HEIGHT, MIN_SIZE = 512, 256, 4
"""nncase 0.2's ``is_supported_in_shape``: the KPU convolves 4..512 wide, 4..256 high."""
WEIGHT_BUFFER_BYTES = 30 * 1024
"""nncase 0.1 loads at most 30 KiB of 8-bit weights at a time (``sizeLimit``)."""
MAX_WEIGHT_LOADS = 64
"""``load_time`` has 6 bits."""
MAIN_MEMORY_OUTPUT = 1
"""``K210LayerFlags.MainMemoryOutput``."""


class KpuRamError(ValueError):
    """Feature maps that do not fit the KPU's 2 MiB of RAM."""


@dataclass(frozen=True)
class LeakyRelu:
    """``x if x >= 0 else slope * x``."""

    slope: float

    def __post_init__(self) -> None:
        if not 0.0 < self.slope < 1.0:
            raise ValueError(f"leaky ReLU slope {self.slope} is outside (0, 1)")


ActivationSpec = Literal["linear", "relu"] | LeakyRelu


def _slope(activation: ActivationSpec) -> float:
    """The activation's slope below 0 (above 0 it is 1)."""
    if isinstance(activation, LeakyRelu):
        return activation.slope
    return 1.0 if activation == "linear" else 0.0


@dataclass(frozen=True, eq=False)
class ConvSpec:
    """One KPU layer in float: "same" convolution (1x1, or 3x3 padded by 1), stride 1,
    bias, activation, then the KPU's pooling.

    ``weights`` is ``(out, in, k, k)``, or ``(channels, 1, k, k)`` when ``depthwise``.
    """

    weights: npt.NDArray[np.floating]
    bias: npt.NDArray[np.floating]
    activation: ActivationSpec = "linear"
    pool: PoolType = PoolType.BYPASS
    depthwise: bool = False

    def __post_init__(self) -> None:
        w, b = np.asarray(self.weights), np.asarray(self.bias)
        if w.ndim != 4 or w.shape[2] != w.shape[3] or w.shape[2] not in (1, 3):
            raise ValueError(f"weights {w.shape} are not (out, in, k, k) with k 1 or 3")
        if self.depthwise and w.shape[1] != 1:
            raise ValueError(f"depthwise weights {w.shape} are not (channels, 1, k, k)")
        if b.shape != (w.shape[0],):
            raise ValueError(f"bias {b.shape} does not match {w.shape[0]} output channels")
        if not (np.all(np.isfinite(w)) and np.all(np.isfinite(b))):
            raise ValueError("weights and bias must be finite")

    @property
    def kernel(self) -> int:
        return int(self.weights.shape[2])

    @property
    def out_channels(self) -> int:
        return int(self.weights.shape[0])

    @property
    def in_channels(self) -> int:
        return self.out_channels if self.depthwise else int(self.weights.shape[1])

    def weight_loads(self) -> tuple[int, int, int]:
        """(output channels per load, loads, bytes per load) as nncase 0.1 splits them."""
        per_channel = self.weights[0].size
        if self.depthwise:
            return self.out_channels, 1, self.weights.size
        per_load = min(self.out_channels, WEIGHT_BUFFER_BYTES // per_channel)
        return per_load, -(-self.out_channels // per_load), per_channel * per_load


@dataclass(frozen=True, eq=False)
class NetworkSpec:
    """A chain of KPU layers on a uint8 image whose codes 0..255 mean ``input_range``.

    With ``dequantize`` the model's output is float32 (a DEQUANTIZE layer after the last
    convolution), otherwise the last convolution's uint8 codes.
    """

    input_shape: Shape
    layers: tuple[ConvSpec, ...]
    input_range: tuple[float, float] = (0.0, 1.0)
    dequantize: bool = True

    def __post_init__(self) -> None:
        lo, hi = self.input_range
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"input range {self.input_range} is not a finite interval")
        if not self.layers:
            raise ValueError("a network needs at least one layer")
        shapes = self.feature_maps()
        for i, (layer, (c, h, w)) in enumerate(zip(self.layers, shapes, strict=False)):
            if layer.in_channels != c:
                raise ValueError(f"layer {i} takes {layer.in_channels} channels, gets {c}")
            if not (c <= MAX_CHANNELS and layer.out_channels <= MAX_CHANNELS
                    and MIN_SIZE <= h <= MAX_HEIGHT and MIN_SIZE <= w <= MAX_WIDTH):
                raise ValueError(
                    f"layer {i}: {c}x{h}x{w} in, {layer.out_channels} channels out is beyond "
                    f"the KPU (<= {MAX_CHANNELS} channels, {MIN_SIZE}..{MAX_WIDTH} wide, "
                    f"{MIN_SIZE}..{MAX_HEIGHT} high)")
            if min(shapes[i + 1][1:]) < 1:
                raise ValueError(f"layer {i}: {layer.pool.name} leaves nothing of {h}x{w}")
            if layer.weight_loads()[1] > MAX_WEIGHT_LOADS:
                raise ValueError(f"layer {i}: weights need more than {MAX_WEIGHT_LOADS} loads")

    def feature_maps(self) -> list[Shape]:
        """The input's shape, then every layer's output shape (after pooling)."""
        shapes = [self.input_shape]
        for layer in self.layers:
            _, h, w = shapes[-1]
            s = layer.pool.stride
            shapes.append((layer.out_channels, h // s, w // s))
        return shapes


# --- the float reference ------------------------------------------------------------------------


def _conv(x: Float32Array, layer: ConvSpec) -> Float32Array:
    """Stride-1 convolution of ``(n, c, h, w)``, zero-padded by 1 for 3x3 (the KPU pads
    with the input's code for 0.0)."""
    w = np.asarray(layer.weights, np.float32)
    out: Float32Array
    if layer.kernel == 1 and layer.depthwise:
        out = x * w[:, 0, 0, 0][None, :, None, None]
    elif layer.kernel == 1:
        out = np.einsum("nchw,oc->nohw", x, w[:, :, 0, 0], optimize=True)
    else:
        padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
        windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))
        spec = "nchwij,cij->nchw" if layer.depthwise else "nchwij,ocij->nohw"
        out = np.einsum(spec, windows, w[:, 0] if layer.depthwise else w, optimize=True)
    return out


def _pool(y: Float32Array, pool: PoolType) -> Float32Array:
    """The KPU's pooling in float: windows past the edge repeat it (mean) or are left out
    (max), as ``kpu_pool2d`` does; select pools take one pixel of each window."""
    if pool is PoolType.BYPASS:
        return y
    n, c, h, w = y.shape
    s = pool.stride
    oh, ow = h // s, w // s
    if pool in (PoolType.LEFT_TOP_2_S2, PoolType.LEFT_TOP_4_S4):
        return y[:, :, : oh * s : s, : ow * s : s]
    if pool is PoolType.RIGHT_TOP_2_S2:
        return y[:, :, : oh * s : s, 1 : ow * s : s]
    mean = pool.is_mean
    if s == 1:
        edge = ((0, 0), (0, 0), (0, 1), (0, 1))
        padded = (np.pad(y, edge, mode="edge") if mean
                  else np.pad(y, edge, constant_values=-np.inf))
        windows = np.lib.stride_tricks.sliding_window_view(padded, (2, 2), axis=(2, 3))
        pooled: Float32Array = windows.mean(axis=(4, 5)) if mean else windows.max(axis=(4, 5))
        return pooled
    blocks = y[:, :, : oh * s, : ow * s].reshape(n, c, oh, s, ow, s)
    pooled = blocks.mean(axis=(3, 5)) if mean else blocks.max(axis=(3, 5))
    return pooled


@dataclass(frozen=True)
class _Trace:
    conv_abs_max: float
    activated: Float32Array


def _layers(spec: NetworkSpec, x: npt.ArrayLike) -> Iterator[tuple[_Trace, Float32Array]]:
    """Each layer's trace (before pooling) and its pooled output, for ``(n, c, h, w)``."""
    y = np.asarray(x, np.float32)
    if y.shape[1:] != spec.input_shape:
        raise ValueError(f"input {y.shape[1:]} is not the network's {spec.input_shape}")
    for layer in spec.layers:
        conv = _conv(y, layer)
        pre = conv + np.asarray(layer.bias, np.float32)[None, :, None, None]
        slope = np.float32(_slope(layer.activation))
        activated = np.where(pre >= 0, pre, slope * pre)
        y = _pool(activated, layer.pool)
        yield _Trace(float(np.abs(conv).max()), activated), y


def float_forward(spec: NetworkSpec, x: npt.ArrayLike) -> Float32Array:
    """The float network the kmodel approximates: ``(c, h, w)`` or ``(n, c, h, w)`` in."""
    batch = np.asarray(x, np.float32)
    single = batch.ndim == 3
    ((_, y),) = deque(_layers(spec, batch[None] if single else batch), maxlen=1)
    return y[0] if single else y


# --- calibration and quantization -----------------------------------------------------------


@dataclass(frozen=True)
class LayerStats:
    """What calibration saw of one layer: its activation's range (before pooling, which is
    what the KPU's output codes must hold) and the largest ``|sum(x*w)|`` before the bias."""

    lo: float
    hi: float
    conv_abs_max: float

    def union(self, other: LayerStats) -> LayerStats:
        return LayerStats(min(self.lo, other.lo), max(self.hi, other.hi),
                          max(self.conv_abs_max, other.conv_abs_max))


def calibrate(spec: NetworkSpec, images: Iterable[npt.ArrayLike]) -> tuple[LayerStats, ...]:
    """Per-layer min/max over every calibration image, ``(c, h, w)`` or batches of them.

    The union of ranges, as nncase 0.2's ``collect_range`` (0.1 smoothed them by EMA).
    """
    stats: list[LayerStats] | None = None
    for image in images:
        batch = np.asarray(image, np.float32)
        batch = batch[None] if batch.ndim == 3 else batch
        seen = [LayerStats(float(t.activated.min()), float(t.activated.max()), t.conv_abs_max)
                for t, _ in _layers(spec, batch)]
        stats = seen if stats is None else [a.union(b) for a, b in zip(stats, seen, strict=True)]
    if stats is None:
        raise ValueError("calibration needs at least one image")
    return tuple(stats)


@dataclass(frozen=True, eq=False)
class QuantizedNetwork:
    """A network with every layer in the KPU's integers, ready to be written."""

    spec: NetworkSpec
    input_q: QuantParam
    layers: tuple[QuantizedConv, ...]

    @property
    def output_q(self) -> QuantParam:
        return self.layers[-1].output


def mean_pool_offset(pool: PoolType) -> float:
    """Output LSB to add before a mean pool: ``kpu_pool2d`` floors the mean of ``n``
    codes, ``(n - 1)/(2n)`` LSB low on average; lifting the activation's rounding by as
    much makes the pooled codes unbiased and their worst error ``0.5 + (n - 1)/(2n)``
    instead of ``0.5 + (n - 1)/n`` (nncase does not compensate)."""
    if not pool.is_mean:
        return 0.0
    n = pool.filter**2
    return (n - 1) / (2 * n)


def quantize_network(spec: NetworkSpec, stats: Iterable[LayerStats]) -> QuantizedNetwork:
    """Each layer quantized from its calibrated range; its output codes are the next
    layer's input (no requantization in between, as on the KPU)."""
    input_q = QuantParam.from_range(*spec.input_range, integer_bias=False)
    current = input_q
    layers = []
    for layer, seen in zip(spec.layers, stats, strict=True):
        output_q = QuantParam.from_range(seen.lo, seen.hi)
        quantized = quantize_conv(
            np.asarray(layer.weights).reshape(layer.out_channels, -1), layer.bias,
            kernel_area=layer.kernel**2, input_q=current, output_q=output_q,
            slope=_slope(layer.activation), conv_abs_max=seen.conv_abs_max,
            output_offset=mean_pool_offset(layer.pool))
        layers.append(quantized)
        current = output_q
    return QuantizedNetwork(spec, input_q, tuple(layers))


# --- KPU RAM ------------------------------------------------------------------------------------


def kpu_ram_layout(spec: NetworkSpec) -> list[int]:
    """The first 64-byte row of every feature map (input first) in KPU RAM.

    A layer's input and output must coexist, so ``T = max(rows(i) + rows(i + 1))`` rows are
    needed and enough: even maps start at row 0, odd ones end at row ``T`` (ping-pong).
    """
    rows = [kpu_rows(w, h, c) for c, h, w in spec.feature_maps()]
    for i, (a, b) in enumerate(itertools.pairwise(rows)):
        if a + b > KPU_RAM_ROWS:
            (ci, hi, wi), (co, ho, wo) = spec.feature_maps()[i : i + 2]
            raise KpuRamError(
                f"layer {i}: its input {ci}x{hi}x{wi} ({a} rows of 64 bytes) and output "
                f"{co}x{ho}x{wo} ({b} rows) need {(a + b) * 64} bytes of KPU RAM together, "
                f"more than the K210's {KPU_RAM_BYTES} (2 MiB)")
    top = max(a + b for a, b in itertools.pairwise(rows))
    return [0 if i % 2 == 0 else top - r for i, r in enumerate(rows)]


# --- registers and the file -------------------------------------------------------------------

_REGISTER_FIELDS: dict[str, tuple[int, int, int]] = {
    "depth_wise_layer": (0, 3, 1),
    "image_src_addr": (1, 0, 15),
    "image_dst_addr": (1, 32, 15),
    "i_ch_num": (2, 0, 10),
    "o_ch_num": (2, 32, 10),
    "o_ch_num_coef": (2, 48, 10),
    "i_row_wid": (3, 0, 10),
    "i_col_high": (3, 10, 9),
    "o_row_wid": (3, 32, 10),
    "o_col_high": (3, 42, 9),
    "kernel_type": (4, 0, 3),
    "pool_type": (4, 4, 4),
    "load_para": (4, 10, 1),
    "dma_burst_size": (4, 16, 8),
    "pad_value": (4, 24, 8),
    "load_coor": (5, 0, 1),
    "load_time": (5, 1, 6),
    "para_size": (5, 15, 17),
    "channel_switch_addr": (7, 0, 15),
    "row_switch_addr": (7, 16, 4),
    "coef_group": (7, 28, 3),
    "load_act": (7, 31, 1),
    "wb_channel_switch_addr": (8, 0, 15),
    "wb_row_switch_addr": (8, 16, 4),
    "wb_group": (8, 20, 3),
    "shr_w": (9, 0, 4),
    "shr_x": (9, 4, 4),
    "arg_w": (9, 8, 24),
    "arg_x": (9, 32, 24),
    "arg_add": (10, 0, 40),
    "channel_byte_num": (11, 16, 16),
    "dma_total_byte": (11, 32, 32),
}
"""``kpu_layer_argument_t`` (``kpu.h``): (register, lsb, width) of every field nncase 0.1
sets. Written out here rather than shared with the parser's table, which holds only what
it decodes: the round-trip tests then check one against the other."""
_SIGNED_FIELDS = frozenset({"arg_w", "arg_x", "arg_add"})


def _pack_registers(values: dict[str, int]) -> bytes:
    regs = [0] * 12
    for name, value in values.items():
        reg, lsb, width = _REGISTER_FIELDS[name]
        lo, hi = ((-(1 << (width - 1)), 1 << (width - 1)) if name in _SIGNED_FIELDS
                  else (0, 1 << width))
        if not lo <= value < hi:
            raise ValueError(f"register field {name} = {value} does not fit {width} bits")
        regs[reg] |= (value & ((1 << width) - 1)) << lsb
    return struct.pack("<12Q", *regs)


def _layer_registers(layer: ConvSpec, q: QuantizedConv, maps: tuple[Shape, Shape],
                     addresses: tuple[int, int], to_main: bool) -> bytes:
    """The twelve registers as ``K210Conv2d.GenerateBinLayer`` fills them; the weight,
    batch-norm and activation addresses stay 0 (the SDK's ``kpu_conv`` patches them in)."""
    (ic, h, w), (oc, oh, ow) = maps
    src, dst = addresses
    per_load, loads, para_size = layer.weight_loads()
    rows_in, rows_out = RowLayout.for_width(w), RowLayout.for_width(ow)
    channel_bytes = ow * oh - 1
    if to_main and channel_bytes >= 1 << 16:
        raise ValueError(f"the output layer's {ow}x{oh} channels are more than "
                         "channel_byte_num's 16 bits can count")
    return _pack_registers({
        "depth_wise_layer": int(layer.depthwise),
        "image_src_addr": src, "image_dst_addr": dst,
        "i_ch_num": ic - 1, "o_ch_num": oc - 1, "o_ch_num_coef": per_load - 1,
        "i_row_wid": w - 1, "i_col_high": h - 1, "o_row_wid": ow - 1, "o_col_high": oh - 1,
        "kernel_type": 1 if layer.kernel == 3 else 0, "pool_type": int(layer.pool),
        "load_para": 1, "dma_burst_size": 15, "pad_value": q.pad_value,
        "load_coor": 1, "load_time": loads - 1, "para_size": para_size,
        "channel_switch_addr": rows_in.row_len * h, "row_switch_addr": rows_in.row_len,
        "coef_group": rows_in.groups, "load_act": 1,
        "wb_channel_switch_addr": rows_out.row_len * oh,
        "wb_row_switch_addr": rows_out.row_len, "wb_group": rows_out.groups,
        "shr_w": q.shift_w, "shr_x": q.shift_x, "arg_w": q.arg_w, "arg_x": q.arg_x,
        "arg_add": q.arg_add,
        # nncase writes (ushort)(w*h - 1); a map held in KPU RAM never streams it out
        "channel_byte_num": channel_bytes & 0xFFFF, "dma_total_byte": ow * oh * oc - 1,
    })


def _batchnorm_words(q: QuantizedConv) -> bytes:
    """``kpu_batchnorm_argument_t``: norm_mul (24), norm_add (32), norm_shift (4)."""
    words = ((q.bn_mul & 0xFFFFFF) | ((q.bn_add & 0xFFFFFFFF) << 24) | (q.bn_shift << 56))
    return words.astype("<u8").tobytes()


def _activation_words(q: QuantizedConv) -> bytes:
    """``kpu_activate_table_t``: 16 x {shift_number 8, y_mul 16, x_start 36}, 16 biases."""
    t = q.activation
    words = t.shift | ((t.mul & 0xFFFF) << 8) | ((t.start & ((1 << 36) - 1)) << 24)
    return words.astype("<u8").tobytes() + t.add.astype(np.uint8).tobytes()


class _FileWriter:
    """A growing file with nncase's ``AlignStreamPosition``."""

    def __init__(self) -> None:
        self.data = bytearray()

    def align(self, alignment: int) -> int:
        self.data.extend(bytes(-len(self.data) % alignment))
        return len(self.data)

    def put(self, chunk: bytes) -> int:
        at = len(self.data)
        self.data.extend(chunk)
        return at


def write_kmodel(net: QuantizedNetwork) -> bytes:
    """The kmodel v3 file of a quantized network.

    Main memory holds the last convolution's uint8 output at 0 (8-byte aligned: the SDK's
    output DMA moves whole 64-bit words), then, with ``dequantize``, its float32 values.
    """
    spec = net.spec
    maps = spec.feature_maps()
    rows = kpu_ram_layout(spec)
    c, h, w = maps[-1]
    count = c * h * w
    codes_size = -(-count // 8) * 8
    kinds = [V3LayerType.K210_CONV] * len(spec.layers)
    if spec.dequantize:
        kinds.append(V3LayerType.DEQUANTIZE)
        output, main_mem = (codes_size, 4 * count), codes_size + 4 * count
    else:
        output, main_mem = (0, count), codes_size
    f = _FileWriter()
    f.put(struct.pack("<7I", 3, 1, 0, len(kinds), min(rows), main_mem, 1))
    f.put(struct.pack("<2I", *output))
    headers_at = f.put(bytes(8 * len(kinds)))
    sizes = []
    last = len(spec.layers) - 1
    for i, (layer, q) in enumerate(zip(spec.layers, net.layers, strict=True)):
        begin = f.put(bytes(24))
        to_main = i == last
        layer_at = f.align(8)
        f.put(_layer_registers(layer, q, (maps[i], maps[i + 1]), (rows[i], rows[i + 1]),
                               to_main))
        weights_at = f.align(128)
        f.put(q.weights.q.tobytes())
        bn_at = f.align(128)
        f.put(_batchnorm_words(q))
        act_at = f.align(256)
        f.put(_activation_words(q))
        struct.pack_into("<6I", f.data, begin, MAIN_MEMORY_OUTPUT if to_main else 0, 0,
                         layer_at, weights_at, bn_at, act_at)
        sizes.append(f.align(8) - begin)
    if spec.dequantize:
        out_q = net.output_q
        begin = f.put(struct.pack("<4I2f", MAIN_MEMORY_OUTPUT, 0, codes_size, count,
                                  1.0 / out_q.scale, out_q.bias / out_q.scale))
        sizes.append(f.align(8) - begin)
    for i, (kind, size) in enumerate(zip(kinds, sizes, strict=True)):
        struct.pack_into("<2I", f.data, headers_at + 8 * i, int(kind), size)
    return bytes(f.data)


def build_kmodel(spec: NetworkSpec, calibration: Iterable[npt.ArrayLike]) -> bytes:
    """Calibrate, quantize and write ``spec`` as a kmodel v3 (KPU RAM is checked first)."""
    kpu_ram_layout(spec)
    return write_kmodel(quantize_network(spec, calibrate(spec, calibration)))
