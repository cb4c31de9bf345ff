"""Train edged's shapes detector and build it into ``models/shapes.kmodel``.

A small YOLOv2-style detector for the synthetic camera's shapes (circle, square, triangle),
trained in float with PyTorch on ``ShapesScene`` frames, its batch-norm folded into the
convolutions, calibrated on held-out frames, quantized by the K210's rules and written as
a kmodel v3 by ``edged.kpu.kmodel.build``. Everything is seeded: the same torch build on the
same CPU gives the same bytes. Other torch builds or CPUs may differ in the last bits of
the float weights, hence of the kmodel; the committed kmodel is the reference.

    pip install -e .[train]
    python training/train_shapes.py            # about 9 minutes on 2 idle cores

See ``training/README.md`` for the architecture, data, loss and results.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn
from torch.nn import functional

from edged.camera.synthetic import SHAPE_LABELS, ShapesScene
from edged.kpu.kmodel import KModel, parse_kmodel
from edged.kpu.kmodel.build import ConvSpec, LeakyRelu, NetworkSpec, build_kmodel, float_forward
from edged.kpu.kmodel.kpu_regs import PoolType
from edged.kpu.sim.executor import create_executor
from edged.vision.preprocess import ColorOrder, Fit, InputSpec, preprocess

PROJECT = Path(__file__).resolve().parent.parent
WIDTH, HEIGHT = 320, 240
STRIDE = 16
"""Four 2x2 max pools: a 20x15 grid of 16-pixel cells."""
GRID_W, GRID_H = WIDTH // STRIDE, HEIGHT // STRIDE
CLASSES = len(SHAPE_LABELS)
ANCHORS = 5
"""MaixPy's count (its ``maixpy_compat`` decode assumes 5)."""
PER_ANCHOR = 5 + CLASSES
LEAKY_SLOPE = 0.1
INPUT_RANGE = (0.0, 1.0)
"""What the camera's codes 0..255 mean to the network: pixel / 255."""
INPUT = InputSpec(WIDTH, HEIGHT, ColorOrder.RGB, Fit.LETTERBOX)
"""The manifest's pre-processing: training sees exactly what the daemon feeds the KPU."""

SEED = 20240601
TRAIN_SEED, CALIBRATION_SEED, VALIDATION_SEED = 1000, 2000, 3000
"""Scene seeds; ``bench/accuracy.py`` (9000) and the tests (9100) use others, unseen here."""
CONDITIONS = tuple((noise, blur) for noise in (0.0, 3.0, 6.0, 10.0) for blur in (0.0, 0.7, 1.4))
"""(noise sigma in grey levels, blur sigma in pixels): frame ``i`` of a set has condition
``i % 12``, each condition its own scene seed (base + condition)."""
OBJECTS = (0, 6)
"""Shapes per training frame: empty frames and crowded ones too (the camera defaults to 1..4)."""
MAX_OBJECTS = OBJECTS[1]

IGNORE_IOU = 0.6
"""A prediction this close to a true box is not punished as background (YOLOv2's thresh)."""
OBJECT_PRIOR = 0.01
"""Initial objectness: most of the 1500 anchor slots of a frame hold nothing."""


@dataclass(frozen=True)
class Block:
    """One KPU layer: a same-padded convolution, batch-norm, leaky ReLU, optional 2x2 max pool."""

    out: int
    kernel: int = 3
    pool: bool = False


ARCHITECTURE = (
    Block(8, pool=True),  # 320x240 -> 160x120
    Block(16, pool=True),  # -> 80x60
    Block(32, pool=True),  # -> 40x30
    Block(64, pool=True),  # -> 20x15, the output grid
    Block(96),
    Block(96, kernel=1),
)
"""The backbone; a linear 1x1 head follows with ``ANCHORS * (5 + CLASSES)`` channels."""


# --- data ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frames:
    """Planar RGB uint8 images ``(n, 3, H, W)`` and boxes ``(n, MAX_OBJECTS, 5)``:
    class, x, y, w, h in pixels; class -1 pads."""

    images: npt.NDArray[np.uint8]
    boxes: npt.NDArray[np.float32]


def render(base_seed: int, count: int) -> Frames:
    """``count`` independent frames (``episode=1``) cycling through ``CONDITIONS``."""
    scenes = [ShapesScene(WIDTH, HEIGHT, seed=base_seed + k, objects=OBJECTS, episode=1,
                          noise=noise, blur=blur) for k, (noise, blur) in enumerate(CONDITIONS)]
    images = np.empty((count, 3, HEIGHT, WIDTH), np.uint8)
    boxes = np.full((count, MAX_OBJECTS, 5), -1.0, np.float32)

    def one(i: int) -> None:
        image, truth = scenes[i % len(scenes)].render(i // len(scenes))
        images[i] = preprocess(image, INPUT).tensor
        for k, shape in enumerate(truth):
            boxes[i, k] = (shape.class_id, *shape.box)

    with ThreadPoolExecutor(2) as pool:  # OpenCV drawing releases the GIL
        list(pool.map(one, range(count)))
    return Frames(images, boxes)


def kmeans_anchors(boxes: npt.NDArray[np.float32], rng: np.random.Generator) -> list[float]:
    """``ANCHORS`` (w, h) pairs in grid cells by k-means with ``1 - IoU`` as the distance
    (YOLOv2's choice), ordered by area and rounded to what the manifest holds."""
    sizes = boxes[boxes[:, :, 0] >= 0][:, 3:5].astype(np.float64) / STRIDE
    centres = sizes[rng.choice(len(sizes), ANCHORS, replace=False)]
    for _ in range(100):
        inter = (np.minimum(sizes[:, None, 0], centres[None, :, 0])
                 * np.minimum(sizes[:, None, 1], centres[None, :, 1]))
        union = sizes.prod(1)[:, None] + centres.prod(1)[None, :] - inter
        nearest = np.argmax(inter / union, axis=1)
        centres = np.array([sizes[nearest == k].mean(0) if np.any(nearest == k) else centres[k]
                            for k in range(ANCHORS)])
    centres = centres[np.argsort(centres.prod(1))]
    return [round(float(v), 3) for v in centres.reshape(-1)]


# --- the network ----------------------------------------------------------------------------------


class ConvBlock(nn.Module):
    """``Block`` in torch; batch-norm is folded into the convolution for the kmodel."""

    def __init__(self, inputs: int, block: Block) -> None:
        super().__init__()
        self.block = block
        self.conv = nn.Conv2d(inputs, block.out, block.kernel, padding=block.kernel // 2,
                              bias=False)
        self.norm = nn.BatchNorm2d(block.out)

    def forward(self, x: Tensor) -> Tensor:
        y = functional.leaky_relu(self.norm(self.conv(x)), LEAKY_SLOPE)
        return functional.max_pool2d(y, 2) if self.block.pool else y

    def folded(self) -> ConvSpec:
        """The block with batch-norm's running statistics folded into weights and bias."""
        norm = self.norm
        mean, var = _present(norm.running_mean), _present(norm.running_var)
        factor = (norm.weight / torch.sqrt(var + norm.eps)).detach().double()
        weights = self.conv.weight.detach().double() * factor[:, None, None, None]
        bias = norm.bias.detach().double() - mean.double() * factor
        return ConvSpec(weights.numpy().astype(np.float32), bias.numpy().astype(np.float32),
                        LeakyRelu(LEAKY_SLOPE),
                        PoolType.MAX_2_S2 if self.block.pool else PoolType.BYPASS)


def _present(tensor: Tensor | None) -> Tensor:
    """A tensor torch types as optional (a bias, batch-norm statistics) that is there."""
    if tensor is None:
        raise RuntimeError("a parameter the detector needs is missing")
    return tensor


class Detector(nn.Module):
    """``ARCHITECTURE`` and the YOLOv2 head, in float."""

    def __init__(self) -> None:
        super().__init__()
        blocks, channels = [], 3
        for block in ARCHITECTURE:
            blocks.append(ConvBlock(channels, block))
            channels = block.out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Conv2d(channels, ANCHORS * PER_ANCHOR, 1)
        with torch.no_grad():  # start near "nothing here", not at 50% everywhere
            bias = _present(self.head.bias).view(ANCHORS, PER_ANCHOR)
            bias.zero_()
            bias[:, 4] = math.log(OBJECT_PRIOR / (1 - OBJECT_PRIOR))

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.head(self.blocks(x))
        return out

    def network_spec(self) -> NetworkSpec:
        head = ConvSpec(self.head.weight.detach().numpy().copy(),
                        _present(self.head.bias).detach().numpy().copy())
        layers = tuple(block.folded() for block in cast("Iterable[ConvBlock]", self.blocks))
        return NetworkSpec((3, HEIGHT, WIDTH), (*layers, head), INPUT_RANGE)


# --- the YOLOv2 loss ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LossParts:
    box: Tensor
    objects: Tensor
    background: Tensor
    classes: Tensor

    @property
    def total(self) -> Tensor:
        return self.box + self.objects + self.background + self.classes


def yolo_loss(output: Tensor, boxes: Tensor, anchors: Tensor) -> LossParts:
    """YOLOv2's loss for the decode ``edged.vision.yolo2`` does, summed per image.

    Each true box belongs to the anchor (best shape IoU) of the cell holding its centre:
    that slot learns the centre (sigmoid offsets, soft-target cross-entropy), the size
    (``log(w / anchor)``, squared, weighted ``2 - area`` as YOLOv2 does), objectness 1 and
    the class (softmax cross-entropy). Every other slot learns objectness 0, unless its box
    already overlaps a true box by ``IGNORE_IOU``.
    """
    n = output.shape[0]
    out = output.view(n, ANCHORS, PER_ANCHOR, GRID_H, GRID_W)
    cols = torch.arange(GRID_W, dtype=output.dtype).view(1, 1, 1, -1)
    rows = torch.arange(GRID_H, dtype=output.dtype).view(1, 1, -1, 1)
    aw, ah = anchors[:, 0].view(1, -1, 1, 1), anchors[:, 1].view(1, -1, 1, 1)
    pred = torch.stack([cols + torch.sigmoid(out[:, :, 0]), rows + torch.sigmoid(out[:, :, 1]),
                        torch.exp(out[:, :, 2].clamp(max=6)) * aw,
                        torch.exp(out[:, :, 3].clamp(max=6)) * ah], dim=-1)

    valid = boxes[:, :, 0] >= 0
    gx = (boxes[:, :, 1] + boxes[:, :, 3] / 2) / STRIDE
    gy = (boxes[:, :, 2] + boxes[:, :, 4] / 2) / STRIDE
    gw, gh = boxes[:, :, 3] / STRIDE, boxes[:, :, 4] / STRIDE

    # background: the best overlap of every predicted box with any true box of its image
    truth = torch.stack([gx, gy, gw, gh], dim=-1)
    overlap = _iou(pred.detach().view(n, -1, 1, 4), truth.view(n, 1, -1, 4))
    overlap = overlap.masked_fill(~valid.view(n, 1, -1), 0.0).amax(dim=2)
    background = (overlap < IGNORE_IOU).view(n, ANCHORS, GRID_H, GRID_W)

    inter = (torch.minimum(gw[..., None], anchors[:, 0])
             * torch.minimum(gh[..., None], anchors[:, 1]))
    shape_iou = inter / (gw[..., None] * gh[..., None] + anchors.prod(1) - inter)
    image, slot = valid.nonzero(as_tuple=True)
    anchor = shape_iou[image, slot].argmax(dim=1)
    col = gx[image, slot].long().clamp(0, GRID_W - 1)
    row = gy[image, slot].long().clamp(0, GRID_H - 1)
    background[image, anchor, row, col] = False
    cell = out[image, anchor, :, row, col]  # (objects, PER_ANCHOR)

    tx, ty = gx[image, slot] - col, gy[image, slot] - row
    tw = torch.log(gw[image, slot] / anchors[anchor, 0])
    th = torch.log(gh[image, slot] / anchors[anchor, 1])
    weight = 2.0 - gw[image, slot] * gh[image, slot] / (GRID_W * GRID_H)
    centre = (functional.binary_cross_entropy_with_logits(cell[:, 0], tx, reduction="none")
              + functional.binary_cross_entropy_with_logits(cell[:, 1], ty, reduction="none"))
    size = (cell[:, 2] - tw) ** 2 + (cell[:, 3] - th) ** 2
    objectness = out[:, :, 4]
    return LossParts(
        box=(weight * (centre + size)).sum() / n,
        objects=functional.binary_cross_entropy_with_logits(
            cell[:, 4], torch.ones_like(cell[:, 4]), reduction="sum") / n,
        background=functional.binary_cross_entropy_with_logits(
            objectness[background], torch.zeros_like(objectness[background]),
            reduction="sum") / n,
        classes=functional.cross_entropy(cell[:, 5:], boxes[image, slot, 0].long(),
                                         reduction="sum") / n,
    )


def _iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of centre-form boxes ``(..., 4)``, broadcast."""
    w = (torch.minimum(a[..., 0] + a[..., 2] / 2, b[..., 0] + b[..., 2] / 2)
         - torch.maximum(a[..., 0] - a[..., 2] / 2, b[..., 0] - b[..., 2] / 2)).clamp(min=0)
    h = (torch.minimum(a[..., 1] + a[..., 3] / 2, b[..., 1] + b[..., 3] / 2)
         - torch.maximum(a[..., 1] - a[..., 3] / 2, b[..., 1] - b[..., 3] / 2)).clamp(min=0)
    inter = w * h
    return inter / (a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter + 1e-9)


# --- training -------------------------------------------------------------------------------------


def augmented(frames: Frames, order: Tensor, batch: int,
              generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
    """Batches in ``order``, each image flipped left-right and upside down at random and its
    colour planes permuted: the shapes' classes survive all three, and the boxes follow."""
    for start in range(0, len(order) - batch + 1, batch):
        index = order[start : start + batch].numpy()
        images = torch.from_numpy(frames.images[index]).float().div_(255.0)
        boxes = torch.from_numpy(frames.boxes[index])
        flips = torch.rand(batch, 2, generator=generator) < 0.5
        perms = torch.argsort(torch.rand(batch, 3, generator=generator), dim=1)
        images = images[torch.arange(batch)[:, None], perms]
        valid = boxes[:, :, 0] >= 0
        for axis, (dim, extent, at) in enumerate(((3, WIDTH, 1), (2, HEIGHT, 2))):
            chosen = flips[:, axis]
            images[chosen] = images[chosen].flip(dim)
            mirror = chosen[:, None] & valid
            boxes[:, :, at] = torch.where(mirror, extent - boxes[:, :, at] - boxes[:, :, at + 2],
                                          boxes[:, :, at])
        yield images.contiguous(memory_format=torch.channels_last), boxes


def evaluate(model: Detector, frames: Frames, anchors: Tensor) -> float:
    """Mean loss per image on ``frames``, in inference mode."""
    model.eval()
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(frames.images), 50):
            images = torch.from_numpy(frames.images[start : start + 50]).float().div_(255.0)
            boxes = torch.from_numpy(frames.boxes[start : start + 50])
            total += float(yolo_loss(model(images), boxes, anchors).total) * len(images)
    model.train()
    return total / len(frames.images)


def train(model: Detector, frames: Frames, validation: Frames, anchors: Tensor,
          epochs: int, batch: int) -> None:
    """AdamW with a one-cycle learning rate; prints the loss parts every epoch."""
    generator = torch.Generator().manual_seed(SEED)
    steps = epochs * (len(frames.images) // batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps,
                                                   pct_start=0.1)
    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload] # 2x faster on CPU
    started = time.perf_counter()
    for epoch in range(epochs):
        sums = np.zeros(4)
        count = 0
        order = torch.randperm(len(frames.images), generator=generator)
        for images, boxes in augmented(frames, order, batch, generator):
            parts = yolo_loss(model(images), boxes, anchors)
            optimizer.zero_grad(set_to_none=True)
            parts.total.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            schedule.step()
            sums += [float(parts.box.detach()), float(parts.objects.detach()),
                     float(parts.background.detach()), float(parts.classes.detach())]
            count += 1
        box, objects, background, classes = sums / count
        print(f"epoch {epoch + 1:>2}/{epochs}  loss {sums.sum() / count:6.3f} (box {box:.3f} "
              f"object {objects:.3f} background {background:.3f} class {classes:.3f})  "
              f"held-out {evaluate(model, validation, anchors):6.3f}  "
              f"{time.perf_counter() - started:5.0f} s", flush=True)
    model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    model.eval()


# --- export -------------------------------------------------------------------------------------


def check_export(model: Detector, spec: NetworkSpec, images: npt.NDArray[np.uint8]) -> float:
    """Largest ``|float_forward - torch|`` over ``images``: the folded spec is the model."""
    floats = images.astype(np.float32) / 255.0
    with torch.no_grad():
        want = model(torch.from_numpy(floats)).numpy()
    got = float_forward(spec, floats)
    worst = float(np.abs(got - want).max())
    if worst > 1e-3 * max(1.0, float(np.abs(want).max())):
        raise RuntimeError(f"the exported network differs from torch's by {worst}")
    return worst


def save_float(path: Path, spec: NetworkSpec, kmodel_sha256: str) -> None:
    """The float network for ``bench/accuracy.py`` (the kmodel holds only its quantization)."""
    layers = [{"activation": (layer.activation.slope if isinstance(layer.activation, LeakyRelu)
                              else layer.activation),
               "pool": layer.pool.name, "depthwise": layer.depthwise}
              for layer in spec.layers]
    arrays = {f"weights_{i}": np.asarray(layer.weights, np.float32)
              for i, layer in enumerate(spec.layers)}
    arrays |= {f"bias_{i}": np.asarray(layer.bias, np.float32)
               for i, layer in enumerate(spec.layers)}
    meta = {"input_shape": spec.input_shape, "input_range": spec.input_range,
            "layers": layers, "kmodel_sha256": kmodel_sha256}
    np.savez_compressed(path, meta=np.array(json.dumps(meta)), **arrays)  # type: ignore[arg-type]


MANIFEST = """\
# edged's own detector: circles, squares and triangles of the synthetic camera
# (camera kind "shapes"). Built by training/train_shapes.py (see training/README.md):
# YOLOv2-style, {macs:.1f} M MACs, trained on ShapesScene frames, quantized for the K210.
description = "edged's shapes detector (YOLOv2, 3 classes, trained on synthetic scenes)"
file = "shapes.kmodel"
sha256 = "{sha256}"
labels = {labels}

[input]
width = {width}
height = {height}
color = "rgb"
fit = "letterbox"  # shapes keep their aspect; a 4:3 frame needs no padding

[decoder]
type = "yolo2"
# k-means of the training boxes, in grid cells (16 pixels)
anchors = {anchors}
threshold = {threshold}  # precision and recall both about 0.93 on bench/accuracy.py's frames
nms = {nms}
"""
THRESHOLD, NMS = 0.6, 0.4


def manifest(sha256: str, anchors: Sequence[float], macs: int) -> str:
    """``models/shapes.toml`` for the kmodel of this ``sha256``."""
    return MANIFEST.format(macs=macs / 1e6, sha256=sha256, labels=json.dumps(list(SHAPE_LABELS)),
                           width=WIDTH, height=HEIGHT, anchors=json.dumps(list(anchors)),
                           threshold=THRESHOLD, nms=NMS)


def sim_agreement(kmodel: KModel, spec: NetworkSpec, images: npt.NDArray[np.uint8]) -> float:
    """Largest ``|kmodel on the simulated KPU - float_forward|`` over ``images``."""
    executor = create_executor(kmodel)
    worst = 0.0
    for image in images:
        got = np.asarray(executor.run([image])[0], np.float32)
        want = float_forward(spec, image.astype(np.float32) / 255.0)
        worst = max(worst, float(np.abs(got - want).max()))
    return worst


def seed_everything() -> None:
    random.seed(SEED)
    np.random.seed(SEED)  # nothing here draws from it; a library might
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(2)


def batches(images: npt.NDArray[np.uint8], size: int) -> Iterator[npt.NDArray[np.float32]]:
    for start in range(0, len(images), size):
        yield images[start : start + size].astype(np.float32) / 255.0


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=6000, help="training frames")
    parser.add_argument("--epochs", type=int, default=7)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--models", type=Path, default=PROJECT / "models",
                        help="where shapes.kmodel and shapes.toml go")
    parser.add_argument("--float-out", type=Path, default=PROJECT / "training" / "shapes_float.npz",
                        help="the float network, for bench/accuracy.py")
    args = parser.parse_args(argv)
    seed_everything()
    started = time.perf_counter()

    frames = render(TRAIN_SEED, args.frames)
    validation = render(VALIDATION_SEED, 240)
    calibration = render(CALIBRATION_SEED, 96)
    objects = int((frames.boxes[:, :, 0] >= 0).sum())
    print(f"rendered {args.frames} training frames ({objects} shapes), 240 held-out and 96 "
          f"calibration frames in {time.perf_counter() - started:.0f} s")
    anchors = kmeans_anchors(frames.boxes, np.random.default_rng(SEED))
    print(f"anchors (grid cells): {anchors}")

    model = Detector()
    training = time.perf_counter()
    anchor_tensor = torch.tensor(anchors, dtype=torch.float32).view(ANCHORS, 2)
    train(model, frames, validation, anchor_tensor, args.epochs, args.batch)
    trained = time.perf_counter()

    spec = model.network_spec()
    export_error = check_export(model, spec, validation.images[:8])
    data = build_kmodel(spec, batches(calibration.images, 8))
    kmodel = parse_kmodel(data)
    sim_error = sim_agreement(kmodel, spec, validation.images[:8])
    sha256 = kmodel.sha256

    args.models.mkdir(parents=True, exist_ok=True)
    (args.models / "shapes.kmodel").write_bytes(data)
    (args.models / "shapes.toml").write_text(manifest(sha256, anchors, kmodel.macs))
    save_float(args.float_out, spec, sha256)

    params = sum(int(np.asarray(layer.weights).size + layer.out_channels) for layer in spec.layers)
    print(f"training took {trained - training:.0f} s, everything "
          f"{time.perf_counter() - started:.0f} s")
    print(f"float_forward vs torch: max |diff| {export_error:.2e}")
    print(f"simulated KPU vs float: max |diff| {sim_error:.3f} on 8 held-out frames")
    print(f"kmodel: {len(data):,} bytes, {kmodel.macs:,} MACs, {params:,} parameters, "
          f"{kmodel.kpu_ram_bytes:,} bytes of KPU RAM, sha256 {sha256}")
    print(f"wrote {args.models / 'shapes.kmodel'}, {args.models / 'shapes.toml'}, "
          f"{args.float_out}; now run python bench/accuracy.py")


if __name__ == "__main__":
    main()
