"""Executing kmodel v4 as nncase 0.2's interpreter does on the K210.

The KPU ops follow the runtime's simulator build (``NNCASE_TARGET_K210_SIMULATOR``); the
CPU kernels follow the K210 build itself, which differs only where ``neutral_kernels.h``
has ``#if __riscv`` paths (quantize and dequantize; see ``neutral_ops``). The golden
outputs agree with exactly this combination.

A v4 model addresses three memories through ``memory_range``: its constants (read-only,
inside the file), its main memory (``main_mem`` bytes) and the KPU's 2 MiB RAM, where
feature maps live in 64-byte rows. Main memory and KPU RAM are private to the executor
and zeroed before each run, so a run depends on its inputs alone. Inputs are copied into
their ranges as raw bytes (a KPU-resident input is written as is, as the runtime's
``memory_at`` exposes it to the caller); nodes run in file order.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from edged.kpu.errors import RunError
from edged.kpu.kmodel import v4
from edged.kpu.kmodel.kpu_regs import KPU_RAM_BYTES, kpu_rows
from edged.kpu.kmodel.model import KModel
from edged.kpu.sim import cpu_ops, neutral_ops
from edged.kpu.sim.executor import LayerObserver, Rounding, check_inputs
from edged.kpu.sim.handover import Access, HandOff, Region, conv_access
from edged.kpu.sim.kpu_kernels import PreparedConv, kpu_download, kpu_upload
from edged.kpu.sim.lanes import Lanes
from edged.kpu.sim.neutral_ops import F32, KernelFault, clamp, requantize

Array = npt.NDArray[Any]


@functools.cache
def _window(w: v4.Window) -> npt.NDArray[np.int64]:
    """The kernels' window vector: filter, stride, dilation, then top and left padding
    (a node's window is fixed: built once, read-only)."""
    vector = np.array([w.filter_h, w.filter_w, w.stride_h, w.stride_w, w.dilation_h,
                       w.dilation_w, w.padding_h[0], w.padding_w[0]], np.int64)
    vector.setflags(write=False)
    return vector


def _bits(dtype: str) -> type[np.unsignedinteger[Any]]:
    """The element type data-movement kernels copy with (``ELEM_SIZE_IMPL``): raw bits."""
    return np.uint32 if dtype == "float32" else np.uint8


class V4Executor:
    """One loaded v4 model: its memories and its nodes, ready to run."""

    def __init__(self, model: KModel, rounding: Rounding, lanes: Lanes) -> None:
        self._lanes = lanes
        assert isinstance(model.program, v4.V4Program)
        self.model = model
        p = model.program
        self._program = p
        self._nodes = tuple(node for node in p.layers if isinstance(node, v4.V4Node))
        assert len(self._nodes) == len(p.layers)
        self._main = np.zeros(model.main_mem, np.uint8)
        self._kpu = np.zeros(KPU_RAM_BYTES, np.uint8)
        constants = np.frombuffer(model.data, np.uint8, count=p.constants_size,
                                  offset=p.constants_offset)
        self._memories = {v4.MemoryType.CONST: constants, v4.MemoryType.MAIN: self._main,
                          v4.MemoryType.K210_KPU: self._kpu}
        self._convs = {node.index: PreparedConv.from_conv(node.conv, rounding)
                       for node in self._nodes if isinstance(node, v4.KpuConv2d)}
        self._handoff = HandOff(
            [_access(node) for node in self._nodes],
            [_region(r) for r in p.outputs if r.memory is v4.MemoryType.K210_KPU])
        self._steps: dict[type[v4.V4Node], Callable[[Any], Array | None]] = {
            v4.Binary: self._binary,
            v4.QuantizedBinary: self._quantized_binary,
            v4.Concat: self._concat,
            v4.Conv2d: self._conv2d,
            v4.QuantizedConv2d: self._quantized_conv2d,
            v4.Conv2dTranspose: self._conv2d_transpose,
            v4.Quantization: self._quantization,
            v4.MatMul: self._matmul,
            v4.QuantizedMatMul: self._quantized_matmul,
            v4.Pad: self._pad,
            v4.Reduce: self._reduce,
            v4.ReduceWindow2d: self._reduce_window2d,
            v4.MemoryCopy: self._memory_copy,
            v4.ResizeImage: self._resize_image,
            v4.Softmax: self._softmax,
            v4.Transpose: self._transpose,
            v4.StridedSlice: self._strided_slice,
            v4.Unary: self._unary,
            v4.TableLookup1d: self._table_lookup1d,
            v4.NnilUnaryMethod: self._nnil_unary_method,
            v4.CpuConv2d: self._cpu_conv2d,
            v4.CpuQuantizedConv2d: self._cpu_quantized_conv2d,
            v4.KpuUpload: self._kpu_upload,
            v4.KpuConv2d: self._kpu_conv2d,
        }

    # -- memory ----------------------------------------------------------------------------

    def _bytes(self, r: v4.MemRange) -> npt.NDArray[np.uint8]:
        return self._memories[r.memory][r.start : r.start + r.size]

    def _read(self, r: v4.MemRange, count: int | None = None,
              dtype: npt.DTypeLike | None = None) -> Array:
        """``count`` values of the range (all by default), typed; a view when aligned."""
        dt = np.dtype(r.dtype if dtype is None else dtype)
        n = r.size // dt.itemsize if count is None else count
        view = self._bytes(r)[: n * dt.itemsize].view(dt)
        return view if view.flags.aligned else view.copy()

    def _store(self, r: v4.MemRange, values: Array) -> Array:
        """Write ``values`` (already of the range's element type) at the range's start."""
        values = np.ascontiguousarray(values)
        self._bytes(r)[: values.nbytes] = values.reshape(-1).view(np.uint8)
        return values

    # -- the run loop ----------------------------------------------------------------------

    def run(
        self, inputs: Sequence[npt.NDArray[np.generic]], observer: LayerObserver | None = None
    ) -> list[npt.NDArray[np.generic]]:
        values = check_inputs(self.model.inputs, inputs)
        self._main.fill(0)
        self._kpu.fill(0)
        self._handoff.map = None
        for r, value in zip(self._program.inputs, values, strict=True):
            self._store(r, value)
        for node in self._nodes:
            started = time.perf_counter()
            try:
                produced = self._steps[type(node)](node)
            except KernelFault as e:
                raise RunError(f"node {node.index} ({node.opcode.name.lower()}): {e}") from e
            if observer is not None:
                observer(node.index, time.perf_counter() - started, produced)
        return [self._read(r).reshape(spec.shape).copy()
                for r, spec in zip(self._program.outputs, self.model.outputs, strict=True)]

    # -- elementwise -----------------------------------------------------------------------

    def _binary(self, n: v4.Binary) -> Array:
        out = neutral_ops.binary(self._read(n.a), self._read(n.b), n.a_shape, n.b_shape,
                                 n.out_shape, int(n.op), n.activation)
        return self._store(n.out, out.reshape(n.a_shape if n.a_shape == n.b_shape
                                              else n.out_shape))

    def _quantized_binary(self, n: v4.QuantizedBinary) -> Array:
        out = neutral_ops.quantized_binary(
            self._read(n.a), self._read(n.b), n.a_shape, n.b_shape, n.out_shape, int(n.op),
            n.a_offset, n.a_mul, n.a_shift, n.b_offset, n.b_mul, n.b_shift, n.out_offset,
            n.out_mul, n.out_shift)
        return self._store(n.out, out.reshape(n.a_shape if n.a_shape == n.b_shape
                                              else n.out_shape))

    def _quantization(self, n: v4.Quantization) -> Array:
        if n.opcode is v4.Opcode.QUANTIZE:
            return self._store(n.output, neutral_ops.quantize(self._read(n.input), n.zero_point,
                                                              n.scale))
        return self._store(n.output, neutral_ops.dequantize(self._read(n.input), n.zero_point,
                                                            n.scale))

    def _unary(self, n: v4.Unary) -> Array:
        return self._store(n.output, neutral_ops.unary(self._read(n.input), int(n.op)))

    def _nnil_unary_method(self, n: v4.NnilUnaryMethod) -> Array:
        x = self._read(n.input)
        out = self._read(n.output, x.size).copy()  # values without a ret stay as they are
        neutral_ops.nnil_unary_method(x, n.ops, n.constants, out)
        return self._store(n.output, out)

    def _table_lookup1d(self, n: v4.TableLookup1d) -> Array:
        table = self._read(n.table, 256, np.uint8)
        return self._store(n.output, neutral_ops.table_lookup1d(self._read(n.input), table))

    # -- reductions ------------------------------------------------------------------------

    def _reduce(self, n: v4.Reduce) -> Array:
        x = self._read(n.input, math.prod(n.in_shape))
        out = neutral_ops.reduce(x, np.array(n.in_shape, np.int64),
                                 np.array(n.out_shape, np.int64), int(n.op), F32(n.init_value))
        stored = self._store(n.output, out.reshape(n.out_shape))
        if n.op is not v4.ReduceOp.MEAN:
            return stored
        # the runtime scales the whole output range by its size over the input range's
        scale = F32(n.output.count) / F32(n.input.count)
        return self._store(n.output, self._read(n.output) * scale)

    def _reduce_window2d(self, n: v4.ReduceWindow2d) -> Array:
        x = self._read(n.input, math.prod(n.in_shape)).reshape(n.in_shape)
        shape = n.out_shape
        oh, ow = (shape[1], shape[2]) if n.nhwc else (shape[2], shape[3])
        kernel = cpu_ops.reduce_window2d if n.nhwc else neutral_ops.reduce_window2d
        out = kernel(x, int(n.op), F32(n.init_value), _window(n.window), oh, ow)
        return self._store(n.output, clamp(out, n.activation))

    def _softmax(self, n: v4.Softmax) -> Array:
        x = self._read(n.input, n.outer_size * n.inner_size)
        out = neutral_ops.softmax(x, n.outer_size, n.inner_size, F32(n.beta))
        return self._store(n.output, out.reshape(n.outer_size, n.inner_size))

    # -- convolutions and products ---------------------------------------------------------

    def _conv2d(self, n: v4.Conv2d) -> Array:
        x = self._read(n.input, math.prod(n.in_shape)).reshape(n.in_shape)
        w = n.window
        weights = n.weights.reshape(n.out_channels, -1, w.filter_h, w.filter_w)
        oh, ow = w.out_size(n.in_shape[2], n.in_shape[3])
        out = neutral_ops.conv2d(x, weights, n.bias, n.groups, _window(w), oh, ow)
        return self._store(n.output, clamp(out, n.activation))

    def _quantized_conv2d(self, n: v4.QuantizedConv2d) -> Array:
        x = self._read(n.input, math.prod(n.in_shape)).reshape(n.in_shape)
        w = n.window
        weights = n.weights.reshape(n.out_channels, -1, w.filter_h, w.filter_w)
        oh, ow = w.out_size(n.in_shape[2], n.in_shape[3])
        acc = neutral_ops.quantized_conv2d(x, weights, n.bias, n.groups, _window(w), oh, ow,
                                           n.input_offset, n.filter_offset)
        return self._store(n.output, requantize(acc, n.output_mul, n.output_shift,
                                                n.output_offset))

    def _conv2d_transpose(self, n: v4.Conv2dTranspose) -> Array:
        x = self._read(n.input, math.prod(n.in_shape)).reshape(n.in_shape)
        w = n.window
        weights = n.weights.reshape(n.out_shape[1], -1, w.filter_h, w.filter_w)
        out = neutral_ops.conv2d_transpose(x, weights, n.groups, _window(w),
                                           np.array(n.out_shape, np.int64))
        return self._store(n.output, clamp(out, n.activation))

    def _cpu_conv2d(self, n: v4.CpuConv2d) -> Array:
        x = self._read(n.input, math.prod(n.in_shape)).reshape(n.in_shape)
        oh, ow = n.window.out_size(n.in_shape[1], n.in_shape[2])
        out = cpu_ops.conv2d(x, n.weights, n.bias, _window(n.window), oh, ow, n.depthwise)
        return self._store(n.output, clamp(out, n.activation))

    def _cpu_quantized_conv2d(self, n: v4.CpuQuantizedConv2d) -> Array:
        x = self._read(n.input, math.prod(n.in_shape)).reshape(n.in_shape)
        oh, ow = n.window.out_size(n.in_shape[1], n.in_shape[2])
        acc = cpu_ops.quantized_conv2d(x, n.weights, n.bias, _window(n.window), oh, ow,
                                       n.depthwise, n.input_offset, n.filter_offset)
        return self._store(n.output, requantize(acc, n.output_mul, n.output_shift,
                                                n.output_offset))

    def _matmul(self, n: v4.MatMul) -> Array:
        a = self._read(n.a, n.a_rows * n.a_cols).reshape(n.a_rows, n.a_cols)
        b = self._read(n.b, n.a_cols * n.b_cols).reshape(n.a_cols, n.b_cols)
        return self._store(n.out, clamp(neutral_ops.matmul(a, b, n.bias), n.activation))

    def _quantized_matmul(self, n: v4.QuantizedMatMul) -> Array:
        a = self._read(n.a, n.a_rows * n.a_cols).reshape(n.a_rows, n.a_cols)
        b = self._read(n.b, n.a_cols * n.b_cols).reshape(n.a_cols, n.b_cols)
        acc = neutral_ops.quantized_matmul(a, b, n.bias, n.a_offset, n.b_offset)
        return self._store(n.out, requantize(acc, n.out_mul, n.out_shift, n.out_offset))

    # -- data movement ---------------------------------------------------------------------

    def _concat(self, n: v4.Concat) -> Array:
        joined = neutral_ops.concat([self._bytes(r) for r in n.inputs], n.dims, n.inner,
                                    n.outer)
        self._store(n.out, joined)
        itemsize = n.out.itemsize
        return joined.view(n.out.dtype) if joined.size % itemsize == 0 else joined

    def _memory_copy(self, n: v4.MemoryCopy) -> Array:
        copied = n.input.size // 4 * 4  # std::copy over memory_at<float>: whole floats only
        return self._store(n.output, self._bytes(n.input)[:copied].copy())

    def _pad(self, n: v4.Pad) -> Array:
        bits = _bits(n.input.dtype)
        x = self._read(n.input, math.prod(n.in_shape), bits)
        value = bits(n.pad_bits & (0xFF if bits is np.uint8 else 0xFFFFFFFF))
        return self._store(n.output, neutral_ops.pad(x, n.in_shape, n.paddings, value))

    def _transpose(self, n: v4.Transpose) -> Array:
        x = self._read(n.input, math.prod(n.in_shape), _bits(n.input.dtype))
        return self._store(n.output, neutral_ops.transpose(x, n.in_shape, n.perm))

    def _strided_slice(self, n: v4.StridedSlice) -> Array:
        x = self._read(n.input, math.prod(n.in_shape), _bits(n.input.dtype))
        return self._store(n.output, neutral_ops.strided_slice(x, n.in_shape, n.axes))

    def _resize_image(self, n: v4.ResizeImage) -> Array:
        x = self._read(n.input, math.prod(n.in_shape))
        if n.mode is v4.ResizeMode.BILINEAR:
            out = neutral_ops.resize_bilinear(x, n.in_shape, n.out_h, n.out_w, n.align_corners)
        else:
            out = neutral_ops.resize_nearest(x, n.in_shape, n.out_h, n.out_w)
        return self._store(n.output, out)

    # -- the KPU ---------------------------------------------------------------------------

    def _kpu_upload(self, n: v4.KpuUpload) -> Array:
        batches, c, h, w = n.in_shape
        maps = self._read(n.input, math.prod(n.in_shape), np.uint8).reshape(n.in_shape)
        per_batch = kpu_rows(w, h, c) * 64
        for b in range(batches):
            kpu_upload(self._kpu, n.output.start + b * per_batch, maps[b])
        return maps

    def _kpu_conv2d(self, n: v4.KpuConv2d) -> Array:
        arg = n.conv.arg
        if self._handoff.map is not None:  # handed over by the previous convolution
            ins = [self._handoff.map]
        else:
            ins = [kpu_download(self._kpu, (arg.src_addr + b * arg.in_rows) * 64,
                                arg.in_channels, arg.in_height, arg.in_width)
                   for b in range(n.batches)]
        prepared = self._convs[n.index]
        maps = [prepared.run(x, self._lanes) for x in ins]
        out = maps[0][None] if len(maps) == 1 else np.stack(maps)  # no copy of one map
        handed = self._handoff.keep(n.index, out[0])
        for b in range(0 if handed else n.batches):
            kpu_upload(self._kpu, (arg.dst_addr + b * arg.out_rows) * 64, out[b])
        if n.main_out is not None:
            self._store(n.main_out, out)
        return out


_WRITES = frozenset({"out", "output", "main_out"})
"""The fields of a node that name memory it writes; every other memory range it reads."""


def _region(r: v4.MemRange) -> Region:
    return r.start, r.start + r.size


def _access(node: v4.V4Node) -> Access:
    """What a v4 node does to KPU RAM, from its memory ranges (and, for a KPU convolution,
    the rows its registers name; only single-batch convolutions hand over).

    Only an upload and a convolution write the whole of their KPU range in row layout;
    another node may write part of its output range (a copy, a concat) or read it first (an
    nnil method keeps some values), so its KPU outputs count as read, never as overwritten:
    :func:`handed_over` wants bytes certainly overwritten.
    """
    whole = isinstance(node, v4.KpuUpload | v4.KpuConv2d)
    reads: list[Region] = []
    writes: list[Region] = []
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        for r in value if isinstance(value, tuple) else (value,):
            if isinstance(r, v4.MemRange) and r.memory is v4.MemoryType.K210_KPU:
                (writes if whole and f.name in _WRITES else reads).append(_region(r))
    if not isinstance(node, v4.KpuConv2d):
        return Access(node.index, tuple(reads), tuple(writes))
    return conv_access(node.index, node.conv.arg, node.batches, tuple(reads), tuple(writes))
