"""Pre-processing: fit, colour order, planar layout, normalisation, and the way back for boxes."""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edged.vision.preprocess import (
    ColorOrder,
    Fit,
    InputSpec,
    Normalization,
    Transform,
    check_frame,
    fit_frame,
    preprocess,
)
from tests.conftest import fixture_path

B, G, R = 10, 20, 30


def solid(height: int, width: int) -> npt.NDArray[np.uint8]:
    """A BGR frame whose three channels are told apart by value."""
    frame = np.empty((height, width, 3), dtype=np.uint8)
    frame[...] = (B, G, R)
    return frame


def noise(height: int, width: int, seed: int = 0) -> npt.NDArray[np.uint8]:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("color", "planes"), [(ColorOrder.RGB, [R, G, B]), (ColorOrder.BGR, [B, G, R])]
)
def test_planar_layout_puts_whole_planes_in_colour_order(
    color: ColorOrder, planes: list[int]
) -> None:
    tensor, _ = preprocess(solid(48, 64), InputSpec(32, 24, color=color))
    assert tensor.shape == (3, 24, 32)
    assert tensor.dtype == np.uint8
    assert tensor.flags.c_contiguous
    assert [int(np.unique(tensor[c]).item()) for c in range(3)] == planes


def test_rgb_planes_are_the_frame_channels_reversed() -> None:
    frame = noise(24, 32)
    tensor, _ = preprocess(frame, InputSpec(32, 24))
    np.testing.assert_array_equal(tensor[0], frame[..., 2])
    np.testing.assert_array_equal(tensor[2], frame[..., 0])


def test_gray_is_one_plane_of_opencv_luma() -> None:
    frame = noise(24, 32)
    tensor, _ = preprocess(frame, InputSpec(32, 24, color=ColorOrder.GRAY))
    assert tensor.shape == (1, 24, 32)
    np.testing.assert_array_equal(tensor[0], cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))


@pytest.mark.parametrize(
    ("size", "interpolation"), [((16, 12), cv2.INTER_AREA), ((128, 96), cv2.INTER_LINEAR)]
)
def test_resize_uses_area_to_shrink_and_linear_to_enlarge(
    size: tuple[int, int], interpolation: int
) -> None:
    frame = noise(48, 64)
    fitted, transform = fit_frame(frame, *size, Fit.RESIZE)
    np.testing.assert_array_equal(fitted, cv2.resize(frame, size, interpolation=interpolation))
    assert transform.scale == (size[0] / 64, size[1] / 48)


def test_letterbox_pads_with_the_value_and_keeps_the_aspect() -> None:
    frame = noise(480, 640)
    fitted, transform = fit_frame(frame, 320, 320, Fit.LETTERBOX, pad_value=114)
    assert fitted.shape == (320, 320, 3)
    assert (fitted[:40] == 114).all()
    assert (fitted[280:] == 114).all()
    expected = cv2.resize(frame, (320, 240), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(fitted[40:280], expected)
    assert transform.scale == (0.5, 0.5)
    assert transform.offset == (0.0, 40.0)


def test_letterbox_box_round_trips_to_the_frame() -> None:
    _, transform = fit_frame(noise(480, 640), 320, 320, Fit.LETTERBOX)
    box = np.array([[100.0, 50.0, 300.0, 400.0]])
    in_input = transform.to_input(box)
    np.testing.assert_allclose(in_input, [[50.0, 65.0, 150.0, 240.0]])
    np.testing.assert_allclose(transform.to_frame(in_input, normalized=False), box)
    np.testing.assert_allclose(transform.to_frame(in_input / 320, normalized=True), box)


def test_box_in_the_letterbox_padding_clips_to_the_frame_edge() -> None:
    _, transform = fit_frame(noise(480, 640), 320, 320, Fit.LETTERBOX)
    in_padding = np.array([[10.0, 5.0, 50.0, 30.0]])  # rows 0..40 of the input are padding
    np.testing.assert_allclose(transform.to_frame(in_padding, normalized=False), [[20, 0, 100, 0]])


def test_crop_takes_the_centre_at_the_input_aspect() -> None:
    frame = noise(480, 640)
    fitted, transform = fit_frame(frame, 240, 240, Fit.CROP)
    expected = cv2.resize(frame[:, 80:560], (240, 240), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(fitted, expected)
    whole_input = np.array([[0.0, 0.0, 1.0, 1.0]])
    np.testing.assert_allclose(
        transform.to_frame(whole_input, normalized=True), [[80, 0, 560, 480]]
    )


def test_same_size_frame_is_passed_through() -> None:
    frame = noise(24, 32)
    fitted, transform = fit_frame(frame, 32, 24, Fit.LETTERBOX)
    np.testing.assert_array_equal(fitted, frame)
    assert transform == Transform.identity(32, 24)


def test_normalisation_applies_in_the_models_channel_order() -> None:
    spec = InputSpec(32, 24, normalization=Normalization.from_mean_std((30, 20, 10), (2, 4, 5)))
    tensor, _ = preprocess(solid(24, 32), spec)
    assert tensor.dtype == np.float32
    assert (tensor == 0).all()  # R minus the first mean, G minus the second, ...


def test_scale_and_bias_normalisation() -> None:
    spec = InputSpec(4, 4, normalization=Normalization(scale=(1 / 128,), bias=(-127 / 128,)))
    tensor, _ = preprocess(solid(4, 4), spec)
    np.testing.assert_allclose(tensor[0], (R - 127) / 128, rtol=1e-6)
    np.testing.assert_allclose(tensor[2], (B - 127) / 128, rtol=1e-6)


@pytest.mark.parametrize(
    ("frame", "says"),
    [
        (np.zeros((0, 10, 3), np.uint8), "non-empty"),
        (np.zeros((10, 0, 3), np.uint8), "non-empty"),
        (np.zeros((10, 10, 3), np.float32), "dtype float32"),
        (np.zeros((10, 10), np.uint8), "shape (10, 10)"),
        (np.zeros((10, 10, 3, 1), np.uint8), "shape (10, 10, 3, 1)"),
        (np.zeros((10, 10, 4), np.uint8), "shape (10, 10, 4)"),
        (np.zeros((10, 10, 1), np.uint8), "shape (10, 10, 1)"),
    ],
)
def test_bad_frames_are_refused_saying_what_came(frame: npt.NDArray[np.generic], says: str) -> None:
    with pytest.raises(ValueError, match="expected") as raised:
        preprocess(frame, InputSpec(8, 8))  # type: ignore[arg-type]
    assert says in str(raised.value)
    assert "HxWx3" in str(raised.value)


def test_a_frame_that_is_not_an_array_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="got list"):
        check_frame([[1, 2, 3]])


@pytest.mark.parametrize(
    "make",
    [
        lambda: InputSpec(0, 8),
        lambda: InputSpec(8, 8, pad_value=256),
        lambda: InputSpec(8, 8, fit="stretch"),  # type: ignore[arg-type]
        lambda: InputSpec(8, 8, normalization=Normalization((1.0, 1.0), (0.0, 0.0))),
        lambda: Normalization.from_mean_std((1, 2, 3), (1, 0, 1)),
    ],
)
def test_bad_specs_are_refused(make: object) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case words its own message
        make()  # type: ignore[operator]


def test_spec_accepts_the_strings_a_config_gives() -> None:
    spec = InputSpec(8, 8, color="bgr", fit="crop")  # type: ignore[arg-type]
    assert spec.color is ColorOrder.BGR
    assert spec.fit is Fit.CROP


def test_matches_the_golden_kpu_input() -> None:
    """The golden face-model input was made by resizing a crop with INTER_AREA, planar RGB."""
    image = cv2.imread(str(fixture_path("images", "grace_hopper.jpg")))
    golden = np.load(
        fixture_path("golden", "maixpy_facedetect_v3", "grace_hopper_crop", "input.npy")
    )
    assert image is not None
    tensor, _ = preprocess(np.asarray(image, dtype=np.uint8)[40:424, 0:512], InputSpec(320, 240))
    np.testing.assert_array_equal(tensor, golden)


sizes = st.integers(min_value=1, max_value=64)


@given(
    frame=st.tuples(sizes, sizes),
    model=st.tuples(sizes, sizes),
    fit=st.sampled_from(Fit),
    box=st.tuples(*[st.floats(0, 1) for _ in range(4)]),
)
def test_every_fit_round_trips_boxes(
    frame: tuple[int, int], model: tuple[int, int], fit: Fit, box: tuple[float, ...]
) -> None:
    (frame_w, frame_h), (input_w, input_h) = frame, model
    _, transform = fit_frame(np.zeros((frame_h, frame_w, 3), np.uint8), input_w, input_h, fit)
    corners = np.array([box]) * (frame_w, frame_h, frame_w, frame_h)
    back = transform.to_frame(transform.to_input(corners), normalized=False, clip=False)
    np.testing.assert_allclose(back, corners, atol=1e-9)
    if fit is not Fit.CROP:  # the whole frame is visible: clipping changes nothing
        clipped = transform.to_frame(transform.to_input(corners), normalized=False)
        np.testing.assert_allclose(clipped, corners, atol=1e-9)
