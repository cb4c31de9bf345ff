"""Synthetic cameras: scenes whose ground truth is known exactly, and replay of an image folder.

A scene is a pure function ``render(index) -> (image, truth)`` of its parameters and the
frame index, so the same object serves as a camera (``SceneCamera`` renders the index that
wall-clock time has reached) and as a dataset generator (any index, in any order, on any
thread). ``ShapesScene`` draws moving shapes for training and checking a small detector;
``PanZoomScene`` moves a virtual camera over a real photo so a real model (the fixture face
detector) can be checked frame by frame against the photo's known box.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import cv2
import numpy as np
import numpy.typing as npt

from edged.camera.frame import BoxXYWH, GroundTruth, Image
from edged.camera.source import Backoff, Camera, CameraError, Capture, EndOfStream

SHAPE_LABELS: Final = ("circle", "square", "triangle")
"""The classes of ``ShapesScene``: the class id of a shape is its index here."""

Truth = tuple[GroundTruth, ...]


class Scene(Protocol):
    """Anything that renders frame ``index`` with its exact ground truth."""

    def render(self, index: int) -> tuple[Image, Truth]: ...


class SceneCamera(Camera):
    """A camera over a scene: each frame renders the index wall-clock time has reached.

    Rendering runs in a worker thread. A late consumer therefore sees the scene jump ahead
    (as a real camera would), and the index never repeats.
    """

    def __init__(self, name: str, fps: float, scene: Scene, *, source: str) -> None:
        super().__init__(name, fps, source=source)
        self.scene = scene
        self._start: float | None = None
        self._index = -1

    async def _read(self) -> Capture:
        wall, now = time.time(), time.monotonic()
        if self._start is None:
            self._start = now
        self._index = max(self._index + 1, round((now - self._start) * self.fps))
        image, truth = await asyncio.to_thread(self.scene.render, self._index)
        return Capture(image, wall, now, truth)


# --- (a) moving shapes ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlacedShape:
    """One shape as drawn in one frame: class, colour and the integer outline that is filled."""

    class_id: int
    color: tuple[int, int, int]
    points: npt.NDArray[np.int32]

    @property
    def label(self) -> str:
        return SHAPE_LABELS[self.class_id]

    def draw(self, canvas: Image | npt.NDArray[np.uint8], color: int | None = None) -> None:
        """Fill the shape into ``canvas`` (a frame, or a one-channel mask with ``color=255``)."""
        cv2.fillPoly(canvas, [self.points], self.color if color is None else (color,), cv2.LINE_8)


@dataclass(frozen=True, slots=True)
class _Mover:
    """One shape of an episode: what it looks like and how it moves (pixels, radians per frame)."""

    class_id: int
    radius: float
    color: tuple[int, int, int]
    x0: float
    y0: float
    vx: float
    vy: float
    angle0: float
    spin: float

    def place(self, t: int, width: int, height: int) -> PlacedShape:
        cx = round(_bounce(self.x0 + self.vx * t, width - 1))
        cy = round(_bounce(self.y0 + self.vy * t, height - 1))
        r = round(self.radius)
        if SHAPE_LABELS[self.class_id] == "circle":
            points = np.asarray(cv2.ellipse2Poly((cx, cy), (r, r), 0, 0, 360, 5), np.int32)
        else:
            corners = 4 if SHAPE_LABELS[self.class_id] == "square" else 3
            angles = self.angle0 + self.spin * t + 2 * np.pi * np.arange(corners) / corners
            xy = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], axis=1)
            points = np.round(xy).astype(np.int32)
        return PlacedShape(self.class_id, self.color, points)


def _bounce(position: float, high: float) -> float:
    """Where a point that moved freely to ``position`` is when it bounces between 0 and ``high``."""
    folded = position % (2 * high)
    return folded if folded <= high else 2 * high - folded


@dataclass(frozen=True, slots=True)
class _Episode:
    background: Image
    movers: tuple[_Mover, ...]


class ShapesScene:
    """Shapes (``SHAPE_LABELS``) moving over varied backgrounds, with exact boxes.

    The index is cut into episodes of ``episode`` frames; each episode has its own
    background (gradient, clouds or texture) and 0..n shapes of random class, size, colour,
    speed and spin, all drawn from ``seed`` and the episode number. Within an episode shapes
    move in straight lines and their centres bounce off the frame's borders, so up to half a
    shape may leave the frame; shapes may overlap (later ones on top). ``episode=1`` makes
    every index an independent sample, for datasets. ``blur`` (Gaussian sigma, pixels) and
    ``noise`` (Gaussian sigma, grey levels) degrade the image, never the truth.

    A truth box is the tight box of the pixels the shape covers (before other shapes hide
    part of it), clipped to the frame: exact by construction, integer pixels.
    """

    def __init__(
        self,
        width: int = 320,
        height: int = 240,
        *,
        seed: int = 0,
        objects: tuple[int, int] = (1, 4),
        episode: int = 300,
        noise: float = 0.0,
        blur: float = 0.0,
    ) -> None:
        if width < 16 or height < 16:
            raise ValueError(f"shapes scene: size {width}x{height} is too small (16x16 at least)")
        if not 0 <= objects[0] <= objects[1]:
            raise ValueError(f"shapes scene: objects {objects} must be a range 0 <= min <= max")
        if episode < 1 or seed < 0 or noise < 0 or blur < 0:
            raise ValueError(
                f"shapes scene: episode ({episode}) must be >= 1; seed ({seed}), noise ({noise}) "
                f"and blur ({blur}) must be >= 0"
            )
        self.width, self.height = width, height
        self.seed, self.objects, self.episode = seed, objects, episode
        self.noise, self.blur = noise, blur
        self._cached: tuple[int, _Episode] | None = None

    def layout(self, index: int) -> tuple[PlacedShape, ...]:
        """The shapes of frame ``index`` in drawing order (later ones on top)."""
        episode, t = divmod(_check_index(index), self.episode)
        return tuple(m.place(t, self.width, self.height) for m in self._episode(episode).movers)

    def render(self, index: int) -> tuple[Image, Truth]:
        """Frame ``index`` and its truth: a pure function of the parameters and ``index``."""
        background = self._episode(_check_index(index) // self.episode).background
        image = background.copy()
        truth = []
        for shape in self.layout(index):
            shape.draw(image)
            mask = np.zeros(image.shape[:2], np.uint8)
            shape.draw(mask, 255)
            x, y, w, h = cv2.boundingRect(mask)
            if w and h:
                truth.append(GroundTruth(shape.label, shape.class_id, (x, y, w, h)))
        if self.blur:
            image = np.asarray(cv2.GaussianBlur(image, (0, 0), self.blur), np.uint8)
        if self.noise:
            rng = np.random.default_rng([self.seed, 1, index])
            noisy = image + rng.normal(0.0, self.noise, image.shape)
            image = np.clip(noisy, 0, 255).astype(np.uint8)
        return image, tuple(truth)

    def _episode(self, episode: int) -> _Episode:
        cached = self._cached  # one read: safe when several threads render
        if cached is not None and cached[0] == episode:
            return cached[1]
        rng = np.random.default_rng([self.seed, 0, episode])
        make_background = _BACKGROUNDS[int(rng.integers(len(_BACKGROUNDS)))]
        background = make_background(rng, self.width, self.height)
        count = int(rng.integers(self.objects[0], self.objects[1] + 1))
        movers = tuple(self._mover(rng) for _ in range(count))
        result = _Episode(background, movers)
        self._cached = (episode, result)
        return result

    def _mover(self, rng: np.random.Generator) -> _Mover:
        side = min(self.width, self.height)
        speed, heading = rng.uniform(0.5, 3.0), rng.uniform(0, 2 * np.pi)
        class_id = int(rng.integers(len(SHAPE_LABELS)))
        return _Mover(
            class_id=class_id,
            radius=rng.uniform(0.06, 0.2) * side,
            color=_vivid(rng),
            x0=rng.uniform(0, self.width - 1),
            y0=rng.uniform(0, self.height - 1),
            vx=speed * math.cos(heading),
            vy=speed * math.sin(heading),
            angle0=rng.uniform(0, 2 * np.pi),
            spin=0.0 if SHAPE_LABELS[class_id] == "circle" else rng.uniform(-0.05, 0.05),
        )


def _check_index(index: int) -> int:
    if index < 0:
        raise ValueError(f"frame index must be >= 0, got {index}")
    return index


def _vivid(rng: np.random.Generator) -> tuple[int, int, int]:
    """A saturated colour, so shapes stand out from the muted backgrounds."""
    hsv = np.array(
        [[[rng.integers(180), rng.integers(150, 256), rng.integers(140, 256)]]], np.uint8
    )
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def _muted(rng: np.random.Generator) -> npt.NDArray[np.float32]:
    """A greyish colour: a grey level plus a small tint."""
    tinted = rng.uniform(30, 225) + rng.uniform(-35, 35, 3)
    return np.clip(tinted, 0, 255).astype(np.float32)


def _coordinates(
    rng: np.random.Generator, width: int, height: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Pixel coordinates along a random direction and across it."""
    theta = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    along = xs * math.cos(theta) + ys * math.sin(theta)
    across = ys * math.cos(theta) - xs * math.sin(theta)
    return along, across


def _gradient(rng: np.random.Generator, width: int, height: int) -> Image:
    start, end = _muted(rng), _muted(rng)
    along, _ = _coordinates(rng, width, height)
    t = ((along - along.min()) / max(float(np.ptp(along)), 1.0))[..., None]
    return np.asarray(start * (1 - t) + end * t, np.uint8)


def _clouds(rng: np.random.Generator, width: int, height: int) -> Image:
    low, high = _muted(rng), _muted(rng)
    cells = rng.uniform(0, 1, (int(rng.integers(2, 7)), int(rng.integers(2, 7)), 3))
    smooth = cv2.resize(cells.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    return (low + (high - low) * np.clip(smooth, 0, 1)).astype(np.uint8)


def _texture(rng: np.random.Generator, width: int, height: int) -> Image:
    first, second = _muted(rng), _muted(rng)
    period = rng.uniform(6, 32)
    along, across = _coordinates(rng, width, height)
    bands = np.floor(along / period)
    if rng.random() < 0.5:  # checkerboard rather than stripes
        bands += np.floor(across / period)
    return np.where((bands % 2 == 1)[..., None], second, first).astype(np.uint8)


_BACKGROUNDS: Final[tuple[Callable[[np.random.Generator, int, int], Image], ...]] = (
    _gradient,
    _clouds,
    _texture,
)


# --- (b) pan and zoom over a photo ------------------------------------------------------------


class PanZoomScene:
    """A virtual camera panning and zooming over a photo that holds one known object.

    Frame ``index`` is the photo scaled by ``s`` and shifted: ``frame = s * photo + t`` in
    pixel-edge coordinates (``transform(index)``). The object spans between ``zoom[0]`` and
    ``zoom[1]`` of the frame's height, and the view pans so that the whole object is always
    in it, staying inside the photo when it can (outside, the photo's mean colour). Zoom and
    pan follow slow cosines of incommensurate periods (``period`` frames for the zoom), so
    the motion is smooth and deterministic; ``seed`` sets their phases. The truth is the
    photo's box mapped through the same transform, clipped to the frame.
    """

    def __init__(
        self,
        photo: Path,
        box: BoxXYWH,
        *,
        width: int = 320,
        height: int = 240,
        zoom: tuple[float, float] = (0.35, 0.8),
        period: int = 300,
        seed: int = 0,
        label: str = "face",
        class_id: int = 0,
    ) -> None:
        loaded = cv2.imread(str(photo), cv2.IMREAD_COLOR)
        if loaded is None:
            raise ValueError(f"pan-zoom scene: cannot read photo {photo}")
        image = np.asarray(loaded, np.uint8)
        photo_h, photo_w = image.shape[:2]
        x, y, w, h = box
        if not (w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= photo_w and y + h <= photo_h):
            raise ValueError(
                f"pan-zoom scene: box {box} is not inside photo {photo} ({photo_w}x{photo_h})"
            )
        if not 0 < zoom[0] <= zoom[1] <= 1:
            raise ValueError(f"pan-zoom scene: zoom {zoom} must satisfy 0 < min <= max <= 1")
        if period < 2:
            raise ValueError(f"pan-zoom scene: period must be >= 2 frames, got {period}")
        self.photo, self.box = photo, box
        self.width, self.height = width, height
        self.zoom, self.period = zoom, period
        self.label, self.class_id = label, class_id
        self._phases = np.random.default_rng(seed).uniform(0, 2 * np.pi, 3)
        self._fill = tuple(float(c) for c in image.reshape(-1, 3).mean(axis=0))
        self._levels = _pyramid(image)

    def transform(self, index: int) -> npt.NDArray[np.float64]:
        """The 2x3 affine map from photo to frame (pixel-edge coordinates) of frame ``index``."""
        t = _check_index(index)
        x, y, w, h = self.box
        photo_h, photo_w = self._levels[0].shape[:2]
        low, high = self.zoom
        share = low * (high / low) ** self._wave(t, 1.0, 0)  # geometric: zooming feels even
        scale = min(share * self.height / h, self.width / w, self.height / h)
        cx = self._centre(x, w, photo_w, self.width / (2 * scale), self._wave(t, 1.37, 1))
        cy = self._centre(y, h, photo_h, self.height / (2 * scale), self._wave(t, 0.79, 2))
        return np.array(
            [
                [scale, 0.0, self.width / 2 - scale * cx],
                [0.0, scale, self.height / 2 - scale * cy],
            ]
        )

    def render(self, index: int) -> tuple[Image, Truth]:
        """Frame ``index`` and the object's box in it."""
        matrix = self.transform(index)
        scale = matrix[0, 0]
        level = min(len(self._levels) - 1, max(0, math.floor(-math.log2(scale))))
        source = self._levels[level]
        # The pyramid level is the photo shrunk by (sx, sy): fold that into the scale...
        sx = source.shape[1] / self._levels[0].shape[1]
        sy = source.shape[0] / self._levels[0].shape[0]
        a = np.array([scale / sx, scale / sy])
        # ...and go from pixel edges to OpenCV's pixel centres: dst_c = a*src_c + t + (a - 1)/2
        offset = matrix[:, 2] + (a - 1) / 2
        warp = np.array([[a[0], 0.0, offset[0]], [0.0, a[1], offset[1]]])
        image = cv2.warpAffine(
            source,
            warp,
            (self.width, self.height),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=self._fill,
        )
        truth = GroundTruth(self.label, self.class_id, self._mapped_box(matrix))
        return np.asarray(image, np.uint8), (truth,)

    def _mapped_box(self, matrix: npt.NDArray[np.float64]) -> BoxXYWH:
        x, y, w, h = self.box
        scale, tx, ty = matrix[0, 0], matrix[0, 2], matrix[1, 2]
        x0, x1 = np.clip([scale * x + tx, scale * (x + w) + tx], 0, self.width)
        y0, y1 = np.clip([scale * y + ty, scale * (y + h) + ty], 0, self.height)
        return float(x0), float(y0), float(x1 - x0), float(y1 - y0)

    def _wave(self, index: int, stretch: float, phase: int) -> float:
        """A smooth 0..1 cosine with period ``period * stretch`` frames."""
        angle = 2 * math.pi * index / (self.period * stretch) + self._phases[phase]
        return 0.5 - 0.5 * math.cos(angle)

    @staticmethod
    def _centre(start: float, size: float, extent: int, half_view: float, u: float) -> float:
        """A view centre: [start, start + size] in view, and the view in the photo if it fits."""
        # The view inside the photo if it fits, else the photo inside the view: either way a
        # range that moves continuously with the zoom, and never empty with the object in view.
        inside_low, inside_high = sorted((half_view, extent - half_view))
        low = max(inside_low, start + size - half_view)
        high = min(inside_high, start + half_view)
        return low + u * (high - low)


def _pyramid(image: Image) -> list[Image]:
    """The photo at halving sizes: a strong zoom-out reads an area-averaged level, not aliased."""
    levels = [image]
    while min(levels[-1].shape[:2]) >= 32:
        height, width = image.shape[:2]
        factor = 2 ** len(levels)
        size = (max(1, round(width / factor)), max(1, round(height / factor)))
        levels.append(np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA), np.uint8))
    return levels


# --- (c) replay of an image folder ------------------------------------------------------------

IMAGE_SUFFIXES: Final = frozenset(
    {".bmp", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp"}
)


class ImageFolder(Camera):
    """The images of a folder in name order, one per slot, looping (or ending) at the last one.

    The folder is listed again at the start of every pass, so images added meanwhile are
    picked up. An unreadable image is a failure (counted, retried after backoff) and the
    replay goes on with the next one. ``size`` (width, height) resizes; ``None`` keeps each
    image as it is.
    """

    def __init__(
        self,
        name: str,
        fps: float,
        folder: Path,
        *,
        size: tuple[int, int] | None = None,
        loop: bool = True,
        backoff: Backoff | None = None,
    ) -> None:
        super().__init__(name, fps, source=f"image folder {folder}", backoff=backoff)
        self.folder = folder
        self._size = size
        self._loop = loop
        self._files: list[Path] = []
        self._next = 0

    async def _read(self) -> Capture:
        if self._next >= len(self._files):
            if self._files and not self._loop:
                raise EndOfStream(self.source)
            self._files = await asyncio.to_thread(_list_images, self.folder)
            self._next = 0
        path = self._files[self._next]
        self._next += 1
        return Capture.stamp(await asyncio.to_thread(_load_image, path, self._size))


def _list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise CameraError(f"image folder {folder}: no such folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CameraError(f"image folder {folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def _load_image(path: Path, size: tuple[int, int] | None) -> Image:
    loaded = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if loaded is None:
        raise CameraError(f"image {path}: cannot be read or decoded")
    image = np.asarray(loaded, np.uint8)
    if size is not None and (image.shape[1], image.shape[0]) != size:
        image = np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA), np.uint8)
    return image
