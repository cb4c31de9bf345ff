"""The project's pipelines on real images through the simulated KPU: faces, a cat, digits.

The reference face box is OpenCV's Haar cascade's (``faces.json``: OpenCV 5 has no
cascade, see PROVENANCE.md). VOC20 v4 and ultraface are kmodel v4 models.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from edged.kpu.sim.executor import create_executor
from edged.runtime.pipeline import (
    PROJECT_PIPELINES,
    Pipeline,
    PipelineDefinition,
    build_pipeline,
    load_pipeline,
    pipeline_names,
)
from edged.runtime.registry import ModelRegistry, model_search_path
from edged.vision.detection import Detection
from tests.conftest import fixture_path, golden_cases

Frame = npt.NDArray[np.uint8]


@pytest.fixture(scope="module")
def registry() -> ModelRegistry:
    return ModelRegistry.discover(model_search_path([fixture_path("kmodels")]))


def image(name: str) -> Frame:
    frame = cv2.imread(str(fixture_path("images", name)), cv2.IMREAD_COLOR)
    assert frame is not None
    return np.asarray(frame, dtype=np.uint8)


def haar_face(name: str) -> list[float]:
    faces = json.loads(fixture_path("faces.json").read_text())
    box: list[float] = faces[name]
    return box


def run(pipeline: Pipeline, frame: npt.ArrayLike) -> list[Detection]:
    prepared = pipeline.prepare(frame)
    outputs = create_executor(pipeline.model.kmodel).run(prepared.inputs)
    return pipeline.finish(outputs, prepared.transform)


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two ``x, y, w, h`` boxes."""
    inter_w = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def xywh(detection: Detection) -> list[float]:
    box = detection.box
    return [box.x, box.y, box.w, box.h]


def test_every_project_pipeline_binds_to_its_model(registry: ModelRegistry) -> None:
    names = pipeline_names(PROJECT_PIPELINES)
    assert set(names) == {"face", "voc20", "ultraface", "mnist", "shapes"}
    for name in names:
        pipeline = load_pipeline(PROJECT_PIPELINES / f"{name}.toml", registry)
        assert pipeline.name == name


@pytest.mark.parametrize("name", ["face", "ultraface"])
def test_face_pipelines_find_the_face_the_haar_cascade_finds(
    registry: ModelRegistry, name: str
) -> None:
    pipeline = load_pipeline(PROJECT_PIPELINES / f"{name}.toml", registry)
    detections = run(pipeline, image("grace_hopper.jpg"))
    assert len(detections) == 1
    face = detections[0]
    assert face.label == "face"
    assert face.score > 0.5
    assert iou(xywh(face), haar_face("grace_hopper.jpg")) >= 0.5


@pytest.mark.parametrize("name", ["face", "ultraface"])
@pytest.mark.parametrize("grey", [0, 128, 255])
def test_a_blank_frame_has_no_face(registry: ModelRegistry, name: str, grey: int) -> None:
    pipeline = load_pipeline(PROJECT_PIPELINES / f"{name}.toml", registry)
    assert run(pipeline, np.full((480, 640, 3), grey, dtype=np.uint8)) == []


def test_the_face_model_finds_no_face_on_the_cat(registry: ModelRegistry) -> None:
    pipeline = load_pipeline(PROJECT_PIPELINES / "face.toml", registry)
    assert run(pipeline, image("chelsea.png")) == []


@pytest.mark.parametrize("model", ["voc20_v3", "voc20_v4"])
def test_voc20_finds_the_cat(registry: ModelRegistry, model: str) -> None:
    pipeline = build_pipeline("cat", PipelineDefinition(model=model), registry)
    detections = run(pipeline, image("chelsea.png"))
    assert detections
    cat = detections[0]
    assert (cat.label, cat.class_id) == ("cat", 7)
    assert cat.score > 0.5
    # The cat fills the picture: its box covers most of it.
    assert cat.box_norm.w * cat.box_norm.h > 0.5


@pytest.mark.parametrize("model", ["voc20_v3", "voc20_v4"])
def test_voc20_sees_a_person_in_the_portrait(registry: ModelRegistry, model: str) -> None:
    pipeline = build_pipeline("person", PipelineDefinition(model=model), registry)
    assert [d.label for d in run(pipeline, image("grace_hopper.jpg"))] == ["person"]


def mnist_digit(digit: int, upscale: int = 4) -> Frame:
    """``digit`` as MNIST draws its digits, at ``upscale`` times 28x28, in a BGR frame.

    MNIST's digits are white on black, scaled to fit a 20x20 box and placed in the 28x28
    image by their centre of mass. OpenCV 5 draws Hershey text with strokes of a fixed
    weight (``thickness`` no longer changes them), about as wide as a pen's on MNIST.
    """
    canvas = np.zeros((200, 200), dtype=np.uint8)
    cv2.putText(canvas, str(digit), (40, 160), cv2.FONT_HERSHEY_SIMPLEX, 5.0, 255, 10,
                cv2.LINE_AA)
    ys, xs = np.nonzero(canvas)
    glyph = canvas[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    height, width = glyph.shape
    scale = 20 * upscale / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    glyph = np.asarray(cv2.resize(glyph, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)
    rows, cols = np.indices(glyph.shape)
    mass = float(glyph.sum())
    side = 28 * upscale
    top = round(side / 2 - float((rows * glyph).sum()) / mass)
    left = round(side / 2 - float((cols * glyph).sum()) / mass)
    top = min(max(top, 0), side - glyph.shape[0])
    left = min(max(left, 0), side - glyph.shape[1])
    frame = np.zeros((side, side), dtype=np.uint8)
    frame[top : top + glyph.shape[0], left : left + glyph.shape[1]] = glyph
    return np.asarray(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR), dtype=np.uint8)


def test_mnist_reads_digits_drawn_with_opencv(registry: ModelRegistry) -> None:
    pipeline = load_pipeline(PROJECT_PIPELINES / "mnist.toml", registry)
    read = []
    for digit in range(10):
        detections = run(pipeline, mnist_digit(digit))
        assert len(detections) <= 1  # top_k = 1
        read.append(detections[0].label if detections else None)
        if detections:  # a classification is a whole-frame detection
            assert detections[0].box_norm.to_dict(5) == {"x": 0, "y": 0, "w": 1, "h": 1}
    right = sum(label == str(digit) for digit, label in enumerate(read))
    assert right >= 8, f"read {read} for 0..9"


def test_iris_classifies_feature_vectors(registry: ModelRegistry) -> None:
    cases = golden_cases("iris_v3")
    if not cases:
        pytest.skip("iris golden cases missing")
    pipeline = build_pipeline("iris", PipelineDefinition(model="iris"), registry)
    for case in cases:
        species = case.case.split("_")[0]  # e.g. setosa_5.1_3.8_1.9_0.4
        features = [float(v) for v in case.case.split("_")[1:]]
        detections = run(pipeline, features)
        assert [d.label for d in detections] == [species]
        assert detections[0].score > 0.9


def test_iris_refuses_a_vector_of_the_wrong_size(registry: ModelRegistry) -> None:
    pipeline = build_pipeline("iris", PipelineDefinition(model="iris"), registry)
    with pytest.raises(ValueError, match="takes 4 feature values, got 3"):
        pipeline.prepare([1.0, 2.0, 3.0])
