"""The v3 (nncase 0.1) and v4 (nncase 0.2) compilations of one VOC network agree."""

from __future__ import annotations

import cv2
import numpy as np

from edged.kpu.sim.executor import create_executor
from edged.runtime.registry import ModelRegistry, model_search_path
from edged.vision.preprocess import preprocess
from tests.conftest import fixture_path

GRID_W, GRID_H = 10, 7  # the VOC20 model's output grid on a 320x240 input


def test_voc20_v3_and_v4_agree_on_chelsea() -> None:
    registry = ModelRegistry.discover(model_search_path([fixture_path("kmodels")]))
    frame = cv2.imread(str(fixture_path("images", "chelsea.png")), cv2.IMREAD_COLOR)
    assert frame is not None
    found = {}
    for name in ("voc20_v3", "voc20_v4"):
        entry = registry.get(name)
        assert entry.input_spec is not None
        tensor, transform = preprocess(np.asarray(frame, np.uint8), entry.input_spec)
        spec = entry.kmodel.inputs[0]
        outputs = create_executor(entry.kmodel).run([tensor.reshape(spec.shape)])
        detections = entry.decoder.decode(outputs, transform)
        assert detections, f"{name} found nothing"
        found[name] = max(detections, key=lambda d: d.score)
    v3, v4 = found["voc20_v3"], found["voc20_v4"]
    assert v3.label == v4.label == "cat"
    h, w = frame.shape[:2]
    cell_w, cell_h = w / GRID_W, h / GRID_H  # one grid cell, in frame pixels
    for a, b, cell in ((v3.box.x, v4.box.x, cell_w), (v3.box.y, v4.box.y, cell_h),
                       (v3.box.w, v4.box.w, cell_w), (v3.box.h, v4.box.h, cell_h)):
        assert abs(a - b) <= cell
