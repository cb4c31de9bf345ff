"""The on-chip time estimate: its arithmetic on synthetic layers and on the real models."""

from __future__ import annotations

import dataclasses
import math

import pytest

from edged.kpu.kmodel import KModel, LayerSummary, TensorSpec, load_kmodel
from edged.kpu.kmodel.model import Program
from edged.kpu.timing import ChipParams, cpu_cycles_per_element, estimate
from tests.conftest import V3_MODELS, V4_MODELS, kmodel_path


def conv(
    index: int,
    cin: int,
    cout: int,
    hw: tuple[int, int] = (60, 80),
    *,
    k: int = 3,
    depthwise: bool = False,
) -> LayerSummary:
    h, w = hw
    macs = h * w * k * k * (cout if depthwise else cin * cout)
    return LayerSummary(index, "K210_CONV", True, (cin, h, w), (cout, h, w), macs, 0)


def cpu(index: int, op: str, elements: int, macs: int = 0) -> LayerSummary:
    return LayerSummary(index, op, False, (elements,), (elements,), macs, elements)


def model_of(*layers: LayerSummary, input_bytes: int = 0, version: int = 3) -> KModel:
    inputs = (TensorSpec((input_bytes,), "uint8"),) if input_bytes else ()
    return KModel(
        version=version,
        data=b"",
        sha256="",
        main_mem=0,
        inputs=inputs,
        outputs=(),
        program=Program(()),
        summaries=layers,
        kpu_ram_bytes=0,
    )


def seconds(*layers: LayerSummary, params: ChipParams | None = None) -> list[float]:
    return [layer.seconds for layer in estimate(model_of(*layers), params).layers]


def test_twice_the_macs_takes_longer() -> None:
    base = seconds(conv(0, 16, 32), conv(1, 32, 32))
    wider_in = seconds(conv(0, 32, 32), conv(1, 32, 32))
    wider_out = seconds(conv(0, 16, 64), conv(1, 64, 32))
    assert wider_in[0] > base[0]
    assert wider_out[0] > base[0]
    assert 1.7 < wider_in[0] / base[0] < 2.1


def test_depthwise_and_1x1_cost_what_the_kpu_does() -> None:
    full, depthwise, pointwise, _ = seconds(
        conv(0, 64, 64), conv(1, 64, 64, depthwise=True), conv(2, 64, 64, k=1), conv(3, 64, 64)
    )
    assert depthwise < full / 10
    # A 1x1 uses one of the nine taps of a lane: a ninth of the MACs, nearly the same time.
    assert pointwise < full
    assert pointwise > 0.9 * full


def test_totals_are_sums_and_fps_is_their_inverse() -> None:
    est = estimate(
        model_of(
            conv(0, 3, 16, (240, 320)),
            conv(1, 16, 30, (15, 20), k=1),
            cpu(2, "DEQUANTIZE", 9000),
            cpu(3, "SOFTMAX", 30),
            input_bytes=230_400,
        )
    )
    assert [layer.index for layer in est.layers] == [0, 1, 2, 3]
    assert [layer.kpu for layer in est.layers] == [True, True, False, False]
    assert est.kpu_seconds == pytest.approx(est.layers[0].seconds + est.layers[1].seconds)
    assert est.cpu_seconds == pytest.approx(est.layers[2].seconds + est.layers[3].seconds)
    assert est.total_seconds == pytest.approx(sum(layer.seconds for layer in est.layers))
    assert est.total_seconds == pytest.approx(est.kpu_seconds + est.cpu_seconds)
    assert est.fps == pytest.approx(1 / est.total_seconds)
    assert estimate(model_of()).fps == math.inf


def test_dma_is_charged_where_data_crosses() -> None:
    p = ChipParams()
    layer = conv(0, 16, 16, (15, 20))
    alone = estimate(model_of(layer, conv(1, 16, 16, (15, 20)))).layers[0].seconds
    with_input = (
        estimate(model_of(layer, conv(1, 16, 16, (15, 20)), input_bytes=700_000)).layers[0].seconds
    )
    assert with_input - alone == pytest.approx(700_000 / p.input_dma_bytes_per_second)
    to_cpu = estimate(model_of(layer, cpu(1, "DEQUANTIZE", 4800))).layers[0].seconds
    assert to_cpu - alone == pytest.approx(16 * 15 * 20 / p.output_dma_bytes_per_second)
    last = estimate(model_of(conv(0, 16, 16, (15, 20)), layer)).layers[1].seconds
    assert last == pytest.approx(to_cpu)
    # nncase 0.2 (v4) copies a KPU output to main memory on the CPU, more slowly.
    v4 = estimate(model_of(layer, version=4)).layers[0].seconds
    assert v4 - alone == pytest.approx(16 * 15 * 20 * p.download_cycles_per_byte / p.clock_hz)
    assert v4 > to_cpu


def test_v4_batches_are_passes() -> None:
    one = conv(0, 16, 32)
    c, h, w = one.in_shape
    batched = [
        dataclasses.replace(one, in_shape=(n, c, h, w), out_shape=(n, 32, h, w), macs=n * one.macs)
        for n in (1, 2)
    ]
    alone, single, double = seconds(one, one, *batched, one)[1:4]
    assert single == pytest.approx(alone)
    assert double == pytest.approx(2 * alone)


def test_cpu_layers_cost_by_kind() -> None:
    p = ChipParams()
    assert cpu_cycles_per_element("SOFTMAX", p) == p.cpu_cycles_transcendental
    assert cpu_cycles_per_element("Unary", p) == p.cpu_cycles_transcendental
    assert cpu_cycles_per_element("QUANTIZED_ADD", p) == p.cpu_cycles_uint8
    assert cpu_cycles_per_element("REQUANTIZE", p) == p.cpu_cycles_uint8
    assert cpu_cycles_per_element("kpu_upload", p) == p.cpu_cycles_layout
    assert cpu_cycles_per_element("QUANTIZED_CONCAT", p) == p.cpu_cycles_layout
    assert cpu_cycles_per_element("table_lookup1d", p) == p.cpu_cycles_uint8
    assert cpu_cycles_per_element("DEQUANTIZE", p) == p.cpu_cycles_conversion
    assert cpu_cycles_per_element("CHANNELWISE_DEQUANTIZE", p) == p.cpu_cycles_conversion
    assert cpu_cycles_per_element("ADD", p) == p.cpu_cycles_float
    soft, add = seconds(cpu(0, "SOFTMAX", 1000), cpu(1, "ADD", 1000))
    assert soft * p.clock_hz == pytest.approx(
        1000 * p.cpu_cycles_transcendental + p.cpu_layer_cycles
    )
    assert add * p.clock_hz == pytest.approx(1000 * p.cpu_cycles_float + p.cpu_layer_cycles)
    plain, with_macs = seconds(cpu(0, "Conv2D", 1000), cpu(1, "Conv2D", 1000, macs=10_000))
    assert with_macs - plain == pytest.approx(10_000 * p.cpu_cycles_per_mac / p.clock_hz)


def test_parameters_are_overridable() -> None:
    layers = (conv(0, 16, 32), cpu(1, "DEQUANTIZE", 1000))
    slow = ChipParams(clock_hz=200e6, output_dma_bytes_per_second=32.5e6)
    assert seconds(*layers, params=slow) == pytest.approx([2 * s for s in seconds(*layers)])
    with pytest.raises(dataclasses.FrozenInstanceError):
        ChipParams().clock_hz = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("name", V3_MODELS + V4_MODELS)
def test_fixture_models_give_finite_figures(name: str) -> None:
    model = load_kmodel(kmodel_path(name))
    est = estimate(model)
    assert len(est.layers) == len(model.summaries)
    assert all(layer.seconds > 0 and math.isfinite(layer.seconds) for layer in est.layers)
    assert 0 < est.total_seconds < 10
    assert math.isfinite(est.fps)


def test_face_model_is_kpu_bound_and_real_time() -> None:
    est = estimate(load_kmodel(kmodel_path("maixpy_facedetect_v3")))
    assert est.kpu_seconds > 0.9 * est.total_seconds
    # nncase#77 measured 12.73 ms on a K210 (plus 0.33 ms of input DMA, nncase#95).
    assert est.total_seconds == pytest.approx(13.06e-3, rel=0.05)
    assert est.fps > 30
