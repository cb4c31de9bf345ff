"""edged's own shapes detector (``models/shapes.kmodel``, built by training/train_shapes.py).

It ships with the project, so unlike the fixture models it is always here: these tests
never skip. They load it the daemon's way (registry, sha256, pipeline), run it on the
simulated KPU and check that it finds the synthetic camera's shapes on frames it was not
trained on (``bench/accuracy.py`` measures its mAP on 500 of them).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import numpy.typing as npt
import pytest

from edged.camera.synthetic import SHAPE_LABELS, ShapesScene
from edged.kpu.sim.executor import create_executor
from edged.runtime.manifest import Yolo2Config
from edged.runtime.pipeline import PROJECT_PIPELINES, Pipeline, load_pipeline
from edged.runtime.registry import ModelRegistry, model_search_path
from edged.vision.nms import box_iou
from tests.conftest import PROJECT

TEST_SEED = 9100
"""Unseen in training (1000.., 2000.., 3000..) and apart from the benchmark's 9000.."""
FRAMES = 50
MIN_RECALL, MIN_PRECISION = 0.85, 0.85
"""At the shipped threshold; measured 0.93 and 0.95 (124 of 133 shapes, 131 boxes). A
broken model (wrong anchors, colour order or layout) finds next to nothing."""
FLOAT_NETWORK = PROJECT / "training" / "shapes_float.npz"


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    registry = ModelRegistry.discover(model_search_path())
    return load_pipeline(PROJECT_PIPELINES / "shapes.toml", registry)


def test_the_shipped_model_is_verified_and_commit_sized(pipeline: Pipeline) -> None:
    entry = pipeline.model
    data = entry.kmodel_path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == entry.manifest.sha256
    assert entry.kmodel_path.parent.name == "models"  # the project's own, not a fixture
    assert len(data) < 300_000
    assert entry.kmodel.inputs[0].shape == (3, 240, 320)
    assert entry.kmodel.kpu_ram_bytes <= 2 * 1024 * 1024
    assert entry.manifest.labels == list(SHAPE_LABELS)
    assert isinstance(entry.manifest.decoder, Yolo2Config)
    assert len(entry.manifest.decoder.anchors) == 10


def test_the_float_network_beside_it_is_the_one_it_was_quantized_from(
        pipeline: Pipeline) -> None:
    """``bench/accuracy.py`` compares with it; a retrained kmodel needs its own."""
    with np.load(FLOAT_NETWORK, allow_pickle=False) as saved:
        meta = json.loads(str(saved["meta"]))
    assert meta["kmodel_sha256"] == pipeline.model.manifest.sha256


def test_the_simulated_kpu_is_deterministic(pipeline: Pipeline) -> None:
    image, _ = ShapesScene(seed=TEST_SEED, episode=1, noise=4.0).render(0)
    inputs = pipeline.prepare(image).inputs
    first = create_executor(pipeline.model.kmodel).run(inputs)[0]
    again = create_executor(pipeline.model.kmodel)
    for _ in range(2):  # a fresh executor and a used one
        np.testing.assert_array_equal(again.run(inputs)[0], first)


def test_it_finds_the_shapes_of_unseen_frames(pipeline: Pipeline) -> None:
    """Recall and precision at the shipped threshold: same class and IoU >= 0.5."""
    scene = ShapesScene(seed=TEST_SEED, episode=1, noise=4.0, blur=0.7)
    executor = create_executor(pipeline.model.kmodel)
    truths = detections = matched = 0
    for index in range(FRAMES):
        image, truth = scene.render(index)
        prepared = pipeline.prepare(image)
        found = pipeline.finish(executor.run(prepared.inputs), prepared.transform)
        truths, detections = truths + len(truth), detections + len(found)
        for class_id in range(len(SHAPE_LABELS)):
            want = [_corners(t.box) for t in truth if t.class_id == class_id]
            got = [_corners((d.box.x, d.box.y, d.box.w, d.box.h))
                   for d in found if d.class_id == class_id]
            if want and got:
                matched += _matches(box_iou(got, want))
    assert truths > 2 * FRAMES
    assert matched / truths >= MIN_RECALL
    assert matched / detections >= MIN_PRECISION


def _corners(box: tuple[float, float, float, float]) -> list[float]:
    x, y, w, h = box
    return [x, y, x + w, y + h]


def _matches(iou: npt.NDArray[np.float64]) -> int:
    """Greedy one-to-one matches at IoU >= 0.5 (detections in score order, as found)."""
    taken = np.zeros(iou.shape[1], bool)
    for row in iou:
        candidates = np.where(taken, 0.0, row)
        best = int(np.argmax(candidates))
        if candidates[best] >= 0.5:
            taken[best] = True
    return int(taken.sum())
