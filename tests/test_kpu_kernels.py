"""The KPU kernels against plain loops written here from the SDK's definitions.

The reference below follows ``kernels/k210/k210_kernels.h`` (``kpu_conv2d``,
``kpu_pool2d``, ``kpu_upload``) and ``runtime_op_utility.h`` (``carry_shift``) line by line,
in Python integers; the kernels under test must produce the same bytes for random
parameters, including the edges: shift 0 and 15, negative arg_x and arg_w, any pad value,
negative and saturating activation segments. Parameters stay where the C reference's int64
arithmetic cannot overflow (its behaviour there is undefined), as every nncase layer does.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edged.kpu.kmodel.kpu_regs import KpuConv, KpuLayerArgument, PoolType, RowLayout
from edged.kpu.sim import kpu_kernels
from edged.kpu.sim.executor import Rounding
from edged.kpu.sim.int_gemm import MAX_TERMS, exact_matmul, gemm_weights, input_offset
from edged.kpu.sim.kpu_kernels import (
    PER_VALUE,
    PIECEWISE,
    RELU,
    TABLE,
    PreparedConv,
    kpu_download,
    kpu_pool,
    kpu_upload,
)

# --- the reference, from the SDK ----------------------------------------------------------


def ref_carry_shift(value: int, shift: int, half_even: bool) -> int:
    if shift <= 0:
        return value
    if half_even:  # carry_shift<int64_t, true>
        integral = value >> shift
        fractional = value & ((1 << shift) - 1)
        sign = -1 if value < 0 else 1
        half = 1 << (shift - 1)
        if fractional < half:
            return integral
        if fractional > half:
            return integral + sign
        return integral + sign if integral & 1 else integral
    value >>= shift - 1  # kpu_carry_shift
    if value & 1:
        return (value >> 1) - 1 if value < 0 else (value >> 1) + 1
    return value >> 1


def ref_conv(conv: KpuConv, x: npt.NDArray[np.uint8], half_even: bool) -> npt.NDArray[np.uint8]:
    a = conv.arg
    ic, h, w = x.shape
    k = a.filter_size
    pad = k // 2
    groups = a.out_channels if a.depthwise else 1
    g_ic = 1 if a.depthwise else ic
    out = np.zeros((a.out_channels, h, w), np.uint8)
    for oc in range(a.out_channels):
        og = oc if a.depthwise else 0
        weights = [int(v) for v in conv.weights[oc]]
        for oy in range(h):
            for ox in range(w):
                value = sum_x = sum_w = 0
                for c in range(g_ic):
                    channel = og * g_ic + c if groups > 1 else c
                    for ky in range(k):
                        for kx in range(k):
                            iy, ix = oy - pad + ky, ox - pad + kx
                            xv = a.pad_value if not (0 <= iy < h and 0 <= ix < w) else int(
                                x[channel, iy, ix])
                            wv = weights[(c * k + ky) * k + kx]
                            sum_x += xv
                            sum_w += wv
                            value += xv * wv
                value += ((a.arg_x * sum_x) >> a.shift_x) + ((a.arg_w * sum_w) >> a.shift_w)
                value += a.arg_add * g_ic
                value = ((value * int(conv.bn_mul[oc])) >> int(conv.bn_shift[oc])) + int(
                    conv.bn_add[oc])
                # nncase 0.2: start < value; nncase 0.1 (half-up): start <= value
                seg = 15
                while seg > 0 and not (value > int(conv.act_start[seg]) or (
                        not half_even and value == int(conv.act_start[seg]))):
                    seg -= 1
                r = ref_carry_shift((value - int(conv.act_start[seg])) * int(conv.act_mul[seg]),
                                    int(conv.act_shift[seg]), half_even) + int(conv.act_add[seg])
                out[oc, oy, ox] = min(max(r, 0), 255)
    return out


def ref_pool(x: npt.NDArray[np.uint8], pool: PoolType) -> npt.NDArray[np.uint8]:
    c, h, w = x.shape
    size, stride = pool.filter, pool.stride
    oh, ow = h // stride, w // stride
    out = np.zeros((c, oh, ow), np.uint8)
    for ch in range(c):
        for oy in range(oh):
            for ox in range(ow):
                y0, x0 = oy * stride, ox * stride
                if pool is PoolType.BYPASS:
                    value = int(x[ch, y0, x0])
                elif pool.name.startswith("MAX"):
                    value = 0
                    for ky in range(size):
                        for kx in range(size):
                            iy, ix = y0 + ky, x0 + kx
                            v = int(x[ch, iy, ix]) if iy < h and ix < w else 0
                            value = max(value, v)
                elif pool.name.startswith("MEAN"):
                    total = 0
                    for ky in range(size):
                        for kx in range(size):
                            total += int(x[ch, min(y0 + ky, h - 1), min(x0 + kx, w - 1)])
                    value = total // (size * size)
                else:
                    dx = 1 if pool is PoolType.RIGHT_TOP_2_S2 else 0
                    value = int(x[ch, y0, x0 + dx]) if x0 + dx < w else 0
                out[ch, oy, ox] = value
    return out


def ref_upload(ram: npt.NDArray[np.uint8], offset: int, fmap: npt.NDArray[np.uint8]) -> None:
    c, h, w = fmap.shape
    layout = RowLayout.for_width(w)
    for oc in range(c):
        origin = offset + oc // layout.groups * layout.row_len * h * 64
        origin += oc % layout.groups * layout.row_pitch
        for y in range(h):
            start = origin + y * layout.row_len * 64
            ram[start : start + w] = fmap[oc, y]


# --- random layers --------------------------------------------------------------------------

_BASE = KpuLayerArgument(
    depthwise=False, src_addr=0, dst_addr=0, in_channels=1, out_channels=1,
    out_channels_per_load=1, in_width=1, in_height=1, out_width=1, out_height=1, kernel_type=1,
    pool_type=PoolType.BYPASS, pad_value=0, bwsx_base_addr=0, load_time=1, para_size=0,
    para_start_addr=0, channel_switch_addr=0, row_switch_addr=0, coef_group=0, active_addr=0,
    wb_channel_switch_addr=0, wb_row_switch_addr=0, wb_group=0, shift_w=0, shift_x=0, arg_w=0,
    arg_x=0, arg_add=0, send_data_out=0, channel_byte_num=0, dma_total_byte=0,
)


def random_conv(rng: np.random.Generator, *, depthwise: bool, k: int, ic: int, oc: int, h: int,
                w: int, pool: PoolType = PoolType.BYPASS) -> KpuConv:
    if depthwise:
        oc = ic
    arg = dataclasses.replace(
        _BASE, depthwise=depthwise, in_channels=ic, out_channels=oc, in_width=w, in_height=h,
        out_width=w // pool.stride, out_height=h // pool.stride, kernel_type=int(k == 3),
        pool_type=pool, pad_value=int(rng.integers(0, 256)),
        shift_x=int(rng.choice([0, 15, int(rng.integers(0, 16))])),
        shift_w=int(rng.choice([0, 15, int(rng.integers(0, 16))])),
        arg_x=int(rng.integers(-(1 << 23), 1 << 23)), arg_w=int(rng.integers(-(1 << 23), 1 << 23)),
        arg_add=int(rng.integers(-(1 << 30), 1 << 30) >> int(rng.integers(0, 30))),
    )
    taps = k * k * (1 if depthwise else ic)
    # batch-norm gains up to 2: values stay where the C reference's int64 cannot overflow
    bn_shift = rng.integers(0, 16, oc)
    bn_mul = np.array([rng.integers(-(2 << int(s)), 2 << int(s)) for s in bn_shift], np.int64)
    starts = np.sort(rng.integers(-(1 << 30), 1 << 30, 16))
    starts[0] = -(1 << 35)
    return KpuConv(
        arg=arg,
        weights=rng.integers(0, 256, (oc, taps)).astype(np.uint8),
        bn_mul=bn_mul,
        bn_shift=bn_shift.astype(np.int64),
        bn_add=rng.integers(-(1 << 31), 1 << 31, oc).astype(np.int64),
        act_start=starts.astype(np.int64),
        act_mul=rng.integers(-(1 << 15), 1 << 15, 16).astype(np.int64),
        act_shift=rng.integers(0, 40, 16).astype(np.int64),
        act_add=rng.integers(0, 256, 16).astype(np.int64),
    )


def nncase_like_conv(rng: np.random.Generator, *, k: int, ic: int, oc: int, h: int, w: int,
                     pool: PoolType, leaky: str = "", depthwise: bool = False) -> KpuConv:
    """A layer shaped like nncase's output, positive bn: a ReLU (the MaixPy face model's
    table, which the kernels compute as one linear segment), a leaky ReLU in three segments
    (``leaky="3"``, VOC20 v4's shape, computed piecewise) or chopped into 14 (``"14"``,
    VOC20 v3's, looked up in a table)."""
    conv = random_conv(rng, depthwise=depthwise, k=k, ic=ic, oc=oc, h=h, w=w, pool=pool)
    if leaky == "14":
        starts = np.array([-(1 << 35), -119808] + [-119808 + 10240 * i for i in range(14)],
                          np.int64)
        mul = np.array([0, *[102] * 14, 1024], np.int64)
        shift = np.array([0, *[20] * 15], np.int64)
        add = np.array([0, 0, *range(14)], np.int64)
    elif leaky == "3":
        starts = np.array([-(1 << 35), -122880, 0, *[(1 << 35) - 13 + i for i in range(13)]],
                          np.int64)
        mul = np.array([0, 102, 1024, *[0] * 13], np.int64)
        shift = np.array([0, 20, 20, *[0] * 13], np.int64)
        add = np.array([0, 0, 12, *[255] * 13], np.int64)
    else:
        mul = np.zeros(16, np.int64)
        mul[10] = 1024
        shift = np.zeros(16, np.int64)
        shift[10] = 20
        starts = np.array([-(1 << 35), -9, -8, -7, -6, -5, -4, -3, -2, -1, 0]
                          + [(1 << 35) - 16 + i for i in range(5)], np.int64)
        add = np.zeros(16, np.int64)
    # values spread over the table's linear stretch: no extra terms, gains near 1
    arg = dataclasses.replace(conv.arg, arg_x=0, arg_w=0, arg_add=0)
    oc, taps = conv.weights.shape
    return dataclasses.replace(
        conv, arg=arg, bn_mul=rng.integers(1 << 13, 1 << 14, oc).astype(np.int64),
        bn_shift=np.full(oc, 15, np.int64),
        # the 14-segment table starts low enough that more than four segments are in reach
        bn_add=rng.integers(-(taps << 13), -(taps << 12) if leaky == "14" else 0,
                            oc).astype(np.int64), act_start=starts,
        act_mul=mul, act_shift=shift, act_add=add,
    )


def unsorted_starts(conv: KpuConv) -> KpuConv:
    """The layer with its segment starts 1..15 in descending order: no table is built."""
    starts = conv.act_start.copy()
    starts[1:] = np.sort(starts[1:])[::-1]
    return dataclasses.replace(conv, act_start=starts)


ROUNDINGS: list[Rounding] = ["half-even", "half-up"]


@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize(("depthwise", "k"), [(False, 1), (False, 3), (True, 1), (True, 3)])
def test_conv_matches_reference(depthwise: bool, k: int, rounding: Rounding) -> None:
    rng = np.random.default_rng(1000 * k + depthwise)
    for trial in range(4):
        ic = int(rng.integers(1, 5))
        conv = random_conv(rng, depthwise=depthwise, k=k, ic=ic, oc=int(rng.integers(1, 5)),
                           h=int(rng.integers(1, 7)), w=int(rng.integers(1, 9)))
        x = rng.integers(0, 256, (ic, conv.arg.in_height, conv.arg.in_width)).astype(np.uint8)
        if trial == 0:
            x[:] = 255  # the largest sums
        got = PreparedConv.from_conv(conv, rounding).run(x)
        np.testing.assert_array_equal(got, ref_conv(conv, x, rounding == "half-even"))


@pytest.mark.parametrize("offset", sorted({0, input_offset()}))
@pytest.mark.parametrize("terms", [2304, MAX_TERMS + 1])
def test_exact_matmul_is_exact(terms: int, offset: int) -> None:
    """Every sum exact, the extremes included: over a 3x3 window of 256 channels (int32
    sums), and over more products than int32 holds (float64); 16-bit weights too; maps as
    they are and, where this CPU's kernel is exact for it, offset by 128."""
    rng = np.random.default_rng(6)
    x = rng.integers(0, 256, (terms, 40)).astype(np.uint8)
    x[:, 0], x[:, 1] = 255, 0
    for dtype in (np.uint8, np.uint16):
        top = int(np.iinfo(dtype).max)
        a: npt.NDArray[np.integer] = rng.integers(0, top + 1, (5, terms)).astype(dtype)
        a[0], a[1] = 0, top
        got = exact_matmul(gemm_weights(a), x ^ np.uint8(offset), offset)
        np.testing.assert_array_equal(got, a.astype(np.int64) @ (x.astype(np.int64) - offset))


def test_a_map_offset_other_than_0_or_128_is_refused() -> None:
    with pytest.raises(ValueError, match="offset by 0 or 128, not 7"):
        exact_matmul(gemm_weights(np.ones((1, 1), np.uint8)), np.ones((1, 1), np.uint8), 7)


@pytest.mark.parametrize("k", [1, 3])
def test_maps_into_the_gemm_as_they_are_give_the_same_bytes(
        k: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The uint8-by-uint8 GEMM, which CPUs without an exact uint8-by-int8 kernel take,
    against the reference (the other tests run whichever this CPU takes)."""
    monkeypatch.setattr(kpu_kernels, "input_offset", lambda: 0)
    rng = np.random.default_rng(7 + k)
    for trial in range(4):
        conv = random_conv(rng, depthwise=False, k=k, ic=5, oc=6, h=int(rng.integers(1, 7)),
                           w=int(rng.integers(1, 9)))
        x = rng.integers(0, 256, (5, conv.arg.in_height, conv.arg.in_width)).astype(np.uint8)
        if trial == 0:
            x[:] = 255
        prepared = PreparedConv.from_conv(conv, "half-even")
        assert prepared.offset == 0
        np.testing.assert_array_equal(prepared.run(x), ref_conv(conv, x, True))


@pytest.mark.parametrize("depthwise", [False, True])
def test_long_sums_and_16_bit_weights_are_exact(depthwise: bool) -> None:
    """A 3x3 window over 130 channels, then the same layer with 16-bit weights (kmodels
    may store them; their sums go beyond int8 kernels)."""
    rng = np.random.default_rng(5)
    conv = random_conv(rng, depthwise=depthwise, k=3, ic=130, oc=130 if depthwise else 3,
                       h=3, w=4)
    x = rng.integers(0, 256, (130, 3, 4)).astype(np.uint8)
    np.testing.assert_array_equal(PreparedConv.from_conv(conv, "half-even").run(x),
                                  ref_conv(conv, x, True))
    wide = dataclasses.replace(
        conv, weights=rng.integers(0, 1 << 16, conv.weights.shape).astype(np.uint16))
    np.testing.assert_array_equal(PreparedConv.from_conv(wide, "half-even").run(x),
                                  ref_conv(wide, x, True))


@pytest.mark.parametrize(("k", "fold", "shift_x", "wide", "folds"), [
    (3, -177, 15, False, True),  # the MaixPy face model's arg_x, -177 * 2**15
    (1, -177, 15, False, True),
    (3, -156, 0, False, True),  # Ultra-Light-Fast's (nncase 0.2 writes shift_x 0)
    (3, 300, 4, True, True),  # 16-bit weights, a positive fold
    (1, 300, 4, True, True),
    (1, -(1 << 22), 0, True, True),  # one tap of 255 * 2**22 fits int32
    (3, -(1 << 22), 0, True, False),  # nine do not: the sum of inputs is kept
])
def test_depthwise_layers_fold_arg_x_into_their_weights(
        k: int, fold: int, shift_x: int, wide: bool, folds: bool) -> None:
    """With ``arg_x`` a multiple of ``2**shift_x`` its term is ``sum(x * fold)``: the same
    bytes as the reference, with no sum of inputs, wherever the sums stay in int32."""
    rng = np.random.default_rng(abs(fold) + k)
    conv = random_conv(rng, depthwise=True, k=k, ic=6, oc=6, h=5, w=7)
    conv = dataclasses.replace(conv, arg=dataclasses.replace(
        conv.arg, arg_x=fold << shift_x, shift_x=shift_x))
    if wide:
        conv = dataclasses.replace(
            conv, weights=rng.integers(0, 1 << 16, conv.weights.shape).astype(np.uint16))
    prepared = PreparedConv.from_conv(conv, "half-even")
    assert prepared.x_fold == (fold if folds else None)
    assert prepared.w_int is not None
    assert prepared.w_int.dtype == (np.int32 if wide else np.int16)
    for x in (rng.integers(0, 256, (6, 5, 7)).astype(np.uint8), np.full((6, 5, 7), 255, np.uint8)):
        np.testing.assert_array_equal(prepared.run(x), ref_conv(conv, x, True))


@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("depthwise", [False, True])
@pytest.mark.parametrize("pool", list(PoolType))
def test_each_activation_path_with_each_pool(pool: PoolType, depthwise: bool,
                                             rounding: Rounding) -> None:
    """Per value (random tables), one linear segment (ReLU), three (leaky) and a lookup
    table (a leaky ReLU in 14 segments)."""
    rng = np.random.default_rng(int(pool) + 20 * depthwise)
    layers = {
        PER_VALUE: unsorted_starts(random_conv(rng, depthwise=depthwise, k=3, ic=2, oc=2, h=8,
                                               w=9, pool=pool)),
        RELU: nncase_like_conv(rng, k=3, ic=2, oc=2, h=8, w=9, pool=pool,
                                 depthwise=depthwise),
        PIECEWISE: nncase_like_conv(rng, k=3, ic=2, oc=2, h=8, w=9, pool=pool, leaky="3",
                                    depthwise=depthwise),
        TABLE: nncase_like_conv(rng, k=3, ic=2, oc=2, h=8, w=9, pool=pool, leaky="14",
                                depthwise=depthwise),
    }
    for kind, conv in layers.items():
        prepared = PreparedConv.from_conv(conv, rounding)
        assert prepared.act[0] == kind
        for _ in range(3):
            x = rng.integers(0, 256, (2, 8, 9)).astype(np.uint8)
            expected = ref_pool(ref_conv(conv, x, rounding == "half-even"), pool)
            np.testing.assert_array_equal(prepared.run(x), expected)
        if kind != PER_VALUE:  # values span the activation's range
            assert len(np.unique(ref_conv(conv, x, rounding == "half-even"))) > 2


@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("shift", [0, 1, 2, 17, 39])
def test_relu_rounding_is_exact_on_both_sides_of_its_start(shift: int,
                                                            rounding: Rounding) -> None:
    """RELU's fused formula against the reference. Segment 0 gives 0, segments 1..15 are
    one formula with a non-positive ``add``; the batch-norm values are about its start, so
    they fall on both sides of it, on every rounding tie (a slope of half a step per value)
    and, with a steeper batch-norm, beyond 255; ``bn_shift`` 1 folds two shifts into one.
    A slope that is no power of two is computed as a piece, as exactly."""
    rng = np.random.default_rng(shift)
    conv = random_conv(rng, depthwise=True, k=1, ic=3, oc=3, h=16, w=16)
    conv = dataclasses.replace(  # the conv sum is x itself
        conv, arg=dataclasses.replace(conv.arg, arg_x=0, arg_w=0, arg_add=0),
        weights=np.ones((3, 1), np.uint8))
    start = int(rng.integers(-(1 << 20), 1 << 20))
    starts = np.full(16, start, np.int64)
    starts[0] = -(1 << 35)
    x = np.arange(3 * 256, dtype=np.uint8).reshape(3, 16, 16)  # every value, in each channel
    step = 1 << shift
    for slope, bn_mul, bn_shift, kind in ((max(1, step >> 1), 1, 0, RELU), (step, 3, 0, RELU),
                                          (step, 7, 1, RELU), (3 * step, 1, 0, PIECEWISE)):
        for add in (0, -5):
            layer = dataclasses.replace(
                conv, bn_mul=np.full(3, bn_mul, np.int64),
                bn_shift=np.full(3, bn_shift, np.int64),
                bn_add=np.full(3, start - (128 * bn_mul >> bn_shift), np.int64),
                act_start=starts, act_mul=np.array([0] + [slope] * 15, np.int64),
                act_shift=np.full(16, shift, np.int64), act_add=np.array([0] + [add] * 15))
            prepared = PreparedConv.from_conv(layer, rounding)
            assert prepared.act[0] == kind
            want = ref_conv(layer, x, rounding == "half-even")
            assert want.min() == 0
            assert (want.max() == 255) == (slope > step or (slope == step and bn_mul > 1))
            np.testing.assert_array_equal(prepared.run(x), want)


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_a_relu_whose_folded_sum_could_leave_int64_is_computed_another_way(
        rounding: Rounding) -> None:
    """A batch-norm factor near 2**44 folds past 2**62 in the RELU formula: the layer is
    computed from its table (this ReLU's has many constant segments), still exactly."""
    rng = np.random.default_rng(11)
    conv = nncase_like_conv(rng, k=3, ic=2, oc=2, h=8, w=9, pool=PoolType.BYPASS,
                            depthwise=False)
    assert PreparedConv.from_conv(conv, rounding).act[0] == RELU
    wide = dataclasses.replace(conv, bn_mul=conv.bn_mul << 30, bn_shift=conv.bn_shift + 30)
    prepared = PreparedConv.from_conv(wide, rounding)
    assert prepared.act[0] == TABLE
    x = rng.integers(0, 256, (2, 8, 9)).astype(np.uint8)
    want = ref_conv(wide, x, rounding == "half-even")
    np.testing.assert_array_equal(want, ref_conv(conv, x, rounding == "half-even"))
    np.testing.assert_array_equal(prepared.run(x), want)


@pytest.mark.parametrize("pool", list(PoolType))
def test_pool_matches_reference(pool: PoolType) -> None:
    rng = np.random.default_rng(50 + int(pool))
    for h, w in [(8, 8), (7, 9), (4, 5), (16, 3)]:
        x = rng.integers(0, 256, (3, h, w)).astype(np.uint8)
        np.testing.assert_array_equal(kpu_pool(x, pool), ref_pool(x, pool))


@settings(max_examples=60, deadline=None)
@given(st.integers(-(1 << 40), 1 << 40), st.integers(0, 40), st.booleans())
def test_carry_shift_matches_reference(value: int, shift: int, half_even: bool) -> None:
    """The activation's rounding, through a one-segment table: mul 1, add 0."""
    rng = np.random.default_rng(0)
    conv = random_conv(rng, depthwise=True, k=1, ic=1, oc=1, h=1, w=1)
    from edged.kpu.sim.kpu_kernels import Activation

    starts = np.full(16, 1 << 42, np.int64)  # every tested value stays in segment 0
    starts[0] = -(1 << 35)
    table = dataclasses.replace(conv, act_start=starts, act_mul=np.ones(16, np.int64),
                                act_shift=np.full(16, shift, np.int64),
                                act_add=np.zeros(16, np.int64))
    act = Activation.from_conv(table, "half-even" if half_even else "half-up")
    v = value - (1 << 35) if value > 0 else value
    got = int(act(np.array([v], np.int64))[0])
    want = min(max(ref_carry_shift(v + (1 << 35), shift, half_even), 0), 255)
    assert got == want


@pytest.mark.parametrize(
    "shape", [(1, 1, 1), (3, 5, 7), (5, 4, 16), (5, 4, 17), (2, 3, 32), (3, 2, 33), (7, 2, 64),
              (2, 3, 130), (9, 3, 10)],
)
def test_upload_and_download_follow_the_row_layout(shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    fmap = rng.integers(0, 256, shape).astype(np.uint8)
    ram = np.zeros(1 << 16, np.uint8)
    expected = np.zeros_like(ram)
    kpu_upload(ram, 640, fmap)
    ref_upload(expected, 640, fmap)
    np.testing.assert_array_equal(ram, expected)
    np.testing.assert_array_equal(kpu_download(ram, 640, *shape), fmap)


def test_a_value_on_a_segment_start_follows_each_reference() -> None:
    """nncase 0.2 needs start < value; nncase 0.1 (the half-up reference) start <= value."""
    from edged.kpu.sim.kpu_kernels import Activation

    rng = np.random.default_rng(0)
    conv = random_conv(rng, depthwise=True, k=1, ic=1, oc=1, h=1, w=1)
    starts = np.array([-(1 << 35)] + [1000 + i for i in range(15)], np.int64)
    adds = np.zeros(16, np.int64)
    adds[1] = 100  # segment 1 starts at 1000 and outputs 100; segment 0 outputs 0
    table = dataclasses.replace(conv, act_start=starts, act_mul=np.zeros(16, np.int64),
                                act_shift=np.zeros(16, np.int64), act_add=adds)
    on_start = np.array([1000], np.int64)
    assert Activation.from_conv(table, "half-even")(on_start)[0] == 0
    assert Activation.from_conv(table, "half-up")(on_start)[0] == 100
    for rounding in ROUNDINGS:
        lut = Activation.from_conv(table, rounding).lookup_table(900, 1100)
        assert lut is not None
        lo, values = lut
        expected = 0 if rounding == "half-even" else 100
        assert values[min(max(1000 - lo, 0), len(values) - 1)] == expected


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_a_relu_too_wide_for_a_table_is_computed_as_one_segment(rounding: Rounding) -> None:
    """Ultra-Light-Fast's ReLU (bn / 16384) reaches +-40 M: over 2**22 table entries. Its
    one non-constant segment gives every value, the clamped zero of segment 0 included."""
    from edged.kpu.sim.kpu_kernels import Activation

    rng = np.random.default_rng(3)
    conv = random_conv(rng, depthwise=True, k=1, ic=1, oc=1, h=1, w=1)
    starts = np.array([-(1 << 35), 0, *[(1 << 35) - 15 + i for i in range(14)]], np.int64)
    table = dataclasses.replace(
        conv, act_start=starts, act_mul=np.array([0, 64, *[0] * 14], np.int64),
        act_shift=np.array([0, 20, *[0] * 14], np.int64),
        act_add=np.array([0, 0, *[255] * 14], np.int64))
    act = Activation.from_conv(table, rounding)
    reach = (-40_000_000, 40_000_000)
    assert act.lookup_table(*reach) is None
    assert act.linear_segment(*reach) == 1
    values = np.concatenate([rng.integers(*reach, 200_000),
                             np.arange(-20, 20), np.arange(8172, 8212), [*reach]])
    np.testing.assert_array_equal(act.only(1)(values), act(values))
    # a second sloped segment in reach (a leaky ReLU) cannot be one segment
    leaky = dataclasses.replace(table, act_mul=np.array([0, 64, *[0] * 14], np.int64) + (
        np.arange(16) == 0) * 6)
    assert Activation.from_conv(leaky, rounding).linear_segment(*reach) is None


@pytest.mark.parametrize("depthwise", [False, True])
def test_narrow_multiplies_only_where_every_factor_fits_int32(depthwise: bool) -> None:
    """The same layer twice: as nncase writes it (every factor fits int32: 32-bit
    multiplies) and with ``bn_mul`` and ``bn_shift`` scaled by 2**19 (the same batch-norm
    values, but ``bn_mul`` beyond int32: 64-bit multiplies). Both match the reference."""
    rng = np.random.default_rng(8)
    conv = nncase_like_conv(rng, k=3, ic=4, oc=4, h=6, w=7, pool=PoolType.BYPASS, leaky="",
                            depthwise=depthwise)
    wide = dataclasses.replace(conv, bn_mul=conv.bn_mul << 19, bn_shift=conv.bn_shift + 19)
    x = rng.integers(0, 256, (4, 6, 7)).astype(np.uint8)
    expected = ref_conv(conv, x, True)
    assert len(np.unique(expected)) > 2
    np.testing.assert_array_equal(ref_conv(wide, x, True), expected)
    for layer, narrow in ((conv, True), (wide, False)):
        prepared = PreparedConv.from_conv(layer, "half-even")
        assert prepared.act[3] == narrow
        np.testing.assert_array_equal(prepared.run(x), expected)
