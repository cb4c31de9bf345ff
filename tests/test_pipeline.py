"""Pipeline definitions: overrides, filters and publish options, and errors that say where."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from edged.kpu.sim.executor import create_executor
from edged.runtime.manifest import ManifestError
from edged.runtime.pipeline import (
    PROJECT_PIPELINES,
    Pipeline,
    PipelineDefinition,
    PipelineError,
    UnknownPipeline,
    build_pipeline,
    load_pipeline,
    pipeline_path,
)
from edged.runtime.registry import PROJECT_MODELS, ModelRegistry, model_search_path
from edged.vision.detection import Detection
from edged.vision.preprocess import Fit
from tests.conftest import fixture_path


@pytest.fixture(scope="module")
def registry() -> ModelRegistry:
    return ModelRegistry.discover(model_search_path([fixture_path("kmodels")]))


@pytest.fixture(scope="module")
def hopper() -> npt.NDArray[np.uint8]:
    frame = cv2.imread(str(fixture_path("images", "grace_hopper.jpg")), cv2.IMREAD_COLOR)
    assert frame is not None
    return np.asarray(frame, dtype=np.uint8)


def pipeline(registry: ModelRegistry, model: str, **sections: Any) -> Pipeline:
    definition = PipelineDefinition.model_validate({"model": model, **sections})
    return build_pipeline("test", definition, registry)


def run(pipe: Pipeline, frame: npt.ArrayLike) -> list[Detection]:
    prepared = pipe.prepare(frame)
    return pipe.finish(create_executor(pipe.model.kmodel).run(prepared.inputs), prepared.transform)


def write(folder: Path, text: str, name: str = "test.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


# --- filters and overrides -----------------------------------------------------------------


def test_without_filters_the_face_is_found(
    registry: ModelRegistry, hopper: npt.NDArray[np.uint8]
) -> None:
    assert [d.label for d in run(pipeline(registry, "maixpy_face"), hopper)] == ["face"]


@pytest.mark.parametrize(
    ("sections", "found"),
    [
        ({"decoder": {"threshold": 0.99}}, False),
        ({"filters": {"min_score": 0.99}}, False),
        ({"filters": {"min_score": 0.5}}, True),
        ({"filters": {"region": {"x": 0.0, "y": 0.0, "w": 0.3, "h": 1.0}}}, False),
        ({"filters": {"region": {"x": 0.3, "y": 0.2, "w": 0.4, "h": 0.3}}}, True),
        ({"preprocess": {"fit": "crop"}}, True),
    ],
)
def test_filters_and_overrides_decide_what_counts(
    registry: ModelRegistry,
    hopper: npt.NDArray[np.uint8],
    sections: dict[str, Any],
    found: bool,
) -> None:
    assert bool(run(pipeline(registry, "maixpy_face", **sections), hopper)) is found


def test_preprocess_override_changes_the_fit(registry: ModelRegistry) -> None:
    assert pipeline(registry, "maixpy_face").input_spec is not None
    cropped = pipeline(registry, "maixpy_face", preprocess={"fit": "crop", "pad_value": 9})
    assert cropped.input_spec is not None
    assert (cropped.input_spec.fit, cropped.input_spec.pad_value) == (Fit.CROP, 9)


def test_labels_of_interest(registry: ModelRegistry) -> None:
    frame = cv2.imread(str(fixture_path("images", "chelsea.png")), cv2.IMREAD_COLOR)
    assert frame is not None
    cats = pipeline(registry, "voc20_v3", filters={"labels": ["cat", "dog"]})
    dogs = pipeline(registry, "voc20_v3", filters={"labels": ["dog"]})
    assert [d.label for d in run(cats, frame)] == ["cat"]
    assert run(dogs, frame) == []


def test_max_detections_keeps_the_best(registry: ModelRegistry) -> None:
    digits = pipeline(registry, "mnist", decoder={"top_k": 5}, publish={"max_detections": 3})
    frame = np.zeros((28, 28, 3), dtype=np.uint8)
    cv2.circle(frame, (14, 14), 8, (255, 255, 255), 3)
    detections = run(digits, frame)
    assert len(detections) == 3
    scores = [d.score for d in detections]
    assert scores == sorted(scores, reverse=True)


def test_empty_frames_are_published_unless_told_otherwise(registry: ModelRegistry) -> None:
    assert pipeline(registry, "mnist").publishes([])
    assert not pipeline(registry, "mnist", publish={"empty_frames": False}).publishes([])


def test_an_image_model_refuses_a_non_image(registry: ModelRegistry) -> None:
    with pytest.raises(TypeError, match="takes an image"):
        pipeline(registry, "mnist").prepare([1.0, 2.0])


# --- errors --------------------------------------------------------------------------------

BAD_PIPELINES = [
    ("unknown model", 'model = "nothing"', "model"),
    ("no model", 'description = "x"', "model"),
    ("misspelt section", 'model = "maixpy_face"\n[filter]\nmin_score = 0.5', "filter"),
    ("region outside the frame", 'model = "maixpy_face"\n[filters]\n'
     "region = { x = 0.5, y = 0.0, w = 0.6, h = 1.0 }", "filters.region"),
    ("score above 1", 'model = "maixpy_face"\n[filters]\nmin_score = 2', "filters.min_score"),
    ("unknown label", 'model = "maixpy_face"\n[filters]\nlabels = ["cat"]', "filters.labels"),
    ("classifier has no nms", 'model = "mnist"\n[decoder]\nnms = 0.3', "decoder.nms"),
    ("detector has no top_k", 'model = "maixpy_face"\n[decoder]\ntop_k = 3', "decoder.top_k"),
    ("no fit for features", 'model = "iris"\n[preprocess]\nfit = "crop"', "preprocess"),
    ("unknown fit", 'model = "maixpy_face"\n[preprocess]\nfit = "zoom"', "preprocess.fit"),
    ("zero detections", 'model = "maixpy_face"\n[publish]\nmax_detections = 0',
     "publish.max_detections"),
    ("name is the file's", 'model = "maixpy_face"\nname = "other"', "name"),
]


@pytest.mark.parametrize(
    ("text", "field"), [case[1:] for case in BAD_PIPELINES], ids=[case[0] for case in BAD_PIPELINES]
)
def test_a_bad_pipeline_is_refused_naming_the_file_and_the_field(
    registry: ModelRegistry, tmp_path: Path, text: str, field: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(PipelineError) as caught:
        load_pipeline(path, registry)
    assert caught.value.file == path
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{path}: {field}: ")


def test_a_pipeline_name_must_suit_mqtt(registry: ModelRegistry, tmp_path: Path) -> None:
    path = write(tmp_path, 'model = "mnist"', "my pipeline.toml")
    with pytest.raises(PipelineError, match=r"my pipeline\.toml: \(file name\): expected"):
        load_pipeline(path, registry)


def test_a_broken_model_is_reported_on_its_manifest(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    manifest = (PROJECT_MODELS / "mnist.toml").read_text().replace('"8", "9"]', '"8"]')
    (models / "digits.toml").write_text(manifest)
    registry = ModelRegistry.discover([models, fixture_path("kmodels")])
    with pytest.raises(ManifestError) as caught:
        load_pipeline(write(tmp_path, 'model = "digits"'), registry)
    assert caught.value.file == models / "digits.toml"
    assert caught.value.field == "labels"


def test_pipelines_are_found_by_name_or_path(tmp_path: Path) -> None:
    assert pipeline_path("face", PROJECT_PIPELINES) == PROJECT_PIPELINES / "face.toml"
    own = write(tmp_path, 'model = "mnist"', "mine.toml")
    assert pipeline_path(str(own), PROJECT_PIPELINES) == own
    with pytest.raises(UnknownPipeline, match=r"no pipeline .*nothing\.toml.*face"):
        pipeline_path("nothing", PROJECT_PIPELINES)
