"""What a decoder finds, in the camera frame's pixels, ready for the MQTT payload.

Decoders work in model-input coordinates; by the time a ``Detection`` exists the box has
been mapped back to the frame (see ``preprocess.Transform``), so a consumer never needs
to know the model's input size or how the frame was fitted to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

# Published precision: sub-pixel noise is not information, and it bloats 30 messages a second.
PIXEL_DIGITS = 2
NORM_DIGITS = 5
SCORE_DIGITS = 5


@dataclass(frozen=True, slots=True)
class Box:
    """An axis-aligned box: top-left corner ``(x, y)`` and size ``(w, h)``."""

    x: float
    y: float
    w: float
    h: float

    def to_dict(self, ndigits: int) -> dict[str, float]:
        return {
            "x": round(self.x, ndigits),
            "y": round(self.y, ndigits),
            "w": round(self.w, ndigits),
            "h": round(self.h, ndigits),
        }


@dataclass(frozen=True, slots=True)
class Detection:
    """One object: ``box`` in pixels of the camera frame, ``box_norm`` the same in 0..1."""

    label: str
    class_id: int
    score: float
    box: Box
    box_norm: Box

    def to_dict(self) -> dict[str, object]:
        """The detection as it appears in the ``detections`` list of the MQTT payload."""
        return {
            "label": self.label,
            "class_id": self.class_id,
            "score": round(self.score, SCORE_DIGITS),
            "box": self.box.to_dict(PIXEL_DIGITS),
            "box_norm": self.box_norm.to_dict(NORM_DIGITS),
        }


def label_for(labels: Sequence[str], class_id: int) -> str:
    """The class's label, or its number when the label list is short (never fail a frame)."""
    return labels[class_id] if 0 <= class_id < len(labels) else str(class_id)


def make_detections(
    boxes: npt.NDArray[np.floating],
    scores: npt.NDArray[np.floating],
    class_ids: npt.NDArray[np.integer],
    labels: Sequence[str],
    frame_size: tuple[int, int],
) -> list[Detection]:
    """Detections from ``(N, 4)`` boxes ``x, y, w, h`` in frame pixels, in the given order."""
    frame_w, frame_h = frame_size
    return [
        Detection(
            label=label_for(labels, int(cls)),
            class_id=int(cls),
            score=float(score),
            box=Box(float(x), float(y), float(w), float(h)),
            box_norm=Box(
                float(x) / frame_w, float(y) / frame_h, float(w) / frame_w, float(h) / frame_h
            ),
        )
        for (x, y, w, h), score, cls in zip(
            boxes.tolist(), scores.tolist(), class_ids.tolist(), strict=True
        )
    ]
