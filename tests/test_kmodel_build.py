"""Our own kmodels: quantization maths, then build, parse, run and compare with float.

The end-to-end bound (``_error_bound``) follows the layers: with ``E`` the input's error
and ``x_max`` the largest input value the KPU can see, a channel's pre-activation is off by
at most ``E*sum|w| + x_max*sum|w_q - w|`` (float weights against their codes); activation
(slope <= 1), clamping and max or select pools do not enlarge that, and the layer's own
rounding adds ``0.5 + error`` output LSB (``QuantizedConv.error``: batch-norm and the
activation fit), plus ``(n - 1)/(2n)`` after an ``n``-pixel mean pool. It holds for inputs
that are exact codes and inside the calibrated ranges, which is what the tests feed.
"""

from __future__ import annotations

import dataclasses
import itertools
import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest

from edged.kpu.kmodel import parse_kmodel
from edged.kpu.kmodel.build import (
    ActivationSpec,
    ConvSpec,
    KpuRamError,
    LeakyRelu,
    NetworkSpec,
    QuantizedNetwork,
    build_kmodel,
    calibrate,
    float_forward,
    kpu_ram_layout,
    mean_pool_offset,
    quantize_network,
    write_kmodel,
)
from edged.kpu.kmodel.kpu_regs import KpuConv, PoolType, RowLayout, bits, kpu_rows
from edged.kpu.kmodel.quantize import (
    ActivationTable,
    QuantizedConv,
    QuantParam,
    extract_value_and_shift,
    fit_activation,
    quantize_weights,
)
from edged.kpu.kmodel.v3 import Conv, Quantize, V3LayerType
from edged.kpu.sim.executor import Rounding, create_executor
from edged.kpu.sim.kpu_kernels import Activation

F64 = npt.NDArray[np.float64]
U8 = npt.NDArray[np.uint8]


def _conv(rng: np.random.Generator, out: int, inp: int, k: int, *,
          activation: ActivationSpec = "linear", pool: PoolType = PoolType.BYPASS,
          depthwise: bool = False) -> ConvSpec:
    """Random layer, He-like weights, channels of different strength."""
    fan_in = k * k * (1 if depthwise else inp)
    w = rng.normal(0.0, 1.0 / np.sqrt(fan_in), (out, 1 if depthwise else inp, k, k))
    w *= rng.uniform(0.3, 1.5, (out, 1, 1, 1))
    b = rng.normal(0.0, 0.2, out)
    return ConvSpec(w.astype(np.float32), b.astype(np.float32), activation, pool, depthwise)


def _images(spec: NetworkSpec, rng: np.random.Generator, count: int) -> tuple[U8, F64]:
    """Random codes and the floats they stand for (exactly representable inputs)."""
    codes = rng.integers(0, 256, (count, *spec.input_shape)).astype(np.uint8)
    input_q = QuantParam.from_range(*spec.input_range, integer_bias=False)
    return codes, input_q.dequantize(codes)


def _error_bound(net: QuantizedNetwork) -> float:
    """Worst-case ``|kmodel - float_forward|`` of the output, in float units (module doc)."""
    q_in = net.input_q
    error = abs(q_in.zero_point + q_in.bias) / q_in.scale  # a fractional input bias pads off 0
    for layer, q in zip(net.spec.layers, net.layers, strict=True):
        w = np.asarray(layer.weights, np.float64).reshape(layer.out_channels, -1)
        x_max = float(np.abs(q_in.dequantize(np.array([0, 255]))).max())
        pre = error * np.abs(w).sum(axis=1) + x_max * np.abs(q.weights.dequantize() - w).sum(1)
        own = 0.5 + q.error + mean_pool_offset(layer.pool)
        error = float(pre.max()) + own / q.output.scale
        q_in = q.output
    return error


@dataclass(frozen=True, eq=False)
class _Run:
    net: QuantizedNetwork
    codes: U8
    got: F64
    """The kmodel's outputs, one per image."""
    want: F64
    """float_forward of the same images."""
    layers: list[U8]
    """Every KPU layer's uint8 output, stacked over the images."""


def _round_trip(spec: NetworkSpec, seed: int, rounding: Rounding = "half-even") -> _Run:
    """Build from random calibration images, parse, and run those images."""
    codes, floats = _images(spec, np.random.default_rng(seed), 4)
    net = quantize_network(spec, calibrate(spec, list(floats)))
    executor = create_executor(parse_kmodel(write_kmodel(net)), rounding=rounding)
    got, seen = [], []
    produced: dict[int, npt.NDArray[np.generic] | None] = {}
    for image in codes:
        got.append(executor.run([image], observer=lambda i, _s, out: produced.update({i: out}))[0])
        seen.append([np.asarray(produced[i], np.uint8) for i in range(len(spec.layers))])
    layers = [np.stack([s[i] for s in seen]) for i in range(len(spec.layers))]
    return _Run(net, codes, np.stack(got).astype(np.float64),
                float_forward(spec, floats).astype(np.float64), layers)


def _layer_reference(layer: ConvSpec, q: QuantizedConv, x: F64) -> F64:
    """The layer in float with the weights the KPU holds, on the KPU's own input, clipped to
    what its output codes can hold before pooling (a pool-only depthwise layer)."""
    held = q.weights.dequantize().reshape(layer.weights.shape)
    same = dataclasses.replace(layer, weights=held, pool=PoolType.BYPASS)
    y = float_forward(NetworkSpec(x.shape[1:], (same,)), x).astype(np.float64)
    lo, hi = q.output.dequantize(np.array([0, 255]))
    channels = layer.out_channels
    pool = ConvSpec(np.ones((channels, 1, 1, 1)), np.zeros(channels), pool=layer.pool,
                    depthwise=True)
    return float_forward(NetworkSpec(y.shape[1:], (pool,)), np.clip(y, lo, hi)).astype(
        np.float64)


def _check(run: _Run) -> float:
    """Assert both bounds; return the worst end-to-end error in output LSB.

    Layer by layer, against float maths on the KPU's own input with the weights it holds,
    only the layer's rounding is left: ``0.5 + error (+ mean pool offset)`` LSB, plus, for
    an input whose bias is fractional, its pad code's distance from 0.0 at the border.
    End to end, the derived worst case (module doc) must hold.
    """
    net = run.net
    q_in = net.input_q
    x = q_in.dequantize(run.codes)
    for layer, q, out in zip(net.spec.layers, net.layers, run.layers, strict=True):
        pad = abs(q_in.zero_point + q_in.bias) / q_in.scale
        held = np.abs(q.weights.dequantize()).sum(axis=1).max()
        own = 0.5 + q.error + mean_pool_offset(layer.pool) + pad * held * q.output.scale
        excess = np.abs(q.output.dequantize(out) - _layer_reference(layer, q, x)) * q.output.scale
        assert float(excess.max()) <= own + 1e-3, f"layer output off by {excess.max()} LSB"
        q_in, x = q.output, q.output.dequantize(out)
    bound = _error_bound(net) + 1e-6 * (1.0 + float(np.abs(run.want).max()))  # float32 out
    worst = float(np.abs(run.got - run.want).max())
    assert worst <= bound, f"max error {worst} over the derived bound {bound}"
    return worst * net.output_q.scale


# --- quantization maths -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "max_bits", "max_shift"),
    [(1.0, 16, 20), (2.0**-10, 16, 20), (0.1 / 1024, 16, 20), (-255.0, 24, 15), (3.7, 22, 15),
     (1e-9, 22, 15), ((2**23 - 0.4) / 2**15, 24, 15), (123456.0, 24, 15)],
)
def test_extract_value_and_shift_is_the_closest_that_fits(value: float, max_bits: int,
                                                          max_shift: int) -> None:
    mul, shift = extract_value_and_shift(value, max_bits, max_shift)
    assert abs(mul) < 2 ** (max_bits - 1)
    assert 0 <= shift <= max_shift
    assert abs(mul / 2.0**shift - value) <= 2.0 ** -(shift + 1)
    if shift < max_shift:  # one more bit of shift would overflow the field
        assert abs(round(value * 2.0 ** (shift + 1))) >= 2 ** (max_bits - 1)


def test_extract_value_and_shift_edges() -> None:
    assert extract_value_and_shift(0.0, 24, 15) == (0, 0)
    assert extract_value_and_shift(-40.0, 24, 15) == (-40 * 2**15, 15)  # integers are exact
    with pytest.raises(ValueError, match="does not fit"):
        extract_value_and_shift(2.0**30, 24, 15)


def test_quant_param_holds_zero_exactly() -> None:
    positive = QuantParam.from_range(0.3, 2.0)  # widened to 0
    assert positive.bias == 0.0
    assert positive.dequantize(positive.quantize(0.0)) == 0.0
    mixed = QuantParam.from_range(-1.0, 3.0)
    assert mixed.dequantize(mixed.zero_point) == 0.0
    assert mixed.quantize([-1.0, 3.0]).tolist() == [0, 255]
    assert QuantParam.from_range(0.0, 0.0).scale == pytest.approx(255 / 0.01)  # a dead layer
    camera = QuantParam.from_range(-1.0, 1.0, integer_bias=False)
    assert camera.dequantize([0, 255]).tolist() == [-1.0, 1.0]


def test_weights_share_one_zero_point_with_a_scale_per_channel() -> None:
    rng = np.random.default_rng(1)
    w = rng.normal(0.0, 1.0, (8, 27)) * np.geomspace(0.01, 1.0, 8)[:, None]
    w[3] = 0.0  # a dead channel
    w[5] = np.abs(w[5])  # one without negative weights
    q = quantize_weights(w)
    step = 1.0 / q.scales
    assert np.all(np.abs(q.dequantize() - w) <= 0.5 * step[:, None] + 1e-12)
    assert np.all(q.q[3] == -q.bias)
    assert np.isinf(q.scales[3])
    live = np.arange(8) != 3
    extremes = (q.q.min(axis=1) == 0) | (q.q.max(axis=1) == 255)
    assert np.all(extremes[live])  # every live channel uses its codes to the end
    per_layer = (w.max() - w.min()) / 255  # nncase 0.1: one scale for the layer
    assert np.sum(step[live] ** 2) < 0.5 * live.sum() * per_layer**2  # measured 0.24


@pytest.fixture(scope="module")
def conv_template() -> KpuConv:
    """A parsed KPU layer whose activation tables the tests below replace."""
    spec = NetworkSpec((1, 4, 4), (ConvSpec(np.ones((1, 1, 1, 1)), np.zeros(1)),))
    layer = parse_kmodel(build_kmodel(spec, [np.ones((1, 4, 4))])).program.layers[0]
    assert isinstance(layer, Conv)
    return layer.conv


def _activate(template: KpuConv, table: ActivationTable,
              rounding: Rounding) -> Callable[[npt.NDArray[np.int64]], U8]:
    """The simulated KPU's activation stage with ``table`` loaded."""
    conv = dataclasses.replace(template, act_start=table.start, act_mul=table.mul,
                               act_shift=table.shift, act_add=table.add)
    return Activation.from_conv(conv, rounding)


FIT_LIMITS = {0.1: 0.04, 0.2: 0.01}
"""Measured worst excess over 0.5 LSB at nncase 0.1's post-multiplier 2**10: 0.036 and
0.009 (nncase 0.1's own tables, floor starts and no centring: 0.072 and 0.018)."""


@pytest.mark.parametrize("slope", [0.1, 0.2])
@pytest.mark.parametrize("offset", [0.0, 0.375])
def test_leaky_activation_fit_error_in_lsb(conv_template: KpuConv, slope: float,
                                           offset: float) -> None:
    post_shift, post = 10, 1 << 10
    for zero in (0, 3, 14, 15, 100, 128, 255):
        table = fit_activation(slope, zero, post_shift, offset)
        assert table.error <= FIT_LIMITS[slope]
        knee = zero * post
        v = np.arange(int(knee - (zero + 1) * post / slope), knee + (257 - zero) * post)
        u = (v - knee) / post
        target = zero + offset + np.where(u >= 0, u, slope * u)
        for rounding in ("half-even", "half-up"):
            out = _activate(conv_template, table, rounding)(v).astype(np.float64)
            excess = np.abs(out - np.clip(target, 0, 255)).max() - 0.5
            assert excess <= table.error + 1e-9, (zero, rounding)
            differs = np.count_nonzero(out != np.clip(np.round(target), 0, 255))
            assert differs <= 0.02 * v.size  # only near halves: ties and the slope's drift


@pytest.mark.parametrize("post_shift", [0, 6, 10, 20])
def test_linear_and_relu_tables_are_exact(conv_template: KpuConv, post_shift: int) -> None:
    post = 1 << post_shift
    v = np.arange(-300 * post, 300 * post, max(1, post // 7))
    want = np.clip(np.round(v / post), 0, 255)  # half-even, as the default rounding
    for slope in (1.0, 0.0):  # ReLU's range starts at 0: zero point 0
        table = fit_activation(slope, 0, post_shift)
        assert table.error <= 1e-9
        np.testing.assert_array_equal(_activate(conv_template, table, "half-even")(v), want)
    linear = fit_activation(1.0, 77, post_shift)  # the zero point does not matter
    np.testing.assert_array_equal(_activate(conv_template, linear, "half-even")(v), want)


# --- round trips --------------------------------------------------------------------------------

SINGLE_LAYER_LSB, CHAIN_LSB = 2.5, 4.0
"""Realistic end-to-end limits in output LSB (measured worst: 2.1 for one 3x3 layer, 2.6
for the chains); the derived worst cases are far looser (3 to 8 LSB for one layer, up to
hundreds for chains, where every rounding is assumed to line up)."""


def _chain(rng: np.random.Generator) -> NetworkSpec:
    return NetworkSpec(
        (3, 16, 20),
        (_conv(rng, 8, 3, 3, activation="relu", pool=PoolType.MAX_2_S2),
         _conv(rng, 8, 8, 3, activation=LeakyRelu(0.1), pool=PoolType.MEAN_2_S2, depthwise=True),
         _conv(rng, 6, 8, 1, activation=LeakyRelu(0.2)),
         _conv(rng, 5, 6, 1)),
        input_range=(-0.5, 1.0),
    )


def test_chain_round_trip_within_the_bounds() -> None:
    run = _round_trip(_chain(np.random.default_rng(2)), seed=3)
    assert run.got.shape == run.want.shape == (4, 5, 4, 5)
    assert _check(run) < CHAIN_LSB


@pytest.mark.parametrize("pool", list(PoolType))
def test_every_pool_type_round_trips(pool: PoolType) -> None:
    rng = np.random.default_rng(int(pool))
    spec = NetworkSpec((3, 12, 20), (_conv(rng, 6, 3, 3, activation=LeakyRelu(0.2), pool=pool),))
    run = _round_trip(spec, seed=10 + int(pool))
    assert run.got.shape[2:] == (12 // pool.stride, 20 // pool.stride)
    assert _check(run) < SINGLE_LAYER_LSB


@pytest.mark.parametrize(("width", "channels"), [(16, 5), (24, 3), (40, 6), (70, 5)])
def test_row_layouts_round_trip(width: int, channels: int) -> None:
    """4, 2 and 1 channels per 64-byte row, one and two rows per image row."""
    rng = np.random.default_rng(width)
    spec = NetworkSpec((channels, 6, width), (
        _conv(rng, channels, channels, 1, activation="relu", depthwise=True),
        _conv(rng, 7, channels, 3, activation=LeakyRelu(0.1)),
        _conv(rng, 7, 7, 3, depthwise=True, pool=PoolType.MAX_2_S1)),
        input_range=(-1.0, 1.0))  # code 128 pads for 0.0: 0.5 code off
    assert _check(_round_trip(spec, seed=width, rounding="half-up")) < CHAIN_LSB


def test_mean_pool_codes_are_unbiased() -> None:
    """The activation is lifted by (n - 1)/(2n) LSB so that the floored mean is centred."""
    rng = np.random.default_rng(5)
    spec = NetworkSpec((4, 16, 16), (_conv(rng, 8, 4, 3, activation="relu",
                                           pool=PoolType.MEAN_2_S2),))
    run = _round_trip(spec, seed=6)
    _check(run)
    assert abs(float(np.mean(run.got - run.want)) * run.net.output_q.scale) < 0.15


def test_uint8_output_without_dequantize() -> None:
    spec = dataclasses.replace(_chain(np.random.default_rng(2)), dequantize=False)
    codes, floats = _images(spec, np.random.default_rng(3), 4)
    net = quantize_network(spec, calibrate(spec, floats))  # one batch is fine too
    model = parse_kmodel(write_kmodel(net))
    assert (model.outputs[0].shape, model.outputs[0].dtype) == ((5, 4, 5), "uint8")
    assert [type(layer) for layer in model.program.layers] == [Conv] * 4
    executor = create_executor(model)
    got = np.stack([executor.run([c])[0] for c in codes])
    want = net.output_q.quantize(float_forward(spec, floats))
    assert np.abs(got.astype(np.int64) - want).max() <= CHAIN_LSB


def test_build_is_deterministic_and_equals_its_stages() -> None:
    spec = _chain(np.random.default_rng(2))
    _, floats = _images(spec, np.random.default_rng(3), 3)
    data = build_kmodel(spec, iter(floats))
    assert data == build_kmodel(spec, list(floats))
    assert data == write_kmodel(quantize_network(spec, calibrate(spec, floats)))


# --- the file and its registers ---------------------------------------------------------------


def test_file_layout_and_registers_are_what_was_meant() -> None:
    spec = _chain(np.random.default_rng(2))
    _, floats = _images(spec, np.random.default_rng(3), 2)
    net = quantize_network(spec, calibrate(spec, floats))
    data = write_kmodel(net)
    model = parse_kmodel(data)
    version, flags, arch, n_layers, max_start, main_mem, n_outputs = struct.unpack_from("<7I",
                                                                                      data)
    assert (version, flags, arch, n_layers, n_outputs) == (3, 1, 0, 5, 1)
    maps = spec.feature_maps()
    rows = [kpu_rows(w, h, c) for c, h, w in maps]
    top = max(a + b for a, b in itertools.pairwise(rows))
    assert max_start == 0
    assert model.kpu_ram_bytes == top * 64  # the ping-pong needs no more than that
    assert main_mem == model.main_mem == 104 + 4 * 100  # 5x4x5 codes (8-aligned), floats
    assert (model.outputs[0].shape, model.outputs[0].dtype) == ((5, 4, 5), "float32")
    assert model.inputs[0].shape == spec.input_shape

    layers = model.program.layers
    for i, (layer, q, spec_layer) in enumerate(zip(layers, net.layers, spec.layers,
                                                   strict=False)):
        assert isinstance(layer, Conv)
        a = layer.conv.arg
        (ic, h, w), (oc, oh, ow) = maps[i], maps[i + 1]
        assert (a.in_channels, a.in_height, a.in_width) == (ic, h, w)
        assert (a.out_channels, a.out_height, a.out_width) == (oc, oh, ow)
        assert (a.depthwise, a.pool_type, a.filter_size) == (spec_layer.depthwise, spec_layer.pool,
                                                             spec_layer.kernel)
        assert a.src_addr == (0 if i % 2 == 0 else top - rows[i])
        assert a.dst_addr == (0 if (i + 1) % 2 == 0 else top - rows[i + 1])
        assert (a.arg_x, a.shift_x, a.arg_w, a.shift_w, a.arg_add, a.pad_value) == (
            q.arg_x, q.shift_x, q.arg_w, q.shift_w, q.arg_add, q.pad_value)
        taps = spec_layer.weights[0].size
        per_load = oc if a.depthwise else min(oc, 30 * 1024 // taps)
        assert (a.out_channels_per_load, a.para_size) == (per_load, per_load * taps)
        assert a.load_time == -(-oc // per_load)
        lin, lout = RowLayout.for_width(w), RowLayout.for_width(ow)
        assert (a.channel_switch_addr, a.row_switch_addr, a.coef_group) == (
            lin.row_len * h, lin.row_len, lin.groups)
        assert (a.wb_channel_switch_addr, a.wb_row_switch_addr, a.wb_group) == (
            lout.row_len * oh, lout.row_len, lout.groups)
        assert (a.channel_byte_num, a.dma_total_byte) == (ow * oh - 1, ow * oh * oc - 1)
        assert (a.bwsx_base_addr, a.para_start_addr, a.active_addr, a.send_data_out) == (0,) * 4
        np.testing.assert_array_equal(layer.conv.weights, q.weights.q)
        for got, want in ((layer.conv.bn_mul, q.bn_mul), (layer.conv.bn_shift, q.bn_shift),
                          (layer.conv.bn_add, q.bn_add), (layer.conv.act_start, q.activation.start),
                          (layer.conv.act_mul, q.activation.mul),
                          (layer.conv.act_shift, q.activation.shift),
                          (layer.conv.act_add, q.activation.add)):
            np.testing.assert_array_equal(got, want)
        assert layer.main_mem_out == (0 if i == 3 else None)
        # the body: flags, main memory out, then the 8/128/128/256-aligned parameter blocks
        flags, _, layer_at, weights_at, bn_at, act_at = struct.unpack_from("<6I", data,
                                                                           layer.offset)
        assert flags == (1 if i == 3 else 0)
        assert (layer_at % 8, weights_at % 128, bn_at % 128, act_at % 256) == (0, 0, 0, 0)
        regs = struct.unpack_from("<12Q", data, layer_at)  # fields the parser does not decode
        load_para, burst = bits(regs[4], 10, 1), bits(regs[4], 16, 8)
        load_coor, load_act = bits(regs[5], 0, 1), bits(regs[7], 31, 1)
        assert (load_para, burst, load_coor, load_act) == (1, 15, 1, 1)
    deq = layers[4]
    assert isinstance(deq, Quantize)
    assert deq.type is V3LayerType.DEQUANTIZE
    assert (deq.src, deq.out, deq.count) == (0, 104, 100)
    assert deq.scale == np.float32(1 / net.output_q.scale)
    assert deq.bias == np.float32(net.output_q.bias / net.output_q.scale)
    # every body ends 8-aligned and the last one ends the file
    assert (len(data) % 8, deq.offset + 24) == (0, len(data))


def test_feature_maps_beyond_kpu_ram_are_refused_before_calibration() -> None:
    spec = NetworkSpec((16, 256, 512), (ConvSpec(np.ones((16, 16, 1, 1)), np.zeros(16)),))
    with pytest.raises(KpuRamError, match=r"layer 0: its input 16x256x512 .*\(2 MiB\)"):
        build_kmodel(spec, iter(()))  # an empty calibration would fail later, differently
    fits = NetworkSpec((8, 256, 512), (ConvSpec(np.ones((8, 8, 1, 1)), np.zeros(8)),))
    assert kpu_ram_layout(fits) == [0, 16384]  # exactly 2 MiB: input below, output above


@pytest.mark.parametrize(
    ("shape", "layer", "message"),
    [((3, 8, 600), ConvSpec(np.ones((4, 3, 1, 1)), np.zeros(4)), "beyond the KPU"),
     ((3, 300, 8), ConvSpec(np.ones((4, 3, 1, 1)), np.zeros(4)), "beyond the KPU"),
     ((3, 2, 8), ConvSpec(np.ones((4, 3, 1, 1)), np.zeros(4)), "beyond the KPU"),
     ((3, 8, 8), ConvSpec(np.ones((4, 2, 3, 3)), np.zeros(4)), "takes 2 channels"),
     ((3, 4, 4), ConvSpec(np.ones((4, 3, 3, 3)), np.zeros(4), pool=PoolType.MAX_4_S4),
      None)],
)
def test_network_description_is_checked(shape: tuple[int, int, int], layer: ConvSpec,
                                        message: str | None) -> None:
    if message is None:  # 4x4 pooled to 1x1 is the smallest map
        assert NetworkSpec(shape, (layer,)).feature_maps()[-1] == (4, 1, 1)
        return
    with pytest.raises(ValueError, match=message):
        NetworkSpec(shape, (layer,))


def test_layer_description_is_checked() -> None:
    with pytest.raises(ValueError, match="k 1 or 3"):
        ConvSpec(np.ones((4, 3, 5, 5)), np.zeros(4))
    with pytest.raises(ValueError, match="depthwise"):
        ConvSpec(np.ones((4, 3, 3, 3)), np.zeros(4), depthwise=True)
    with pytest.raises(ValueError, match="bias"):
        ConvSpec(np.ones((4, 3, 3, 3)), np.zeros(3))
    with pytest.raises(ValueError, match="slope"):
        LeakyRelu(1.5)
