"""kmodel parsing: the real v3 fixtures, version refusal, and hostile files."""

from __future__ import annotations

import json
import struct
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edged.kpu.errors import KmodelError, KmodelFormatError, KmodelVersionError
from edged.kpu.kmodel import kmodel_version, parse_kmodel
from edged.kpu.kmodel.kpu_regs import KPU_RAM_BYTES, PoolType
from edged.kpu.kmodel.v3 import Conv, V3Layer, V3LayerType
from tests.conftest import FIXTURES, V3_MODELS, fixture_path, kmodel_path


@pytest.mark.parametrize("name", V3_MODELS)
def test_fixture_v3_models_parse(name: str) -> None:
    model = parse_kmodel(kmodel_path(name).read_bytes())
    assert model.version == 3
    assert model.program.layers
    assert len(model.program.layers) == len(model.summaries)
    assert model.kpu_ram_bytes <= KPU_RAM_BYTES
    assert all(s.index == i for i, s in enumerate(model.summaries))
    golden = sorted((FIXTURES / "golden" / name).glob("*/meta.json"))
    if golden:
        meta = json.loads(golden[0].read_text())
        assert model.sha256 == meta["sha256"]
        assert model.macs == meta["kpu_macs"]
        assert model.inputs[0].shape == tuple(meta["input_shape"])


def test_face_model_description() -> None:
    model = parse_kmodel(kmodel_path("maixpy_facedetect_v3").read_bytes())
    assert model.inputs[0].shape == (3, 240, 320)
    assert model.inputs[0].dtype == "uint8"
    assert model.outputs[0].shape == (30, 15, 20)  # 5 anchors x (5 + 1 class), 20x15 grid
    assert model.outputs[0].dtype == "float32"
    assert model.main_mem == 45000
    first = model.program.layers[0]
    assert isinstance(first, Conv)
    arg = first.conv.arg
    assert (arg.filter_size, arg.pool_type, arg.depthwise) == (3, PoolType.MAX_2_S2, False)
    assert first.conv.weights.shape == (16, 27)
    depthwise = model.program.layers[1]
    assert isinstance(depthwise, Conv)
    assert depthwise.conv.arg.depthwise
    assert depthwise.conv.weights.shape == (16, 9)
    last = model.program.layers[-1]
    assert isinstance(last, V3Layer)
    assert last.type is V3LayerType.DEQUANTIZE


def test_version_5_is_refused_with_maixpy_wording() -> None:
    data = kmodel_path("yolox_nano_v5").read_bytes()
    with pytest.raises(KmodelVersionError) as info:
        parse_kmodel(data)
    text = str(info.value)
    assert "load error:2002, only support kmodel v3/v4" in text
    assert "v5" in text
    assert info.value.code == 2002


@pytest.mark.parametrize(
    ("head", "found"),
    [
        (struct.pack("<II", 2, 0), "0x00000002"),
        (b"KMDL" + struct.pack("<I", 4), "0x4c444d4b"),  # identifier byte-swapped
        (struct.pack("<II", 0x4B4D444C, 3), "v3"),
    ],
)
def test_other_versions_are_refused(head: bytes, found: str) -> None:
    with pytest.raises(KmodelVersionError, match="only support kmodel v3/v4") as info:
        kmodel_version(head + bytes(64))
    assert found in str(info.value)


def test_too_short_is_a_format_error() -> None:
    with pytest.raises(KmodelFormatError, match="at least 8 bytes"):
        parse_kmodel(b"\x03\x00")


def test_truncation_names_offset_and_layer() -> None:
    data = kmodel_path("maixpy_mnist_v3").read_bytes()
    with pytest.raises(KmodelFormatError) as info:
        parse_kmodel(data[:1000])
    assert info.value.code == 2003
    assert info.value.offset is not None
    assert "ERR_KMODEL_FORMAT" in str(info.value)


def test_unsupported_layer_type_is_refused() -> None:
    data = bytearray(kmodel_path("iris_v3").read_bytes())
    headers_at = 28 + 8 * 1
    struct.pack_into("<I", data, headers_at, V3LayerType.QUANTIZED_FULLY_CONNECTED)
    with pytest.raises(KmodelFormatError, match="no reference semantics") as info:
        parse_kmodel(bytes(data))
    assert info.value.layer == 0


def test_working_memory_beyond_the_chip_is_refused() -> None:
    data = bytearray(kmodel_path("iris_v3").read_bytes())
    struct.pack_into("<I", data, 20, 64 * 1024 * 1024)
    with pytest.raises(KmodelFormatError, match="8 MiB"):
        parse_kmodel(bytes(data))


def test_every_truncation_of_a_small_model_is_a_kmodel_error() -> None:
    data = kmodel_path("maixpy_mnist_v3").read_bytes()
    body_end = len(data)
    for cut in list(range(0, 600)) + list(range(600, body_end, 997)):
        try:
            parse_kmodel(data[:cut])
        except KmodelError:
            continue
        # a cut inside trailing alignment padding may leave a complete model
        assert cut > body_end - 8


def _mutations() -> st.SearchStrategy[tuple[str, list[tuple[int, int]], int]]:
    return st.tuples(
        st.sampled_from(["iris_v3", "maixpy_mnist_v3", "maixpy_facedetect_v3"]),
        st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), min_size=1, max_size=8),
        st.integers(0, 1 << 20),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutations())
def test_mutated_files_give_kmodel_errors_and_bounded_allocation(
    case: tuple[str, list[tuple[int, int]], int],
) -> None:
    name, edits, cut = case
    original = fixture_path("kmodels", f"{name}.kmodel").read_bytes()
    data = bytearray(original)
    for position, value in edits:
        data[position % len(data)] = value
    blob = bytes(data[: max(8, len(data) - cut % len(data))])
    tracemalloc.start()
    try:
        parse_kmodel(blob)
    except KmodelError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    # parsing keeps views into the file: it never allocates what the file cannot describe
    assert peak < 3 * len(blob) + (2 << 20)


def test_random_headers_never_crash() -> None:
    rng = np.random.default_rng(7)
    for _ in range(300):
        header = struct.pack("<7I", 3, *rng.integers(0, 1 << 32, 6, dtype=np.uint64).tolist())
        tail = rng.integers(0, 256, int(rng.integers(0, 200)), dtype=np.uint8).tobytes()
        with pytest.raises(KmodelError):
            parse_kmodel(header + tail)


def test_a_shape_whose_byte_count_wraps_64_bits_is_refused() -> None:
    """A resize of 2**31 x 2**31 x 4 values: 2**64, which int64 arithmetic wraps to 0."""
    header = struct.pack("<7I", 3, 1, 0, 1, 0, 1024, 1) + struct.pack("<2I", 0, 1)
    body = struct.pack("<9I", 0, 0, 0, 1 << 31, 1 << 31, 4, 1, 1, 0)
    layer = struct.pack("<2I", V3LayerType.QUANTIZED_RESIZE_NEAREST_NEIGHBOR, len(body))
    with pytest.raises(KmodelFormatError, match=r"resize input .* outside the 1024 bytes"):
        parse_kmodel(header + layer + body)
