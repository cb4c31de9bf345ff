"""``edged infer``: a pipeline on image files, printing what the daemon would publish.

The same pipeline, models and decoders as the daemon, on the synchronous simulated KPU,
so a new manifest or pipeline can be tried on a photo before it goes to a site. Each image
gives one object in the shape of the MQTT detections payload (contract v1), its file name
standing for the camera and its position for the frame number.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from edged.kpu.sim.executor import create_executor
from edged.runtime.annotate import draw_detections
from edged.runtime.pipeline import (
    PROJECT_PIPELINES,
    Pipeline,
    UnknownPipeline,
    load_pipeline,
    pipeline_path,
)
from edged.runtime.registry import ModelRegistry, model_search_path
from edged.vision.detection import Detection

PAYLOAD_VERSION = 1


class InferError(Exception):
    """Something on the command line that cannot be done: a file, a folder, an input kind."""


def infer(
    pipeline_name: str,
    images: Sequence[Path],
    *,
    pipelines_dir: Path | None = None,
    model_dirs: Sequence[Path] = (),
    annotate: Path | None = None,
) -> Iterator[dict[str, Any]]:
    """One detections payload per image, in order, as each is done.

    Pipelines are looked up in ``pipelines_dir`` (default: the project's ``pipelines/``);
    ``model_dirs`` follow the project's ``models/`` on the search path. With ``annotate``,
    the annotated image is written there (one image), or into that folder as
    ``<image stem>.png`` (several).
    """
    pipeline = _pipeline(pipeline_name, pipelines_dir or PROJECT_PIPELINES, model_dirs)
    if pipeline.input_spec is None:
        raise InferError(
            f"pipeline {pipeline.name}: model {pipeline.model.name} takes a vector of "
            f"{np.prod(pipeline.input_shape)} feature values, not images"
        )
    executor = create_executor(pipeline.model.kmodel)
    device = socket.gethostname()
    for index, image in enumerate(images):
        frame = _read(image)
        captured = datetime.now(UTC)
        started = time.perf_counter()
        prepared = pipeline.prepare(frame)
        outputs = executor.run(prepared.inputs)
        detections = pipeline.finish(outputs, prepared.transform)
        latency_ms = (time.perf_counter() - started) * 1000
        if annotate is not None:
            _write(_annotation_path(annotate, image, len(images)), frame, detections)
        yield {
            "v": PAYLOAD_VERSION,
            "device": device,
            "camera": image.name,
            "pipeline": pipeline.name,
            "model": pipeline.model.name,
            "frame": index,
            "ts": captured.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "latency_ms": round(latency_ms, 2),
            "image": {"w": int(frame.shape[1]), "h": int(frame.shape[0])},
            "detections": [d.to_dict() for d in detections],
        }


def _pipeline(name: str, pipelines_dir: Path, model_dirs: Sequence[Path]) -> Pipeline:
    try:
        registry = ModelRegistry.discover(model_search_path(model_dirs))
        return load_pipeline(pipeline_path(name, pipelines_dir), registry)
    except (UnknownPipeline, NotADirectoryError) as exc:
        raise InferError(str(exc)) from exc


def _read(image: Path) -> npt.NDArray[np.uint8]:
    frame = cv2.imread(str(image), cv2.IMREAD_COLOR)
    if frame is None:
        raise InferError(f"cannot read image {image} (missing, or not an image OpenCV reads)")
    return np.asarray(frame, dtype=np.uint8)


def _annotation_path(annotate: Path, image: Path, count: int) -> Path:
    if count > 1 or annotate.is_dir():
        return annotate / f"{image.stem}.png"
    return annotate


def _write(path: Path, frame: npt.NDArray[np.uint8], detections: Sequence[Detection]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        written = cv2.imwrite(str(path), draw_detections(frame, detections))
    except (OSError, cv2.error) as exc:
        raise InferError(f"cannot write annotated image {path}: {exc}") from exc
    if not written:
        raise InferError(f"cannot write annotated image {path}")
