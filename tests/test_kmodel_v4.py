"""kmodel v4 (nncase 0.2): parsing the fixtures, refusing hostile files, running whole
models bit-exactly against the golden outputs, and every runtime op on small tensors
against plain loops written from the C++ kernels."""

from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import math
import struct
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edged.kpu.errors import KmodelError, KmodelFormatError, RunError
from edged.kpu.kmodel import parse_kmodel
from edged.kpu.kmodel.kpu_regs import KPU_RAM_BYTES, kpu_rows
from edged.kpu.kmodel.v4 import KpuConv2d, MemoryType, Opcode, V4Program
from edged.kpu.report import random_inputs
from edged.kpu.sim import neutral_ops
from edged.kpu.sim.executor import Rounding, create_executor
from edged.kpu.sim.kpu_kernels import PreparedConv, kpu_download
from tests.conftest import V4_MODELS, golden_cases, kmodel_path

F32 = np.float32
KMDL = 0x4B4D444C
MAIN, KPU = 1, 2
FLT_MAX = float(np.finfo(np.float32).max)
NO_ACT = (-FLT_MAX, FLT_MAX)

_libm = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
for _name in ("expf", "logf", "sinf", "cosf"):
    getattr(_libm, _name).restype = ctypes.c_float
    getattr(_libm, _name).argtypes = [ctypes.c_float]


def libm(name: str, value: np.float32) -> np.float32:
    """The C library's float function, as the C++ kernels call it."""
    return F32(getattr(_libm, name)(float(value)))


# =========================================================================================
# whole models
# =========================================================================================

BIG = pytest.mark.slow


def _models() -> list[Any]:
    return [pytest.param(name, marks=() if name == "iris_v4" else BIG) for name in V4_MODELS]


@pytest.mark.parametrize("name", V4_MODELS)
def test_fixture_v4_models_parse(name: str) -> None:
    model = parse_kmodel(kmodel_path(name).read_bytes())
    assert model.version == 4
    assert isinstance(model.program, V4Program)
    assert len(model.summaries) == len(model.program.layers) > 0
    assert 0 < model.main_mem <= 8 * 1024 * 1024
    assert model.kpu_ram_bytes <= KPU_RAM_BYTES
    for case in golden_cases(name):
        assert case.meta["sha256"] == model.sha256
        assert model.inputs[0].shape == tuple(case.meta["input_shape"])
        assert model.inputs[0].dtype == case.meta["input_dtype"]
        assert sum(s.macs for s in model.summaries if s.on_kpu) == case.meta["kpu_macs"]
        for spec, out in zip(model.outputs, case.meta["case"]["outputs"], strict=True):
            assert spec.dtype == out["dtype"]
            assert math.prod(spec.shape) == math.prod(out["shape"])


def test_iris_v4_description() -> None:
    model = parse_kmodel(kmodel_path("iris_v4").read_bytes())
    assert [s.op for s in model.summaries] == ["transpose", "matmul", "transpose", "matmul"]
    assert model.inputs[0].shape == (1, 1, 1, 4)
    assert model.inputs[0].dtype == "float32"
    assert model.outputs[0].shape == (1, 3)  # the matmul that writes it is 1x3
    assert model.summaries[1].macs == 4 * 10
    assert model.kpu_ram_bytes == 0


def test_ultraface_v4_description() -> None:
    model = parse_kmodel(kmodel_path("ultraface_v4").read_bytes())
    assert len(model.program.layers) == 101
    assert model.inputs[0].shape == (1, 3, 240, 320)
    assert model.inputs[0].dtype == "uint8"
    # output 0 is a byte-wise concat (flat); output 1 is written by a (1, 1, 4420, 2) node
    assert [s.shape for s in model.outputs] == [(17680,), (1, 1, 4420, 2)]
    assert all(s.dtype == "float32" for s in model.outputs)
    ops = {s.op for s in model.summaries}
    assert {"kpu_conv2d", "kpu_upload", "quantized_conv2d", "quantized_binary", "concat",
            "reduce", "pad", "unary", "transpose", "memory_copy"} <= ops
    first = model.program.layers[0]
    assert isinstance(first, KpuConv2d)
    assert model.summaries[0].on_kpu
    assert model.summaries[0].macs == first.conv.arg.macs


def _cut_points(size: int, every: int) -> list[int]:
    return list(range(0, min(size, 800))) + list(range(800, size, every))


@pytest.mark.parametrize(("name", "every"), [("iris_v4", 1), ("ultraface_v4", 331),
                                             ("voc20_yolo2_v4", 4099)])
def test_every_truncation_is_a_kmodel_error(name: str, every: int) -> None:
    data = kmodel_path(name).read_bytes()
    for cut in _cut_points(len(data), every):
        with pytest.raises(KmodelError):
            parse_kmodel(data[:cut])


def _mutations() -> st.SearchStrategy[tuple[list[tuple[int, int]], int]]:
    return st.tuples(
        st.lists(st.tuples(st.integers(0, 719), st.integers(0, 255)), min_size=1, max_size=6),
        st.integers(0, 64),
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutations())
def test_mutated_iris_parses_or_is_refused_and_runs_or_says_why(
    case: tuple[list[tuple[int, int]], int],
) -> None:
    edits, cut = case
    data = bytearray(kmodel_path("iris_v4").read_bytes())
    for position, value in edits:
        data[position % len(data)] = value
    blob = bytes(data[: len(data) - cut])
    tracemalloc.start()
    try:
        model = parse_kmodel(blob)
    except KmodelError:
        return
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < 2 << 20
    values = [np.ones(s.shape, s.dtype) for s in model.inputs]
    try:
        outputs = create_executor(model).run(values)
    except RunError:
        return
    assert [o.shape for o in outputs] == [s.shape for s in model.outputs]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["ultraface_v4", "voc20_yolo2_v4"]),
       st.lists(st.tuples(st.integers(0, 8191), st.integers(0, 255)), min_size=1, max_size=6))
def test_mutated_big_models_parse_or_are_refused(name: str,
                                                 edits: list[tuple[int, int]]) -> None:
    data = bytearray(kmodel_path(name).read_bytes())
    for position, value in edits:  # the header, the node table and the first bodies
        data[position] = value
    tracemalloc.start()
    try:
        parse_kmodel(bytes(data))
    except KmodelError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < 3 * len(data) + (2 << 20)


def _golden(rounding: Rounding) -> list[Any]:
    found = []
    for name in V4_MODELS:
        for case in golden_cases(name):
            if rounding == "half-even" or case.outputs_half_up is not None:
                marks = () if name == "iris_v4" else BIG
                found.append(pytest.param(name, case.case, marks=marks,
                                          id=f"{name}-{case.case}"))
    return found or [pytest.param("missing", "missing", id="missing")]


def _check_golden(name: str, case_name: str, rounding: Rounding) -> None:
    if name == "missing":
        pytest.skip("no golden outputs in ../shared/fixtures/golden")
    model = parse_kmodel(kmodel_path(name).read_bytes())
    case = next(c for c in golden_cases(name) if c.case == case_name)
    expected = case.outputs if rounding == "half-even" else case.outputs_half_up
    assert expected is not None
    got = create_executor(model, rounding=rounding).run([case.input])
    assert len(got) == len(expected)
    for out, spec, want in zip(got, model.outputs, expected, strict=True):
        assert out.shape == spec.shape
        assert out.dtype == want.dtype
        np.testing.assert_array_equal(out.reshape(want.shape), want,
                                      err_msg=f"{name}/{case_name} ({rounding})")


@pytest.mark.parametrize(("name", "case_name"), _golden("half-even"))
def test_golden_outputs_half_even(name: str, case_name: str) -> None:
    _check_golden(name, case_name, "half-even")


@pytest.mark.parametrize(("name", "case_name"), _golden("half-up"))
def test_golden_outputs_half_up(name: str, case_name: str) -> None:
    _check_golden(name, case_name, "half-up")


def _traced() -> list[Any]:
    found = [pytest.param(name, case.case, marks=BIG, id=f"{name}-{case.case}")
             for name in V4_MODELS for case in golden_cases(name)
             if (case.folder / "trace_kpu_layers.npz").exists()]
    return found or [pytest.param("missing", "missing", id="missing")]


@pytest.mark.parametrize(("name", "case_name"), _traced())
def test_every_traced_node_matches(name: str, case_name: str) -> None:
    """The trace holds, keyed ``<node>_<op>``, every kpu_conv2d output and a few others."""
    if name == "missing":
        pytest.skip("no traces in ../shared/fixtures/golden")
    case = next(c for c in golden_cases(name) if c.case == case_name)
    trace = np.load(case.folder / "trace_kpu_layers.npz")
    model = parse_kmodel(kmodel_path(name).read_bytes())
    produced: dict[int, npt.NDArray[Any] | None] = {}
    create_executor(model).run([case.input],
                               observer=lambda i, _s, out: produced.__setitem__(i, out))
    assert sorted(produced) == list(range(len(model.program.layers)))
    kpu = {i for i, node in enumerate(model.program.layers) if isinstance(node, KpuConv2d)}
    traced = {int(key.split("_")[0]): key for key in trace.files}
    assert kpu <= set(traced)
    for index, key in traced.items():
        assert key.split("_", 1)[1] == model.summaries[index].op
        out = produced[index]
        assert out is not None
        np.testing.assert_array_equal(out.reshape(-1), trace[key].reshape(-1), err_msg=key)


@pytest.mark.parametrize("name", _models())
def test_runs_are_deterministic(name: str) -> None:
    model = parse_kmodel(kmodel_path(name).read_bytes())
    executor = create_executor(model)
    (value,) = random_inputs(model, seed=11)
    first = executor.run([value])
    executor.run([np.full_like(value, 7)])  # nothing of this run may leak into the next
    again = executor.run([value])
    other = create_executor(model).run([value])
    for a, b, c in zip(first, again, other, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_wrong_inputs_are_run_errors() -> None:
    executor = create_executor(parse_kmodel(kmodel_path("iris_v4").read_bytes()))
    with pytest.raises(RunError, match="float32"):
        executor.run([np.zeros((1, 1, 1, 4), np.uint8)])
    with pytest.raises(RunError, match="shape"):
        executor.run([np.zeros(5, np.float32)])


# =========================================================================================
# a tiny kmodel builder, for op-level and hostile-file tests
# =========================================================================================


def mem_range(memory: int, dtype: str, start: int, size: int) -> bytes:
    return struct.pack("<4I", memory, 0 if dtype == "float32" else 1, start, size)


class Graph:
    """Lays tensors out in main memory and writes a one-node (or few-node) v4 file."""

    def __init__(self) -> None:
        self.top = 0
        self.inputs: list[tuple[bytes, npt.NDArray[Any]]] = []
        self.outputs: list[bytes] = []
        self.nodes: list[tuple[int, bytes]] = []
        self.constants = b""

    def alloc(self, nbytes: int) -> int:
        start = self.top
        self.top += -(-nbytes // 16) * 16 + 16
        return start

    def input(self, value: npt.NDArray[Any]) -> bytes:
        value = np.ascontiguousarray(value)
        r = mem_range(MAIN, str(value.dtype), self.alloc(value.nbytes), value.nbytes)
        self.inputs.append((r, value))
        return r

    def output(self, dtype: str, count: int) -> bytes:
        r = mem_range(MAIN, dtype, self.alloc(count * np.dtype(dtype).itemsize),
                      count * np.dtype(dtype).itemsize)
        self.outputs.append(r)
        return r

    def node(self, opcode: int, body: bytes) -> None:
        self.nodes.append((opcode, body))

    def build(self, main_mem: int | None = None) -> bytes:
        head = struct.pack("<10I", KMDL, 4, 0, 1, len(self.constants),
                           self.top if main_mem is None else main_mem, len(self.nodes),
                           len(self.inputs), len(self.outputs), 0)
        shapes = b"".join(struct.pack("<4i", 1, 1, 1, v.size) for _, v in self.inputs)
        return (head + b"".join(r for r, _ in self.inputs) + shapes + b"".join(self.outputs)
                + self.constants
                + b"".join(struct.pack("<2I", op, len(body)) for op, body in self.nodes)
                + b"".join(body for _, body in self.nodes))

    def run(self, rounding: Rounding = "half-even") -> list[npt.NDArray[Any]]:
        model = parse_kmodel(self.build())
        outs = create_executor(model, rounding=rounding).run([v for _, v in self.inputs])
        return [o.reshape(-1) for o in outs]


def shape4(*dims: int) -> bytes:
    return struct.pack("<4i", *dims)


def window(fh: int, fw: int, sh: int, sw: int, dh: int, dw: int,
           pads: tuple[int, int, int, int]) -> bytes:
    return struct.pack("<4i6i", *pads, fh, fw, sh, sw, dh, dw)


def act(lo: float | np.float32, hi: float | np.float32) -> bytes:
    return struct.pack("<2f", lo, hi)


def assert_bits_equal(got: npt.NDArray[Any], want: npt.NDArray[Any]) -> None:
    """Equal to the bit (NaNs and signed zeros included)."""
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    if got.dtype == np.float32:
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    else:
        np.testing.assert_array_equal(got, want)


# -- plain references, transcribed from the C++ ------------------------------------------


def c_div(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return q if (a < 0) == (b < 0) else -q


def wrap32(v: int) -> int:
    return (v + 2**31) % 2**32 - 2**31


def mul_and_carry_shift(value: int, mul: int, shift: int) -> int:
    v = value * mul
    if shift > 0:
        v = (v + (1 << (shift - 1))) >> shift
    return wrap32(v)


def clamp(v: Any, lo: Any, hi: Any) -> Any:
    return lo if v < lo else (hi if hi < v else v)


def windowed(size: int, filt: int, stride: int, dilation: int, pad: tuple[int, int]) -> int:
    return max(0, c_div(size + pad[0] + pad[1] - ((filt - 1) * dilation + 1) + stride, stride))


def taps(origin: int, dilation: int, filt: int, size: int) -> range:
    start = max(0, c_div(-origin + dilation - 1, dilation))
    end = min(filt, c_div(size - origin + dilation - 1, dilation))
    return range(start, end)


def u8(rng: np.random.Generator, *shape: int) -> npt.NDArray[np.uint8]:
    return rng.integers(0, 256, shape).astype(np.uint8)


def f32(rng: np.random.Generator, *shape: int) -> npt.NDArray[np.float32]:
    return (rng.normal(size=shape) * 3).astype(np.float32)


# =========================================================================================
# op-level tests
# =========================================================================================


@pytest.mark.parametrize(("groups", "pads", "stride", "dilation"), [
    (1, (1, 1, 1, 1), (1, 1), (1, 1)),
    (2, (1, 0, 2, 1), (2, 1), (1, 2)),
    (4, (0, 0, 0, 0), (1, 2), (2, 1)),
])
def test_quantized_conv2d(groups: int, pads: tuple[int, int, int, int],
                          stride: tuple[int, int], dilation: tuple[int, int]) -> None:
    rng = np.random.default_rng(1)
    n, c, h, w, oc, fh, fw = 2, 4, 5, 6, 8, 3, 2
    x = u8(rng, n, c, h, w)
    weights = u8(rng, oc, c // groups, fh, fw)
    bias = rng.integers(-5000, 5000, oc).astype(np.int32)
    in_off, w_off, mul, shift, out_off = -120, -131, 1_518_500_250, 37, 121
    oh = windowed(h, fh, stride[0], dilation[0], pads[:2])
    ow = windowed(w, fw, stride[1], dilation[1], pads[2:])
    g = Graph()
    body = (g.input(x) + g.output("uint8", n * oc * oh * ow) + shape4(n, c, h, w)
            + struct.pack("<2i", groups, oc) + window(fh, fw, *stride, *dilation, pads)
            + struct.pack("<5i", in_off, w_off, mul, shift, out_off) + bias.tobytes()
            + weights.tobytes())
    g.node(Opcode.QUANTIZED_CONV2D, body)
    got = g.run()[0]
    want = []
    g_ic, g_oc = c // groups, oc // groups
    for b, o, oy, ox in itertools.product(range(n), range(oc), range(oh), range(ow)):
        y0, x0 = oy * stride[0] - pads[0], ox * stride[1] - pads[2]
        value = int(bias[o])
        for i in range(g_ic):
            ch = o // g_oc * g_ic + i
            for ky in taps(y0, dilation[0], fh, h):
                for kx in taps(x0, dilation[1], fw, w):
                    xv = int(x[b, ch, y0 + dilation[0] * ky, x0 + dilation[1] * kx]) + in_off
                    value += xv * (int(weights[o, i, ky, kx]) + w_off)
        value = wrap32(mul_and_carry_shift(wrap32(value), mul, shift) + out_off)
        want.append(clamp(value, 0, 255))
    assert_bits_equal(got, np.array(want, np.uint8))


def _quantized_binary_ref(op: int, a: int, b: int) -> int:
    if op == 0:
        return wrap32(a + b)
    if op == 1:
        return wrap32(a - b)
    if op == 2:
        return wrap32(a * b)
    if op == 3:
        return c_div(wrap32(a + c_div(b, 2)), b)
    return min(a, b) if op == 4 else max(a, b)


def _reduced(index: tuple[int, ...], shape: tuple[int, ...]) -> int:
    """``offset(shape, get_reduced_offset(index, shape))``."""
    flat = 0
    for i, d in zip(index, shape, strict=True):
        flat = flat * d + (i if i < d else 0)
    return flat


@pytest.mark.parametrize("op", range(6))
@pytest.mark.parametrize(("a_shape", "b_shape", "out_shape"), [
    ((1, 2, 3, 4), (1, 1, 3, 1), (1, 2, 3, 4)),
    ((1, 1, 3, 4), (1, 2, 1, 4), (1, 2, 3, 4)),
    ((1, 2, 3, 4), (1, 2, 3, 4), (1, 2, 3, 4)),
])
@pytest.mark.parametrize("edges", [False, True], ids=["typical", "edges"])
def test_quantized_binary(op: int, a_shape: tuple[int, ...], b_shape: tuple[int, ...],
                          out_shape: tuple[int, ...], edges: bool) -> None:
    """Typical parameters, and edges: shifts 0 and 31, multipliers at the int32 limits,
    products that wrap (b's scale is odd, so the divisor is never 0)."""
    rng = np.random.default_rng(op)
    a = u8(rng, *a_shape)
    b = rng.integers(1, 256, b_shape).astype(np.uint8)  # the divisor stays positive
    params = (-128, 23760, 8, 0, 1, 0, 120, 19213, 9) if op != 2 else \
        (-128, 1000, 6, -100, 900, 6, 128, 1 << 20, 28)
    if edges:
        params = (127, -(2**31) + 1, 31, 0, 2**31 - 1, 0, -77, -(2**30), 0)
    g = Graph()
    count = math.prod(out_shape)
    body = (g.input(a) + g.input(b) + g.output("uint8", count) + struct.pack("<i", op)
            + shape4(*a_shape) + shape4(*b_shape) + shape4(*out_shape)
            + struct.pack("<9i", *params))
    g.node(Opcode.QUANTIZED_BINARY, body)
    got = g.run()[0]
    a_off, a_mul, a_sh, b_off, b_mul, b_sh, o_off, o_mul, o_sh = params
    want = []
    for index in itertools.product(*map(range, out_shape)):
        va = mul_and_carry_shift(int(a.reshape(-1)[_reduced(index, a_shape)]) + a_off, a_mul,
                                 a_sh)
        vb = mul_and_carry_shift(int(b.reshape(-1)[_reduced(index, b_shape)]) + b_off, b_mul,
                                 b_sh)
        v = mul_and_carry_shift(_quantized_binary_ref(op, va, vb), o_mul, o_sh)
        want.append(clamp(wrap32(v + o_off), 0, 255))
    assert_bits_equal(got, np.array(want, np.uint8))


def test_quantized_div_by_zero_is_a_run_error() -> None:
    g = Graph()
    a, b = np.full(4, 9, np.uint8), np.array([3, 0, 1, 2], np.uint8)
    body = (g.input(a) + g.input(b) + g.output("uint8", 4) + struct.pack("<i", 3)
            + shape4(1, 1, 1, 4) * 3 + struct.pack("<9i", 0, 1, 0, 0, 1, 0, 0, 1, 0))
    g.node(Opcode.QUANTIZED_BINARY, body)
    with pytest.raises(RunError, match=r"node 0 \(quantized_binary\).*division by zero"):
        g.run()


def _float_op(op: int, a: np.float32, b: np.float32) -> np.float32:
    with np.errstate(all="ignore"):
        return [a + b, a - b, a * b, a / b, b if b < a else a, b if a < b else a][op]


@pytest.mark.parametrize("op", range(6))
def test_binary(op: int) -> None:
    rng = np.random.default_rng(op)
    a_shape, b_shape, out_shape = (1, 2, 3, 4), (1, 2, 1, 1), (1, 2, 3, 4)
    a, b = f32(rng, *a_shape), f32(rng, *b_shape)
    lo, hi = F32(-2.5), F32(3.0)
    g = Graph()
    body = (g.input(a) + g.input(b) + g.output("float32", a.size) + struct.pack("<i", op)
            + shape4(*a_shape) + shape4(*b_shape) + shape4(*out_shape) + act(lo, hi))
    g.node(Opcode.BINARY, body)
    got = g.run()[0]
    want = [clamp(_float_op(op, a.reshape(-1)[_reduced(i, a_shape)],
                            b.reshape(-1)[_reduced(i, b_shape)]), lo, hi)
            for i in itertools.product(*map(range, out_shape))]
    assert_bits_equal(got, np.array(want, F32))


def _conv_ref(x: npt.NDArray[np.float32], weights: npt.NDArray[np.float32],
              bias: npt.NDArray[np.float32], groups: int, win: tuple[int, ...],
              pads: tuple[int, int, int, int]) -> list[np.float32]:
    """The neutral float conv2d, loop for loop."""
    n, c, h, w = x.shape
    oc = weights.shape[0]
    fh, fw, sh, sw, dh, dw = win
    oh, ow = windowed(h, fh, sh, dh, pads[:2]), windowed(w, fw, sw, dw, pads[2:])
    g_ic, g_oc = c // groups, oc // groups
    out = []
    for b, o, oy, ox in itertools.product(range(n), range(oc), range(oh), range(ow)):
        y0, x0 = oy * sh - pads[0], ox * sw - pads[2]
        value = bias[o]
        for i in range(g_ic):
            for ky in taps(y0, dh, fh, h):
                for kx in taps(x0, dw, fw, w):
                    value = value + x[b, o // g_oc * g_ic + i, y0 + dh * ky, x0 + dw * kx] * \
                        weights[o, i, ky, kx]
        out.append(value)
    return out


def test_conv2d() -> None:
    rng = np.random.default_rng(2)
    n, c, h, w, oc, groups = 1, 6, 5, 5, 4, 2
    win = (3, 3, 2, 1, 1, 2)
    pads = (1, 1, 2, 0)
    x = f32(rng, n, c, h, w)
    weights, bias = f32(rng, oc, c // groups, 3, 3), f32(rng, oc)
    want = [clamp(v, F32(-4), F32(4)) for v in _conv_ref(x, weights, bias, groups, win, pads)]
    g = Graph()
    body = (g.input(x) + g.output("float32", len(want)) + shape4(n, c, h, w)
            + struct.pack("<2i", groups, oc) + window(*win, pads) + act(-4, 4)
            + weights.tobytes() + bias.tobytes())
    g.node(Opcode.CONV2D, body)
    assert_bits_equal(g.run()[0], np.array(want, F32))


def test_conv2d_transpose_ignores_its_bias() -> None:
    rng = np.random.default_rng(3)
    n, c, h, w, oc, groups = 1, 2, 3, 4, 4, 2
    fh, fw, sh, sw, dh, dw = 3, 2, 2, 2, 1, 1
    pads = (1, 0, 0, 1)
    out_shape = (n, oc, 6, 7)
    x = f32(rng, n, c, h, w)
    weights, bias = f32(rng, oc, c // groups, fh, fw), f32(rng, oc)
    out = np.zeros(out_shape, F32)
    g_ic, g_oc = c // groups, oc // groups
    for b, gi, i, iy, ix in itertools.product(range(n), range(groups), range(g_ic), range(h),
                                              range(w)):
        y0, x0 = iy * sh - pads[0], ix * sw - pads[2]
        for o in range(gi * g_oc, (gi + 1) * g_oc):
            for ky in taps(y0, dh, fh, out_shape[2]):
                for kx in taps(x0, dw, fw, out_shape[3]):
                    out[b, o, y0 + dh * ky, x0 + dw * kx] += x[b, gi * g_ic + i, iy, ix] * \
                        weights[o, i, ky, kx]
    g = Graph()
    body = (g.input(x) + g.output("float32", out.size) + shape4(n, c, h, w)
            + shape4(*out_shape) + struct.pack("<i", groups)
            + window(fh, fw, sh, sw, dh, dw, pads) + act(*NO_ACT) + weights.tobytes()
            + bias.tobytes())
    g.node(Opcode.CONV2D_TRANSPOSE, body)
    assert_bits_equal(g.run()[0], out.reshape(-1))


@pytest.mark.parametrize("op", range(4))
def test_reduce_window2d(op: int) -> None:
    rng = np.random.default_rng(op)
    n, c, h, w = 1, 2, 5, 6
    fh, fw, sh, sw, dh, dw = 3, 2, 2, 1, 1, 2
    pads = (1, 1, 1, 0)
    init = [F32(0), F32(FLT_MAX), F32(-FLT_MAX), F32(0)][op]
    x = f32(rng, n, c, h, w)
    oh, ow = windowed(h, fh, sh, dh, pads[:2]), windowed(w, fw, sw, dw, pads[2:])
    lo, hi = F32(-1.5), F32(2.25)
    want = []
    for b, ch, oy, ox in itertools.product(range(n), range(c), range(oh), range(ow)):
        y0, x0 = oy * sh - pads[0], ox * sw - pads[2]
        value, count = init, 0
        for ky in taps(y0, dh, fh, h):
            for kx in taps(x0, dw, fw, w):
                v = x[b, ch, y0 + dh * ky, x0 + dw * kx]
                value = [value + v, v if v < value else value, v if value < v else value,
                         value + v][op]
                count += 1
        if op == 0:
            value = value / F32(count)
        want.append(clamp(value, lo, hi))
    g = Graph()
    body = (g.input(x) + g.output("float32", len(want)) + struct.pack("<i", op)
            + shape4(n, c, h, w) + window(fh, fw, sh, sw, dh, dw, pads)
            + struct.pack("<f", init) + act(lo, hi))
    g.node(Opcode.REDUCE_WINDOW2D, body)
    assert_bits_equal(g.run()[0], np.array(want, F32))


@pytest.mark.parametrize("op", range(4))
def test_reduce_scales_mean_by_the_range_sizes(op: int) -> None:
    rng = np.random.default_rng(op)
    in_shape, out_shape = (2, 3, 4, 5), (2, 1, 4, 1)
    x = f32(rng, *in_shape)
    init = [F32(0), F32(FLT_MAX), F32(-FLT_MAX), F32(0)][op]
    out = np.full(math.prod(out_shape), init, F32)
    for index in itertools.product(*map(range, in_shape)):
        o, v = _reduced(index, out_shape), x[index]
        out[o] = [out[o] + v, v if v < out[o] else out[o], v if out[o] < v else out[o],
                  out[o] + v][op]
    if op == 0:  # (float)output.size() / input.size(), over the ranges
        out = out * (F32(out.size) / F32(x.size))
    g = Graph()
    body = (g.input(x) + g.output("float32", out.size) + struct.pack("<i", op)
            + shape4(*in_shape) + shape4(*out_shape) + struct.pack("<f", init))
    g.node(Opcode.REDUCE, body)
    assert_bits_equal(g.run()[0], out)


def _bilinear_ref(x: npt.NDArray[Any], oh: int, ow: int, align: bool) -> list[Any]:
    n, c, h, w = x.shape
    hs, ws = F32(h) / F32(oh), F32(w) / F32(ow)
    if align and oh > 1:
        hs = F32(h - 1) / F32(oh - 1)
    if align and ow > 1:
        ws = F32(w - 1) / F32(ow - 1)
    one = F32(1)
    out = []
    for b, ch, oy, ox in itertools.product(range(n), range(c), range(oh), range(ow)):
        in_y = F32(oy) * hs
        y0 = math.floor(in_y)
        y1 = min(y0 + 1, h - 1)
        in_x = F32(ox) * ws
        x0 = math.floor(in_x)
        x1 = min(x0 + 1, w - 1)
        fy, fx = in_y - F32(y0), in_x - F32(x0)
        a0, a1 = (one - fy) * (one - fx), fy * (one - fx)
        a2, a3 = (one - fy) * fx, fy * fx
        v = (F32(x[b, ch, y0, x0]) * a0 + F32(x[b, ch, y1, x0]) * a1
             + F32(x[b, ch, y0, x1]) * a2 + F32(x[b, ch, y1, x1]) * a3)
        out.append(int(v) if x.dtype == np.uint8 else v)
    return out


def _nearest_ref(x: npt.NDArray[Any], oh: int, ow: int) -> list[Any]:
    n, c, h, w = x.shape
    hs, ws = F32(h) / F32(oh), F32(w) / F32(ow)
    return [x[b, ch, min(math.floor(F32(oy) * hs), h - 1), min(math.floor(F32(ox) * ws), w - 1)]
            for b, ch, oy, ox in itertools.product(range(n), range(c), range(oh), range(ow))]


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
@pytest.mark.parametrize(("mode", "align", "oh", "ow"), [
    (0, False, 9, 4), (0, True, 9, 4), (0, True, 1, 13), (1, False, 9, 4), (1, False, 3, 11),
])
def test_resize_image(dtype: str, mode: int, align: bool, oh: int, ow: int) -> None:
    rng = np.random.default_rng(oh * ow)
    x = u8(rng, 1, 2, 5, 7) if dtype == "uint8" else f32(rng, 1, 2, 5, 7)
    want = _bilinear_ref(x, oh, ow, align) if mode == 0 else _nearest_ref(x, oh, ow)
    g = Graph()
    body = (g.input(x) + g.output(dtype, len(want)) + shape4(*x.shape)
            + struct.pack("<3i?3x", oh, ow, mode, align))
    g.node(Opcode.RESIZE_IMAGE, body)
    assert_bits_equal(g.run()[0], np.array(want, dtype))


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_pad_pads_and_crops(dtype: str) -> None:
    rng = np.random.default_rng(5)
    in_shape = (1, 3, 4, 5)
    paddings = ((0, 1), (1, -1), (-1, 2), (2, 0))
    x = u8(rng, *in_shape) if dtype == "uint8" else f32(rng, *in_shape)
    pad_value = np.array([np.nan], F32).view(np.uint32)[0] | 1 if dtype == "float32" else 0x7B
    out_shape = tuple(s + a + b for s, (a, b) in zip(in_shape, paddings, strict=True))
    fill = np.array([pad_value], np.uint32).view(F32)[0] if dtype == "float32" \
        else np.uint8(pad_value)
    want = []
    for index in itertools.product(*map(range, out_shape)):
        src = tuple(i - p[0] for i, p in zip(index, paddings, strict=True))
        inside = all(0 <= s < d for s, d in zip(src, in_shape, strict=True))
        want.append(x[src] if inside else fill)
    g = Graph()
    body = (g.input(x) + g.output(dtype, len(want)) + shape4(*in_shape)
            + struct.pack("<8i", *itertools.chain(*paddings))
            + struct.pack("<2I", 0, int(pad_value)))
    g.node(Opcode.PAD, body)
    assert_bits_equal(g.run()[0], np.array(want, dtype))


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
@pytest.mark.parametrize("perm", [(0, 2, 3, 1), (3, 1, 0, 2), (0, 1, 2, 3)])
def test_transpose(dtype: str, perm: tuple[int, ...]) -> None:
    rng = np.random.default_rng(6)
    in_shape = (2, 3, 4, 5)
    x = u8(rng, *in_shape) if dtype == "uint8" else f32(rng, *in_shape)
    out_shape = tuple(in_shape[p] for p in perm)
    out = np.empty(out_shape, x.dtype)
    for o in itertools.product(*map(range, out_shape)):
        i = [0, 0, 0, 0]
        for k in range(4):
            i[perm[k]] = o[k]
        out[o] = x[tuple(i)]
    g = Graph()
    body = g.input(x) + g.output(dtype, x.size) + shape4(*in_shape) + shape4(*perm)
    g.node(Opcode.TRANSPOSE, body)
    assert_bits_equal(g.run()[0], out.reshape(-1))


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_strided_slice(dtype: str) -> None:
    rng = np.random.default_rng(7)
    in_shape = (2, 5, 6, 7)
    x = u8(rng, *in_shape) if dtype == "uint8" else f32(rng, *in_shape)
    begin, end, strides = (1, 4, 0, 6), (2, -1, 6, 0), (1, -2, 3, -2)

    def walk(b: int, e: int, s: int) -> list[int]:
        out, i = [], b
        while (i < e) if s > 0 else (i > e):
            out.append(i)
            i += s
        return out

    want = [x[d0, d1, d2, d3] for d0 in walk(begin[0], end[0], strides[0])
            for d1 in walk(begin[1], end[1], strides[1])
            for d2 in walk(begin[2], end[2], strides[2])
            for d3 in walk(begin[3], end[3], strides[3])]
    g = Graph()
    body = (g.input(x) + g.output(dtype, len(want)) + shape4(*in_shape) + shape4(*begin)
            + shape4(*end) + shape4(*strides) + struct.pack("<5i", 0, 0, 0, 0, 0))
    g.node(Opcode.STRIDED_SLICE, body)
    assert_bits_equal(g.run()[0], np.array(want, dtype))


def _round_half_away(v: float) -> int:
    whole = math.trunc(v)
    return whole + (int(math.copysign(1, v)) if abs(v - whole) >= 0.5 else 0)


@pytest.mark.parametrize("count", [10, 11])
def test_quantize_is_riscv_quantize(count: int) -> None:
    scale, zero_point = F32(2.0), 100
    # x * 2 + 100 lands on exact halves: pairs round to even (fcvt.w.s rne), an odd last
    # value rounds away from zero (roundf)
    x = np.array([0.25, 0.75, -0.25, 1.25, 80.0, -80.0, np.nan, np.inf, -np.inf, 3.1, 0.25],
                 F32)[:count]
    want = []
    for i, v in enumerate(x):
        y = v * scale + F32(zero_point)
        if math.isnan(y):
            q = 2**31 - 1
        elif math.isinf(y):
            q = 2**31 - 1 if y > 0 else -(2**31)
        elif i < count // 2 * 2:
            q = round(float(y))  # Python rounds halves to even
        else:
            q = _round_half_away(float(y))
        want.append(clamp(q, 0, 255))
    g = Graph()
    body = g.input(x) + g.output("uint8", count) + struct.pack("<if", zero_point, scale)
    g.node(Opcode.QUANTIZE, body)
    assert_bits_equal(g.run()[0], np.array(want, np.uint8))


def test_dequantize_is_riscv_dequantize() -> None:
    x = np.arange(256, dtype=np.uint8)
    zero_point, scale = 125, F32(7.727321147918701)
    inv = F32(1) / scale
    zero = F32(-zero_point) * inv
    want = np.array([F32(v) * inv + zero for v in x], F32)  # no fused multiply-add
    g = Graph()
    body = g.input(x) + g.output("float32", x.size) + struct.pack("<if", zero_point, scale)
    g.node(Opcode.DEQUANTIZE, body)
    assert_bits_equal(g.run()[0], want)


def test_matmul() -> None:
    rng = np.random.default_rng(8)
    rows, cols, b_cols = 3, 17, 5
    a, b, bias = f32(rng, rows, cols), f32(rng, cols, b_cols), f32(rng, b_cols)
    want = []
    for y, x in itertools.product(range(rows), range(b_cols)):
        value = bias[x]
        for i in range(cols):
            value = value + a[y, i] * b[i, x]
        want.append(clamp(value, F32(0), F32(FLT_MAX)))
    g = Graph()
    body = (g.input(a) + g.input(b) + g.output("float32", rows * b_cols)
            + struct.pack("<3i", rows, cols, b_cols) + act(0, FLT_MAX) + bias.tobytes())
    g.node(Opcode.MATMUL, body)
    assert_bits_equal(g.run()[0], np.array(want, F32))


def test_quantized_matmul() -> None:
    rng = np.random.default_rng(9)
    rows, cols, b_cols = 3, 7, 4
    a, b = u8(rng, rows, cols), u8(rng, cols, b_cols)
    bias = rng.integers(-1000, 1000, b_cols).astype(np.int32)
    a_off, b_off, mul, shift, out_off = -128, -120, 1_300_000_000, 36, 17
    want = []
    for y, x in itertools.product(range(rows), range(b_cols)):
        value = int(bias[x]) + sum((int(a[y, i]) + a_off) * (int(b[i, x]) + b_off)
                                   for i in range(cols))
        want.append(clamp(wrap32(mul_and_carry_shift(value, mul, shift) + out_off), 0, 255))
    g = Graph()
    body = (g.input(a) + g.input(b) + g.output("uint8", rows * b_cols)
            + struct.pack("<8i", rows, cols, b_cols, a_off, b_off, mul, shift, out_off)
            + bias.tobytes())
    g.node(Opcode.QUANTIZED_MATMUL, body)
    assert_bits_equal(g.run()[0], np.array(want, np.uint8))


def nnil(*ops: int | float) -> bytes:
    """An nnil program: ints are opcodes, floats the operands of the ldc_r4 before them."""
    out = b""
    for op in ops:
        out += struct.pack("<f", op) if isinstance(op, float) else bytes([op])
    return out


LDA, LDC, LDC0, LDC1, DUP, POP = 0x03, 0x06, 0x04, 0x05, 0x01, 0x02
ABS, EXP, NEG, SQUARE, FLOOR, LOG = 0x20, 0x23, 0x26, 0x29, 0x24, 0x25
ADD, SUB, MUL, DIV, MIN, MAX, CLAMP, RET = 0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x80, 0xA0


def _nnil_ref(v: np.float32) -> np.float32:
    """clamp(x * 2.5 - exp(-|x|), 0, 6) / max(x*x, 1) + floor(x) - log(1 + x*x)."""
    a = clamp(v * F32(2.5) - libm("expf", -abs(v)), F32(0), F32(6))
    b = v * v
    d = b if F32(1) < b else F32(1)
    return F32(a / d + np.floor(v) - libm("logf", F32(1) + v * v))


def test_nnil_unary_method() -> None:
    rng = np.random.default_rng(10)
    x = np.concatenate([f32(rng, 40), np.array([0, -0.0, 0.5, -1.5], F32)])
    program = nnil(LDA, LDC, 2.5, MUL, LDA, ABS, NEG, EXP, SUB, LDC0, LDC, 6.0, CLAMP,
                   LDA, DUP, MUL, LDC1, MAX, DIV,
                   LDA, FLOOR, ADD,
                   LDC1, LDA, SQUARE, ADD, LOG, SUB, RET, 0xFF)  # bytes after ret: never read
    g = Graph()
    body = g.input(x) + g.output("float32", x.size) + program
    g.node(Opcode.NNIL_UNARY_METHOD, body)
    assert_bits_equal(g.run()[0], np.array([_nnil_ref(v) for v in x], F32))


def test_nnil_without_ret_leaves_the_output_untouched() -> None:
    x = np.arange(6, dtype=F32)
    g = Graph()
    first = g.output("float32", 6)
    g.node(Opcode.UNARY, g.input(x) + first + struct.pack("<i", 6))  # neg
    g.node(Opcode.NNIL_UNARY_METHOD, mem_range(MAIN, "float32", 0, 24) + first
           + nnil(LDA, LDC1, ADD, POP))
    assert_bits_equal(g.run()[0], -x)


@pytest.mark.parametrize(("program", "message"), [
    (nnil(ADD, RET), "pops 2 from a stack of 0"),
    (nnil(LDA, 0x99), "opcode 0x99"),
    (nnil(LDA, LDC) + b"\x00\x00", "without its 4-byte operand"),
    (nnil(*([LDA] * 65), RET), "past its 64 entries"),
])
def test_bad_nnil_programs_are_refused(program: bytes, message: str) -> None:
    g = Graph()
    g.node(Opcode.NNIL_UNARY_METHOD, g.input(np.zeros(2, F32)) + g.output("float32", 2)
           + program)
    with pytest.raises(KmodelFormatError, match=message) as info:
        parse_kmodel(g.build())
    assert info.value.layer == 0


@pytest.mark.parametrize("op", range(10))
def test_unary(op: int) -> None:
    rng = np.random.default_rng(op)
    x = np.concatenate([f32(rng, 30), np.array([0, -0.0, 2.5, -2.5], F32)])
    if op in (5, 7):  # log, rsqrt: of positives (and a zero)
        x = np.abs(x)
    fns: list[Callable[[np.float32], np.float32]] = [
        abs, np.ceil, lambda v: libm("cosf", v),
        lambda v: libm("expf", v), np.floor, lambda v: libm("logf", v),
        lambda v: -v, lambda v: F32(1) / np.sqrt(v), lambda v: libm("sinf", v),
        lambda v: v * v,
    ]
    with np.errstate(divide="ignore"):
        want = np.array([fns[op](v) for v in x], F32)
    g = Graph()
    g.node(Opcode.UNARY, g.input(x) + g.output("float32", x.size) + struct.pack("<i", op))
    assert_bits_equal(g.run()[0], want)


def test_softmax() -> None:
    rng = np.random.default_rng(12)
    outer, inner, beta = 3, 7, F32(0.75)
    x = f32(rng, outer, inner)
    want = []
    for row in x:
        peak = row[0]
        for v in row[1:]:
            peak = max(peak, v)  # no NaNs here: the same as std::max_element
        values = [libm("expf", (v - peak) * beta) for v in row]
        total = F32(0)
        for v in values:
            total = total + v
        want += [v / total for v in values]
    g = Graph()
    g.node(Opcode.SOFTMAX, g.input(x) + g.output("float32", x.size)
           + struct.pack("<2if", inner, outer, beta))
    assert_bits_equal(g.run()[0], np.array(want, F32))


def test_concat_memory_copy_and_table_lookup() -> None:
    rng = np.random.default_rng(13)
    a, b = u8(rng, 2, 6), u8(rng, 2, 9)
    table = u8(rng, 256)
    g = Graph()
    ra, rb = g.input(a), g.input(b)
    rt = g.input(table)
    joined = g.output("uint8", 30)
    g.node(Opcode.CONCAT, joined + struct.pack("<3I", 3, 2, 2) + ra + rb
           + struct.pack("<2i", 2, 3))
    copied = g.output("uint8", 30)
    g.node(Opcode.MEMORY_COPY, mem_range(MAIN, "uint8", struct.unpack_from("<I", joined, 8)[0],
                                         30) + copied)
    looked = g.output("uint8", 30)
    g.node(Opcode.TABLE_LOOKUP1D, copied + rt + looked)
    got_joined, got_copied, got_looked = g.run()
    want = np.concatenate([a, b], axis=1).reshape(-1)
    assert_bits_equal(got_joined, want)
    # memory_copy moves whole float32 values only: 30 bytes copy as 28
    assert_bits_equal(got_copied, np.concatenate([want[:28], np.zeros(2, np.uint8)]))
    assert_bits_equal(got_looked, table[got_copied])


# -- the cpu_* ops: NHWC ----------------------------------------------------------------------


@pytest.mark.parametrize("depthwise", [False, True])
def test_cpu_conv2d(depthwise: bool) -> None:
    rng = np.random.default_rng(14)
    n, h, w, c, oc = 1, 5, 6, 3, 4
    fh, fw, sh, sw, dh, dw = 3, 3, 1, 2, 2, 1
    pads = (2, 2, 1, 1)
    oc = c if depthwise else oc
    x = f32(rng, n, h, w, c)
    weights = f32(rng, oc, fh, fw, 1 if depthwise else c)
    bias = f32(rng, oc)
    oh, ow = windowed(h, fh, sh, dh, pads[:2]), windowed(w, fw, sw, dw, pads[2:])
    want = []
    for b, oy, ox, o in itertools.product(range(n), range(oh), range(ow), range(oc)):
        y0, x0 = oy * sh - pads[0], ox * sw - pads[2]
        value = bias[o]
        for ky in taps(y0, dh, fh, h):
            for kx in taps(x0, dw, fw, w):
                pix = x[b, y0 + dh * ky, x0 + dw * kx]
                if depthwise:
                    value = value + pix[o] * weights[o, ky, kx, 0]
                else:
                    for i in range(c):
                        value = value + pix[i] * weights[o, ky, kx, i]
        want.append(clamp(value, F32(-1), F32(6)))
    g = Graph()
    head = g.input(x) + g.output("float32", len(want)) + shape4(n, h, w, c)
    if not depthwise:
        head += struct.pack("<i", oc)
    g.node(Opcode.CPU_DEPTHWISE_CONV2D if depthwise else Opcode.CPU_CONV2D,
           head + window(fh, fw, sh, sw, dh, dw, pads) + act(-1, 6) + weights.tobytes()
           + bias.tobytes())
    assert_bits_equal(g.run()[0], np.array(want, F32))


@pytest.mark.parametrize("depthwise", [False, True])
def test_cpu_quantized_conv2d_subtracts_its_offsets(depthwise: bool) -> None:
    rng = np.random.default_rng(15)
    n, h, w, c, oc = 1, 4, 5, 3, 2
    fh, fw, sh, sw, dh, dw = 3, 2, 1, 1, 1, 1
    pads = (1, 1, 0, 1)
    oc = c if depthwise else oc
    x = u8(rng, n, h, w, c)
    weights = u8(rng, oc, fh, fw, 1 if depthwise else c)
    bias = rng.integers(-3000, 3000, oc).astype(np.int32)
    in_off, w_off, mul, shift, out_off = 128, 119, 1_200_000_000, 38, 99
    oh, ow = windowed(h, fh, sh, dh, pads[:2]), windowed(w, fw, sw, dw, pads[2:])
    want = []
    for b, oy, ox, o in itertools.product(range(n), range(oh), range(ow), range(oc)):
        y0, x0 = oy * sh - pads[0], ox * sw - pads[2]
        value = int(bias[o])
        for ky in taps(y0, dh, fh, h):
            for kx in taps(x0, dw, fw, w):
                pix = x[b, y0 + dh * ky, x0 + dw * kx]
                channels = [(o, 0)] if depthwise else [(i, i) for i in range(c)]
                for i, j in channels:
                    value += (int(pix[i]) - in_off) * (int(weights[o, ky, kx, j]) - w_off)
        want.append(clamp(wrap32(mul_and_carry_shift(wrap32(value), mul, shift) + out_off),
                          0, 255))
    g = Graph()
    head = g.input(x) + g.output("uint8", len(want)) + shape4(n, h, w, c)
    if not depthwise:
        head += struct.pack("<i", oc)
    op = Opcode.CPU_QUANTIZED_DEPTHWISE_CONV2D if depthwise else Opcode.CPU_QUANTIZED_CONV2D
    g.node(op, head + window(fh, fw, sh, sw, dh, dw, pads)
           + struct.pack("<5i", in_off, w_off, mul, shift, out_off) + weights.tobytes()
           + bias.tobytes())
    assert_bits_equal(g.run()[0], np.array(want, np.uint8))


@pytest.mark.parametrize("op", range(3))
def test_cpu_reduce_window2d(op: int) -> None:
    rng = np.random.default_rng(16)
    n, h, w, c = 1, 5, 4, 3
    fh, fw, sh, sw = 2, 3, 2, 1
    pads = (0, 1, 1, 1)
    init = [F32(0), F32(FLT_MAX), F32(-FLT_MAX)][op]
    x = f32(rng, n, h, w, c)
    oh, ow = windowed(h, fh, sh, 1, pads[:2]), windowed(w, fw, sw, 1, pads[2:])
    want = []
    for b, oy, ox, ch in itertools.product(range(n), range(oh), range(ow), range(c)):
        y0, x0 = oy * sh - pads[0], ox * sw - pads[2]
        value, count = init, 0
        for ky in taps(y0, 1, fh, h):
            for kx in taps(x0, 1, fw, w):
                v = x[b, y0 + ky, x0 + kx, ch]
                value = [value + v, v if v < value else value, v if value < v else value][op]
                count += 1
        want.append(value / F32(count) if op == 0 else value)
    g = Graph()
    g.node(Opcode.CPU_REDUCE_WINDOW2D, g.input(x) + g.output("float32", len(want))
           + struct.pack("<i", op) + shape4(n, h, w, c) + window(fh, fw, sh, sw, 1, 1, pads)
           + struct.pack("<f", init) + act(*NO_ACT))
    assert_bits_equal(g.run()[0], np.array(want, F32))


def test_cpu_reduce_window2d_has_no_sum() -> None:
    g = Graph()
    g.node(Opcode.CPU_REDUCE_WINDOW2D, g.input(np.zeros(4, F32)) + g.output("float32", 4)
           + struct.pack("<i", 3) + shape4(1, 2, 2, 1) + window(1, 1, 1, 1, 1, 1, (0,) * 4)
           + struct.pack("<f", 0) + act(*NO_ACT))
    with pytest.raises(KmodelFormatError, match="no case for it"):
        parse_kmodel(g.build())


@pytest.mark.parametrize(("batches", "c", "h", "w"), [(2, 5, 3, 20), (1, 3, 2, 64)])
def test_kpu_upload_lays_rows_out(batches: int, c: int, h: int, w: int) -> None:
    rng = np.random.default_rng(17)
    x = u8(rng, batches, c, h, w)
    per_batch = kpu_rows(w, h, c) * 64
    g = Graph()
    start = 4096
    kpu_out = mem_range(KPU, "uint8", start, batches * per_batch)
    g.node(Opcode.KPU_UPLOAD, g.input(x) + kpu_out + shape4(batches, c, h, w))
    g.outputs.append(kpu_out)
    raw = g.run()[0]
    ram = np.zeros(KPU_RAM_BYTES, np.uint8)
    ram[start : start + raw.size] = raw
    for b in range(batches):
        np.testing.assert_array_equal(kpu_download(ram, start + b * per_batch, c, h, w), x[b])
    model = parse_kmodel(g.build())
    assert model.kpu_ram_bytes == start + batches * per_batch


def _kpu_conv2d_body(main_out: bytes, batches: int, ic: int, oc: int, h: int, w: int,
                     src: int, dst: int, weights: npt.NDArray[np.uint8]) -> bytes:
    """A kpu_conv2d body: 3x3, no pooling, arg_add -1500 per in-channel, batch-norm
    identity, activation (v + 1) >> 7 above -1 and 0 below, with 8 bytes of padding
    before the batch-norm table."""
    regs = [0] * 12
    regs[1] = src | dst << 32
    regs[2] = (ic - 1) | (oc - 1) << 32 | (oc - 1) << 48
    regs[3] = (w - 1) | (h - 1) << 10 | (w - 1) << 32 | (h - 1) << 42
    regs[4] = 1 | 17 << 24 | 8 << 32  # 3x3, pad value 17, bwsx_base_addr = 8
    regs[10] = (1 << 40) - 1500
    bn = [1 | 0 << 24 | 0 << 56] * oc  # mul 1, add 0, shift 0
    segments = [((1 << 36) - (1 << 35)) << 24]  # start -2**35, mul 0: 0
    segments.append(7 | 1 << 8 | ((1 << 36) - 1) << 24)  # start -1, mul 1, shift 7
    segments += [((1 << 35) - 1) << 24] * 14  # never chosen
    return (main_out + struct.pack("<2i", batches, 0) + struct.pack("<12Q", *regs)
            + bytes(8) + struct.pack(f"<{oc}Q", *bn) + struct.pack("<16Q", *segments)
            + bytes(16) + weights.tobytes())


def test_kpu_conv2d_runs_every_batch_and_copies_to_main_memory() -> None:
    rng = np.random.default_rng(18)
    batches, ic, oc, h, w = 2, 3, 5, 4, 20
    x = u8(rng, batches, ic, h, w)
    weights = rng.integers(0, 4, (oc, ic * 9)).astype(np.uint8)
    src, dst = 0, 100
    g = Graph()
    per_in = kpu_rows(w, h, ic) * 64
    g.node(Opcode.KPU_UPLOAD, g.input(x) + mem_range(KPU, "uint8", src * 64, batches * per_in)
           + shape4(batches, ic, h, w))
    main_out = g.output("uint8", batches * oc * h * w)
    g.node(Opcode.KPU_CONV2D, _kpu_conv2d_body(main_out, batches, ic, oc, h, w, src, dst,
                                                weights))
    per_out = kpu_rows(w, h, oc) * 64
    g.outputs.append(mem_range(KPU, "uint8", dst * 64, batches * per_out))
    model = parse_kmodel(g.build())
    conv_node = model.program.layers[1]
    assert isinstance(conv_node, KpuConv2d)
    assert conv_node.batches == batches
    assert model.summaries[1].macs == batches * h * w * oc * ic * 9
    assert model.kpu_ram_bytes == (dst * 64 + batches * per_out)
    in_main, in_kpu = create_executor(model).run([x])
    prepared = PreparedConv.from_conv(conv_node.conv, "half-even")
    want = np.stack([prepared.run(x[b]) for b in range(batches)])
    assert 0 < np.count_nonzero(want) < want.size  # both segments are used
    np.testing.assert_array_equal(in_main.reshape(want.shape), want)
    ram = np.zeros(KPU_RAM_BYTES, np.uint8)
    ram[dst * 64 : dst * 64 + in_kpu.size] = in_kpu
    for b in range(batches):
        np.testing.assert_array_equal(kpu_download(ram, dst * 64 + b * per_out, oc, h, w),
                                      want[b])


# =========================================================================================
# hostile files
# =========================================================================================


def test_random_headers_never_crash() -> None:
    rng = np.random.default_rng(19)
    for _ in range(300):
        fields = rng.integers(0, 1 << 32, 8, dtype=np.uint64)
        fields[4] %= 1 << int(rng.integers(1, 33))  # main_mem: often plausible
        header = struct.pack("<10I", KMDL, 4, *fields.tolist())
        tail = rng.integers(0, 256, int(rng.integers(0, 400)), dtype=np.uint8).tobytes()
        with pytest.raises(KmodelError):
            parse_kmodel(header + tail)


def _one_node(opcode: int, body: bytes, main_mem: int = 256) -> bytes:
    g = Graph()
    g.input(np.zeros(4, F32))
    g.output("float32", 4)
    g.node(opcode, body)
    return g.build(main_mem)


def test_unknown_opcode_names_node_and_offset() -> None:
    data = _one_node(0x77, b"")
    with pytest.raises(KmodelFormatError, match="unknown opcode 0x77") as info:
        parse_kmodel(data)
    assert info.value.layer == 0
    assert info.value.offset == 40 + 16 + 16 + 16


def test_range_outside_main_memory_is_refused() -> None:
    body = (mem_range(MAIN, "float32", 0, 16) + mem_range(MAIN, "float32", 250, 16)
            + struct.pack("<i", 0))
    with pytest.raises(KmodelFormatError, match=r"output \[250, 266\) is outside the 256"):
        parse_kmodel(_one_node(Opcode.UNARY, body))


@pytest.mark.parametrize(("body", "message"), [
    (mem_range(MAIN, "float32", 0, 16) + mem_range(0, "float32", 0, 0) + struct.pack("<i", 0),
     "write into the model's constants"),
    (mem_range(MAIN, "uint8", 0, 16) + mem_range(MAIN, "float32", 16, 16)
     + struct.pack("<i", 0), "must hold float32"),
    (mem_range(3, "float32", 0, 16) + mem_range(MAIN, "float32", 16, 16)
     + struct.pack("<i", 0), "memory type 3"),
    (mem_range(MAIN, "float32", 0, 16) + mem_range(MAIN, "float32", 16, 16)
     + struct.pack("<i", 10), "unary_op 10"),
    (mem_range(MAIN, "float32", 0, 16) + mem_range(MAIN, "float32", 16, 8)
     + struct.pack("<i", 0), "writes 16 bytes but its range has 8"),
    (mem_range(MAIN, "float32", 0, 16) + mem_range(MAIN, "float32", 16, 16), "unary_op"),
])
def test_inconsistent_bodies_are_refused(body: bytes, message: str) -> None:
    with pytest.raises(KmodelFormatError, match=message) as info:
        parse_kmodel(_one_node(Opcode.UNARY, body))
    assert info.value.layer == 0


def test_zero_stride_slice_is_refused() -> None:
    body = (mem_range(MAIN, "float32", 0, 16) + mem_range(MAIN, "float32", 16, 16)
            + shape4(1, 1, 1, 4) + shape4(0, 0, 0, 0) + shape4(1, 1, 1, 4)
            + shape4(1, 1, 1, 0) + bytes(20))
    with pytest.raises(KmodelFormatError, match="zero stride"):
        parse_kmodel(_one_node(Opcode.STRIDED_SLICE, body))


def test_quantized_shift_out_of_range_is_refused() -> None:
    body = (mem_range(MAIN, "uint8", 0, 4) + mem_range(MAIN, "uint8", 4, 4)
            + mem_range(MAIN, "uint8", 8, 4) + struct.pack("<i", 0) + shape4(1, 1, 1, 4) * 3
            + struct.pack("<9i", 0, 1, 0, 0, 1, 0, 0, 1, -3))
    with pytest.raises(KmodelFormatError, match="shift -3 is outside"):
        parse_kmodel(_one_node(Opcode.QUANTIZED_BINARY, body))


def test_working_memory_beyond_the_chip_is_refused() -> None:
    data = bytearray(kmodel_path("iris_v4").read_bytes())
    struct.pack_into("<I", data, 20, 64 * 1024 * 1024)
    with pytest.raises(KmodelFormatError, match="8 MiB"):
        parse_kmodel(bytes(data))


def test_kpu_conv2d_batches_must_fit_kpu_ram() -> None:
    data = bytearray(kmodel_path("voc20_yolo2_v4").read_bytes())
    model = parse_kmodel(bytes(data))
    first = model.program.layers[0]
    struct.pack_into("<i", data, first.offset + 16, 40)  # batches
    with pytest.raises(KmodelFormatError, match="40 batches of the input") as info:
        parse_kmodel(bytes(data))
    assert info.value.layer == 0


def test_kpu_conv2d_padding_skips_are_bounds_checked() -> None:
    data = bytearray(kmodel_path("voc20_yolo2_v4").read_bytes())
    first = parse_kmodel(bytes(data)).program.layers[0]
    reg4 = first.offset + 24 + 4 * 8
    struct.pack_into("<I", data, reg4 + 4, 0xFFFF0000)  # bwsx_base_addr
    with pytest.raises(KmodelFormatError, match="bwsx_base_addr") as info:
        parse_kmodel(bytes(data))
    assert info.value.layer == 0


def test_kpu_resident_input_and_output_ranges() -> None:
    model = parse_kmodel(kmodel_path("ultraface_v4").read_bytes())
    assert isinstance(model.program, V4Program)
    assert model.program.inputs[0].memory is MemoryType.K210_KPU
    assert all(r.memory is MemoryType.MAIN for r in model.program.outputs)


def test_quantized_conv2d_with_offsets_beyond_float64_stays_exact() -> None:
    """Offsets near the int32 limits make sums no float64 holds: the integer path, which
    wraps as the reference's int32 accumulators do."""
    rng = np.random.default_rng(4)
    x = u8(rng, 1, 2, 4, 5)
    weights = u8(rng, 3, 2, 3, 3)
    bias = rng.integers(-5000, 5000, 3).astype(np.int32)
    in_off, w_off = -(1 << 30), (1 << 30) - 7
    got = neutral_ops.quantized_conv2d(x, weights, bias, 1, np.array([3, 3, 1, 1, 1, 1, 1, 1]),
                                       4, 5, in_off, w_off)
    for o, oy, ox in itertools.product(range(3), range(4), range(5)):
        value = int(bias[o])
        for i, ky, kx in itertools.product(range(2), range(3), range(3)):
            y, xx = oy - 1 + ky, ox - 1 + kx
            if 0 <= y < 4 and 0 <= xx < 5:
                value += (int(x[0, i, y, xx]) + in_off) * (int(weights[o, i, ky, kx]) + w_off)
        assert wrap32(int(got[0, o, oy, ox])) == wrap32(value)


@pytest.mark.parametrize("read_at_end", [False, True])
def test_chained_kpu_convs_hand_over_unless_the_map_is_read_later(read_at_end: bool) -> None:
    """The first convolution's map goes straight to the second, unless the model's outputs
    read it from KPU RAM: then it is uploaded there, and the outputs hold it."""
    rng = np.random.default_rng(19)
    ic, oc, h, w = 3, 4, 4, 20
    x = u8(rng, 1, ic, h, w)
    g = Graph()
    g.node(Opcode.KPU_UPLOAD, g.input(x) + mem_range(KPU, "uint8", 0, kpu_rows(w, h, ic) * 64)
           + shape4(1, ic, h, w))
    for i, (c, src, dst) in enumerate([(ic, 0, 100), (oc, 100, 200)]):
        weights = rng.integers(0, 4, (oc, c * 9)).astype(np.uint8)
        g.node(Opcode.KPU_CONV2D, _kpu_conv2d_body(g.output("uint8", oc * h * w), 1, c, oc, h,
                                                    w, src, dst, weights))
        assert len(g.outputs) == i + 1
    if read_at_end:
        g.outputs.append(mem_range(KPU, "uint8", 100 * 64, kpu_rows(w, h, oc) * 64))
    model = parse_kmodel(g.build())
    first_node, second_node = model.program.layers[1:3]
    assert isinstance(first_node, KpuConv2d)
    assert isinstance(second_node, KpuConv2d)
    executor = create_executor(model)
    assert (first_node.index in executor._handoff.handed) is not read_at_end  # type: ignore[attr-defined]
    outputs = executor.run([x])
    first = PreparedConv.from_conv(first_node.conv, "half-even").run(x[0])
    second = PreparedConv.from_conv(second_node.conv, "half-even").run(first)
    np.testing.assert_array_equal(outputs[0].reshape(first.shape), first)
    np.testing.assert_array_equal(outputs[1].reshape(second.shape), second)
    if read_at_end:
        ram = np.zeros(KPU_RAM_BYTES, np.uint8)
        ram[100 * 64 : 100 * 64 + outputs[2].size] = outputs[2].reshape(-1)
        np.testing.assert_array_equal(kpu_download(ram, 100 * 64, oc, h, w), first)
