"""Simulated-KPU throughput per fixture model, against this machine's float32 GEMM.

For each kmodel: MACs per frame, then frames per second, GMAC/s and their ratio to the
same machine's float32 GEMM throughput (all cores, measured in this run) two ways: one
frame at a time with its layers split across every core (a single camera's latency), and
one frame per core at once, each on one lane (many cameras' throughput). Prints figures
only; nothing here asserts on time.

    python bench/kpu_sim.py [--seconds 3] [KMODEL ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

from edged.kpu.kmodel import load_kmodel
from edged.kpu.report import random_inputs
from edged.kpu.sim.executor import create_executor
from edged.kpu.sim.lanes import Lanes

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


def streams_rate(path: Path, seconds: float, streams: int) -> float:
    """Frames per second of ``streams`` executors of one lane each, all running at once on
    their own threads for about ``seconds``."""
    model = load_kmodel(path)
    inputs = random_inputs(model)
    executors = [create_executor(model, lanes=Lanes(1)) for _ in range(streams)]
    for executor in executors:
        executor.run(inputs)
    frames = [0] * streams
    start = threading.Barrier(streams + 1)
    deadline = 0.0

    def run(i: int) -> None:
        start.wait()
        while time.perf_counter() < deadline:
            executors[i].run(inputs)
            frames[i] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(streams)]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    deadline = began + seconds
    start.wait()
    for thread in threads:
        thread.join()
    return sum(frames) / (time.perf_counter() - began)


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
    cores = len(os.sched_getaffinity(0))
    print(f"float32 GEMM (1024^3, BLAS, {cores} cores): {gemm:.1f} GMAC/s"
          f" = {2 * gemm:.1f} GFLOP/s\n")
    print(f"{'':<43} {'one frame at a time':^28} {f'{cores} at once, one per core':^28}")
    print(f"{'model':<28} {'MACs/frame':>14}" + f" {'fps':>9} {'GMAC/s':>8} {'of GEMM':>8}" * 2)
    for path in paths:
        try:
            macs, fps = model_rate(path, args.seconds)
        except Exception as exc:
            print(f"{path.stem:<28} refused: {exc}")
            continue
        line = f"{path.stem:<28} {macs:>14,}"
        for rate in (fps, streams_rate(path, args.seconds, cores)):
            gmacs = macs * rate / 1e9
            line += f" {rate:>9.1f} {gmacs:>8.2f} {gmacs / gemm:>8.1%}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
