"""Synthetic cameras: deterministic scenes, exact ground truth, folder replay, configs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from edged.camera import (
    SHAPE_LABELS,
    Backoff,
    CameraConfig,
    CameraState,
    Frame,
    ImageFolder,
    PanZoomScene,
    SceneCamera,
    ShapesScene,
    build_camera,
)
from tests.conftest import fixture_path

CONFIG: TypeAdapter[CameraConfig] = TypeAdapter(CameraConfig)


def tight_box(mask: npt.NDArray[np.uint8]) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


# --- shapes -----------------------------------------------------------------------------------


def test_shape_classes_are_fixed() -> None:
    assert SHAPE_LABELS == ("circle", "square", "triangle")
    scene = ShapesScene(96, 64, seed=3, episode=1, objects=(3, 3))
    seen = {(t.label, t.class_id) for i in range(20) for t in scene.render(i)[1]}
    assert seen == {("circle", 0), ("square", 1), ("triangle", 2)}


def test_same_seed_same_frames_other_seed_other_frames() -> None:
    indices = [0, 1, 150, 299, 300, 4321]
    first, second = ShapesScene(seed=7, noise=4.0), ShapesScene(seed=7, noise=4.0)
    for index in indices:
        image_a, truth_a = first.render(index)
        image_b, truth_b = second.render(index)
        assert np.array_equal(image_a, image_b)
        assert truth_a == truth_b
    assert not np.array_equal(first.render(0)[0], ShapesScene(seed=8, noise=4.0).render(0)[0])


def test_render_does_not_depend_on_call_order() -> None:
    indices = [5, 900, 6, 301, 0, 299, 5, 1200, 300]
    in_order = ShapesScene(seed=2, episode=300)
    shuffled = ShapesScene(seed=2, episode=300)
    expected = {i: in_order.render(i) for i in sorted(set(indices))}
    for index in indices:
        image, truth = shuffled.render(index)
        assert np.array_equal(image, expected[index][0])
        assert truth == expected[index][1]


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    index=st.integers(0, 100_000),
    size=st.sampled_from([(320, 240), (64, 48), (37, 91)]),
)
def test_truth_is_the_tight_box_of_each_shape_inside_the_frame(
    seed: int, index: int, size: tuple[int, int]
) -> None:
    width, height = size
    scene = ShapesScene(width, height, seed=seed, objects=(1, 6))
    _, truth = scene.render(index)
    shapes = scene.layout(index)
    assert len(truth) == len(shapes)
    for shape, gt in zip(shapes, truth, strict=True):
        mask = np.zeros((height, width), np.uint8)
        cv2.fillPoly(mask, [shape.points], 255)  # drawn here, independently of the scene
        assert (gt.label, gt.class_id) == (shape.label, shape.class_id)
        assert np.abs(np.subtract(gt.box, tight_box(mask))).max() <= 1
        x, y, w, h = gt.box
        assert min(x, y) >= 0
        assert min(w, h) > 0
        assert x + w <= width
        assert y + h <= height
        points = shape.points
        if points.min() >= 0 and points[:, 0].max() < width and points[:, 1].max() < height:
            # Wholly inside: the box is exactly the outline's extent, whatever the rasteriser.
            x0, y0 = points.min(axis=0)
            x1, y1 = points.max(axis=0)
            assert gt.box == (x0, y0, x1 - x0 + 1, y1 - y0 + 1)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), index=st.integers(0, 100_000))
def test_every_visible_pixel_of_a_shape_has_its_colour(seed: int, index: int) -> None:
    scene = ShapesScene(160, 120, seed=seed, objects=(2, 5))
    image, _ = scene.render(index)
    shapes = scene.layout(index)
    masks = []
    for shape in shapes:
        mask = np.zeros((120, 160), np.uint8)
        shape.draw(mask, 255)
        masks.append(mask > 0)
    for i, shape in enumerate(shapes):
        hidden = np.logical_or.reduce([np.zeros((120, 160), bool), *masks[i + 1 :]])
        visible = masks[i] & ~hidden
        assert (image[visible] == shape.color).all()


def test_shapes_move_smoothly_within_an_episode_and_change_between() -> None:
    scene = ShapesScene(seed=11, episode=50, objects=(2, 4))
    for index in range(49):
        now, then = scene.layout(index), scene.layout(index + 1)
        assert [s.class_id for s in now] == [s.class_id for s in then]
        for a, b in zip(now, then, strict=True):
            step = np.abs(a.points.mean(axis=0) - b.points.mean(axis=0)).max()
            assert step <= 5  # at most 3 px/frame of motion, plus rounding and spin
    assert not np.array_equal(scene.render(49)[0], scene.render(50)[0])


def test_noise_and_blur_change_the_image_not_the_truth() -> None:
    clean_image, clean_truth = ShapesScene(seed=5).render(10)
    noisy_image, noisy_truth = ShapesScene(seed=5, noise=8.0, blur=1.5).render(10)
    assert noisy_truth == clean_truth
    difference = np.abs(noisy_image.astype(int) - clean_image.astype(int))
    assert 2 < difference.mean() < 20


def test_negative_index_is_refused() -> None:
    with pytest.raises(ValueError, match="frame index must be >= 0, got -1"):
        ShapesScene().render(-1)


# --- pan and zoom -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hopper() -> tuple[Path, tuple[float, float, float, float]]:
    faces = json.loads(fixture_path("faces.json").read_text())
    x, y, w, h = faces["grace_hopper.jpg"]
    return fixture_path("images", "grace_hopper.jpg"), (x, y, w, h)


def corners(box: tuple[float, float, float, float]) -> npt.NDArray[np.float64]:
    x, y, w, h = box
    return np.array([[x, y, 1.0], [x + w, y + h, 1.0]])


def test_panzoom_truth_is_the_photo_box_mapped_both_ways(
    hopper: tuple[Path, tuple[float, float, float, float]],
) -> None:
    photo, box = hopper
    scene = PanZoomScene(photo, box, width=320, height=240, period=120)
    for index in range(0, 600, 7):
        matrix = scene.transform(index)
        (truth,) = scene.render(index)[1]
        assert truth.label == "face"
        forward = corners(box) @ matrix.T  # photo -> frame
        assert np.allclose(forward, corners(truth.box)[:, :2], atol=1e-6)
        inverse = cv2.invertAffineTransform(matrix)
        backward = corners(truth.box) @ inverse.T  # frame -> photo
        assert np.allclose(backward, corners(box)[:, :2], atol=1e-6)


def test_panzoom_keeps_the_face_in_view_and_moves_smoothly(
    hopper: tuple[Path, tuple[float, float, float, float]],
) -> None:
    photo, box = hopper
    scene = PanZoomScene(photo, box, zoom=(0.3, 0.9), period=90)
    boxes = np.array([scene.render(i)[1][0].box for i in range(0, 270)])
    x, y, w, h = boxes.T
    assert min(x.min(), y.min()) >= 0
    assert (x + w).max() <= 320
    assert (y + h).max() <= 240
    assert h.min() == pytest.approx(0.3 * 240, rel=0.02)  # the zoom range is covered
    assert h.max() == pytest.approx(0.9 * 240, rel=0.02)
    assert np.abs(np.diff(boxes, axis=0)).max() < 12  # smooth: no jumps between frames


def test_panzoom_pixels_at_the_truth_are_the_photo_region(
    hopper: tuple[Path, tuple[float, float, float, float]],
) -> None:
    photo, box = hopper
    scene = PanZoomScene(photo, box, period=60)
    original = cv2.imread(str(photo))
    assert original is not None
    x, y, w, h = (round(v) for v in box)
    region = original[y : y + h, x : x + w]
    for index in range(0, 60, 6):  # zoomed in and out
        image, (truth,) = scene.render(index)
        bx, by, bw, bh = truth.box
        x0, y0 = math.ceil(bx), math.ceil(by)
        x1, y1 = math.floor(bx + bw), math.floor(by + bh)
        crop = image[y0:y1, x0:x1].astype(np.float64)
        expected = cv2.resize(region, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
        correlation = np.corrcoef(crop.ravel(), expected.astype(np.float64).ravel())[0, 1]
        assert correlation > 0.95, f"frame {index}: correlation {correlation:.3f}"


def test_panzoom_refuses_a_box_outside_the_photo(
    hopper: tuple[Path, tuple[float, float, float, float]],
) -> None:
    photo, _ = hopper
    with pytest.raises(
        ValueError, match=r"box .* is not inside photo .*grace_hopper.jpg \(512x600\)"
    ):
        PanZoomScene(photo, (400, 500, 222, 222))


# --- cameras over scenes, folder replay -------------------------------------------------------


async def take(camera: Any, count: int) -> list[Frame]:
    frames: list[Frame] = []
    async with contextlib.aclosing(camera.frames()) as stream:
        async for frame in stream:
            frames.append(frame)
            if len(frames) == count:
                break
    return frames


async def test_scene_camera_frames_carry_the_truth_of_their_image() -> None:
    scene = ShapesScene(64, 48, seed=4, objects=(2, 2))
    camera = SceneCamera("shapes", 120.0, scene, source="shapes scene")
    for frame in await take(camera, 5):
        index = next(i for i in range(400) if np.array_equal(scene.render(i)[0], frame.image))
        assert frame.truth == scene.render(index)[1]
        assert frame.camera == "shapes"


def write_images(folder: Path, names: list[str]) -> None:
    folder.mkdir(exist_ok=True)
    for name in names:
        level = int(name.split(".")[0][-1]) * 40  # "img3.png" -> grey 120
        cv2.imwrite(str(folder / name), np.full((30, 40, 3), level, np.uint8))


async def test_folder_replays_in_name_order_looping_and_resized(tmp_path: Path) -> None:
    write_images(tmp_path, ["img2.png", "img1.jpg", "img3.png"])
    (tmp_path / "notes.txt").write_text("not an image")
    camera = ImageFolder("replay", 200.0, tmp_path, size=(20, 10))
    frames = await take(camera, 7)
    levels = [round(float(frame.image.mean()) / 40) for frame in frames]
    assert levels == [1, 2, 3, 1, 2, 3, 1]
    assert {frame.image.shape for frame in frames} == {(10, 20, 3)}
    assert [frame.seq for frame in frames] == list(range(7))


async def test_folder_without_loop_ends_after_the_last_image(tmp_path: Path) -> None:
    write_images(tmp_path, ["a1.png", "a2.png"])
    camera = ImageFolder("replay", 200.0, tmp_path, loop=False)
    frames = await take(camera, 10)
    assert [frame.image.shape for frame in frames] == [(30, 40, 3)] * 2  # kept as they are
    assert camera.stats.state is CameraState.STOPPED


async def test_folder_skips_a_broken_image_and_recovers_when_images_appear(
    tmp_path: Path,
) -> None:
    camera = ImageFolder("replay", 200.0, tmp_path, backoff=Backoff(0.01, 0.02))
    task = asyncio.create_task(take(camera, 3))
    for _ in range(400):
        if camera.stats.failures >= 2:
            break
        await asyncio.sleep(0.005)
    assert camera.stats.state is CameraState.RETRYING
    assert camera.stats.last_error is not None
    assert f"image folder {tmp_path}: no images" in camera.stats.last_error
    (tmp_path / "a0.png").write_bytes(b"not a png")
    write_images(tmp_path, ["a1.png", "a2.png"])
    frames = await task
    assert [int(frame.image.mean() / 40) for frame in frames] == [1, 2, 1]
    assert camera.stats.last_error == f"image {tmp_path / 'a0.png'}: cannot be read or decoded"


# --- configs and the factory ------------------------------------------------------------------


def test_configs_build_their_cameras(
    tmp_path: Path, hopper: tuple[Path, tuple[float, float, float, float]]
) -> None:
    photo, box = hopper
    shapes = build_camera(CONFIG.validate_python({"kind": "shapes", "name": "s", "fps": 15}))
    panzoom = build_camera(
        CONFIG.validate_python({"kind": "panzoom", "name": "p", "photo": str(photo), "box": box})
    )
    folder = build_camera(CONFIG.validate_python({"kind": "folder", "name": "f", "path": tmp_path}))
    assert isinstance(shapes, SceneCamera)
    assert isinstance(shapes.scene, ShapesScene)
    assert shapes.scene.episode == 150  # 10 s at 15 fps
    assert isinstance(panzoom, SceneCamera)
    assert isinstance(panzoom.scene, PanZoomScene)
    assert isinstance(folder, ImageFolder)
    assert (shapes.fps, panzoom.fps, folder.name) == (15.0, 30.0, "f")


@pytest.mark.parametrize(
    ("settings_", "where", "message"),
    [
        ({"kind": "shapes", "name": "s", "fps": 0}, ("shapes", "fps"), "greater than 0"),
        ({"kind": "shapes", "name": "s", "fps": 121}, ("shapes", "fps"), "less than or equal"),
        ({"kind": "shapes", "name": "a/b"}, ("shapes", "name"), "should match pattern"),
        ({"kind": "shapes", "name": "s", "colour": 1}, ("shapes", "colour"), "not permitted"),
        ({"kind": "shapes", "name": "s", "width": 8}, ("shapes", "width"), "greater than or"),
        (
            {"kind": "shapes", "name": "s", "min_objects": 5, "max_objects": 2},
            ("shapes",),
            "min_objects (5) exceeds max_objects (2)",
        ),
        (
            {"kind": "panzoom", "name": "p", "photo": "/no/such.jpg", "box": [0, 0, 1, 1]},
            ("panzoom", "photo"),
            "Path does not point to a file",
        ),
        ({"kind": "folder", "name": "f", "path": "/no/such/dir"}, ("folder", "path"), "directory"),
        (
            {"kind": "folder", "name": "f", "path": "/", "width": 320},
            ("folder",),
            "give both width and height",
        ),
        ({"kind": "webcam", "name": "w"}, (), "does not match any of the expected tags"),
    ],
)
def test_bad_configs_are_refused_naming_the_field(
    settings_: dict[str, Any], where: tuple[str, ...], message: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        CONFIG.validate_python(settings_)
    errors = caught.value.errors()
    assert any(e["loc"][: len(where)] == where and message in e["msg"] for e in errors), errors
