"""Model swap latency in the running daemon, with and without preload.

50 switches of one pipeline between the MaixPy face model and VOC20 over MQTT; for each,
the time from publishing the command to its reply (the swap) and to the first detections
message made with the new model. Prints p50 and p99 of both. Prints figures only.

    python bench/swap.py [--swaps 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiomqtt
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.broker import Broker
from tests.conftest import FIXTURES
from tests.daemon_proc import DaemonProcess, write_config

MODELS = ("voc20_v3", "maixpy_face")


async def swaps(
    broker: Broker, workdir: Path, count: int, preload: bool
) -> tuple[list[float], list[float]]:
    camera = {"name": "cam", "kind": "shapes", "fps": 30, "pipeline": "face"}
    models = {"min_swap_interval": 0, **({"preload": list(MODELS)} if preload else {})}
    config = write_config(workdir / f"swap{preload}.toml", broker, [camera], device="swap",
                          models=models)
    replies, firsts = [], []
    with DaemonProcess(config, workdir) as daemon:
        async with aiomqtt.Client(broker.host, broker.port) as client:
            await client.subscribe([("edged/swap/cmd/result", 1), ("edged/swap/cam/detections", 0)])
            daemon.wait_for_log('"event": "ready"', 120)
            for i in range(count):
                model = MODELS[i % 2]
                request = uuid.uuid4().hex
                sent = time.monotonic()
                await client.publish("edged/swap/cmd/switch", json.dumps(
                    {"pipeline": "face", "model": model, "request_id": request}), qos=1)
                replied = None
                async for message in client.messages:
                    body = json.loads(message.payload)
                    if body.get("request_id") == request:
                        if not body["ok"]:
                            raise RuntimeError(body["error"])
                        replied = time.monotonic() - sent
                    elif replied is not None and body.get("model") == model:
                        replies.append(replied)
                        firsts.append(time.monotonic() - sent)
                        break
        daemon.stop()
    return replies, firsts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--swaps", type=int, default=50)
    args = parser.parse_args()
    if not (FIXTURES / "kmodels" / "voc20_yolo2_v3.kmodel").exists():
        print(f"the fixture kmodels are needed: {FIXTURES / 'kmodels'}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp, Broker(Path(tmp)) as broker:
        print(f"{args.swaps} swaps between {' and '.join(MODELS)} (c-sdk profile, "
              f"{broker.kind} broker)")
        print(f"  {'':<16} {'reply p50':>10} {'p99':>8} {'first detection p50':>20} {'p99':>8}")
        for preload in (False, True):
            replies, firsts = asyncio.run(swaps(broker, Path(tmp), args.swaps, preload))
            r50, r99 = np.percentile(replies, [50, 99]) * 1e3
            f50, f99 = np.percentile(firsts, [50, 99]) * 1e3
            label = "with preload" if preload else "deinit + load"
            print(f"  {label:<16} {r50:>8.1f}ms {r99:>6.1f}ms {f50:>18.1f}ms {f99:>6.1f}ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
