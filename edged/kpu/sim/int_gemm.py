"""Exact products of a layer's weights and its uint8 feature map, as the KPU adds them.

The KPU multiplies uint8 inputs by uint8 weights and adds in wide integers. onnxruntime's
quantized ``MatMulInteger`` (its MLAS kernels: AVX2, AVX-512 VNNI or AMX, whichever the CPU
has) multiplies uint8 by uint8 into int32 sums, exact by construction up to MAX_TERMS
products, and ran the face model's GEMMs twice as fast as a float32 GEMM on one core here.
(uint8 by constant int8 was faster still on deep layers, but it wants pixel-major maps,
which made the epilogue and the 3-channel im2col slower than the GEMM saved, and it can
saturate in int16 on CPUs without VNNI.)

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
"""Products of two uint8 values that an int32 sum holds whatever they are."""

GemmWeights = npt.NDArray[np.uint8] | npt.NDArray[np.float64]
"""Weights as :func:`exact_matmul` multiplies them: uint8, or float64 (16-bit, long sums)."""

OPSET = 13
"""The ONNX opset of the one-node graph (MatMulInteger is in every opset since 10)."""


def gemm_weights(weights: npt.NDArray[np.integer]) -> GemmWeights:
    """(m, k) integer weights in the type :func:`exact_matmul` multiplies them in."""
    if weights.dtype == np.uint8 and weights.shape[1] <= MAX_TERMS:
        return np.ascontiguousarray(weights)
    return weights.astype(np.float64)


def exact_matmul(a: GemmWeights,
                 b: npt.NDArray[np.uint8]) -> npt.NDArray[np.int32] | npt.NDArray[np.float64]:
    """``a @ b``, exactly: ``a`` from :func:`gemm_weights`, ``b`` (k, n) uint8."""
    if a.dtype == np.uint8:
        result: npt.NDArray[np.int32] = _session().run(
            None, {"A": a, "B": np.ascontiguousarray(b)})[0]
        return result
    return a.astype(np.float64, copy=False) @ b.astype(np.float64)


@cache
def _session() -> ort.InferenceSession:
    """One session for every product, run on the calling thread: the lanes split the work
    (onnxruntime's own pool would oversubscribe the cores), and runs may overlap."""
    node = helper.make_node("MatMulInteger", ["A", "B"], ["Y"])
    graph = helper.make_graph(
        [node], "kpu_conv",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, ["m", "k"]),
         helper.make_tensor_value_info("B", TensorProto.UINT8, ["k", "n"])],
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
