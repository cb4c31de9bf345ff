"""YOLOv2 region decode, computed as MaixPy's ``kpu.run_yolo2`` computes it.

The facts come from MaixPy-v1's ``components/kendryte_sdk/src/sipeed_yolo2.c`` (the region
layer) and ``components/micropython/port/src/Maix/Maix_kpu.c`` (``run_yolo2``). The output
tensor is ``(anchors * (5 + classes), H, W)``: per anchor, planes ``x, y, w, h, obj`` and
one plane per class. Per cell and anchor: sigmoid on x, y and objectness; softmax over the
classes; box ``x = (col + sigmoid(tx)) / W``, ``w = exp(tw) * anchor_w / W`` (likewise y, h);
class probability ``obj * softmax``, zeroed unless ``> threshold``; then ``do_nms_sort``;
then each box is reported once, under its best class, if that is ``> threshold``. The
arithmetic is float32 where the C code computes in float, so the numbers match.

By default the maths is correct for any anchor count, every box is reported and boxes are
clipped to the frame. ``maixpy_compat=True`` reproduces MaixPy's three quirks:

* ``classes = channels // 5 - 5`` (``region_layer_init``): right only for 5 anchors;
* at most 10 boxes (``obj_info_t.obj[10]``; MaixPy writes past the array, here the rest
  are dropped);
* corners are ``uint32`` (``obj_info_t``), converted by the K210's ``fcvt.wu.s``: a
  negative corner becomes 0 (C leaves it undefined; the chip saturates), and
  ``w = x2 - x1`` is computed in ``uint32`` as ``Maix_kpu.c`` does.

``Maix_kpu.c`` then narrows the rect to ``int16`` fields (``rectangle_t``); that step is not
reproduced, as no corner of a 320x240 input reaches 32768.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edged.vision.detection import Detection, make_detections
from edged.vision.nms import nms_maixpy
from edged.vision.preprocess import Transform

COORDS = 4  # x, y, w, h; then objectness, then the classes
MAIXPY_ASSUMED_ANCHORS = 5
MAIXPY_MAX_BOXES = 10
UINT32 = 2**32

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Yolo2Decoder:
    """A region layer's parameters, as ``kpu.init_yolo2`` takes them, and the labels.

    ``anchors`` are ``w0, h0, w1, h1, ...`` in grid cells.
    """

    anchors: tuple[float, ...]
    labels: tuple[str, ...]
    threshold: float = 0.5
    nms_value: float = 0.3
    maixpy_compat: bool = False

    def __post_init__(self) -> None:
        if not self.anchors or len(self.anchors) % 2:
            raise ValueError(f"anchors must be w, h pairs, got {len(self.anchors)} values")
        if any(a <= 0 for a in self.anchors):
            raise ValueError(f"anchors must be positive, got {self.anchors}")
        # The same ranges kpu.init_yolo2 enforces.
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold only supports 0 to 1, got {self.threshold}")
        if not 0.0 <= self.nms_value <= 1.0:
            raise ValueError(f"nms_value only supports 0 to 1, got {self.nms_value}")

    @property
    def anchor_count(self) -> int:
        return len(self.anchors) // 2

    def decode(self, outputs: Sequence[npt.ArrayLike], transform: Transform) -> list[Detection]:
        """Detections in frame pixels from the model's outputs (the first is the region map)."""
        if len(outputs) < 1:
            raise ValueError("a YOLOv2 model has one output, got none")
        planes = region_planes(outputs[0], self.anchor_count, maixpy_compat=self.maixpy_compat)
        boxes, probs = region_boxes(planes, self.anchors, self.threshold)
        probs = nms_maixpy(boxes, probs, self.nms_value)

        class_ids = np.argmax(probs, axis=1)  # the first of equal maxima, as max_index does
        best = probs[np.arange(probs.shape[0]), class_ids]
        found = np.flatnonzero(best > np.float32(self.threshold))
        if self.maixpy_compat:
            found = found[:MAIXPY_MAX_BOXES]
            frame_boxes = _maixpy_corners(boxes[found], transform)
        else:
            found = found[np.argsort(-best[found], kind="stable")]
            frame_boxes = _clipped_boxes(boxes[found], transform)
            visible = (frame_boxes[:, 2] > 0) & (frame_boxes[:, 3] > 0)
            found, frame_boxes = found[visible], frame_boxes[visible]
        return make_detections(
            frame_boxes, best[found], class_ids[found], self.labels, transform.frame_size
        )


def region_planes(output: npt.ArrayLike, anchor_count: int, *, maixpy_compat: bool) -> F32:
    """The output as float32 ``(anchors, 5 + classes, H, W)``, checking its shape.

    With ``maixpy_compat`` the class count is MaixPy's ``channels // 5 - 5`` and the planes
    are read with that stride, as the firmware reads them, whatever the anchor count.
    """
    tensor = np.asarray(output, dtype=np.float32)
    if tensor.ndim == 4 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.ndim != 3:
        raise ValueError(f"expected a region output (channels, H, W), got shape {tensor.shape}")
    channels, height, width = tensor.shape
    if maixpy_compat:
        classes = channels // MAIXPY_ASSUMED_ANCHORS - MAIXPY_ASSUMED_ANCHORS
    else:
        if channels % anchor_count:
            raise ValueError(f"{channels} output channels do not split into {anchor_count} anchors")
        classes = channels // anchor_count - COORDS - 1
    if classes < 1:
        raise ValueError(
            f"{channels} output channels leave {classes} classes for {anchor_count} anchors"
        )
    needed = anchor_count * (COORDS + 1 + classes)
    if needed > channels:  # MaixPy would read past its buffer; there is nothing to reproduce
        raise ValueError(
            f"{anchor_count} anchors of {classes} classes need {needed} channels, "
            f"the output has {channels}"
        )
    per_anchor = COORDS + 1 + classes
    return tensor[:needed].reshape(anchor_count, per_anchor, height, width)


def region_boxes(planes: F32, anchors: Sequence[float], threshold: float) -> tuple[F32, F32]:
    """Centre-form boxes ``(N, 4)`` in 0..1 of the input and class probabilities ``(N, C)``.

    Row ``n * H * W + row * W + col`` is anchor ``n`` at that cell: MaixPy's box order.
    """
    anchor_count, _, height, width = planes.shape
    x, y = _sigmoid(planes[:, 0]), _sigmoid(planes[:, 1])
    objectness = _sigmoid(planes[:, COORDS])
    class_probs = _softmax_classes(planes[:, COORDS + 1 :])

    grid_w, grid_h = np.float32(width), np.float32(height)
    cols = np.arange(width, dtype=np.float32)[np.newaxis, np.newaxis, :]
    rows = np.arange(height, dtype=np.float32)[np.newaxis, :, np.newaxis]
    anchor = np.asarray(anchors, dtype=np.float32).reshape(anchor_count, 2, 1, 1)
    with np.errstate(over="ignore"):  # a huge tw is an infinite box, clipped later
        size_w, size_h = np.exp(planes[:, 2]), np.exp(planes[:, 3])
    boxes = np.stack(
        [
            (cols + x) / grid_w,
            (rows + y) / grid_h,
            size_w * anchor[:, 0] / grid_w,
            size_h * anchor[:, 1] / grid_h,
        ],
        axis=-1,
    ).reshape(-1, 4)

    prob = objectness[:, np.newaxis] * class_probs
    prob = np.where(prob > np.float32(threshold), prob, np.float32(0))
    return boxes, np.moveaxis(prob, 1, -1).reshape(-1, prob.shape[1])


def _sigmoid(values: F32) -> F32:
    """``1.0 / (1.0 + expf(-v))``: expf in float, the rest in double, stored as float."""
    with np.errstate(over="ignore"):  # expf overflows to inf, and the sigmoid is then 0
        exp = np.exp(-values).astype(np.float64)
    return (1.0 / (1.0 + exp)).astype(np.float32)


def _softmax_classes(logits: F32) -> F32:
    """Softmax over axis 1 in float32, max-subtracted, summed in class order as the C loop does."""
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    total = exp[:, 0].copy()
    for k in range(1, exp.shape[1]):
        total += exp[:, k]
    result: F32 = exp / total[:, np.newaxis]
    return result


def _clipped_boxes(boxes: F32, transform: Transform) -> npt.NDArray[np.float64]:
    """Centre-form boxes in 0..1 of the input to ``x, y, w, h`` in frame pixels, clipped."""
    centre = boxes.astype(np.float64)
    half = centre[:, 2:] / 2
    corners = np.concatenate([centre[:, :2] - half, centre[:, :2] + half], axis=1)
    frame = transform.to_frame(corners, normalized=True)
    return np.concatenate([frame[:, :2], frame[:, 2:] - frame[:, :2]], axis=1)


def _maixpy_corners(boxes: F32, transform: Transform) -> npt.NDArray[np.float64]:
    """``region_layer_output``'s corners: float32 pixels of the input, then uint32.

    On the K210 the float-to-uint32 conversion is RISC-V's ``fcvt.wu.s``: it truncates
    toward zero and saturates, so a corner left of or above the image becomes 0 (C calls
    this undefined; the chip defines it). Widths are ``x2 - x1`` in uint32. A frame other
    than the input (MaixPy has none) gets the corners mapped first, unclipped, so an
    identity transform gives MaixPy's integers exactly.
    """
    size = np.asarray(transform.input_size, dtype=np.float32)
    centre, extent = boxes[:, :2] * size, boxes[:, 2:] * size / np.float32(2)
    corners = np.concatenate([centre - extent, centre + extent], axis=1)
    frame = transform.to_frame(corners, normalized=False, clip=False)
    converted = np.trunc(np.clip(frame, 0, UINT32 - 1)).astype(np.int64)
    sizes = np.mod(converted[:, 2:] - converted[:, :2], UINT32)
    return np.concatenate([converted[:, :2], sizes], axis=1).astype(np.float64)
