"""A manifest against its kmodel: the right file, and a model that fits what it says.

Run once, when a model is first used or by ``edged check``, never per frame: after this a
frame can only fail for reasons of its own. Mismatches are reported on the manifest's
field that would have to change (``decoder.anchors``, ``input.width``, ``labels``).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

from edged.kpu.errors import KpuError
from edged.kpu.kmodel import KModel, TensorSpec, parse_kmodel
from edged.runtime.definitions import Problem
from edged.runtime.manifest import (
    ClassifierConfig,
    FeatureInput,
    ImageInput,
    ManifestError,
    ModelManifest,
    SsdConfig,
    Yolo2Config,
)
from edged.vision.ssd import prior_boxes

YOLO_BOX_VALUES = 5  # x, y, w, h, objectness per anchor, before the classes


def load_verified(manifest: ModelManifest, manifest_path: Path, kmodel_path: Path) -> KModel:
    """The parsed kmodel, if its bytes have the manifest's sha256 and it fits the manifest."""
    try:
        data = kmodel_path.read_bytes()
    except OSError as exc:
        raise ManifestError(
            manifest_path, [("file", f"cannot read {kmodel_path}: {exc.strerror or exc}")]
        ) from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest.sha256:
        raise ManifestError(
            manifest_path,
            [("sha256", f"expected {manifest.sha256}, but {kmodel_path} has {digest}")],
        )
    try:
        model = parse_kmodel(data)
    except KpuError as exc:
        raise ManifestError(manifest_path, [("file", f"{kmodel_path}: {exc}")]) from exc
    problems = model_problems(manifest, model)
    if problems:
        raise ManifestError(manifest_path, problems)
    return model


def model_problems(manifest: ModelManifest, model: KModel) -> list[Problem]:
    """Where the manifest and the parsed model disagree (empty when they agree)."""
    if len(model.inputs) != 1:
        return [("file", f"edged runs models with one input; this one has {len(model.inputs)}")]
    if isinstance(manifest.input, ImageInput):
        problems = _image_problems(manifest.input, model.inputs[0])
    else:
        problems = _feature_problems(manifest.input, model.inputs[0])
    return problems + _decoder_problems(manifest, model.outputs)


def _squeezed(shape: tuple[int, ...], ndim: int) -> tuple[int, ...]:
    """``shape`` without leading 1s beyond ``ndim`` dimensions (batch of 1: ``1x3xHxW``)."""
    while len(shape) > ndim and shape[0] == 1:
        shape = shape[1:]
    return shape


def _image_problems(image: ImageInput, tensor: TensorSpec) -> list[Problem]:
    shape = _squeezed(tensor.shape, 3)
    described = f"{tensor.dtype}{list(tensor.shape)}"
    if len(shape) != 3:
        return [("input.kind", f"the model takes {described}, not an image (C, H, W)")]
    problems = []
    channels, height, width = shape
    if width != image.width:
        problems.append(("input.width", f"expected {width}: the model takes {described}"))
    if height != image.height:
        problems.append(("input.height", f"expected {height}: the model takes {described}"))
    if channels != image.color.channels:
        problems.append(
            (
                "input.color",
                f"{image.color} is {image.color.channels} channel(s), the model takes {described}",
            )
        )
    if image.normalization is None and tensor.dtype != "uint8":
        problems.append(("input.normalization", f"required: the model takes {described}"))
    if image.normalization is not None and tensor.dtype == "uint8":
        problems.append(("input.normalization", f"not allowed: the model takes {described}"))
    return problems


def _feature_problems(features: FeatureInput, tensor: TensorSpec) -> list[Problem]:
    described = f"{tensor.dtype}{list(tensor.shape)}"
    if tensor.dtype != "float32":
        return [("input.kind", f"the model takes {described}, not a float32 feature vector")]
    if math.prod(tensor.shape) != features.size:
        return [("input.size", f"expected {math.prod(tensor.shape)}: the model takes {described}")]
    return []


def _decoder_problems(manifest: ModelManifest, outputs: tuple[TensorSpec, ...]) -> list[Problem]:
    config = manifest.decoder
    indices = config.outputs if isinstance(config, SsdConfig) else (config.output,)
    field = "decoder.outputs" if isinstance(config, SsdConfig) else "decoder.output"
    missing = [i for i in indices if i >= len(outputs)]
    if missing:
        return [(field, f"no output {missing[0]}: the model has {len(outputs)} output(s)")]
    labels = len(manifest.labels)
    if isinstance(config, Yolo2Config):
        return _yolo2_problems(config, labels, outputs[config.output])
    if isinstance(config, SsdConfig):
        if not isinstance(manifest.input, ImageInput):
            return [("decoder.type", "an ssd decoder needs an image input")]
        return _ssd_problems(config, manifest.input, labels, outputs)
    return _classifier_problems(config, labels, outputs[config.output])


def _yolo2_problems(config: Yolo2Config, labels: int, output: TensorSpec) -> list[Problem]:
    shape = _squeezed(output.shape, 3)
    if len(shape) != 3:
        return [
            (
                "decoder.output",
                f"output {config.output} has shape {list(output.shape)}, "
                "not a region map (channels, H, W)",
            )
        ]
    anchors = len(config.anchors) // 2
    needed = anchors * (YOLO_BOX_VALUES + labels)
    if shape[0] != needed:
        return [
            (
                "decoder.anchors",
                f"{anchors} anchors x (5 + {labels} labels) = {needed} "
                f"channels, but output {config.output} has {shape[0]} "
                f"(shape {list(output.shape)})",
            )
        ]
    return []


def _ssd_problems(
    config: SsdConfig, image: ImageInput, labels: int, outputs: tuple[TensorSpec, ...]
) -> list[Problem]:
    priors = prior_boxes(
        (image.width, image.height),
        tuple(tuple(group) for group in config.min_boxes),
        tuple(config.strides),
        nncase_example=config.nncase_example_priors,
    ).shape[0]
    boxes, scores = (math.prod(outputs[i].shape) for i in config.outputs)
    problems = []
    if boxes != 4 * priors:
        problems.append(
            (
                "decoder.min_boxes",
                f"{priors} priors (min_boxes and strides on "
                f"{image.width}x{image.height}) need {4 * priors} box values, "
                f"output {config.outputs[0]} has {boxes}",
            )
        )
    elif scores != priors * (1 + labels):
        problems.append(
            (
                "labels",
                f"{priors} priors x (background + {labels} labels) = "
                f"{priors * (1 + labels)} scores, output {config.outputs[1]} has {scores}",
            )
        )
    return problems


def _classifier_problems(
    config: ClassifierConfig, labels: int, output: TensorSpec
) -> list[Problem]:
    size = math.prod(output.shape)
    if size != labels:
        return [("labels", f"{labels} labels, but output {config.output} has {size} scores")]
    return []
