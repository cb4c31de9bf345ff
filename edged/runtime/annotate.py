"""Detections drawn on the frame, so a person can see at a glance what a model found."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import numpy.typing as npt

from edged.vision.detection import Detection

BOX_BGR = (0, 255, 0)
TEXT_BGR = (0, 0, 0)
FONT = cv2.FONT_HERSHEY_SIMPLEX


def draw_detections(
    frame: npt.NDArray[np.uint8], detections: Sequence[Detection]
) -> npt.NDArray[np.uint8]:
    """A copy of the BGR frame with each box and ``label score`` on a filled tag above it."""
    image = frame.copy()
    height, width = image.shape[:2]
    thickness = max(1, round(min(width, height) / 240))
    scale = max(0.4, min(width, height) / 600)
    for d in detections:
        x1, y1 = round(d.box.x), round(d.box.y)
        x2, y2 = round(d.box.x + d.box.w), round(d.box.y + d.box.h)
        cv2.rectangle(image, (x1, y1), (x2, y2), BOX_BGR, thickness)
        text = f"{d.label} {d.score:.2f}"
        (text_w, text_h), baseline = cv2.getTextSize(text, FONT, scale, thickness)
        top = max(0, y1 - text_h - baseline - 2)  # inside the frame when the box touches the top
        cv2.rectangle(image, (x1, top), (x1 + text_w + 2, top + text_h + baseline + 2), BOX_BGR, -1)
        cv2.putText(image, text, (x1 + 1, top + text_h + 1), FONT, scale, TEXT_BGR, thickness)
    return image
