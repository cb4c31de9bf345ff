"""Non-maximum suppression: keep the best box of each cluster of overlapping boxes.

Greedy NMS, vectorised: each step keeps the best remaining box and drops, in one numpy
operation, every remaining box that overlaps it too much, so the Python loop runs once
per *kept* box. ``nms`` is the usual corner-form variant (per class or class-agnostic);
``nms_maixpy`` is MaixPy's ``do_nms_sort`` (per class, centre-form float32 IoU, zeroing
class probabilities), which the YOLOv2 decoder needs to give MaixPy's boxes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

Indices = npt.NDArray[np.intp]


def box_iou(boxes_a: npt.ArrayLike, boxes_b: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """IoU of every box in ``(N, 4)`` against every box in ``(M, 4)``, corners ``x1, y1, x2, y2``.

    Boxes with no area overlap nothing (IoU 0, never NaN).
    """
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(1, -1, 4)
    inter_w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    inter_h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = inter_w * inter_h
    area_a = np.clip(a[..., 2] - a[..., 0], 0, None) * np.clip(a[..., 3] - a[..., 1], 0, None)
    area_b = np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)
    union = area_a + area_b - inter
    iou: npt.NDArray[np.float64] = np.divide(
        inter, union, out=np.zeros_like(inter), where=union > 0
    )
    return iou


def _greedy(
    order: Indices, overlaps: Callable[[np.intp, Indices], npt.NDArray[np.bool_]]
) -> Indices:
    """Walk ``order`` best first; keep each survivor and drop the later boxes it ``overlaps``."""
    kept = []
    remaining = order
    while remaining.size:
        best, rest = remaining[0], remaining[1:]
        kept.append(best)
        remaining = rest[~overlaps(best, rest)]
    return np.asarray(kept, dtype=np.intp)


def _by_score(scores: npt.NDArray[np.floating], candidates: Indices) -> Indices:
    """``candidates`` by score, best first; ties keep index order (a stable sort)."""
    return candidates[np.argsort(-scores[candidates], kind="stable")]


def nms(
    boxes: npt.ArrayLike,
    scores: npt.ArrayLike,
    iou_threshold: float,
    *,
    class_ids: npt.ArrayLike | None = None,
) -> Indices:
    """Indices of the boxes kept, best score first.

    A box is dropped when a better kept box overlaps it with IoU ``> iou_threshold``, and,
    with ``class_ids``, only a box of the same class can drop it (per-class NMS);
    without, any box can (class-agnostic). Equal scores are taken in index order.
    """
    corners = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    score = np.asarray(scores, dtype=np.float64).reshape(-1)
    if score.shape[0] != corners.shape[0]:
        raise ValueError(f"{corners.shape[0]} boxes but {score.shape[0]} scores")
    classes = None if class_ids is None else np.asarray(class_ids).reshape(-1)
    if classes is not None and classes.shape[0] != corners.shape[0]:
        raise ValueError(f"{corners.shape[0]} boxes but {classes.shape[0]} class ids")

    def overlaps(best: np.intp, rest: Indices) -> npt.NDArray[np.bool_]:
        hit: npt.NDArray[np.bool_] = box_iou(corners[best], corners[rest])[0] > iou_threshold
        if classes is not None:
            hit &= classes[rest] == classes[best]
        return hit

    return _greedy(_by_score(score, np.arange(corners.shape[0], dtype=np.intp)), overlaps)


def centre_iou_f32(
    box: npt.NDArray[np.float32], others: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """MaixPy's ``box_iou``: centre-form ``x, y, w, h`` boxes, every step in float32."""
    half = np.float32(2)
    x, y, w, h = (box[i] for i in range(4))
    ox, oy, ow, oh = (others[:, i] for i in range(4))
    # Degenerate boxes (zero or infinite size) give NaN, and NaN > threshold suppresses nothing.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        inter_w = np.minimum(x + w / half, ox + ow / half) - np.maximum(
            x - w / half, ox - ow / half
        )
        inter_h = np.minimum(y + h / half, oy + oh / half) - np.maximum(
            y - h / half, oy - oh / half
        )
        inter = np.where((inter_w < 0) | (inter_h < 0), np.float32(0), inter_w * inter_h)
        iou: npt.NDArray[np.float32] = inter / (w * h + ow * oh - inter)
    return iou


def nms_maixpy(
    boxes: npt.ArrayLike, probs: npt.ArrayLike, nms_value: float
) -> npt.NDArray[np.float32]:
    """MaixPy's ``do_nms_sort``: ``probs`` with the suppressed class probabilities zeroed.

    ``boxes`` is ``(N, 4)`` centre-form; ``probs`` is ``(N, classes)``. For each class, boxes
    are taken by that class's probability, best first, and each box still non-zero zeroes
    that class for every later box whose IoU with it is ``> nms_value``. A box keeps its
    other classes, so it may still be reported under another one. MaixPy's ``qsort`` leaves
    equal probabilities in no defined order; here they are taken in index order.
    """
    centre = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    result = np.array(probs, dtype=np.float32, ndmin=2)  # a copy: the caller's stays intact
    if result.shape[0] != centre.shape[0]:
        raise ValueError(f"{centre.shape[0]} boxes but probabilities for {result.shape[0]}")
    threshold = np.float32(nms_value)

    def overlaps(best: np.intp, rest: Indices) -> npt.NDArray[np.bool_]:
        return centre_iou_f32(centre[best], centre[rest]) > threshold

    for k in range(result.shape[1]):
        column = result[:, k]
        # Zero-probability boxes sort last and are skipped, so they never suppress anything.
        candidates = np.flatnonzero(column).astype(np.intp)
        if candidates.size < 2:  # nothing to suppress
            continue
        kept = _greedy(_by_score(column, candidates), overlaps)
        column[np.setdiff1d(candidates, kept, assume_unique=True)] = 0
    return result
