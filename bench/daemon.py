"""N synthetic cameras at 30 fps through the MaixPy face model, to a real broker.

Runs ``edged run`` as a process (the product as deployed) for each camera count, listens
to what it publishes, and prints per camera the output fps, capture-to-publish latency p50
and p99 (as the daemon stamps it), frames dropped, and the daemon's CPU share of the
machine (its simulated KPU's process included); then the most cameras sustained at 30 fps.
Prints figures only.

    python bench/daemon.py [--cameras 1 2 3 4] [--seconds 30] [--workers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import aiomqtt
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.broker import Broker
from tests.conftest import FIXTURES
from tests.daemon_proc import DaemonProcess, write_config

SUSTAINED = 0.95 * 30  # a camera "sustains 30 fps" at 28.5 published frames a second


def cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and its descendants (the simulated KPU's own process)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
                    for child in (task / "children").read_text().split()]
    except FileNotFoundError:  # ended meanwhile
        return 0.0
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return own + sum(cpu_seconds(child) for child in children)


async def measure(
    broker: Broker, workdir: Path, cameras: int, seconds: float, workers: int
) -> dict[str, dict[str, float]]:
    faces = json.loads((FIXTURES / "faces.json").read_text())
    configs = [{"name": f"cam{i}", "kind": "panzoom", "fps": 30, "pipeline": "face", "seed": i,
                "photo": str(FIXTURES / "images" / "grace_hopper.jpg"),
                "box": faces["grace_hopper.jpg"]} for i in range(cameras)]
    config = write_config(workdir / f"bench{cameras}.toml", broker, configs, device="bench",
                          stats_interval=seconds, kpu={"workers": workers})
    arrivals: dict[str, list[float]] = defaultdict(list)
    latencies: dict[str, list[float]] = defaultdict(list)
    frames: dict[str, list[int]] = defaultdict(list)
    with DaemonProcess(config, workdir) as daemon:
        assert daemon.proc is not None
        async with aiomqtt.Client(broker.host, broker.port) as client:
            await client.subscribe("edged/bench/+/detections")
            daemon.wait_for_log('"event": "ready"', 120)
            warm_until = time.monotonic() + 3
            started = cpu0 = 0.0
            async with asyncio.timeout(seconds + 10):
                async for message in client.messages:
                    now = time.monotonic()
                    if now < warm_until:
                        continue
                    if not started:
                        started, cpu0 = now, cpu_seconds(daemon.proc.pid)
                    if now - started > seconds:
                        break
                    body = json.loads(message.payload)
                    arrivals[body["camera"]].append(now)
                    latencies[body["camera"]].append(body["latency_ms"])
                    frames[body["camera"]].append(body["frame"])
            cpu = (cpu_seconds(daemon.proc.pid) - cpu0) / seconds / (os.cpu_count() or 1)
        daemon.stop()
    return {
        camera: {"fps": len(arrivals[camera]) / seconds,
                 "p50": float(np.percentile(latencies[camera], 50)),
                 "p99": float(np.percentile(latencies[camera], 99)),
                 "dropped": _missing(frames[camera]), "cpu": cpu}
        for camera in sorted(arrivals)
    }


def _missing(frames: list[int]) -> int:
    """Frames of a camera's numbered run that were never published (dropped)."""
    return max(frames) - min(frames) + 1 - len(set(frames))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=1,
                        help="kpu.workers: frames the simulated KPU computes at once")
    args = parser.parse_args()
    if not (FIXTURES / "kmodels" / "maixpy_facedetect_v3.kmodel").exists():
        print(f"the MaixPy face model is needed: {FIXTURES / 'kmodels'}", file=sys.stderr)
        return 1
    sustained = 0
    with tempfile.TemporaryDirectory() as tmp, Broker(Path(tmp)) as broker:
        for count in args.cameras:
            figures = asyncio.run(measure(broker, Path(tmp), count, args.seconds, args.workers))
            print(f"\n{count} camera(s) at 30 fps, {args.seconds:g} s, {broker.kind} broker, "
                  f"kpu.workers = {args.workers}:")
            print(f"  {'camera':<8} {'out fps':>8} {'p50 ms':>8} {'p99 ms':>8} {'dropped':>8}")
            for camera, f in figures.items():
                print(f"  {camera:<8} {f['fps']:>8.1f} {f['p50']:>8.1f} {f['p99']:>8.1f} "
                      f"{f['dropped']:>8.0f}")
            cpu = next(iter(figures.values()))["cpu"] if figures else 0.0
            print(f"  daemon CPU: {cpu:.0%} of {os.cpu_count()} cores")
            if len(figures) == count and all(f["fps"] >= SUSTAINED for f in figures.values()):
                sustained = max(sustained, count)
    print(f"\nmost cameras sustained at 30 fps (>= {SUSTAINED:g} published/s each): {sustained}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
