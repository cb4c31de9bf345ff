"""Decoders on hand-built output tensors with known boxes, and on the golden model outputs."""

from __future__ import annotations

import json
import math

import numpy as np
import numpy.typing as npt
import pytest

from edged.vision.classifier import Classifier, softmax
from edged.vision.detection import Box, Detection
from edged.vision.nms import box_iou
from edged.vision.preprocess import Fit, Transform, fit_frame
from edged.vision.ssd import SsdDecoder, prior_boxes
from edged.vision.yolo2 import Yolo2Decoder
from tests.conftest import fixture_path
from tests.test_nms import do_nms_sort_reference

F32 = npt.NDArray[np.float32]

FACE_ANCHORS = (
    1.889,
    2.5245,
    2.9465,
    3.94056,
    3.99987,
    5.3658,
    5.155437,
    6.92275,
    6.718375,
    9.01025,
)
VOC_ANCHORS = (1.08, 1.19, 3.42, 4.41, 6.63, 11.38, 9.42, 5.11, 16.62, 10.52)
VOC_LABELS = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
OBJ_ON, OBJ_OFF = 12.0, -30.0


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def region_output(anchors: int, classes: int, height: int, width: int) -> F32:
    """A region map in which no cell sees anything."""
    out = np.zeros((anchors, 5 + classes, height, width), dtype=np.float32)
    out[:, 4] = OBJ_OFF
    return out


def place(
    out: F32,
    anchors: tuple[float, ...],
    anchor: int,
    centre_box: tuple[float, float, float, float],
    class_id: int,
) -> tuple[int, int]:
    """Set the logits of the cell holding ``centre_box`` (0..1 of the input) to predict it."""
    _, _, height, width = out.shape
    cx, cy, w, h = centre_box
    col, row = int(cx * width), int(cy * height)
    out[anchor, 0, row, col] = logit(cx * width - col)
    out[anchor, 1, row, col] = logit(cy * height - row)
    out[anchor, 2, row, col] = math.log(w * width / anchors[2 * anchor])
    out[anchor, 3, row, col] = math.log(h * height / anchors[2 * anchor + 1])
    out[anchor, 4, row, col] = OBJ_ON
    out[anchor, 5 + class_id, row, col] = 8.0
    return row, col


def as_output(out: F32) -> F32:
    """``(anchors, 5 + classes, H, W)`` as the model gives it: ``(channels, H, W)``."""
    return out.reshape(-1, *out.shape[2:])


def frame_box_to_centre(
    transform: Transform, box: tuple[float, float, float, float]
) -> tuple[float, float, float, float]:
    x, y, w, h = box
    x1, y1, x2, y2 = transform.to_input([[x, y, x + w, y + h]])[0]
    in_w, in_h = transform.input_size
    return ((x1 + x2) / 2 / in_w, (y1 + y2) / 2 / in_h, (x2 - x1) / in_w, (y2 - y1) / in_h)


def assert_box(found: Box, expected: tuple[float, float, float, float], tol: float = 1e-2) -> None:
    np.testing.assert_allclose([found.x, found.y, found.w, found.h], expected, atol=tol)


# ---------------------------------------------------------------- YOLOv2


def test_yolo2_known_box_comes_back_in_frame_pixels() -> None:
    anchors = VOC_ANCHORS[:6]
    _, transform = fit_frame(np.zeros((480, 640, 3), np.uint8), 320, 320, Fit.LETTERBOX)
    out = region_output(3, 4, 10, 10)
    frame_box = (200.0, 150.0, 120.0, 90.0)
    place(out, anchors, 2, frame_box_to_centre(transform, frame_box), class_id=3)
    decoder = Yolo2Decoder(anchors, ("a", "b", "c", "d"))
    [found] = decoder.decode([as_output(out)], transform)
    assert (found.label, found.class_id) == ("d", 3)
    assert_box(found.box, frame_box)
    assert_box(found.box_norm, (200 / 640, 150 / 480, 120 / 640, 90 / 480), tol=1e-5)
    class_prob = math.exp(8) / (math.exp(8) + 3)
    assert found.score == pytest.approx(class_prob / (1 + math.exp(-OBJ_ON)), rel=1e-6)


def test_yolo2_accepts_a_batch_dimension_and_sorts_by_score() -> None:
    out = region_output(1, 1, 4, 4)
    place(out, (1.0, 1.0), 0, (0.125, 0.125, 0.2, 0.2), 0)
    place(out, (1.0, 1.0), 0, (0.875, 0.875, 0.2, 0.2), 0)
    out[0, 4, 0, 0] = 1.0  # the first box is less sure
    found = Yolo2Decoder((1.0, 1.0), ("x",), threshold=0.5).decode(
        [as_output(out)[np.newaxis]], Transform.identity(32, 32)
    )
    assert [round(d.box.x) for d in found] == [25, 1]


def test_yolo2_suppresses_overlaps_within_a_class_only() -> None:
    anchors = (1.0, 1.0, 1.2, 1.2)
    out = region_output(2, 2, 4, 4)
    place(out, anchors, 0, (0.4, 0.4, 0.3, 0.3), 0)
    place(out, anchors, 1, (0.41, 0.4, 0.3, 0.3), 0)
    transform = Transform.identity(64, 64)
    assert len(Yolo2Decoder(anchors, ("p", "q")).decode([as_output(out)], transform)) == 1
    out[1, 5:, 1, 1] = [0.0, 8.0]  # the second now sees the other class
    found = Yolo2Decoder(anchors, ("p", "q")).decode([as_output(out)], transform)
    assert sorted(d.label for d in found) == ["p", "q"]


def test_yolo2_box_off_the_frame_is_clipped_by_default() -> None:
    out = region_output(5, 1, 3, 4)
    place(out, FACE_ANCHORS, 0, (0.05, 0.5, 0.3, 0.2), 0)
    [found] = Yolo2Decoder(FACE_ANCHORS, ("face",)).decode(
        [as_output(out)], Transform.identity(40, 30)
    )
    assert_box(found.box, (0.0, 12.0, 8.0, 6.0), tol=1e-4)


def maixpy_region_reference(
    out: F32, anchors: tuple[float, ...], threshold: float, nms_value: float, size: tuple[int, int]
) -> list[tuple[int, int, int, int, int, float]]:
    """sipeed_yolo2.c's region_layer_run and Maix_kpu.c's rect, ported loop for loop.

    Each result is ``(x, y, w, h, classid, prob)`` as ``run_yolo2`` builds its rect from the
    uint32 corners (the int16 step of ``rectangle_t`` is left out: see yolo2.py).
    """
    f = np.float32
    channels, lh, lw = out.shape
    classes, count, wh = channels // 5 - 5, len(anchors) // 2, lw * lh
    data = out.reshape(-1).astype(np.float32)

    def entry(location: int, item: int) -> int:
        return int(location // wh * wh * (classes + 5) + item * wh + location % wh)

    with np.errstate(over="ignore"):
        for n in range(count):
            first = list(range(entry(n * wh, 0), entry(n * wh, 0) + 2 * wh))
            for i in first + list(range(entry(n * wh, 4), entry(n * wh, 4) + wh)):
                data[i] = f(1.0 / (1.0 + float(np.exp(-data[i]))))
    for b in range(count):
        for g in range(wh):
            at = [entry(0, 5) + b * wh * (classes + 5) + g + j * wh for j in range(classes)]
            largest = data[at[0]]
            for i in at:
                largest = max(largest, data[i])
            total, values = f(0), [np.exp(f(data[i] - largest)) for i in at]
            for v in values:
                total = f(total + v)
            for i, v in zip(at, values, strict=True):
                data[i] = f(v / total)
    boxes, probs = [], []
    for n in range(count):
        for i in range(wh):
            row, col = divmod(i, lw)
            bi, scale = entry(n * wh + i, 0), data[entry(n * wh + i, 4)]
            boxes.append(
                [
                    f(f(f(col) + data[bi]) / f(lw)),
                    f(f(f(row) + data[bi + wh]) / f(lh)),
                    f(f(np.exp(data[bi + 2 * wh]) * f(anchors[2 * n])) / f(lw)),
                    f(f(np.exp(data[bi + 3 * wh]) * f(anchors[2 * n + 1])) / f(lh)),
                ]
            )
            prob = [f(scale * data[entry(n * wh + i, 5 + j)]) for j in range(classes)]
            probs.append([p if p > f(threshold) else f(0) for p in prob])
    probs_nms = do_nms_sort_reference(
        np.array(boxes, np.float32), np.array(probs, np.float32), nms_value
    )
    found: list[tuple[int, int, int, int, int, float]] = []
    img_w, img_h = f(size[0]), f(size[1])
    for (bx, by, bw, bh), p in zip(boxes, probs_nms, strict=True):
        cls = int(np.argmax(p))
        if p[cls] > f(threshold) and len(found) < 10:
            # fcvt.wu.s: truncate toward zero, saturate into 0 .. 2**32 - 1
            x1 = max(0, int(np.trunc(f(bx * img_w) - f(f(bw * img_w) / f(2)))))
            y1 = max(0, int(np.trunc(f(by * img_h) - f(f(bh * img_h) / f(2)))))
            x2 = max(0, int(np.trunc(f(bx * img_w) + f(f(bw * img_w) / f(2)))))
            y2 = max(0, int(np.trunc(f(by * img_h) + f(f(bh * img_h) / f(2)))))
            found.append((x1, y1, (x2 - x1) % 2**32, (y2 - y1) % 2**32, cls, float(p[cls])))
    return found


@pytest.mark.parametrize(
    ("seed", "classes", "boost", "threshold"),
    [(1, 2, 1.5, 0.3), (2, 2, 1.5, 0.3), (1, 2, -3.0, 0.6), (2, 2, -3.0, 0.6), (3, 20, 0.0, 0.2)],
)
def test_yolo2_compat_computes_what_maixpy_computes(
    seed: int, classes: int, boost: float, threshold: float
) -> None:
    """Random maps, 5 anchors on an 8x6 grid: capped at 10 boxes, fewer, and 20 classes."""
    rng = np.random.default_rng(seed)
    out = rng.normal(0, 2, (5, 5 + classes, 6, 8)).astype(np.float32)
    out[:, 4] += boost  # objectness: how many boxes survive
    out = as_output(out)
    labels = tuple(str(c) for c in range(classes))
    decoder = Yolo2Decoder(FACE_ANCHORS, labels, threshold, 0.3, maixpy_compat=True)
    found = decoder.decode([out], Transform.identity(64, 48))
    expected = maixpy_region_reference(out, FACE_ANCHORS, threshold, 0.3, (64, 48))
    assert len(expected) > 1
    got = [(d.box.x, d.box.y, d.box.w, d.box.h, d.class_id, d.score) for d in found]
    assert got == expected


def twelve_boxes() -> F32:
    """Twelve small, separate boxes, one per cell of anchor 0 on a 4x3 grid."""
    out = region_output(5, 1, 3, 4)
    for row in range(3):
        for col in range(4):
            place(out, FACE_ANCHORS, 0, ((col + 0.5) / 4, (row + 0.5) / 3, 5 / 40, 5 / 30), 0)
    return as_output(out)


def test_maixpy_compat_caps_at_ten_boxes_in_maixpy_order() -> None:
    transform = Transform.identity(40, 30)
    default = Yolo2Decoder(FACE_ANCHORS, ("face",)).decode([twelve_boxes()], transform)
    compat = Yolo2Decoder(FACE_ANCHORS, ("face",), maixpy_compat=True).decode(
        [twelve_boxes()], transform
    )
    assert len(default) == 12
    assert len(compat) == 10
    # MaixPy's order is anchor, row, column: the last two cells of the bottom row are dropped.
    expected = [(2 + 10 * (i % 4), 2 + 10 * (i // 4)) for i in range(10)]  # 2.5 truncated
    assert [(d.box.x, d.box.y) for d in compat] == expected


def test_maixpy_compat_saturates_a_negative_corner_as_the_chip_does() -> None:
    out = region_output(5, 1, 3, 4)
    # x1 = 0.05 * 40 - 0.325 * 40 / 2 = -4.5; y1 = 0.5 * 30 - 0.3 * 30 / 2 = 10.5
    place(out, FACE_ANCHORS, 0, (0.05, 0.5, 0.325, 0.3), 0)
    transform = Transform.identity(40, 30)
    [default] = Yolo2Decoder(FACE_ANCHORS, ("face",)).decode([as_output(out)], transform)
    [compat] = Yolo2Decoder(FACE_ANCHORS, ("face",), maixpy_compat=True).decode(
        [as_output(out)], transform
    )
    assert_box(default.box, (0.0, 10.5, 8.5, 9.0), tol=1e-4)
    assert compat.box.x == 0  # -4.5: fcvt.wu.s saturates negatives at 0
    assert compat.box.w == 8  # x2 - x1 in uint32: 8 - 0
    assert (compat.box.y, compat.box.h) == (10, 9)


def test_maixpy_compat_takes_the_class_count_from_five_anchors() -> None:
    anchors = (1.0, 1.0, 2.0, 2.0)
    out = region_output(2, 10, 3, 4)  # 30 channels: MaixPy sees 30 // 5 - 5 = 1 class
    place(out, anchors, 0, (0.4, 0.5, 0.2, 0.3), class_id=3)
    transform = Transform.identity(40, 30)
    labels = tuple("abcdefghij")
    [default] = Yolo2Decoder(anchors, labels).decode([as_output(out)], transform)
    compat = Yolo2Decoder(anchors, labels, maixpy_compat=True).decode([as_output(out)], transform)
    assert default.label == "d"
    # With one class MaixPy's softmax is 1: the class-0 plane is read as the only class and
    # the probability is the objectness alone.
    assert [d.label for d in compat] == ["a"]
    assert compat[0].score == pytest.approx(1 / (1 + math.exp(-OBJ_ON)))


def test_maixpy_compat_refuses_to_read_past_the_output() -> None:
    decoder = Yolo2Decoder((1.0,) * 12, ("a",) * 5, maixpy_compat=True)  # 6 anchors, 5 classes
    with pytest.raises(ValueError, match="need 72 channels, the output has 60"):
        decoder.decode([np.zeros((60, 3, 4), np.float32)], Transform.identity(40, 30))


@pytest.mark.parametrize(
    ("shape", "says"),
    [
        ((31, 3, 4), "do not split into 5 anchors"),
        ((25, 3, 4), "leave 0 classes"),
        ((30, 12), "got shape"),
    ],
)
def test_yolo2_refuses_outputs_of_the_wrong_shape(shape: tuple[int, ...], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        Yolo2Decoder(FACE_ANCHORS, ("face",)).decode(
            [np.zeros(shape, np.float32)], Transform.identity(40, 30)
        )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"anchors": (1.0, 2.0, 3.0)},
        {"anchors": (1.0, -1.0)},
        {"threshold": 1.5},
        {"nms_value": -0.1},
    ],
)
def test_yolo2_parameters_are_checked(kwargs: dict[str, object]) -> None:
    params: dict[str, object] = {"anchors": (1.0, 1.0), "labels": ("a",), **kwargs}
    with pytest.raises(ValueError):  # noqa: PT011 - each case words its own message
        Yolo2Decoder(**params)  # type: ignore[arg-type]


def reference_face() -> npt.NDArray[np.float64]:
    x, y, w, h = json.loads(fixture_path("faces.json").read_text())["grace_hopper.jpg"]
    return np.array([[x, y, x + w, y + h]], dtype=np.float64)


def corners(detection: Detection) -> list[list[float]]:
    b = detection.box
    return [[b.x, b.y, b.x + b.w, b.y + b.h]]


# The golden inputs are a 512x384 crop at y=40 of the 512x600 portrait, resized to 320x240.
GRACE_CROP = Transform((512, 600), (320, 240), (320 / 512, 240 / 384), (0.0, -40 * 240 / 384))


@pytest.mark.parametrize("compat", [False, True])
def test_yolo2_finds_the_face_in_the_golden_output(compat: bool) -> None:
    out = np.load(
        fixture_path("golden", "maixpy_facedetect_v3", "grace_hopper_crop", "output_0.npy")
    )
    [face] = Yolo2Decoder(FACE_ANCHORS, ("face",), 0.5, 0.3, compat).decode([out], GRACE_CROP)
    assert face.label == "face"
    assert box_iou(corners(face), reference_face())[0, 0] > 0.6


def test_yolo2_finds_the_cat_in_the_golden_voc_output() -> None:
    out = np.load(fixture_path("golden", "voc20_yolo2_v3", "chelsea", "output_0.npy"))
    transform = Transform((451, 300), (320, 240), (320 / 451, 240 / 300), (0.0, 0.0))
    found = Yolo2Decoder(VOC_ANCHORS, VOC_LABELS, 0.5, 0.2).decode([out], transform)
    assert [d.label for d in found] == ["cat"]


# ---------------------------------------------------------------- SSD

ULTRA = SsdDecoder()


def test_priors_follow_the_ultraface_order() -> None:
    priors = ULTRA.priors
    assert priors.shape == (4420, 4)
    np.testing.assert_allclose(priors[0], [4 / 320, 4 / 240, 10 / 320, 10 / 240], rtol=1e-6)
    np.testing.assert_allclose(priors[1], [4 / 320, 4 / 240, 16 / 320, 16 / 240], rtol=1e-6)
    np.testing.assert_allclose(priors[3, :2], [12 / 320, 4 / 240], rtol=1e-6)  # next column
    np.testing.assert_allclose(priors[40 * 3, :2], [4 / 320, 12 / 240], rtol=1e-6)  # next row
    np.testing.assert_allclose(priors[3600], [8 / 320, 8 / 240, 32 / 320, 32 / 240], rtol=1e-6)
    np.testing.assert_allclose(priors[-1], [0.9, 0.875, 0.8, 1.0], rtol=1e-6)  # 256/240 clipped


def test_priors_are_made_once_and_shared_read_only() -> None:
    assert SsdDecoder().priors is ULTRA.priors
    assert not ULTRA.priors.flags.writeable


def test_nncase_example_priors_differ_only_where_the_stride_does_not_divide() -> None:
    example = SsdDecoder(nncase_example_priors=True).priors
    same = np.isclose(example, ULTRA.priors, rtol=1e-6)
    assert same[:, [0, 2, 3]].all()
    assert same[: 3600 + 600, 1].all()  # strides 8 and 16 divide 240
    assert not same[3600 + 600 :, 1].all()
    assert example[-1, 1] == pytest.approx(min(1.0, 3.5 * 64 / 240))  # ULTRA: 3.5 / 4


def test_nncase_example_priors_centre_on_the_stride_in_x_too() -> None:
    sizes, strides = ((10.0,),), (32,)
    assert prior_boxes((240, 32), sizes, strides)[-1, 0] == pytest.approx(7.5 / 8)
    assert prior_boxes((240, 32), sizes, strides, nncase_example=True)[-1, 0] == 1.0  # clipped


def encode(
    decoder: SsdDecoder, transform: Transform, frame_boxes: list[tuple[float, float, float, float]]
) -> tuple[F32, F32, list[int]]:
    """SSD outputs in which the best-matching prior of each frame box predicts it."""
    priors = decoder.priors.astype(np.float64)
    locations = np.zeros((len(priors), 4))
    scores = np.tile([0.99, 0.01], (len(priors), 1))
    chosen = []
    for box, score in zip(frame_boxes, (0.9, 0.85, 0.8), strict=False):
        cx, cy, w, h = frame_box_to_centre(transform, box)
        prior_corners = np.concatenate(
            [priors[:, :2] - priors[:, 2:] / 2, priors[:, :2] + priors[:, 2:] / 2], axis=1
        )
        best = int(
            np.argmax(box_iou([[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]], prior_corners)[0])
        )
        pcx, pcy, pw, ph = priors[best]
        locations[best] = [
            (cx - pcx) / pw / 0.1,
            (cy - pcy) / ph / 0.1,
            math.log(w / pw) / 0.2,
            math.log(h / ph) / 0.2,
        ]
        scores[best] = [1 - score, score]
        chosen.append(best)
    return locations.reshape(-1).astype(np.float32), scores.reshape(-1).astype(np.float32), chosen


def test_ssd_encoded_boxes_decode_back_to_the_frame() -> None:
    _, transform = fit_frame(np.zeros((720, 1280, 3), np.uint8), 320, 240, Fit.LETTERBOX)
    boxes = [(100.0, 80.0, 60.0, 70.0), (600.0, 300.0, 200.0, 240.0), (1000.0, 500.0, 30.0, 40.0)]
    locations, scores, _ = encode(ULTRA, transform, boxes)
    found = SsdDecoder(score_threshold=0.7).decode([locations, scores], transform)
    assert [d.score for d in found] == pytest.approx([0.9, 0.85, 0.8])
    for detection, box in zip(found, boxes, strict=True):
        assert detection.label == "face"
        assert_box(detection.box, box, tol=0.05)


def test_ssd_suppresses_a_second_prior_predicting_the_same_face() -> None:
    transform = Transform.identity(320, 240)
    box = (100.0, 80.0, 60.0, 70.0)
    locations, scores, [first] = encode(ULTRA, transform, [box])
    twin = first + 1  # the same cell's next min box, pushed to predict the same face
    loc = locations.reshape(-1, 4)
    pw, ph = ULTRA.priors[twin, 2:]
    cx, cy, w, h = frame_box_to_centre(transform, box)
    loc[twin] = [
        (cx - ULTRA.priors[twin, 0]) / pw / 0.1,
        (cy - ULTRA.priors[twin, 1]) / ph / 0.1,
        math.log(w / pw) / 0.2,
        math.log(h / ph) / 0.2,
    ]
    scores.reshape(-1, 2)[twin] = [0.2, 0.8]
    [found] = ULTRA.decode([locations, scores], transform)
    assert found.score == pytest.approx(0.9)


def test_ssd_refuses_outputs_that_do_not_fit_the_priors() -> None:
    with pytest.raises(ValueError, match="4420 priors need 17680"):
        ULTRA.decode([np.zeros(100), np.zeros(8840)], Transform.identity(320, 240))
    with pytest.raises(ValueError, match="score output has 4420 values"):
        ULTRA.decode([np.zeros(17680), np.zeros(4420)], Transform.identity(320, 240))


@pytest.mark.parametrize("nncase_example_priors", [False, True])
def test_ssd_finds_the_face_in_the_golden_output(nncase_example_priors: bool) -> None:
    folder = ("golden", "ultraface_v4", "grace_hopper_crop")
    outputs = [np.load(fixture_path(*folder, f"output_{i}.npy")) for i in range(2)]
    [face] = SsdDecoder(nncase_example_priors=nncase_example_priors).decode(outputs, GRACE_CROP)
    assert box_iou(corners(face), reference_face())[0, 0] > 0.6


def test_prior_boxes_refuses_mismatched_groups() -> None:
    with pytest.raises(ValueError, match="2 min_boxes groups for 1 strides"):
        prior_boxes((320, 240), ((10.0,), (20.0,)), (8,))


# ---------------------------------------------------------------- classifier and payload


def test_classifier_gives_top_k_labels_best_first() -> None:
    logits = np.array([0.5, 3.0, -1.0, 2.0, 3.0], dtype=np.float32).reshape(1, 5, 1, 1)
    found = Classifier(("a", "b", "c", "d", "e"), top_k=3).classify([logits])
    assert [(c.label, c.class_id) for c in found] == [("b", 1), ("e", 4), ("d", 3)]  # tie: b first
    expected = softmax(logits)
    assert [c.score for c in found] == pytest.approx(expected[[1, 4, 3]].tolist())
    assert expected.sum() == pytest.approx(1.0)


def test_classifier_can_take_probabilities_as_they_are() -> None:
    found = Classifier(("a", "b"), top_k=5, apply_softmax=False).classify([np.array([0.3, 0.7])])
    assert [c.label for c in found] == ["b", "a"]
    assert [c.score for c in found] == pytest.approx([0.7, 0.3])


def test_classifier_labels_a_class_without_a_label_by_number() -> None:
    [best] = Classifier(("a",), top_k=1).classify([np.array([0.0, 5.0])])
    assert (best.label, best.class_id) == ("1", 1)


def test_softmax_of_large_logits_does_not_overflow() -> None:
    np.testing.assert_allclose(softmax([1000.0, 1000.0]), [0.5, 0.5])


def test_classifier_reads_the_golden_mnist_digit() -> None:
    out = np.load(fixture_path("golden", "maixpy_mnist_v3", "digit7", "output_0.npy"))
    best = Classifier(tuple("0123456789"), top_k=1, apply_softmax=False).classify([out])
    assert [c.label for c in best] == ["7"]


def test_detection_payload_shape() -> None:
    detection = Detection(
        "face", 0, 0.9123456, Box(10.123, 20, 30, 40), Box(0.1234567, 0.2, 0.3, 0.4)
    )
    assert detection.to_dict() == {
        "label": "face",
        "class_id": 0,
        "score": 0.91235,
        "box": {"x": 10.12, "y": 20, "w": 30, "h": 40},
        "box_norm": {"x": 0.12346, "y": 0.2, "w": 0.3, "h": 0.4},
    }
    assert json.loads(json.dumps(detection.to_dict())) == detection.to_dict()
