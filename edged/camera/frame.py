"""What a camera hands on: one image, where and when it was taken, and what is truly in it.

Every later stage (scheduler, KPU, publisher) needs the camera, the sequence number and the
capture time to measure latency and to trace a published detection to its frame; synthetic
cameras also carry the exact ground truth so a model can be checked frame by frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]
"""A BGR image, ``(height, width, 3)`` uint8, as OpenCV delivers it."""

BoxXYWH = tuple[float, float, float, float]
"""A box in frame pixels: top-left corner ``x, y`` and size ``w, h`` (pixel edges, not centres)."""


@dataclass(frozen=True, slots=True)
class GroundTruth:
    """One object really in the frame: its class and its box, clipped to the frame."""

    label: str
    class_id: int
    box: BoxXYWH


@dataclass(frozen=True, slots=True, eq=False)
class Frame:
    """One frame of one camera.

    ``seq`` grows by at least one per frame and is never reused, even across reconnects, so
    a gap means a frame was lost. ``captured`` is wall-clock time (``time.time()``) for the
    published ISO 8601 timestamp; ``monotonic`` (``time.monotonic()``) is for latency, which
    must not jump when the wall clock is set. Equality is identity: images are not compared.
    """

    camera: str
    seq: int
    captured: float
    monotonic: float
    image: Image
    truth: tuple[GroundTruth, ...] = ()

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])
