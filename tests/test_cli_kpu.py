"""``edged kpu info|run|profile`` on real fixture models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edged.cli import main
from tests.conftest import fixture_path, golden_cases, kmodel_path


def test_info_reports_layers_macs_fit_and_chip_time(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["kpu", "info", str(kmodel_path("maixpy_facedetect_v3"))]) == 0
    text = capsys.readouterr().out
    assert "kmodel v3" in text
    assert "205,555,200" in text  # MACs per frame
    assert "K210_CONV" in text
    assert "DEQUANTIZE" in text
    for profile in ("c-sdk", "maixpy-mini", "maixpy-full"):
        assert profile in text
    assert "estimated on a 400 MHz K210" in text


def test_run_writes_outputs_equal_to_the_golden(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = golden_cases("maixpy_mnist_v3")
    if not cases:
        pytest.skip("golden outputs missing")
    case = cases[0]
    source = case.folder / "input.npy"
    out = tmp_path / "out"
    assert main(["kpu", "run", str(kmodel_path("maixpy_mnist_v3")), "--input", str(source),
                 "--output", str(out)]) == 0
    np.testing.assert_array_equal(np.load(out / "output_0.npy"), case.outputs[0])
    assert "output 0" in capsys.readouterr().out


def test_run_takes_an_image(tmp_path: Path) -> None:
    image = fixture_path("images", "grace_hopper.jpg")
    out = tmp_path / "face"
    assert main(["kpu", "run", str(kmodel_path("maixpy_facedetect_v3")), "--input", str(image),
                 "--output", str(out)]) == 0
    assert np.load(out / "output_0.npy").shape == (30, 15, 20)


def test_profile_prints_chip_and_simulated_time(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["kpu", "profile", str(kmodel_path("maixpy_mnist_v3")), "--repeat", "2"]) == 0
    text = capsys.readouterr().out
    assert "chip ms" in text
    assert "sim ms" in text
    assert "GMAC/s" in text


def test_errors_are_one_line_and_exit_2() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "edged.cli", "kpu", "info", str(kmodel_path("yolox_nano_v5"))],
        capture_output=True, text=True, check=False,
    )
    assert done.returncode == 2
    assert "load error:2002, only support kmodel v3/v4" in done.stderr
    assert "Traceback" not in done.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "edged.cli", "kpu", "info", "/nonexistent.kmodel"],
        capture_output=True, text=True, check=False,
    )
    assert missing.returncode == 2
    assert "cannot read kmodel" in missing.stderr
