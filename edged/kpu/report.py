"""Human-readable reports about a kmodel: what it is, whether it fits, how fast it runs."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from edged.kpu.kmodel.model import KModel, LayerSummary, TensorSpec
from edged.kpu.sim.executor import create_executor
from edged.kpu.sim.lanes import SETTLING_RUNS
from edged.kpu.sram import PROFILES, fits
from edged.kpu.timing import estimate


def _shape(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape) or "scalar"


def _tensor(spec: TensorSpec) -> str:
    return f"{spec.dtype}[{_shape(spec.shape)}] ({spec.nbytes:,} bytes)"


def describe(model: KModel, name: str) -> str:
    """``edged kpu info``: header, tensors, layers, MACs, SRAM fit and chip time."""
    chip = estimate(model)
    lines = [
        f"{name}: kmodel v{model.version}, {model.size:,} bytes, sha256 {model.sha256}",
        f"  working memory  {model.main_mem:,} bytes",
        f"  KPU RAM         {model.kpu_ram_bytes:,} of 2,097,152 bytes",
        *(f"  input {i}         {_tensor(s)}" for i, s in enumerate(model.inputs)),
        *(f"  output {i}        {_tensor(s)}" for i, s in enumerate(model.outputs)),
        f"  layers          {len(model.summaries)} "
        f"({sum(s.on_kpu for s in model.summaries)} on the KPU)",
        f"  MACs per frame  {model.macs:,}",
        "",
        _LAYER_HEADER,
    ]
    lines += [_layer_row(s) for s in model.summaries]
    lines += ["", "  SRAM (kmodel + working memory + input + output) per runtime profile:"]
    for profile in PROFILES.values():
        fit = fits(model, profile)
        verdict = "fits" if fit.fits else "DOES NOT FIT"
        lines.append(
            f"    {profile.name:<12} {fit.cost.total:>10,} of {fit.budget:>10,} bytes: "
            f"{verdict} (margin {fit.margin:,})"
        )
    lines += [
        "",
        f"  estimated on a 400 MHz K210: {chip.total_seconds * 1e3:.2f} ms per frame "
        f"({chip.fps:.1f} fps; KPU {chip.kpu_seconds * 1e3:.2f} ms, "
        f"CPU {chip.cpu_seconds * 1e3:.2f} ms)",
        f"  {'reaches' if chip.fps >= 30 else 'misses'} 30 fps on the chip",
    ]
    return "\n".join(lines)


_LAYER_HEADER = f"  {'#':>3}  {'op':<34} {'unit':<4} {'input':<14} {'output':<14} {'MACs':>12}"


def _layer_row(s: LayerSummary) -> str:
    return (f"  {s.index:>3}  {s.op:<34} {'KPU' if s.on_kpu else 'CPU':<4} "
            f"{_shape(s.in_shape):<14} {_shape(s.out_shape):<14} {s.macs:>12,}")


def random_inputs(model: KModel, seed: int = 0) -> list[npt.NDArray[np.generic]]:
    """Inputs of the right shape and type, for profiling without a real frame."""
    rng = np.random.default_rng(seed)
    values: list[npt.NDArray[np.generic]] = []
    for spec in model.inputs:
        if spec.dtype == "uint8":
            values.append(rng.integers(0, 256, spec.shape, dtype=np.uint8))
        else:
            values.append(rng.normal(size=spec.shape).astype(np.float32))
    return values


def profile(model: KModel, inputs: Sequence[npt.NDArray[np.generic]], repeat: int) -> str:
    """``edged kpu profile``: per layer, estimated chip time beside simulated time."""
    executor = create_executor(model)
    for _ in range(SETTLING_RUNS):  # compile, and let each layer settle whether it splits
        executor.run(inputs)
    per_layer: list[list[float]] = [[] for _ in model.summaries]
    totals = []
    for _ in range(repeat):
        started = time.perf_counter()
        executor.run(inputs, observer=lambda i, seconds, _out: per_layer[i].append(seconds))
        totals.append(time.perf_counter() - started)
    chip = estimate(model)
    lines = [f"{_LAYER_HEADER} {'chip ms':>8} {'sim ms':>8}"]
    for s, est, times in zip(model.summaries, chip.layers, per_layer, strict=True):
        lines.append(f"{_layer_row(s)} {est.seconds * 1e3:>8.3f} "
                     f"{statistics.median(times) * 1e3:>8.3f}")
    sim = statistics.median(totals)
    lines += [
        "",
        f"  chip (estimate): {chip.total_seconds * 1e3:.2f} ms/frame, {chip.fps:.1f} fps",
        f"  simulator:       {sim * 1e3:.2f} ms/frame, {1 / sim:.1f} fps, "
        f"{model.macs / sim / 1e9:.2f} GMAC/s (median of {repeat})",
    ]
    return "\n".join(lines)
