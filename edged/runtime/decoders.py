"""From a manifest's decoder section to an object with ``decode(outputs, transform)``.

Every decoder, classifiers included, gives a list of :class:`Detection`, so the scheduler
and the publisher handle one kind of result: a classification is a detection whose box is
the whole frame, which fits the v1 MQTT payload unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy.typing as npt

from edged.runtime.manifest import (
    ClassifierConfig,
    DecoderConfig,
    ImageInput,
    SsdConfig,
    Yolo2Config,
)
from edged.vision.classifier import Classifier
from edged.vision.detection import Box, Detection
from edged.vision.preprocess import Transform
from edged.vision.ssd import SsdDecoder
from edged.vision.yolo2 import Yolo2Decoder

WHOLE_FRAME = Box(0.0, 0.0, 1.0, 1.0)


class Decoder(Protocol):
    """Model outputs to detections in frame pixels."""

    def decode(self, outputs: Sequence[npt.ArrayLike], transform: Transform) -> list[Detection]: ...


@dataclass(frozen=True, slots=True)
class SelectOutputs:
    """Hands the decoder the outputs it reads, in its order, whatever the model's order."""

    decoder: Decoder
    indices: tuple[int, ...]

    def decode(self, outputs: Sequence[npt.ArrayLike], transform: Transform) -> list[Detection]:
        return self.decoder.decode([outputs[i] for i in self.indices], transform)


@dataclass(frozen=True, slots=True)
class WholeFrameClassifier:
    """The best classes at or above ``min_score``, each as a detection covering the frame."""

    classifier: Classifier
    min_score: float

    def decode(self, outputs: Sequence[npt.ArrayLike], transform: Transform) -> list[Detection]:
        width, height = transform.frame_size
        frame = Box(0.0, 0.0, float(width), float(height))
        return [
            Detection(c.label, c.class_id, c.score, frame, WHOLE_FRAME)
            for c in self.classifier.classify(outputs)
            if c.score >= self.min_score
        ]


def build_decoder(
    config: DecoderConfig, labels: Sequence[str], image: ImageInput | None
) -> Decoder:
    """The decoder a manifest describes; box decoders need the ``image`` input's size."""
    names = tuple(labels)
    if isinstance(config, ClassifierConfig):
        head = Classifier(names, top_k=config.top_k, apply_softmax=config.softmax)
        return SelectOutputs(WholeFrameClassifier(head, config.min_score), (config.output,))
    if image is None:
        raise ValueError(f"a {config.type} decoder needs an image input")
    if isinstance(config, Yolo2Config):
        yolo = Yolo2Decoder(
            tuple(config.anchors), names, config.threshold, config.nms, config.maixpy_compat
        )
        return SelectOutputs(yolo, (config.output,))
    return SelectOutputs(_ssd(config, names, image), config.outputs)


def _ssd(config: SsdConfig, labels: tuple[str, ...], image: ImageInput) -> SsdDecoder:
    return SsdDecoder(
        labels=labels,
        score_threshold=config.threshold,
        iou_threshold=config.nms,
        image_size=(image.width, image.height),
        min_boxes=tuple(tuple(group) for group in config.min_boxes),
        strides=tuple(config.strides),
        center_variance=config.center_variance,
        size_variance=config.size_variance,
        nncase_example_priors=config.nncase_example_priors,
    )
