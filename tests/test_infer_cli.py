"""``edged infer``: the MQTT payload's shape, annotated images, a new model with no code,
and bad manifests refused with the file and the field."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import cv2
import jsonschema
import numpy as np
import pytest

from edged.cli import main
from edged.runtime.registry import PROJECT_MODELS
from tests.conftest import PROJECT, fixture_path

DETECTION_KEYS = {"label", "class_id", "score", "box", "box_norm"}
PAYLOAD_KEYS = {"v", "device", "camera", "pipeline", "model", "frame", "ts", "latency_ms",
                "image", "detections"}


def detections_schema() -> dict[str, Any]:
    path = PROJECT / "docs" / "schemas" / "detections.schema.json"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    schema: dict[str, Any] = json.loads(path.read_text())
    return schema


def infer(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[dict[str, Any]], str]:
    """Exit code, the JSON payloads printed, and stderr, with the fixture kmodels on the path."""
    code = main(["infer", "--models-dir", str(fixture_path("kmodels")), *args])
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines()], err


def test_payload_has_the_mqtt_detections_shape(capsys: pytest.CaptureFixture[str]) -> None:
    hopper = fixture_path("images", "grace_hopper.jpg")
    chelsea = fixture_path("images", "chelsea.png")
    code, payloads, _ = infer(capsys, "--pipeline", "face", str(hopper), str(chelsea))
    assert code == 0
    assert len(payloads) == 2
    for index, (payload, image) in enumerate(zip(payloads, (hopper, chelsea), strict=True)):
        jsonschema.validate(payload, detections_schema())
        assert set(payload) == PAYLOAD_KEYS
        assert payload["v"] == 1
        assert (payload["camera"], payload["frame"]) == (image.name, index)
        assert (payload["pipeline"], payload["model"]) == ("face", "maixpy_face")
        assert payload["ts"].endswith("Z")
        assert datetime.fromisoformat(payload["ts"]).utcoffset() is not None
        assert payload["latency_ms"] >= 0
    assert payloads[0]["image"] == {"w": 512, "h": 600}
    assert payloads[1]["image"] == {"w": 451, "h": 300}
    face = payloads[0]["detections"][0]
    assert set(face) == DETECTION_KEYS
    assert (face["label"], face["class_id"]) == ("face", 0)
    assert face["box"]["w"] / 512 == pytest.approx(face["box_norm"]["w"], abs=1e-4)
    assert payloads[1]["detections"] == []  # a cat is not a face


def test_annotate_writes_the_image_with_its_boxes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    hopper = fixture_path("images", "grace_hopper.jpg")
    out = tmp_path / "hopper.png"
    code, _, _ = infer(capsys, "--pipeline", "face", "--annotate", str(out), str(hopper))
    assert code == 0
    annotated, original = cv2.imread(str(out)), cv2.imread(str(hopper))
    assert annotated is not None
    assert original is not None
    assert annotated.shape == original.shape
    # Only the box and its tag are drawn: they change a small part of the picture.
    changed = np.any(annotated.astype(int) - original.astype(int) > 40, axis=2).mean()
    assert 0.001 < changed < 0.2


def test_annotate_writes_one_file_per_image_into_a_folder(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    images = [fixture_path("images", name) for name in ("grace_hopper.jpg", "chelsea.png")]
    code, _, _ = infer(capsys, "--pipeline", "face", "--annotate", str(tmp_path / "out"),
                       *map(str, images))
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "chelsea.png", "grace_hopper.png"
    ]


def test_a_new_model_needs_no_code(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A manifest and a pipeline written here, for a kmodel found on the search path."""
    models, pipelines = tmp_path / "models", tmp_path / "pipelines"
    models.mkdir()
    pipelines.mkdir()
    (models / "animals.txt").write_text((PROJECT_MODELS / "voc20.txt").read_text())
    (models / "pets.toml").write_text(
        """
        file = "voc20_yolo2_v3.kmodel"
        sha256 = "33219de6ffa0b24b8c41a82d09888070c72be68356ca457f3b722d25fdff95ab"
        labels = "animals.txt"

        [input]
        width = 320
        height = 240
        fit = "crop"

        [decoder]
        type = "yolo2"
        anchors = [1.08, 1.19, 3.42, 4.41, 6.63, 11.38, 9.42, 5.11, 16.62, 10.52]
        threshold = 0.4
        """
    )
    (pipelines / "pet_watch.toml").write_text(
        'model = "pets"\n[filters]\nlabels = ["cat", "dog"]\n'
    )
    code, payloads, err = infer(
        capsys, "--models-dir", str(models), "--pipelines-dir", str(pipelines),
        "--pipeline", "pet_watch", str(fixture_path("images", "chelsea.png")),
        str(fixture_path("images", "grace_hopper.jpg")),
    )
    assert code == 0, err
    assert payloads[0]["model"] == "pets"
    assert [d["label"] for d in payloads[0]["detections"]] == ["cat"]
    assert payloads[1]["detections"] == []  # the person is not of interest here


BAD_MANIFESTS = [
    ("missing file", 'file = "maixpy_facedetect_v3.kmodel"', 'file = "absent.kmodel"', "file"),
    ("wrong sha256", 'sha256 = "e3c6', 'sha256 = "0000', "sha256"),
    ("anchors do not match the output", "anchors = [1.889, 2.5245, ", "anchors = [",
     "decoder.anchors"),
    ("unknown decoder", 'type = "yolo2"', 'type = "retinanet"', "decoder.type"),
]


@pytest.mark.parametrize(
    ("old", "new", "field"), [case[1:] for case in BAD_MANIFESTS],
    ids=[case[0] for case in BAD_MANIFESTS],
)
def test_a_bad_manifest_stops_infer_naming_the_file_and_the_field(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, old: str, new: str, field: str
) -> None:
    text = (PROJECT_MODELS / "maixpy_face.toml").read_text()
    assert old in text
    manifest = tmp_path / "faces.toml"
    manifest.write_text(text.replace(old, new))
    pipeline = tmp_path / "faces_pipeline.toml"
    pipeline.write_text('model = "faces"\n')
    code, payloads, err = infer(capsys, "--models-dir", str(tmp_path), "--pipeline",
                                str(pipeline), str(fixture_path("images", "grace_hopper.jpg")))
    assert code == 2
    assert payloads == []
    assert err.startswith(f"edged: {manifest}: {field}: ")
    assert err.count("\n") == 1  # one line, no traceback


def test_a_feature_model_refuses_images(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pipeline = tmp_path / "iris.toml"
    pipeline.write_text('model = "iris"\n')
    code, _, err = infer(capsys, "--pipeline", str(pipeline),
                         str(fixture_path("images", "chelsea.png")))
    assert code == 2
    assert "model iris takes a vector of 4 feature values, not images" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pipeline", "nothing"], "no pipeline"),
        (["--pipeline", "face", "--models-dir", "/nonexistent/models"], "does not exist"),
    ],
)
def test_usage_errors_are_one_line(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, _, err = infer(capsys, *args, str(fixture_path("images", "chelsea.png")))
    assert code == 2
    assert message in err


def test_an_unreadable_image_is_named(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bogus = tmp_path / "not_an_image.png"
    bogus.write_text("hello")
    code, _, err = infer(capsys, "--pipeline", "mnist", str(bogus))
    assert code == 2
    assert f"cannot read image {bogus}" in err


def test_edged_infer_runs_as_a_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "edged.cli", "infer", "--pipeline", "mnist", "--models-dir",
         str(fixture_path("kmodels")), str(fixture_path("images", "chelsea.png"))],
        capture_output=True, text=True, check=False, cwd=PROJECT, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["model"] == "mnist"


def test_infer_with_no_models_dir_lists_the_model_as_unavailable(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Without the fixtures on the search path the project's manifests have no kmodel."""
    code = main(["infer", "--pipeline", "face", str(fixture_path("images", "chelsea.png"))])
    err = capsys.readouterr().err
    assert code == 2
    assert "maixpy_face.toml: file: maixpy_facedetect_v3.kmodel not found" in err
