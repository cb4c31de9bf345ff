"""Simulated-KPU throughput per fixture model, against this machine's float32 GEMM.

For each kmodel: MACs per frame, frames per second and GMAC/s of the simulator, and the
same machine's float32 GEMM throughput measured in this run, as a ratio. Prints figures
only; nothing here asserts on time.

    python bench/kpu_sim.py [--seconds 3] [KMODEL ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from edged.kpu.kmodel import load_kmodel
from edged.kpu.report import random_inputs
from edged.kpu.sim.executor import create_executor

FIXTURES = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures" / "kmodels"


def gemm_gmacs(seconds: float) -> float:
    """Best float32 GEMM rate (GMAC/s) of 1024-square products over ``seconds``."""
    rng = np.random.default_rng(0)
    a = rng.random((1024, 1024), dtype=np.float32)
    b = rng.random((1024, 1024), dtype=np.float32)
    a @ b
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        a @ b
        best = max(best, 1024**3 / (time.perf_counter() - started) / 1e9)
    return best


def model_rate(path: Path, seconds: float) -> tuple[int, float]:
    """(MACs per frame, median frames per second) over about ``seconds``."""
    model = load_kmodel(path)
    executor = create_executor(model)
    inputs = random_inputs(model)
    executor.run(inputs)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 5:
        started = time.perf_counter()
        executor.run(inputs)
        times.append(time.perf_counter() - started)
    return model.macs, 1 / statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", type=Path, help="kmodels (default: the fixtures)")
    parser.add_argument("--seconds", type=float, default=3.0, help="time per model")
    args = parser.parse_args()
    paths = args.models or sorted(FIXTURES.glob("*.kmodel"))
    if not paths:
        print(f"no kmodels given and none in {FIXTURES}", file=sys.stderr)
        return 1
    gemm = gemm_gmacs(args.seconds)
    print(f"float32 GEMM (1024^3, BLAS): {gemm:.1f} GMAC/s = {2 * gemm:.1f} GFLOP/s\n")
    print(f"{'model':<28} {'MACs/frame':>14} {'fps':>9} {'GMAC/s':>8} {'of GEMM':>8}")
    for path in paths:
        try:
            macs, fps = model_rate(path, args.seconds)
        except Exception as exc:
            print(f"{path.stem:<28} refused: {exc}")
            continue
        rate = macs * fps / 1e9
        print(f"{path.stem:<28} {macs:>14,} {fps:>9.1f} {rate:>8.2f} {rate / gemm:>8.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
