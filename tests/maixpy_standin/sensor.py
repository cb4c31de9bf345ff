"""MaixPy's ``sensor``: a camera whose frames come from edged's synthetic scenes.

``MAIXPY_STANDIN_SCENE`` picks the scene: ``shapes`` (``ShapesScene``) or
``panzoom:PHOTO:x,y,w,h`` (``PanZoomScene`` over a photo with one known box); unset, there
is no camera and ``reset()`` fails as MaixPy's does. Frame ``i`` of the board (its i-th
``snapshot()``) is the scene's index ``i``, centre-cropped by ``set_windowing`` as the OV2640
driver crops, so a test can render the same frame and know its truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tests.maixpy_standin import _board

if TYPE_CHECKING:
    from edged.camera.synthetic import Scene
from tests.maixpy_standin.image import Image

RGB565, GRAYSCALE = 2, 1
QVGA = 8
FRAME_SIZES = {QVGA: (320, 240)}


@dataclass
class _Camera:
    scene: Scene
    index: int = 0
    size: tuple[int, int] = (320, 240)
    window: tuple[int, int] | None = None


_camera: _Camera | None = None


def scene_from(spec: str) -> Scene:
    """``shapes`` or ``panzoom:PHOTO:x,y,w,h`` (a box of the photo in pixels)."""
    from edged.camera.synthetic import PanZoomScene, ShapesScene  # OpenCV: cameras only

    if spec == "shapes":
        return ShapesScene(seed=7)
    kind, photo, box = spec.split(":")
    if kind != "panzoom":
        raise ValueError(f"unknown scene {spec!r}")
    x, y, w, h = (float(v) for v in box.split(","))
    return PanZoomScene(Path(photo), (x, y, w, h), period=40)


def window(size: tuple[int, int], frame: tuple[int, int]) -> tuple[int, int]:
    """The top-left corner of a centred window of ``size`` in ``frame``."""
    return (frame[0] - size[0]) // 2, (frame[1] - size[1]) // 2


def reset() -> None:
    global _camera  # noqa: PLW0603 - the one camera of the board, as in MaixPy
    spec = _board.env("SCENE")
    if not spec:
        raise OSError("reset failed: no camera found (stand-in board without a scene)")
    _camera = _Camera(scene_from(spec))


def _require() -> _Camera:
    if _camera is None:
        raise OSError("sensor not reset: call sensor.reset() first")
    return _camera


def set_pixformat(pixformat: int) -> None:
    _require()
    if pixformat != RGB565:
        raise ValueError("the stand-in camera gives RGB565 frames only")


def set_framesize(framesize: int) -> None:
    _require().size = FRAME_SIZES[framesize]


def set_windowing(size: tuple[int, int]) -> None:
    camera = _require()
    if size[0] > camera.size[0] or size[1] > camera.size[1]:
        raise ValueError(f"window {size} is larger than the frame {camera.size}")
    camera.window = size


def run(enable: int) -> None:
    _require()


def snapshot() -> Image:
    camera = _require()
    bgr, _ = camera.scene.render(camera.index)
    camera.index += 1
    frame = (bgr.shape[1], bgr.shape[0])
    size = camera.window or frame
    x, y = window(size, frame)
    crop = bgr[y:y + size[1], x:x + size[0], ::-1]
    return Image.from_camera(np.ascontiguousarray(np.moveaxis(crop, -1, 0)))
