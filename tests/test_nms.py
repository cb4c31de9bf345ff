"""NMS: properties against plain-loop references, and MaixPy's do_nms_sort."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edged.vision.nms import box_iou, centre_iou_f32, nms, nms_maixpy

THRESHOLD = 0.4


def iou_one(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> float:
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def greedy_reference(
    boxes: npt.NDArray[np.float64],
    scores: npt.NDArray[np.float64],
    threshold: float,
    classes: npt.NDArray[np.int64] | None,
) -> list[int]:
    """Textbook greedy NMS, one pair at a time; ties in index order."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept: list[int] = []
    for i in order:
        if all(
            iou_one(boxes[i], boxes[k]) <= threshold
            or (classes is not None and classes[i] != classes[k])
            for k in kept
        ):
            kept.append(i)
    return kept


@st.composite
def detections(
    draw: st.DrawFn, *, distinct_scores: bool = False
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Boxes on a coarse grid (so overlaps and exact ties happen), scores, classes."""
    count = draw(st.integers(0, 25))
    coord = st.integers(0, 20)
    size = st.integers(1, 12)
    rows = [(draw(coord), draw(coord), draw(size), draw(size)) for _ in range(count)]
    boxes = np.array([(x, y, x + w, y + h) for x, y, w, h in rows], dtype=np.float64).reshape(-1, 4)
    if distinct_scores:
        scores = np.array(draw(st.permutations(range(count))), dtype=np.float64) / max(count, 1)
    else:
        scores = np.array(
            draw(st.lists(st.sampled_from([0.2, 0.5, 0.9]), min_size=count, max_size=count))
        )
    classes = np.array(
        draw(st.lists(st.integers(0, 2), min_size=count, max_size=count)), dtype=np.int64
    )
    return boxes, scores, classes


@given(detections(), st.booleans())
def test_agrees_with_the_plain_loop_reference(
    case: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.int64]],
    per_class: bool,
) -> None:
    boxes, scores, classes = case
    class_ids = classes if per_class else None
    kept = nms(boxes, scores, THRESHOLD, class_ids=class_ids)
    assert kept.tolist() == greedy_reference(boxes, scores, THRESHOLD, class_ids)


@given(detections(), st.booleans())
def test_keeps_a_subset_with_no_same_class_overlap_and_the_best_box(
    case: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.int64]],
    per_class: bool,
) -> None:
    boxes, scores, classes = case
    kept = nms(boxes, scores, THRESHOLD, class_ids=classes if per_class else None)
    assert len(set(kept.tolist())) == len(kept)
    assert set(kept.tolist()) <= set(range(len(scores)))
    ious = box_iou(boxes[kept], boxes[kept])
    clash = (ious > THRESHOLD) & ~np.eye(len(kept), dtype=bool)
    if per_class:
        clash &= classes[kept][:, None] == classes[kept][None, :]
    assert not clash.any()
    if len(scores):
        assert scores[kept[0]] == scores.max()
        assert np.argmax(scores) in kept  # the first of the best is never suppressed


@given(detections(distinct_scores=True), st.booleans(), st.data())
def test_result_does_not_depend_on_input_order(
    case: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.int64]],
    per_class: bool,
    data: st.DataObject,
) -> None:
    boxes, scores, classes = case
    perm = np.array(data.draw(st.permutations(range(len(scores)))), dtype=np.intp)
    kept = nms(boxes, scores, THRESHOLD, class_ids=classes if per_class else None)
    shuffled = nms(
        boxes[perm], scores[perm], THRESHOLD, class_ids=classes[perm] if per_class else None
    )
    assert perm[shuffled].tolist() == kept.tolist()


def test_per_class_keeps_overlapping_boxes_of_different_classes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10]], dtype=float)
    scores = np.array([0.9, 0.8, 0.7])
    assert nms(boxes, scores, 0.5, class_ids=[0, 1, 0]).tolist() == [0, 1]
    assert nms(boxes, scores, 0.5).tolist() == [0]


def test_threshold_is_strict() -> None:
    boxes = np.array([[0, 0, 2, 1], [1, 0, 3, 1]], dtype=float)  # IoU exactly 1/3
    assert nms(boxes, [0.9, 0.8], 1 / 3).tolist() == [0, 1]


def test_empty_input() -> None:
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []


def test_mismatched_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="2 boxes but 1 scores"):
        nms(np.zeros((2, 4)), [0.5], 0.5)


def test_iou_of_degenerate_boxes_is_zero() -> None:
    ious = box_iou([[0, 0, 0, 0], [0, 0, 4, 4]], [[0, 0, 0, 0], [0, 0, 4, 4], [2, 0, 6, 4]])
    np.testing.assert_allclose(ious, np.array([[0.0, 0.0, 0.0], [0.0, 1.0, 1 / 3]]))


# MaixPy's do_nms_sort, ported loop for loop from sipeed_yolo2.c.


def maixpy_box_iou(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> np.float32:
    f, two = np.float32, np.float32(2)

    def overlap(x1: np.float32, w1: np.float32, x2: np.float32, w2: np.float32) -> np.float32:
        left = max(f(x1 - w1 / two), f(x2 - w2 / two))
        right = min(f(x1 + w1 / two), f(x2 + w2 / two))
        return f(right - left)

    w, h = overlap(a[0], a[2], b[0], b[2]), overlap(a[1], a[3], b[1], b[3])
    inter = f(0) if w < 0 or h < 0 else f(w * h)
    with np.errstate(divide="ignore", invalid="ignore"):
        return f(inter / f(f(f(a[2] * a[3]) + f(b[2] * b[3])) - inter))


def do_nms_sort_reference(
    boxes: npt.NDArray[np.float32], probs: npt.NDArray[np.float32], nms_value: float
) -> npt.NDArray[np.float32]:
    probs = probs.copy()
    count, classes = probs.shape
    for k in range(classes):
        order = sorted(range(count), key=lambda i: -probs[i, k])  # stable: ties by index
        for i in range(count):
            if probs[order[i], k] == 0:
                continue
            for j in range(i + 1, count):
                if maixpy_box_iou(boxes[order[i]], boxes[order[j]]) > np.float32(nms_value):
                    probs[order[j], k] = 0
    return probs


@st.composite
def region_boxes(draw: st.DrawFn) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    count = draw(st.integers(0, 15))
    classes = draw(st.integers(1, 3))
    unit = st.integers(0, 8).map(lambda v: v / 8)
    boxes = np.array(
        [[draw(unit), draw(unit), draw(unit), draw(unit)] for _ in range(count)], dtype=np.float32
    ).reshape(-1, 4)
    prob = st.sampled_from([0.0, 0.0, 0.3, 0.6, 0.61, 0.9])
    probs = np.array(
        [[draw(prob) for _ in range(classes)] for _ in range(count)], dtype=np.float32
    ).reshape(count, classes)
    return boxes, probs


@given(region_boxes(), st.sampled_from([0.0, 0.2, 0.3, 0.5, 1.0]))
def test_maixpy_variant_agrees_with_do_nms_sort(
    case: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]], nms_value: float
) -> None:
    boxes, probs = case
    result = nms_maixpy(boxes, probs, nms_value)
    np.testing.assert_array_equal(result, do_nms_sort_reference(boxes, probs, nms_value))
    assert ((result == probs) | (result == 0)).all()  # it only zeroes
    if probs.size:
        np.testing.assert_array_equal(result.max(axis=0), probs.max(axis=0))


def test_maixpy_variant_suppresses_per_class_only() -> None:
    boxes = np.array([[0.5, 0.5, 0.2, 0.2], [0.51, 0.5, 0.2, 0.2]], dtype=np.float32)
    probs = np.array([[0.9, 0.0], [0.8, 0.7]], dtype=np.float32)
    result = nms_maixpy(boxes, probs, 0.3)
    # The second box loses class 0 to the first but keeps class 1, which MaixPy then reports.
    np.testing.assert_array_equal(result, np.array([[0.9, 0.0], [0.0, 0.7]], dtype=np.float32))
    assert probs[1, 0] == np.float32(0.8)  # the input is untouched


def test_maixpy_threshold_is_strict_in_float32() -> None:
    boxes = np.array([[1, 0.5, 2, 1], [2, 0.5, 2, 1]], dtype=np.float32)  # IoU 1/3 in float32
    probs = np.array([[0.9], [0.8]], dtype=np.float32)
    assert centre_iou_f32(boxes[0], boxes[1:])[0] == np.float32(1 / 3)
    np.testing.assert_array_equal(nms_maixpy(boxes, probs, 1 / 3), probs)
    just_below = float(np.nextafter(np.float32(1 / 3), np.float32(0)))
    assert nms_maixpy(boxes, probs, just_below)[1, 0] == 0


def test_centre_iou_of_zero_size_boxes_suppresses_nothing() -> None:
    zero = np.zeros(4, dtype=np.float32)
    assert np.isnan(centre_iou_f32(zero, zero[np.newaxis])).all()
