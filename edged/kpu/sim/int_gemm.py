"""Exact products of a layer's weights and its uint8 feature map, as the KPU adds them.

The KPU multiplies uint8 inputs by uint8 weights and adds in wide integers. onnxruntime's
quantized ``MatMulInteger`` (its MLAS kernels: AVX2, AVX-512 VNNI or AMX, whichever the CPU
has) multiplies 8-bit integers into int32 sums, exact up to MAX_TERMS products.

Its uint8-by-int8 kernel (one ``vpdpbusd`` per 64 products with VNNI) ran the face model's
GEMMs about twice as fast as its uint8-by-uint8 one, so the maps go in offset by 128, as
``x - 128``, whose bytes are ``x ^ 0x80`` read as int8; the caller adds ``128 * sum(w)``
back. Without VNNI that kernel sums pairs of products in int16, which can saturate, so a
probe at first use checks it and falls back to uint8 by uint8 (offset 0) if it is not exact.
(Pixel-major maps against constant weights were faster still, but made the epilogue and
the 3-channel im2col slower than the GEMM saved.)

16-bit weights, and longer sums, take a float64 GEMM: exact while every sum stays below
2**53, which 65535 * 255 * k does for any k a KPU layer has.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from onnx import TensorProto, helper

MAX_TERMS = (2**31 - 1) // (255 * 255)
"""Products of two 8-bit values that an int32 sum holds whatever they are."""

SIGNED_OFFSET = 128
"""The offset that turns a uint8 map into int8 (``x ^ 0x80``)."""

GemmWeights = npt.NDArray[np.uint8] | npt.NDArray[np.float64]
"""Weights as :func:`exact_matmul` multiplies them: uint8, or float64 (16-bit, long sums)."""

OPSET = 13
"""The ONNX opset of the one-node graph (MatMulInteger is in every opset since 10)."""


def gemm_weights(weights: npt.NDArray[np.integer]) -> GemmWeights:
    """(m, k) integer weights in the type :func:`exact_matmul` multiplies them in."""
    if weights.dtype == np.uint8 and weights.shape[1] <= MAX_TERMS:
        return np.ascontiguousarray(weights)
    return weights.astype(np.float64)


def exact_matmul(a: GemmWeights, b: npt.NDArray[np.uint8],
                 offset: int) -> npt.NDArray[np.int32] | npt.NDArray[np.float64]:
    """``a @ (x - offset)``, exactly, where ``b`` (k, n) holds the map's bytes ``x ^
    offset`` and ``offset`` is 0 or SIGNED_OFFSET; ``a`` from :func:`gemm_weights`."""
    signed = offset == SIGNED_OFFSET
    if not signed and offset != 0:
        raise ValueError(f"a map goes into the GEMM offset by 0 or 128, not {offset}")
    b = b.view(np.int8) if signed else b
    if a.dtype == np.uint8:
        result: npt.NDArray[np.int32] = _session(signed).run(
            None, {"A": a, "B": np.ascontiguousarray(b)})[0]
        return result
    return a.astype(np.float64, copy=False) @ b.astype(np.float64)


@cache
def input_offset() -> int:
    """SIGNED_OFFSET where this CPU's uint8-by-int8 kernel is exact, else 0.

    The probe takes the products most likely to saturate an int16 pair sum (255 by -128 and
    by 127) and random ones, at a few shapes, and compares with int64 arithmetic.
    """
    rng = np.random.default_rng(0)
    for m, k, n in ((1, 64, 1), (17, 27, 64), (64, 300, 48)):
        a = rng.integers(0, 256, (m, k)).astype(np.uint8)
        x = rng.integers(0, 256, (k, n)).astype(np.uint8)
        a[0], x[:, 0] = 255, 0
        x[:, -1] = 255
        got = exact_matmul(a, x ^ np.uint8(SIGNED_OFFSET), SIGNED_OFFSET)
        if not np.array_equal(got, a.astype(np.int64) @ (x.astype(np.int64) - SIGNED_OFFSET)):
            return 0
    return SIGNED_OFFSET


@cache
def _session(signed: bool) -> ort.InferenceSession:
    """One session per kind of map for every product, run on the calling thread: the lanes
    split the work (onnxruntime's own pool would oversubscribe the cores), and runs may
    overlap."""
    node = helper.make_node("MatMulInteger", ["A", "B"], ["Y"])
    graph = helper.make_graph(
        [node], "kpu_conv",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, ["m", "k"]),
         helper.make_tensor_value_info("B", TensorProto.INT8 if signed else TensorProto.UINT8,
                                       ["k", "n"])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, ["m", "n"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])
