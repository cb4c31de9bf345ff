"""Model manifests: the TOML next to a kmodel that says how to feed it and read its outputs.

A kmodel holds tensors, not meaning: nothing in it says the input is RGB, that the output
is a YOLOv2 region map or which anchors it was trained with. The manifest says so, which
makes a new model a file to write, not code. This module is the schema and the reader;
checking a manifest against its kmodel is ``verify``'s job.

Example (``models/maixpy_face.toml``)::

    file = "maixpy_facedetect_v3.kmodel"
    sha256 = "e3c6669f..."
    labels = ["face"]

    [input]
    width = 320
    height = 240
    color = "rgb"

    [decoder]
    type = "yolo2"
    anchors = [1.889, 2.5245, ...]
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import Field, ValidationError, field_validator, model_validator

from edged.runtime.definitions import (
    NAME_PATTERN,
    DefinitionError,
    Score,
    Strict,
    read_toml,
    validation_problems,
)
from edged.vision import preprocess
from edged.vision.preprocess import ColorOrder, Fit
from edged.vision.ssd import ULTRAFACE_MIN_BOXES, ULTRAFACE_STRIDES


class ManifestError(DefinitionError):
    """A manifest that cannot be used, or a kmodel that does not match it."""


class Normalization(Strict):
    """Float input from pixels: either ``(pixel - mean) / std`` or ``pixel * scale + bias``."""

    mean: list[float] | None = Field(default=None, description="per-channel mean, with std")
    std: list[float] | None = Field(
        default=None, description="per-channel standard deviation, with mean"
    )
    scale: list[float] | None = Field(default=None, description="per-channel factor, with bias")
    bias: list[float] | None = Field(default=None, description="per-channel offset, with scale")

    @model_validator(mode="after")
    def _one_form(self) -> Self:
        mean_std = self.mean is not None and self.std is not None
        scale_bias = self.scale is not None and self.bias is not None
        given = [k for k in ("mean", "std", "scale", "bias") if getattr(self, k) is not None]
        if len(given) != 2 or not (mean_std or scale_bias):
            raise ValueError(f"expected either mean and std, or scale and bias; got {given}")
        return self

    def to_vision(self) -> preprocess.Normalization:
        if self.mean is not None and self.std is not None:
            return preprocess.Normalization.from_mean_std(self.mean, self.std)
        return preprocess.Normalization(tuple(self.scale or ()), tuple(self.bias or ()))


class ImageInput(Strict):
    """A camera frame, fitted to the model's input size and colour order."""

    kind: Literal["image"] = Field(
        default="image", description="the input is an image (the default)"
    )
    width: int = Field(ge=1, description="model input width in pixels")
    height: int = Field(ge=1, description="model input height in pixels")
    color: ColorOrder = Field(default=ColorOrder.RGB, description="channel order: rgb, bgr or gray")
    fit: Fit = Field(
        default=Fit.RESIZE,
        description="how a frame of another aspect is fitted: resize, crop, letterbox",
    )
    pad_value: int = Field(default=0, ge=0, le=255, description="letterbox padding grey level")
    normalization: Normalization | None = Field(
        default=None, description="for float32 inputs only: how pixels become the model's values"
    )

    @model_validator(mode="after")
    def _usable(self) -> Self:
        self.input_spec()  # the pre-processing's own checks (normalisation per channel, ...)
        return self

    def input_spec(
        self, fit: Fit | None = None, pad_value: int | None = None
    ) -> preprocess.InputSpec:
        """The pre-processing parameters; a pipeline may choose another fit or padding."""
        return preprocess.InputSpec(
            width=self.width,
            height=self.height,
            color=self.color,
            fit=self.fit if fit is None else fit,
            pad_value=self.pad_value if pad_value is None else pad_value,
            normalization=None if self.normalization is None else self.normalization.to_vision(),
        )


class FeatureInput(Strict):
    """A vector of numbers (sensor readings, measurements), not an image."""

    kind: Literal["features"] = Field(description="the input is a float32 feature vector")
    size: int = Field(ge=1, description="how many values the model takes")
    names: list[str] | None = Field(
        default=None, description="what each value is, in order (optional)"
    )

    @model_validator(mode="after")
    def _names_match(self) -> Self:
        if self.names is not None and len(self.names) != self.size:
            raise ValueError(f"{len(self.names)} names for {self.size} values")
        return self


class Yolo2Config(Strict):
    """A YOLOv2 region layer, decoded as MaixPy's ``kpu.run_yolo2`` does."""

    type: Literal["yolo2"] = Field(description="decoder kind")
    anchors: list[float] = Field(
        min_length=2, description="anchor sizes w0, h0, w1, h1, ... in grid cells"
    )
    threshold: Score = Field(default=0.5, description="minimum class probability of a box")
    nms: Score = Field(
        default=0.3, description="IoU above which the weaker of two boxes is dropped"
    )
    maixpy_compat: bool = Field(
        default=False, description="reproduce MaixPy's quirks (see yolo2.py)"
    )
    output: int = Field(
        default=0, ge=0, description="index of the model output holding the region map"
    )

    @field_validator("anchors")
    @classmethod
    def _pairs(cls, anchors: list[float]) -> list[float]:
        if len(anchors) % 2:
            raise ValueError(f"expected w, h pairs, got {len(anchors)} values")
        if any(a <= 0 for a in anchors):
            raise ValueError("anchor sizes must be positive")
        return anchors


class SsdConfig(Strict):
    """SSD-style prior boxes (Ultra-Light-Fast face detector); defaults are its training's."""

    type: Literal["ssd"] = Field(description="decoder kind")
    threshold: Score = Field(default=0.7, description="minimum class score of a box")
    nms: Score = Field(
        default=0.4, description="IoU above which the weaker of two boxes is dropped"
    )
    min_boxes: list[list[float]] = Field(
        default_factory=lambda: [list(group) for group in ULTRAFACE_MIN_BOXES],
        description="prior sizes in input pixels, one group per feature map",
    )
    strides: list[int] = Field(
        default_factory=lambda: list(ULTRAFACE_STRIDES),
        description="input pixels per feature-map cell, one per feature map",
    )
    center_variance: float = Field(default=0.1, gt=0, description="scale of the centre regressions")
    size_variance: float = Field(default=0.2, gt=0, description="scale of the size regressions")
    nncase_example_priors: bool = Field(
        default=False,
        description="centre priors as nncase's example does rather than as training did",
    )
    outputs: tuple[int, int] = Field(
        default=(0, 1), description="indices of the box-regression and class-score outputs"
    )

    @model_validator(mode="after")
    def _one_group_per_stride(self) -> Self:
        if len(self.min_boxes) != len(self.strides):
            raise ValueError(
                f"{len(self.min_boxes)} min_boxes groups for {len(self.strides)} strides"
            )
        return self


class ClassifierConfig(Strict):
    """A class-score vector; each result is reported as a whole-frame detection."""

    type: Literal["classifier"] = Field(description="decoder kind")
    top_k: int = Field(default=1, ge=1, description="how many of the best classes to report")
    softmax: bool = Field(
        default=True, description="apply softmax (false when the model ends in one)"
    )
    min_score: Score = Field(default=0.0, description="classes scoring less are not reported")
    output: int = Field(default=0, ge=0, description="index of the model output holding the scores")


DecoderConfig = Annotated[Yolo2Config | SsdConfig | ClassifierConfig, Field(discriminator="type")]
InputConfig = Annotated[ImageInput | FeatureInput, Field(discriminator="kind")]
UNION_TAGS = frozenset({"yolo2", "ssd", "classifier", "image", "features"})


class ModelManifest(Strict):
    """One model: its file and identity, how to feed it, how to read it, what it finds."""

    name: str = Field(
        pattern=NAME_PATTERN, description="the model's name (default: the manifest's file stem)"
    )
    description: str = Field(default="", description="free text for people")
    file: str = Field(
        min_length=1, description="the kmodel: next to the manifest, else on the search path"
    )
    sha256: str = Field(
        pattern=r"^[0-9a-fA-F]{64}$", description="the kmodel's SHA-256, so a swap is noticed"
    )
    input: InputConfig = Field(description="what the model takes and how frames are fitted")
    decoder: DecoderConfig = Field(description="how the outputs become detections")
    labels: list[str] = Field(
        min_length=1,
        description="class names in output order; in TOML also a file name (one per line)",
    )

    @field_validator("sha256")
    @classmethod
    def _lower(cls, digest: str) -> str:
        return digest.lower()


def load_manifest(path: Path) -> ModelManifest:
    """Read and validate a manifest; a labels file is read relative to it.

    Raises :class:`ManifestError` naming the file and every field at fault.
    """
    raw = read_toml(path, ManifestError)
    raw.setdefault("name", path.stem)
    if isinstance(raw.get("input"), dict):
        raw["input"] = {"kind": "image", **raw["input"]}
    if isinstance(raw.get("labels"), str):
        raw["labels"] = _read_labels(path, raw["labels"])
    try:
        manifest = ModelManifest.model_validate(raw)
    except ValidationError as exc:
        raise ManifestError(path, validation_problems(exc, UNION_TAGS)) from exc
    if manifest.decoder.type != "classifier" and not isinstance(manifest.input, ImageInput):
        raise ManifestError(
            path, [("decoder.type", f"a {manifest.decoder.type} decoder needs an image input")]
        )
    return manifest


def _read_labels(manifest: Path, name: str) -> list[str]:
    """One label a line; blank lines are skipped so a trailing newline adds no class."""
    labels_path = manifest.parent / name
    try:
        text = labels_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ManifestError(
            manifest, [("labels", f"cannot read labels file {labels_path}: {exc.strerror or exc}")]
        ) from exc
    return [line.strip() for line in text.splitlines() if line.strip()]
