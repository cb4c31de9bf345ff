"""Accuracy of the shipped shapes detector: mAP@0.5 on synthetic frames unseen in training.

Each frame takes the daemon's own path: ``load_pipeline`` (the shipped ``shapes`` pipeline,
its manifest and sha256-checked kmodel), ``prepare``, the simulated KPU, ``finish``. The
float network the kmodel was quantized from (``training/shapes_float.npz``) runs on the same
prepared input through the same decoder, so the difference is what quantization costs.

mAP is VOC's: per class, detections of all frames ranked by score, each matched to the
unmatched true box of its class it overlaps most if IoU >= 0.5 (else a false positive),
average precision all-point interpolated; the mean over the three classes. Ranking needs
the detections below the pipeline's threshold too, so the same pipeline is bound again
with ``--threshold``; precision and recall at the shipped threshold are printed as well.
Prints figures only; nothing here asserts, least of all on time.

    python bench/accuracy.py [--frames 500] [--threshold 0.01]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edged.camera.frame import GroundTruth, Image
from edged.camera.synthetic import SHAPE_LABELS, ShapesScene
from edged.kpu.kmodel.build import ActivationSpec, ConvSpec, LeakyRelu, NetworkSpec, float_forward
from edged.kpu.kmodel.kpu_regs import PoolType
from edged.kpu.sim.executor import create_executor
from edged.runtime.pipeline import (
    PROJECT_PIPELINES,
    DecoderOverrides,
    Pipeline,
    PipelineDefinition,
    build_pipeline,
    load_pipeline,
)
from edged.runtime.registry import ModelRegistry, model_search_path
from edged.vision.detection import Detection
from edged.vision.nms import box_iou

FLOAT_MODEL = Path(__file__).resolve().parent.parent / "training" / "shapes_float.npz"
BENCH_SEED = 9000
"""Scene seeds 9000..9005: training used 1000.., 2000.. and 3000.. (training/README.md)."""
CONDITIONS = ((0.0, 0.0), (3.0, 0.7), (6.0, 1.4), (10.0, 0.0), (10.0, 1.4), (2.0, 1.0))
"""(noise, blur) of the benchmark's scenes, inside what training saw; frame ``i`` has
condition ``i % 6``. Shapes per frame: the camera's default, 1..4."""
MATCH_IOU = 0.5


def frames(count: int) -> Iterator[tuple[Image, tuple[GroundTruth, ...]]]:
    """``count`` independent frames (``episode=1``) cycling through ``CONDITIONS``."""
    scenes = [ShapesScene(seed=BENCH_SEED + k, episode=1, noise=noise, blur=blur)
              for k, (noise, blur) in enumerate(CONDITIONS)]
    for i in range(count):
        yield scenes[i % len(scenes)].render(i // len(scenes))


@dataclass
class Ranking:
    """Every detection of one model, per class: its score and whether it found a shape."""

    truths: list[int] = field(default_factory=lambda: [0] * len(SHAPE_LABELS))
    scores: list[list[float]] = field(default_factory=lambda: [[] for _ in SHAPE_LABELS])
    hits: list[list[bool]] = field(default_factory=lambda: [[] for _ in SHAPE_LABELS])

    def add(self, detections: Sequence[Detection], truth: Sequence[GroundTruth]) -> None:
        """Match one frame's detections, best first, to its true boxes of the same class."""
        for class_id in range(len(SHAPE_LABELS)):
            boxes = [_corners(t.box) for t in truth if t.class_id == class_id]
            self.truths[class_id] += len(boxes)
            found = sorted((d for d in detections if d.class_id == class_id),
                           key=lambda d: -d.score)
            taken = np.zeros(len(boxes), bool)
            overlaps = (box_iou([_corners(_xywh(d)) for d in found], boxes) if found and boxes
                        else np.zeros((len(found), len(boxes))))
            for detection, row in zip(found, overlaps, strict=True):
                free = np.where(taken, -1.0, row)
                best = int(np.argmax(free)) if free.size else -1
                hit = best >= 0 and free[best] >= MATCH_IOU
                if hit:
                    taken[best] = True
                self.scores[class_id].append(detection.score)
                self.hits[class_id].append(hit)

    def average_precisions(self) -> list[float]:
        return [average_precision(np.asarray(s), np.asarray(h, bool), n)
                for s, h, n in zip(self.scores, self.hits, self.truths, strict=True)]


def average_precision(scores: npt.NDArray[np.floating], hits: npt.NDArray[np.bool_],
                      truths: int) -> float:
    """VOC's all-point interpolated AP: the area under the precision envelope of the ranking."""
    if truths == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(hits[order])
    recall = np.concatenate([[0.0], tp / truths, [1.0]])
    precision = np.concatenate([[1.0], tp / np.arange(1, len(tp) + 1), [0.0]])
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[steps + 1] - recall[steps]) * envelope[steps + 1]))


def _corners(box: tuple[float, float, float, float]) -> list[float]:
    x, y, w, h = box
    return [x, y, x + w, y + h]


def _xywh(detection: Detection) -> tuple[float, float, float, float]:
    b = detection.box
    return b.x, b.y, b.w, b.h


def load_float_network(path: Path, kmodel_sha256: str) -> NetworkSpec:
    """The float network ``training/train_shapes.py`` saved beside the kmodel it built."""
    with np.load(path, allow_pickle=False) as saved:
        meta = json.loads(str(saved["meta"]))
        if meta["kmodel_sha256"] != kmodel_sha256:
            raise ValueError(f"{path} is the float network of kmodel {meta['kmodel_sha256']}, "
                             f"not of the shipped {kmodel_sha256}: train again")
        layers = []
        for i, layer in enumerate(meta["layers"]):
            layers.append(ConvSpec(saved[f"weights_{i}"], saved[f"bias_{i}"],
                                   _activation(layer["activation"]),
                                   PoolType[layer["pool"]], layer["depthwise"]))
    c, h, w = meta["input_shape"]
    lo, hi = meta["input_range"]
    return NetworkSpec((c, h, w), tuple(layers), (lo, hi))


def _activation(saved: float | str) -> ActivationSpec:
    """A saved activation: "linear", "relu" or a leaky ReLU's slope."""
    if isinstance(saved, float):
        return LeakyRelu(saved)
    if saved == "linear":
        return "linear"
    if saved == "relu":
        return "relu"
    raise ValueError(f"unknown activation {saved!r} in the float network")


def ranking_pipeline(shipped: Pipeline, registry: ModelRegistry, threshold: float) -> Pipeline:
    """The shipped pipeline's model with a low decoder threshold and no filters: every
    candidate, for ranking (a site could configure exactly this)."""
    definition = PipelineDefinition(model=shipped.definition.model,
                                    decoder=DecoderOverrides(threshold=threshold))
    return build_pipeline(f"{shipped.name}-ranking", definition, registry)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=500, help="how many frames")
    parser.add_argument("--threshold", type=float, default=0.01,
                        help="decoder threshold for ranking (mAP)")
    parser.add_argument("--float-model", type=Path, default=FLOAT_MODEL,
                        help="the float network (training/train_shapes.py writes it)")
    args = parser.parse_args()

    registry = ModelRegistry.discover(model_search_path())
    shipped = load_pipeline(PROJECT_PIPELINES / "shapes.toml", registry)
    ranking = ranking_pipeline(shipped, registry, args.threshold)
    spec = load_float_network(args.float_model, shipped.model.manifest.sha256)
    low, high = spec.input_range
    executor = create_executor(shipped.model.kmodel)

    quantized, floating, shipped_as_is = Ranking(), Ranking(), Ranking()
    kpu_seconds = path_seconds = 0.0
    for image, truth in frames(args.frames):
        started = time.perf_counter()
        prepared = shipped.prepare(image)
        ran = time.perf_counter()
        outputs = executor.run(prepared.inputs)
        kpu_seconds += time.perf_counter() - ran
        detections = shipped.finish(outputs, prepared.transform)
        path_seconds += time.perf_counter() - started

        quantized.add(ranking.finish(outputs, prepared.transform), truth)
        codes = np.asarray(prepared.inputs[0], np.float32)
        float_out = float_forward(spec, low + codes * np.float32((high - low) / 255.0))
        floating.add(ranking.finish([float_out], prepared.transform), truth)
        shipped_as_is.add(detections, truth)

    q_ap, f_ap = quantized.average_precisions(), floating.average_precisions()
    q_map, f_map = float(np.mean(q_ap)), float(np.mean(f_ap))
    shapes = sum(quantized.truths)
    print(f"shapes detector ({shipped.model.kmodel_path.name}, {shipped.model.kmodel.macs:,} "
          f"MACs) on {args.frames} unseen frames (seeds {BENCH_SEED}..), {shapes} shapes")
    print(f"{'AP@0.5':<16}" + "".join(f"{label:>10}" for label in SHAPE_LABELS) + f"{'mAP':>10}")
    for name, aps, mean in (("quantized (KPU)", q_ap, q_map), ("float", f_ap, f_map)):
        print(f"{name:<16}" + "".join(f"{ap:>10.4f}" for ap in aps) + f"{mean:>10.4f}")
    print(f"{'difference':<16}" + "".join(f"{q - f:>+10.4f}" for q, f in zip(q_ap, f_ap,
                                                                             strict=True))
          + f"{q_map - f_map:>+10.4f}")
    found = sum(sum(hits) for hits in shipped_as_is.hits)
    reported = sum(len(hits) for hits in shipped_as_is.hits)
    print(f"pipeline '{shipped.name}' as shipped: precision {found / max(1, reported):.3f}, "
          f"recall {found / max(1, shapes):.3f} ({found} found, {shapes - found} missed, "
          f"{reported - found} false)")
    print(f"quantized path: {args.frames / path_seconds:.1f} frames/s (prepare, KPU, finish); "
          f"simulated KPU alone {args.frames / kpu_seconds:.1f} frames/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
