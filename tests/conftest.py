"""Shared test fixtures: the real kmodels, images and golden outputs in ../shared/fixtures.

They are not part of the project; a test that needs one skips with the reason when it is
missing, never passes silently.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import settings

# CI runs must be reproducible: hypothesis derandomises there (CI=true), explores locally.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI") == "true":
    settings.load_profile("ci")

PROJECT = Path(__file__).resolve().parent.parent
FIXTURES = PROJECT.parent / "shared" / "fixtures"


def fixture_path(*parts: str) -> Path:
    """The path of a shared fixture, or skip the test saying which one is missing."""
    path = FIXTURES.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared fixture {path} is missing (tests read ../shared/fixtures)")
    return path


def kmodel_path(name: str) -> Path:
    return fixture_path("kmodels", f"{name}.kmodel")


@dataclass(frozen=True)
class GoldenCase:
    """One input and the outputs an independent reference implementation computed."""

    model: str
    case: str
    meta: dict[str, Any]
    input: npt.NDArray[np.generic]
    outputs: list[npt.NDArray[np.generic]]
    outputs_half_up: list[npt.NDArray[np.generic]] | None
    folder: Path


def golden_cases(model: str) -> list[GoldenCase]:
    """Every golden case of ``model`` (empty when the fixtures are absent)."""
    root = FIXTURES / "golden" / model
    if not root.is_dir():
        return []
    cases = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        meta = json.loads((folder / "meta.json").read_text())
        outputs = sorted(folder.glob("output_[0-9].npy"))
        half_up = sorted(folder.glob("output_[0-9].nncase01_semantics.npy"))
        cases.append(
            GoldenCase(
                model=model,
                case=folder.name,
                meta=meta,
                input=np.load(folder / "input.npy"),
                outputs=[np.load(p) for p in outputs],
                outputs_half_up=[np.load(p) for p in half_up] if half_up else None,
                folder=folder,
            )
        )
    return cases


V3_MODELS = ["iris_v3", "maixpy_facedetect_v3", "maixpy_mnist_v3", "voc20_yolo2_v3"]
V4_MODELS = ["iris_v4", "ultraface_v4", "voc20_yolo2_v4"]


# MQTT: a real broker in its own process on a free loopback port (see tests/broker.py).
# Imported here rather than at the top so that this block stays one appendable unit.
from collections.abc import Iterator  # noqa: E402

from tests.broker import Broker  # noqa: E402


@pytest.fixture(scope="session")
def mqtt_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One broker for the session; tests must not stop it (use ``fresh_broker`` for that)."""
    with Broker(tmp_path_factory.mktemp("mqtt-broker")) as broker:
        yield broker


@pytest.fixture
def fresh_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker of the test's own, to kill and restart at will."""
    broker = Broker(tmp_path)
    broker.start()
    try:
        yield broker
    finally:
        broker.kill()
