"""Model manifests and the model registry: the project's manifests, the search path, and
bad manifests refused with the file and the field."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edged.runtime.manifest import ImageInput, ManifestError, load_manifest
from edged.runtime.registry import (
    PROJECT_MODELS,
    ModelRegistry,
    UnknownModel,
    model_search_path,
)
from edged.vision.preprocess import ColorOrder, Fit
from tests.conftest import fixture_path, kmodel_path

PROJECT_MANIFESTS = {"maixpy_face", "voc20_v3", "voc20_v4", "mnist", "ultraface", "iris"}
"""Manifests of the fixture models: their kmodels are in ../shared/fixtures, not here."""
SHIPPED = {"shapes"}
"""Models the project makes and ships, kmodel and all (models/shapes.kmodel)."""

FACE = PROJECT_MODELS / "maixpy_face.toml"
MNIST = PROJECT_MODELS / "mnist.toml"


@pytest.fixture(scope="module")
def registry() -> ModelRegistry:
    return ModelRegistry.discover(model_search_path([fixture_path("kmodels")]))


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def edited(source: Path, old: str, new: str) -> str:
    text = source.read_text()
    assert old in text, f"{old!r} is not in {source}"
    return text.replace(old, new)


# --- the project's manifests ---------------------------------------------------------------


def test_every_project_manifest_verifies_against_its_fixture_kmodel(
    registry: ModelRegistry,
) -> None:
    assert set(registry.names) == PROJECT_MANIFESTS | SHIPPED
    assert registry.verify() == []
    for name in SHIPPED:
        assert registry.get(name).kmodel_path.parent == PROJECT_MODELS
    for name in PROJECT_MANIFESTS:
        entry = registry.get(name)
        assert entry.kmodel_path.parent == fixture_path("kmodels")
        assert entry.kmodel.sha256 == entry.manifest.sha256


def test_labels_file_is_read_next_to_the_manifest() -> None:
    manifest = load_manifest(PROJECT_MODELS / "voc20_v3.toml")
    assert len(manifest.labels) == 20
    assert manifest.labels[:3] == ["aeroplane", "bicycle", "bird"]
    assert manifest.labels[7] == "cat"
    assert manifest.labels[-1] == "tvmonitor"


def test_manifest_values_reach_the_pre_processing(registry: ModelRegistry) -> None:
    face = registry.get("maixpy_face")
    assert face.name == "maixpy_face"  # the file's stem
    assert face.input_spec is not None
    assert (face.input_spec.width, face.input_spec.height) == (320, 240)
    assert face.input_spec.color is ColorOrder.RGB
    assert face.input_spec.fit is Fit.LETTERBOX
    mnist = registry.get("mnist").input_spec
    assert mnist is not None
    assert mnist.color is ColorOrder.GRAY
    assert registry.get("iris").input_spec is None  # a feature vector, not an image


def test_normalisation_in_either_form_gives_the_same_input_spec() -> None:
    base = {"width": 2, "height": 2, "color": "rgb"}
    mean_std = ImageInput.model_validate(
        {**base, "normalization": {"mean": [127.5], "std": [127.5]}}
    )
    scale_bias = ImageInput.model_validate(
        {**base, "normalization": {"scale": [1 / 127.5], "bias": [-1.0]}}
    )
    assert mean_std.input_spec().normalization == scale_bias.input_spec().normalization


# --- the search path -----------------------------------------------------------------------


def test_search_path_starts_with_the_project_models_and_drops_repeats(tmp_path: Path) -> None:
    assert model_search_path([tmp_path, PROJECT_MODELS, tmp_path]) == (PROJECT_MODELS, tmp_path)


def test_kmodel_is_found_next_to_the_manifest_first_then_on_the_search_path(
    tmp_path: Path,
) -> None:
    manifests, elsewhere = tmp_path / "manifests", tmp_path / "elsewhere"
    manifests.mkdir()
    elsewhere.mkdir()
    source = kmodel_path("maixpy_mnist_v3")
    shutil.copy(source, elsewhere / source.name)
    write(manifests, "digits.toml", MNIST.read_text())
    assert ModelRegistry.discover([manifests, elsewhere]).get("digits").kmodel_path == (
        elsewhere / source.name
    )
    shutil.copy(source, manifests / source.name)
    assert ModelRegistry.discover([manifests, elsewhere]).get("digits").kmodel_path == (
        manifests / source.name
    )


def test_a_missing_kmodel_is_listed_as_unavailable_not_a_crash(tmp_path: Path) -> None:
    write(tmp_path, "digits.toml", MNIST.read_text())  # the kmodel is nowhere on this path
    write(tmp_path, "broken.toml", "file = ")
    registry = ModelRegistry.discover([tmp_path])
    assert registry.names == []
    reasons = {listing.name: listing.model for listing in registry.listings}
    assert isinstance(reasons["digits"], ManifestError)
    assert reasons["digits"].field == "file"
    assert "maixpy_mnist_v3.kmodel not found" in str(reasons["digits"])
    assert isinstance(reasons["broken"], ManifestError)
    with pytest.raises(ManifestError, match=r"digits\.toml: file: "):
        registry.get("digits")
    with pytest.raises(UnknownModel, match="no model named 'nothing'"):
        registry.get("nothing")


def test_the_first_manifest_of_a_name_wins(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    kmodels = fixture_path("kmodels")
    write(first, "digits.toml", MNIST.read_text())
    write(second, "digits.toml", edited(MNIST, "top_k = 1", "top_k = 3"))
    registry = ModelRegistry.discover([first, second, kmodels])
    assert registry.get("digits").manifest_path == first / "digits.toml"
    shadowed = [listing for listing in registry.listings if listing.manifest_path.parent == second]
    assert isinstance(shadowed[0].model, ManifestError)
    assert shadowed[0].model.field == "name"
    assert str(first / "digits.toml") in str(shadowed[0].model)


def test_a_missing_model_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError, match="nowhere"):
        ModelRegistry.discover([tmp_path / "nowhere"])


# --- bad manifests -------------------------------------------------------------------------

BAD_MANIFESTS = [
    # (what, source manifest, old text, new text, field)
    ("missing kmodel", FACE, 'file = "maixpy_facedetect_v3.kmodel"', 'file = "gone.kmodel"',
     "file"),
    ("wrong sha256", FACE, 'sha256 = "e3c6', 'sha256 = "f3c6', "sha256"),
    ("anchors for another output", FACE, "anchors = [1.889, 2.5245, ", "anchors = [",
     "decoder.anchors"),
    ("odd anchor count", FACE, "anchors = [1.889, ", "anchors = [", "decoder.anchors"),
    ("unknown decoder", FACE, 'type = "yolo2"', 'type = "yolo9"', "decoder.type"),
    ("no decoder type", FACE, 'type = "yolo2"', "", "decoder.type"),
    ("threshold above 1", FACE, "threshold = 0.5", "threshold = 1.5", "decoder.threshold"),
    ("misspelt key", FACE, "nms = 0.3", "nms_value = 0.3", "decoder.nms_value"),
    ("input size", FACE, "width = 320", "width = 224", "input.width"),
    ("colour channels", FACE, 'color = "rgb"', 'color = "gray"', "input.color"),
    ("unknown fit", FACE, 'fit = "letterbox"', 'fit = "zoom"', "input.fit"),
    ("classifier label count", MNIST, '"8", "9"]', '"8"]', "labels"),
    ("output index", MNIST, "top_k = 1", "output = 1", "decoder.output"),
    ("bad sha256 text", MNIST, 'sha256 = "5dd', 'sha256 = "xyz', "sha256"),
    ("name for MQTT", MNIST, "description", 'name = "my/model"\ndescription', "name"),
    ("image decoder on features", PROJECT_MODELS / "iris.toml",
     'type = "classifier"\ntop_k = 1\nsoftmax = true', 'type = "yolo2"\nanchors = [1.0, 1.0]',
     "decoder.type"),
    ("labels file", PROJECT_MODELS / "voc20_v3.toml", '"voc20.txt"', '"voc21.txt"', "labels"),
]


@pytest.mark.parametrize(
    ("source", "old", "new", "field"),
    [case[1:] for case in BAD_MANIFESTS],
    ids=[case[0] for case in BAD_MANIFESTS],
)
def test_a_bad_manifest_is_refused_naming_the_file_and_the_field(
    tmp_path: Path, source: Path, old: str, new: str, field: str
) -> None:
    shutil.copy(PROJECT_MODELS / "voc20.txt", tmp_path / "voc20.txt")
    path = write(tmp_path, source.name, edited(source, old, new))
    registry = ModelRegistry.discover([tmp_path, fixture_path("kmodels")])
    problems = registry.verify()
    assert len(problems) == 1
    error = problems[0]
    assert error.file == path
    assert error.field == field
    assert str(error).startswith(f"{path}: {field}: ")


def test_a_manifest_that_is_not_toml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "broken.toml", 'file = "x.kmodel"\n[input\n')
    with pytest.raises(ManifestError, match=r"broken\.toml: \(toml\): .*line 2") as caught:
        load_manifest(path)
    assert caught.value.file == path


def test_every_problem_of_a_manifest_is_reported_at_once(tmp_path: Path) -> None:
    text = edited(FACE, "threshold = 0.5", "threshold = -1").replace("width = 320", "width = 0")
    with pytest.raises(ManifestError) as caught:
        load_manifest(write(tmp_path, "face.toml", text))
    assert {field for field, _ in caught.value.problems} == {"input.width", "decoder.threshold"}
