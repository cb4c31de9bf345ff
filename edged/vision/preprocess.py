"""From a camera frame of any size to a model's input, and back again for the boxes.

A camera gives BGR ``HxWx3`` uint8 frames; a K210 model wants its own size, colour order
and the planar ``CHW`` layout that MaixPy's ``pix_to_ai`` produces (a whole R plane, then
G, then B). Fitting the frame to the input (stretch, centre crop or letterbox) is a
geometric transform; it is returned with the tensor so decoders can put boxes back into
the frame's pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

import cv2
import numpy as np
import numpy.typing as npt

FRAME_CHANNELS = 3


class Fit(StrEnum):
    """How a frame of another aspect ratio is fitted to the model's input."""

    RESIZE = "resize"  # stretch: every pixel kept, aspect ratio lost
    CROP = "crop"  # centre crop to the input's aspect, then resize: edges lost
    LETTERBOX = "letterbox"  # fit inside and pad: everything kept, some input wasted


class ColorOrder(StrEnum):
    """The channel order a model was trained with."""

    RGB = "rgb"
    BGR = "bgr"
    GRAY = "gray"

    @property
    def channels(self) -> int:
        return 1 if self is ColorOrder.GRAY else 3


@dataclass(frozen=True, slots=True)
class Transform:
    """Frame pixels to model-input pixels, per axis: ``input = frame * scale + offset``.

    Coordinates are continuous (pixel ``i`` spans ``[i, i + 1)``), so a box's corners map
    exactly under any of the fits.
    """

    frame_size: tuple[int, int]  # (width, height)
    input_size: tuple[int, int]  # (width, height)
    scale: tuple[float, float]
    offset: tuple[float, float]

    def __post_init__(self) -> None:
        if min(*self.frame_size, *self.input_size) < 1:
            raise ValueError(
                f"transform sizes must be at least 1x1, got frame {self.frame_size} "
                f"and input {self.input_size}"
            )
        if min(self.scale) <= 0:
            raise ValueError(f"transform scale must be positive, got {self.scale}")

    @classmethod
    def identity(cls, width: int, height: int) -> Transform:
        """The frame is the model input (MaixPy's case: the sensor gives the input size)."""
        return cls((width, height), (width, height), (1.0, 1.0), (0.0, 0.0))

    def to_frame(
        self, corners: npt.ArrayLike, *, normalized: bool, clip: bool = True
    ) -> npt.NDArray[np.float64]:
        """Map ``(N, 4)`` corners ``x1, y1, x2, y2`` from the input to frame pixels.

        ``normalized`` says the corners are in 0..1 of the input rather than its pixels.
        Clipping keeps boxes inside the frame (a box in letterbox padding collapses to
        zero size at the frame's edge).
        """
        boxes = _corners(corners)
        if normalized:
            boxes = boxes * np.tile(np.asarray(self.input_size, dtype=np.float64), 2)
        frame: npt.NDArray[np.float64] = (boxes - np.tile(self.offset, 2)) / np.tile(self.scale, 2)
        if clip:
            frame = np.clip(frame, 0.0, np.tile(np.asarray(self.frame_size, dtype=np.float64), 2))
        return frame

    def to_input(self, corners: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Map ``(N, 4)`` corners from frame pixels to input pixels (no clipping)."""
        scale, offset = np.tile(self.scale, 2), np.tile(self.offset, 2)
        mapped: npt.NDArray[np.float64] = _corners(corners) * scale + offset
        return mapped


def _corners(corners: npt.ArrayLike) -> npt.NDArray[np.float64]:
    boxes = np.asarray(corners, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"expected corners of shape (N, 4), got {boxes.shape}")
    return boxes


@dataclass(frozen=True, slots=True)
class Normalization:
    """Float input: ``value = pixel * scale + bias`` per channel (model's channel order)."""

    scale: tuple[float, ...]
    bias: tuple[float, ...]

    @classmethod
    def from_mean_std(cls, mean: Sequence[float], std: Sequence[float]) -> Normalization:
        """``(pixel - mean) / std``, the form training code usually states."""
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} values but std has {len(std)}")
        if any(s == 0 for s in std):
            raise ValueError(f"std must not contain 0, got {tuple(std)}")
        return cls(
            tuple(1.0 / s for s in std), tuple(-m / s for m, s in zip(mean, std, strict=True))
        )


@dataclass(frozen=True, slots=True)
class InputSpec:
    """What a model takes: size, colour order, fit, and float normalisation if not uint8."""

    width: int
    height: int
    color: ColorOrder = ColorOrder.RGB
    fit: Fit = Fit.RESIZE
    pad_value: int = 0
    normalization: Normalization | None = None

    def __post_init__(self) -> None:
        # Accept the plain strings a config file gives; an unknown one fails here, not per frame.
        object.__setattr__(self, "color", ColorOrder(self.color))
        object.__setattr__(self, "fit", Fit(self.fit))
        if self.width < 1 or self.height < 1:
            raise ValueError(f"model input must be at least 1x1, got {self.width}x{self.height}")
        if not 0 <= self.pad_value <= 255:
            raise ValueError(f"pad_value must be 0..255, got {self.pad_value}")
        norm = self.normalization
        if norm is not None:
            allowed = {1, self.color.channels}
            if len(norm.scale) not in allowed or len(norm.bias) not in allowed:
                raise ValueError(
                    f"normalisation for {self.color} needs 1 or {self.color.channels} values "
                    f"per parameter, got scale {norm.scale} and bias {norm.bias}"
                )


class Preprocessed(NamedTuple):
    """The model input and how to map its boxes back to the frame."""

    tensor: npt.NDArray[np.uint8] | npt.NDArray[np.float32]
    transform: Transform


def check_frame(frame: object) -> npt.NDArray[np.uint8]:
    """The frame itself if it is a non-empty BGR ``HxWx3`` uint8 array.

    Anything else raises ``ValueError`` (``TypeError`` if it is not an array at all) saying
    what was expected and what came.
    """
    if not isinstance(frame, np.ndarray):
        raise TypeError(
            f"expected a frame as a numpy array (HxWx3 uint8), got {type(frame).__name__}"
        )
    if frame.dtype != np.uint8:
        raise ValueError(f"expected a uint8 frame (HxWx3), got dtype {frame.dtype}")
    if frame.ndim != 3:
        raise ValueError(f"expected a frame with 3 dimensions (HxWx3), got shape {frame.shape}")
    if frame.shape[2] != FRAME_CHANNELS:
        raise ValueError(f"expected a BGR frame with 3 channels (HxWx3), got shape {frame.shape}")
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise ValueError(f"expected a non-empty frame (HxWx3), got shape {frame.shape}")
    return frame


def fit_frame(
    frame: npt.NDArray[np.uint8], width: int, height: int, fit: Fit, pad_value: int = 0
) -> tuple[npt.NDArray[np.uint8], Transform]:
    """The frame fitted to ``width x height`` (still BGR ``HxWx3``) and the transform used."""
    frame = check_frame(frame)
    fit = Fit(fit)
    frame_h, frame_w = frame.shape[:2]
    if fit is Fit.RESIZE:
        transform = Transform(
            (frame_w, frame_h), (width, height), (width / frame_w, height / frame_h), (0.0, 0.0)
        )
        return _resize(frame, width, height), transform
    if fit is Fit.CROP:
        return _crop(frame, width, height)
    return _letterbox(frame, width, height, pad_value)


def _crop(
    frame: npt.NDArray[np.uint8], width: int, height: int
) -> tuple[npt.NDArray[np.uint8], Transform]:
    frame_h, frame_w = frame.shape[:2]
    if frame_w * height > frame_h * width:  # frame is wider than the input: cut the sides
        crop_w, crop_h = max(1, round(frame_h * width / height)), frame_h
    else:
        crop_w, crop_h = frame_w, max(1, round(frame_w * height / width))
    x0, y0 = (frame_w - crop_w) // 2, (frame_h - crop_h) // 2
    scale = (width / crop_w, height / crop_h)
    transform = Transform(
        (frame_w, frame_h), (width, height), scale, (-x0 * scale[0], -y0 * scale[1])
    )
    return _resize(frame[y0 : y0 + crop_h, x0 : x0 + crop_w], width, height), transform


def _letterbox(
    frame: npt.NDArray[np.uint8], width: int, height: int, pad_value: int
) -> tuple[npt.NDArray[np.uint8], Transform]:
    frame_h, frame_w = frame.shape[:2]
    ratio = min(width / frame_w, height / frame_h)
    inner_w = min(width, max(1, round(frame_w * ratio)))
    inner_h = min(height, max(1, round(frame_h * ratio)))
    pad_x, pad_y = (width - inner_w) // 2, (height - inner_h) // 2
    out = np.full((height, width, FRAME_CHANNELS), pad_value, dtype=np.uint8)
    out[pad_y : pad_y + inner_h, pad_x : pad_x + inner_w] = _resize(frame, inner_w, inner_h)
    transform = Transform(
        (frame_w, frame_h),
        (width, height),
        (inner_w / frame_w, inner_h / frame_h),
        (float(pad_x), float(pad_y)),
    )
    return out, transform


def _resize(image: npt.NDArray[np.uint8], width: int, height: int) -> npt.NDArray[np.uint8]:
    """OpenCV resize: area averaging to shrink (no aliasing), bilinear to enlarge."""
    src_h, src_w = image.shape[:2]
    if (src_w, src_h) == (width, height):
        return image
    shrinking = width <= src_w and height <= src_h
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    resized = cv2.resize(np.ascontiguousarray(image), (width, height), interpolation=interpolation)
    return np.asarray(resized, dtype=np.uint8)


def to_planar(image: npt.NDArray[np.uint8], color: ColorOrder) -> npt.NDArray[np.uint8]:
    """BGR ``HxWx3`` to the model's colour order as planar ``CxHxW`` (R plane first for rgb)."""
    color = ColorOrder(color)
    if color is ColorOrder.GRAY:
        gray = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_BGR2GRAY)
        return np.asarray(gray, dtype=np.uint8)[np.newaxis]
    channels_last = image[..., ::-1] if color is ColorOrder.RGB else image
    return np.ascontiguousarray(channels_last.transpose(2, 0, 1))


def normalize(
    planar: npt.NDArray[np.uint8], normalization: Normalization
) -> npt.NDArray[np.float32]:
    """Planar uint8 to float32 ``pixel * scale + bias``, per channel."""
    scale = np.asarray(normalization.scale, dtype=np.float32)[:, np.newaxis, np.newaxis]
    bias = np.asarray(normalization.bias, dtype=np.float32)[:, np.newaxis, np.newaxis]
    result: npt.NDArray[np.float32] = planar.astype(np.float32) * scale + bias
    return result


def preprocess(frame: npt.NDArray[np.uint8], spec: InputSpec) -> Preprocessed:
    """The model input for ``frame`` (planar uint8, or float32 if normalised) and its transform."""
    fitted, transform = fit_frame(frame, spec.width, spec.height, spec.fit, spec.pad_value)
    planar = to_planar(fitted, spec.color)
    if spec.normalization is None:
        return Preprocessed(planar, transform)
    return Preprocessed(normalize(planar, spec.normalization), transform)
