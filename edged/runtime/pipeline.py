"""Pipelines: a model put to one use, and the per-frame work around the KPU run.

A manifest says what a model *is*; a pipeline (``pipelines/<name>.toml``) says what a site
*wants* from it: which model, how frames are fitted, stricter or looser thresholds, which
detections count (score, labels, region of the frame) and what is published. A pipeline
is named by its file, so it is found without reading the others.

The per-frame work is split around the KPU run so the scheduler can put each part where
it belongs (worker threads for these, the KPU's own queue for the run)::

    prepared = pipeline.prepare(frame)            # pure: frame -> input tensors
    outputs = await kpu.run(handle, prepared.inputs)
    detections = pipeline.finish(outputs, prepared.transform)   # pure: decode + filters

Example (``pipelines/face.toml``)::

    model = "maixpy_face"

    [filters]
    min_score = 0.6
    region = { x = 0.0, y = 0.0, w = 1.0, h = 0.5 }   # the upper half of the frame

    [publish]
    max_detections = 5
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple, Self

import numpy as np
import numpy.typing as npt
from pydantic import Field, ValidationError, model_validator

from edged.resources import shipped
from edged.runtime.decoders import Decoder, build_decoder
from edged.runtime.definitions import (
    NAME_PATTERN,
    DefinitionError,
    Score,
    Strict,
    read_toml,
    validation_problems,
)
from edged.runtime.manifest import DecoderConfig, ImageInput, ModelManifest
from edged.runtime.registry import ModelEntry, ModelRegistry, UnknownModel
from edged.vision.detection import Detection
from edged.vision.preprocess import Fit, InputSpec, Transform, preprocess

PROJECT_PIPELINES = shipped("pipelines")

Tensor = npt.NDArray[np.uint8] | npt.NDArray[np.float32]


class PipelineError(DefinitionError):
    """A pipeline definition that cannot be used with its model."""


class UnknownPipeline(LookupError):
    """No pipeline file of this name."""


class Preprocessing(Strict):
    """How this pipeline fits frames, where it differs from the model's manifest."""

    fit: Fit | None = Field(
        default=None, description="resize, crop or letterbox (default: the model's)"
    )
    pad_value: int | None = Field(
        default=None,
        ge=0,
        le=255,
        description="letterbox padding grey level (default: the model's)",
    )


class DecoderOverrides(Strict):
    """Thresholds that differ from the manifest's; only those of the model's decoder apply."""

    threshold: Score | None = Field(default=None, description="detectors: minimum box score")
    nms: Score | None = Field(default=None, description="detectors: NMS IoU threshold")
    top_k: int | None = Field(
        default=None, ge=1, description="classifiers: how many classes to report"
    )
    min_score: Score | None = Field(default=None, description="classifiers: minimum class score")


class Region(Strict):
    """A region of interest in 0..1 of the frame; a detection counts if its centre is inside."""

    x: Score = Field(description="left edge, 0..1 of the frame width")
    y: Score = Field(description="top edge, 0..1 of the frame height")
    w: Score = Field(gt=0.0, description="width, 0..1 of the frame width")
    h: Score = Field(gt=0.0, description="height, 0..1 of the frame height")

    @model_validator(mode="after")
    def _inside_frame(self) -> Self:
        if self.x + self.w > 1.0 or self.y + self.h > 1.0:
            raise ValueError(
                f"expected a region inside the frame (x + w <= 1, y + h <= 1), got "
                f"x={self.x} w={self.w} y={self.y} h={self.h}"
            )
        return self

    def contains(self, x: float, y: float) -> bool:
        return self.x <= x <= self.x + self.w and self.y <= y <= self.y + self.h


class Filters(Strict):
    """Which detections count, after decoding."""

    min_score: Score = Field(default=0.0, description="detections scoring less are dropped")
    labels: list[str] | None = Field(
        default=None, min_length=1, description="labels of interest (default: all of the model's)"
    )
    region: Region | None = Field(
        default=None, description="region of interest (default: whole frame)"
    )


class Publish(Strict):
    """What goes out for each frame."""

    max_detections: int | None = Field(
        default=None, ge=1, description="publish at most this many, best first (default: all)"
    )
    empty_frames: bool = Field(default=True, description="publish frames with no detection too")


class PipelineDefinition(Strict):
    """One pipeline file."""

    model: str = Field(pattern=NAME_PATTERN, description="the model's name (its manifest)")
    description: str = Field(default="", description="free text for people")
    # Frozen models: one shared default instance is safe.
    preprocess: Preprocessing = Field(default=Preprocessing(), description="frame fitting")
    decoder: DecoderOverrides = Field(default=DecoderOverrides(), description="decoder thresholds")
    filters: Filters = Field(default=Filters(), description="which detections count")
    publish: Publish = Field(default=Publish(), description="what is published")


class Prepared(NamedTuple):
    """A frame made ready for the KPU, and how to map boxes back to it."""

    inputs: list[Tensor]
    transform: Transform


FEATURES_FRAME = Transform.identity(1, 1)
"""A feature vector has no pixels: its whole-frame results are boxes of the unit square."""


class Pipeline:
    """A pipeline bound to its verified model: what the scheduler runs, frame after frame."""

    def __init__(
        self, name: str, definition: PipelineDefinition, model: ModelEntry, source: Path | str
    ) -> None:
        self.name = name
        self.definition = definition
        self.model = model
        self.source = source
        self.input_shape = model.kmodel.inputs[0].shape  # reading it verifies the kmodel
        self.input_spec = _input_spec(definition, model, source)
        self.decoder = _decoder(definition, model, source)
        _check_filters(definition, model.manifest, source)

    def prepare(self, frame: npt.ArrayLike) -> Prepared:
        """The model's input for a BGR ``HxWx3`` uint8 frame (or a feature-model's vector)."""
        if self.input_spec is None:
            values = np.asarray(frame, dtype=np.float32)
            expected = int(np.prod(self.input_shape))
            if values.size != expected:
                raise ValueError(
                    f"model {self.model.name} takes {expected} feature values, got {values.size}"
                )
            return Prepared([values.reshape(self.input_shape)], FEATURES_FRAME)
        if not isinstance(frame, np.ndarray):
            raise TypeError(
                f"model {self.model.name} takes an image (HxWx3 uint8), got {type(frame).__name__}"
            )
        tensor, transform = preprocess(frame, self.input_spec)
        return Prepared([tensor.reshape(self.input_shape)], transform)

    def finish(self, outputs: Sequence[npt.ArrayLike], transform: Transform) -> list[Detection]:
        """The detections that count, best first, at most ``publish.max_detections``."""
        filters = self.definition.filters
        wanted = [
            d
            for d in self.decoder.decode(outputs, transform)
            if d.score >= filters.min_score
            and (filters.labels is None or d.label in filters.labels)
            and (filters.region is None or filters.region.contains(*_centre(d)))
        ]
        wanted.sort(key=lambda d: -d.score)
        return wanted[: self.definition.publish.max_detections]

    def publishes(self, detections: Sequence[Detection]) -> bool:
        """Whether a frame with these detections is published at all."""
        return bool(detections) or self.definition.publish.empty_frames


def pipeline_names(directory: Path) -> list[str]:
    return sorted(path.stem for path in directory.glob("*.toml"))


def pipeline_path(name: str, directory: Path) -> Path:
    """``directory/<name>.toml``; a name ending in ``.toml`` is taken as a path."""
    path = Path(name) if name.endswith(".toml") else directory / f"{name}.toml"
    if not path.is_file():
        known = ", ".join(pipeline_names(directory)) if directory.is_dir() else "none"
        raise UnknownPipeline(f"no pipeline {path} (in {directory}: {known or 'none'})")
    return path


def load_pipeline(path: Path, registry: ModelRegistry) -> Pipeline:
    """Read ``path`` and bind it to its model; errors name the file and the field."""
    if not re.fullmatch(NAME_PATTERN, path.stem):
        raise PipelineError(path, [("(file name)", f"expected a name matching {NAME_PATTERN}")])
    raw = read_toml(path, PipelineError)
    try:
        definition = PipelineDefinition.model_validate(raw)
    except ValidationError as exc:
        raise PipelineError(path, validation_problems(exc)) from exc
    return build_pipeline(path.stem, definition, registry, source=path)


def build_pipeline(
    name: str, definition: PipelineDefinition, registry: ModelRegistry, source: Path | str = ""
) -> Pipeline:
    """Bind ``definition`` to its model, verifying the model now rather than per frame.

    A model that is unknown is the pipeline's error; a model that is broken raises the
    manifest's own :class:`ManifestError`, which names the file to fix.
    """
    where = source or f"pipeline {name}"
    try:
        model = registry.get(definition.model)
    except UnknownModel as exc:
        raise PipelineError(where, [("model", str(exc))]) from exc
    return Pipeline(name, definition, model, where)


def _input_spec(
    definition: PipelineDefinition, model: ModelEntry, source: Path | str
) -> InputSpec | None:
    image = model.manifest.input
    overrides = definition.preprocess
    if not isinstance(image, ImageInput):
        if overrides.fit is not None or overrides.pad_value is not None:
            raise PipelineError(
                source, [("preprocess", f"model {model.name} takes a feature vector, not images")]
            )
        return None
    return image.input_spec(fit=overrides.fit, pad_value=overrides.pad_value)


def _decoder(definition: PipelineDefinition, model: ModelEntry, source: Path | str) -> Decoder:
    config = model.manifest.decoder
    updates = definition.decoder.model_dump(exclude_none=True)
    if not updates:
        return model.decoder
    unknown = [key for key in updates if key not in type(config).model_fields]
    if unknown:
        raise PipelineError(
            source,
            [
                (
                    f"decoder.{key}",
                    f"model {model.name}'s {config.type} decoder has no such parameter",
                )
                for key in unknown
            ],
        )
    changed: DecoderConfig = config.model_copy(update=updates)
    image = model.manifest.input if isinstance(model.manifest.input, ImageInput) else None
    return build_decoder(changed, model.manifest.labels, image)


def _check_filters(
    definition: PipelineDefinition, manifest: ModelManifest, source: Path | str
) -> None:
    labels = definition.filters.labels or []
    unknown = [label for label in labels if label not in manifest.labels]
    if unknown:
        raise PipelineError(
            source,
            [
                (
                    "filters.labels",
                    f"{unknown} are not labels of model {manifest.name} "
                    f"({', '.join(manifest.labels)})",
                )
            ],
        )


def _centre(detection: Detection) -> tuple[float, float]:
    box = detection.box_norm
    return box.x + box.w / 2, box.y + box.h / 2
