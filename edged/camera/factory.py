"""Build a camera from its settings: the one place that knows every kind."""

from __future__ import annotations

from typing import assert_never

from edged.camera.config import (
    CameraConfig,
    FolderCameraConfig,
    OpenCvCameraConfig,
    PanZoomCameraConfig,
    ShapesCameraConfig,
)
from edged.camera.opencv import OpenCvCamera
from edged.camera.source import Backoff, Camera
from edged.camera.synthetic import ImageFolder, PanZoomScene, SceneCamera, ShapesScene


def build_camera(config: CameraConfig) -> Camera:
    """The camera ``config`` describes; raises ``ValueError`` naming the camera if it cannot be."""
    try:
        return _build(config)
    except ValueError as exc:
        raise ValueError(f"camera {config.name!r} ({config.kind}): {exc}") from exc


def _build(config: CameraConfig) -> Camera:
    match config:
        case OpenCvCameraConfig():
            reconnect = config.reconnect
            return OpenCvCamera(
                config.name,
                config.fps,
                config.source,
                size=config.size,
                loop=config.loop,
                stall_timeout=config.stall_timeout,
                backoff=Backoff(
                    reconnect.initial, reconnect.maximum, reconnect.factor, reconnect.jitter
                ),
            )
        case ShapesCameraConfig():
            shapes = ShapesScene(
                config.width,
                config.height,
                seed=config.seed,
                objects=(config.min_objects, config.max_objects),
                episode=_frames(config.episode, config.fps),
                noise=config.noise,
                blur=config.blur,
            )
            source = f"shapes scene {config.width}x{config.height}, seed {config.seed}"
            return SceneCamera(config.name, config.fps, shapes, source=source)
        case PanZoomCameraConfig():
            panzoom = PanZoomScene(
                config.photo,
                config.box,
                width=config.width,
                height=config.height,
                zoom=config.zoom,
                period=max(2, _frames(config.period, config.fps)),
                seed=config.seed,
                label=config.label,
                class_id=config.class_id,
            )
            source = f"pan-zoom scene over {config.photo}"
            return SceneCamera(config.name, config.fps, panzoom, source=source)
        case FolderCameraConfig():
            return ImageFolder(
                config.name, config.fps, config.path, size=config.size, loop=config.loop
            )
        case _:
            assert_never(config)


def _frames(seconds: float, fps: float) -> int:
    """A duration in whole frames (at least one)."""
    return max(1, round(seconds * fps))
