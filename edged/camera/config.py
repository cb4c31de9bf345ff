"""Camera settings: one model per kind, chosen by ``kind``, for the daemon's config to embed.

Validation happens when the config is read (``edged check`` included), so a bad camera is
refused with the field's name before anything starts. Paths that must exist when the daemon
starts (the pan-zoom photo, the replay folder) are checked; a video file is not, because a
camera whose file appears later is retried until it does.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import (
    DirectoryPath,
    Field,
    FilePath,
    field_validator,
    model_validator,
)

from edged.runtime.definitions import SEGMENT_PATTERN, Strict

MIN_SIDE, MAX_SIDE = 16, 8192  # pixels: below, no model input fits; above, no camera sends


class _Camera(Strict):
    name: str = Field(
        pattern=SEGMENT_PATTERN,
        description="Camera name, unique in the deployment; it is a segment of MQTT topics "
        "(<prefix>/<name>/detections), so only letters, digits, '_' and '-'.",
    )
    fps: float = Field(
        default=30.0, gt=0, le=120, description="Frames per second (schedule slots per second)."
    )
    pipeline: str = Field(
        default="face",
        pattern=SEGMENT_PATTERN,
        description="The pipeline (pipelines/<name>.toml) this camera's frames go through.",
    )


class _FixedSize(_Camera):
    width: int = Field(default=320, ge=MIN_SIDE, le=MAX_SIDE, description="Frame width in pixels.")
    height: int = Field(
        default=240, ge=MIN_SIDE, le=MAX_SIDE, description="Frame height in pixels."
    )


class _OptionalSize(_Camera):
    width: int | None = Field(
        default=None,
        ge=MIN_SIDE,
        le=MAX_SIDE,
        description="Resize to this width (with height); unset: keep.",
    )
    height: int | None = Field(
        default=None,
        ge=MIN_SIDE,
        le=MAX_SIDE,
        description="Resize to this height (with width); unset: keep.",
    )

    @model_validator(mode="after")
    def _both_or_neither(self) -> Self:
        if (self.width is None) != (self.height is None):
            raise ValueError("give both width and height, or neither (keep frames as they come)")
        return self

    @property
    def size(self) -> tuple[int, int] | None:
        """(width, height) to resize to, or None."""
        if self.width is None or self.height is None:
            return None
        return self.width, self.height


class ReconnectConfig(Strict):
    """Backoff between attempts to reopen a failed source: exponential, with jitter."""

    initial: float = Field(
        default=1.0, gt=0, le=3600, description="Seconds before the first retry."
    )
    maximum: float = Field(
        default=30.0, gt=0, le=3600, description="Longest wait between retries, s."
    )
    factor: float = Field(
        default=2.0, ge=1, le=10, description="Each wait is the previous one times this."
    )
    jitter: float = Field(
        default=0.25, ge=0, lt=1, description="Spread each wait by up to this fraction, up or down."
    )

    @model_validator(mode="after")
    def _initial_within_maximum(self) -> Self:
        if self.initial > self.maximum:
            raise ValueError(f"initial ({self.initial}) must not exceed maximum ({self.maximum})")
        return self


class OpenCvCameraConfig(_OptionalSize):
    """A camera device, an RTSP/HTTP stream or a video file, through OpenCV."""

    kind: Literal["opencv"] = Field(description="OpenCV capture.")
    source: int | str = Field(
        description="Device index (0), device path (/dev/video0), stream URL (rtsp://..., "
        "http://...) or video file path.",
    )
    loop: bool = Field(default=True, description="Video files: start again at the end (else stop).")
    stall_timeout: float = Field(
        default=10.0, gt=0, le=600, description="Seconds without a frame before reopening."
    )
    reconnect: ReconnectConfig = Field(
        default=ReconnectConfig(), description="Backoff between reopen attempts."
    )

    @field_validator("source")
    @classmethod
    def _usable_source(cls, source: int | str) -> int | str:
        if isinstance(source, int) and source < 0:
            raise ValueError(f"a device index is >= 0, got {source}")
        if isinstance(source, str) and not source.strip():
            raise ValueError("empty: give a device, a stream URL or a video file")
        return source


class ShapesCameraConfig(_FixedSize):
    """Moving circles, squares and triangles over varied backgrounds, with exact truth."""

    kind: Literal["shapes"] = Field(description="Synthetic shapes scene.")
    seed: int = Field(default=0, ge=0, description="Seed of everything random in the scene.")
    min_objects: int = Field(default=1, ge=0, le=32, description="Fewest shapes in a scene.")
    max_objects: int = Field(default=4, ge=0, le=32, description="Most shapes in a scene.")
    episode: float = Field(
        default=10.0, gt=0, le=86400, description="Seconds before a new scene (background, shapes)."
    )
    noise: float = Field(
        default=0.0, ge=0, le=64, description="Gaussian pixel noise: sigma, grey levels."
    )
    blur: float = Field(
        default=0.0, ge=0, le=10, description="Gaussian blur, sigma in pixels (0: none)."
    )

    @model_validator(mode="after")
    def _objects_range(self) -> Self:
        if self.min_objects > self.max_objects:
            raise ValueError(
                f"min_objects ({self.min_objects}) exceeds max_objects ({self.max_objects})"
            )
        return self


class PanZoomCameraConfig(_FixedSize):
    """A virtual camera panning and zooming over a photo with one known object."""

    kind: Literal["panzoom"] = Field(description="Pan and zoom over a photo.")
    photo: FilePath = Field(description="The photo (any format OpenCV reads).")
    box: tuple[float, float, float, float] = Field(
        description="The object's box in the photo: x, y, width, height in pixels."
    )
    label: str = Field(default="face", min_length=1, description="The object's label in the truth.")
    class_id: int = Field(default=0, ge=0, description="The object's class id in the truth.")
    zoom: tuple[float, float] = Field(
        default=(0.35, 0.8), description="Least and most of the frame height the object spans."
    )
    period: float = Field(
        default=10.0, gt=0, le=86400, description="Seconds of one zoom-in-and-out cycle."
    )
    seed: int = Field(default=0, ge=0, description="Sets the phases of the zoom and pan motions.")

    @model_validator(mode="after")
    def _box_and_zoom(self) -> Self:
        x, y, w, h = self.box
        if w <= 0 or h <= 0 or x < 0 or y < 0:
            raise ValueError(f"box {self.box} needs x, y >= 0 and width, height > 0")
        if not 0 < self.zoom[0] <= self.zoom[1] <= 1:
            raise ValueError(f"zoom {self.zoom} must satisfy 0 < smallest <= largest <= 1")
        return self


class FolderCameraConfig(_OptionalSize):
    """Replay of the images of a folder, in name order."""

    kind: Literal["folder"] = Field(description="Image folder replay.")
    path: DirectoryPath = Field(description="The folder of images (.jpg, .png, ...).")
    loop: bool = Field(default=True, description="Start again after the last image (else stop).")


CameraConfig = Annotated[
    OpenCvCameraConfig | ShapesCameraConfig | PanZoomCameraConfig | FolderCameraConfig,
    Field(discriminator="kind"),
]
"""Any camera's settings; ``kind`` says which."""
