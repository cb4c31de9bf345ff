"""SSD decode with prior boxes, as the Ultra-Light-Fast face detector (RFB/slim 320x240) needs.

Facts from kendryte/nncase ``examples/fast_facedetect/k210/kpu_fast_facedetect_example``
(``ultra_face.cpp``, ``main.c`` at f1ea6f67d) and the detector's own repository
(Linzaer/Ultra-Light-Fast-Generic-Face-Detector-1MB, ``vision/ssd/config/fd_config.py``,
``vision/utils/box_utils.py``):

* output 0 holds the box regressions, ``(priors, 4)`` row-major (17680 = 4420 x 4);
  output 1 the class scores, ``(priors, classes)`` with class 0 the background and already
  softmaxed (8840 = 4420 x 2; the face score is column 1);
* priors run feature map by feature map, then row, then column, then min box size; each
  is a centre-form box in 0..1 of the input, clipped to 0..1;
* decode: ``cx = dx * 0.1 * prior_w + prior_cx``, ``w = exp(dw * 0.2) * prior_w`` (likewise
  y, h); corners clipped to 0..1.

The two sources differ in one thing. The training code centres priors at
``(j + 0.5) / feature_map_size``; the nncase example at ``(j + 0.5) * stride / input_size``.
They agree where the stride divides the input (all of 320), not where it does not (240 / 32
and 240 / 64), so the coarse maps' rows sit up to 1/16 of the height lower in the example.
The network learned the training priors: they are the default; ``nncase_example_priors``
gives the example's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from edged.vision.detection import Detection, make_detections
from edged.vision.nms import nms
from edged.vision.preprocess import Transform

ULTRAFACE_MIN_BOXES: tuple[tuple[float, ...], ...] = (
    (10.0, 16.0, 24.0),
    (32.0, 48.0),
    (64.0, 96.0),
    (128.0, 192.0, 256.0),
)
ULTRAFACE_STRIDES: tuple[int, ...] = (8, 16, 32, 64)


@lru_cache(maxsize=16)
def prior_boxes(
    image_size: tuple[int, int],
    min_boxes: tuple[tuple[float, ...], ...],
    strides: tuple[int, ...],
    *,
    nncase_example: bool = False,
) -> npt.NDArray[np.float32]:
    """The ``(N, 4)`` centre-form priors in 0..1 of the input, made once per configuration.

    The array is read-only: it is shared by every caller with the same configuration.
    """
    if len(min_boxes) != len(strides):
        raise ValueError(f"{len(min_boxes)} min_boxes groups for {len(strides)} strides")
    width, height = image_size
    maps = []
    for sizes, stride in zip(min_boxes, strides, strict=True):
        cols, rows = math.ceil(width / stride), math.ceil(height / stride)
        x_step = stride / width if nncase_example else 1.0 / cols
        y_step = stride / height if nncase_example else 1.0 / rows
        cy, cx = np.meshgrid(
            (np.arange(rows) + 0.5) * y_step, (np.arange(cols) + 0.5) * x_step, indexing="ij"
        )
        shape = (rows, cols, len(sizes))
        maps.append(
            np.stack(
                [
                    np.broadcast_to(cx[..., np.newaxis], shape),
                    np.broadcast_to(cy[..., np.newaxis], shape),
                    np.broadcast_to(np.divide(sizes, width), shape),
                    np.broadcast_to(np.divide(sizes, height), shape),
                ],
                axis=-1,
            ).reshape(-1, 4)
        )
    priors: npt.NDArray[np.float32] = np.clip(np.concatenate(maps), 0.0, 1.0).astype(np.float32)
    priors.setflags(write=False)
    return priors


@dataclass(frozen=True, slots=True)
class SsdDecoder:
    """Prior-box SSD decode; ``labels`` name the classes after the background."""

    labels: tuple[str, ...] = ("face",)
    score_threshold: float = 0.7
    iou_threshold: float = 0.3
    image_size: tuple[int, int] = (320, 240)
    min_boxes: tuple[tuple[float, ...], ...] = ULTRAFACE_MIN_BOXES
    strides: tuple[int, ...] = ULTRAFACE_STRIDES
    center_variance: float = 0.1
    size_variance: float = 0.2
    nncase_example_priors: bool = False

    @property
    def priors(self) -> npt.NDArray[np.float32]:
        return prior_boxes(
            self.image_size, self.min_boxes, self.strides, nncase_example=self.nncase_example_priors
        )

    def decode(self, outputs: Sequence[npt.ArrayLike], transform: Transform) -> list[Detection]:
        """Detections in frame pixels from outputs ``[box regressions, class scores]``."""
        if len(outputs) != 2:
            raise ValueError(f"an SSD model has 2 outputs (boxes, scores), got {len(outputs)}")
        priors = self.priors
        count = priors.shape[0]
        locations = np.asarray(outputs[0], dtype=np.float32)
        scores = np.asarray(outputs[1], dtype=np.float32)
        if locations.size != count * 4:
            raise ValueError(
                f"box output has {locations.size} values, {count} priors need {count * 4}"
            )
        if scores.size % count or scores.size // count < 2:
            raise ValueError(
                f"score output has {scores.size} values, not a background and at least one "
                f"class for each of {count} priors"
            )
        scores = scores.reshape(count, -1)[:, 1:]  # drop the background column
        candidate, column = np.nonzero(scores > np.float32(self.score_threshold))
        corners = self._corners(locations.reshape(count, 4)[candidate], priors[candidate])
        picked = nms(corners, scores[candidate, column], self.iou_threshold, class_ids=column)

        frame = transform.to_frame(corners[picked], normalized=True)
        boxes = np.concatenate([frame[:, :2], frame[:, 2:] - frame[:, :2]], axis=1)
        visible = (boxes[:, 2] > 0) & (boxes[:, 3] > 0)
        picked = picked[visible]
        return make_detections(
            boxes[visible],
            scores[candidate[picked], column[picked]],
            column[picked],
            self.labels,
            transform.frame_size,
        )

    def _corners(
        self, locations: npt.NDArray[np.float32], priors: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.float32]:
        """Regressions against their priors as ``x1, y1, x2, y2`` in 0..1 of the input."""
        centre = locations[:, :2] * np.float32(self.center_variance) * priors[:, 2:] + priors[:, :2]
        with np.errstate(over="ignore"):  # a huge regression is an infinite box, clipped next
            size = np.exp(locations[:, 2:] * np.float32(self.size_variance)) * priors[:, 2:]
        half = size / np.float32(2)
        corners = np.concatenate([centre - half, centre + half], axis=1)
        clipped: npt.NDArray[np.float32] = np.clip(corners, np.float32(0), np.float32(1))
        return clipped
