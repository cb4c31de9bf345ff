"""Frame sources: OpenCV capture (devices, streams, files), synthetic scenes with exact
ground truth, and image-folder replay; each paced to its fps, retried when it fails, and
reporting its stats.

Use: ``camera = build_camera(config)``, then ``async for frame in camera.frames()``
(inside ``contextlib.aclosing``); ``camera.stats`` may be read at any time.
"""

from edged.camera.config import (
    CameraConfig,
    FolderCameraConfig,
    OpenCvCameraConfig,
    PanZoomCameraConfig,
    ReconnectConfig,
    ShapesCameraConfig,
)
from edged.camera.factory import build_camera
from edged.camera.frame import BoxXYWH, Frame, GroundTruth, Image
from edged.camera.opencv import OpenCvCamera
from edged.camera.source import (
    Backoff,
    Camera,
    CameraError,
    CameraState,
    CameraStats,
    Capture,
    EndOfStream,
    Pacer,
)
from edged.camera.synthetic import (
    SHAPE_LABELS,
    ImageFolder,
    PanZoomScene,
    PlacedShape,
    Scene,
    SceneCamera,
    ShapesScene,
)

__all__ = [
    "SHAPE_LABELS",
    "Backoff",
    "BoxXYWH",
    "Camera",
    "CameraConfig",
    "CameraError",
    "CameraState",
    "CameraStats",
    "Capture",
    "EndOfStream",
    "FolderCameraConfig",
    "Frame",
    "GroundTruth",
    "Image",
    "ImageFolder",
    "OpenCvCamera",
    "OpenCvCameraConfig",
    "Pacer",
    "PanZoomCameraConfig",
    "PanZoomScene",
    "PlacedShape",
    "ReconnectConfig",
    "Scene",
    "SceneCamera",
    "ShapesCameraConfig",
    "ShapesScene",
    "build_camera",
]
