"""The daemon as a process, seen by a real MQTT client: the product a user runs."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edged.mqtt.topics import Topics
from tests.broker import Broker
from tests.conftest import fixture_path, kmodel_path
from tests.daemon_proc import DaemonProcess, write_config
from tests.mqtt_watch import Received, Watcher, watch

START_WAIT = 60.0  # the first start compiles numba kernels (cached afterwards)


def iou(a: dict[str, float], b: dict[str, float]) -> float:
    ix = max(0.0, min(a["x"] + a["w"], b["x"] + b["w"]) - max(a["x"], b["x"]))
    iy = max(0.0, min(a["y"] + a["h"], b["y"] + b["h"]) - max(a["y"], b["y"]))
    inter = ix * iy
    return inter / (a["w"] * a["h"] + b["w"] * b["h"] - inter)


def two_cameras() -> list[dict[str, object]]:
    kmodel_path("maixpy_facedetect_v3")  # skips when the fixtures are missing
    faces = json.loads(fixture_path("faces.json").read_text())
    return [
        {"name": "shapes", "kind": "shapes", "fps": 15, "pipeline": "face"},
        {"name": "face", "kind": "panzoom", "fps": 15, "pipeline": "face",
         "photo": str(fixture_path("images", "grace_hopper.jpg")),
         "box": faces["grace_hopper.jpg"]},
    ]


async def frames_of(watcher: Watcher, topics: Topics, camera: str, count: int,
                    wait: float = START_WAIT) -> list[Received]:
    return [await watcher.next(topics.detections(camera), wait=wait) for _ in range(count)]


async def test_two_cameras_publish_valid_detections_that_match_the_truth(
    mqtt_broker: Broker, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "site.toml", mqtt_broker, two_cameras())
    topics = Topics.for_device("e2e")
    async with watch(mqtt_broker, topics) as watcher:
        with DaemonProcess(config, tmp_path) as daemon:
            await watcher.next(topics.availability, lambda m: m.payload == b"online", START_WAIT)
            models = (await watcher.next(topics.models, wait=START_WAIT)).body
            assert models["pipelines"]["face"] == {"model": "maixpy_face",
                                                   "cameras": ["face", "shapes"]}
            face = await frames_of(watcher, topics, "face", 30)
            shapes = await frames_of(watcher, topics, "shapes", 5)
            stats = (await watcher.next(topics.stats, wait=10)).body
            assert daemon.stop() == 0, daemon.log()[-2000:]
        await watcher.next(topics.availability, lambda m: m.payload == b"offline")
    async with watch(mqtt_broker, topics) as late:  # a dashboard starting now is told too
        assert (await late.next(topics.availability)).payload == b"offline"
    for frames, name in ((face, "face"), (shapes, "shapes")):
        numbers = [f.body["frame"] for f in frames]
        assert numbers == sorted(set(numbers)), f"{name}: frame numbers must increase"
        assert all(f.body["camera"] == name and f.body["model"] == "maixpy_face" for f in frames)
    matched = 0
    for frame in face:
        truth = frame.body["truth"][0]["box"]
        best = max((iou(d["box"], truth) for d in frame.body["detections"]), default=0.0)
        matched += best >= 0.5
    assert matched >= 0.9 * len(face), f"only {matched} of {len(face)} frames found the face"
    assert set(stats["cameras"]) == {"face", "shapes"}
    assert stats["sram"]["used"] > 0


async def test_last_will_says_offline_when_killed(mqtt_broker: Broker, tmp_path: Path) -> None:
    config = write_config(tmp_path / "site.toml", mqtt_broker, two_cameras()[:1], device="kill")
    topics = Topics.for_device("kill")
    async with watch(mqtt_broker, topics) as watcher:
        with DaemonProcess(config, tmp_path) as daemon:
            await watcher.next(topics.availability, lambda m: m.payload == b"online", START_WAIT)
            assert daemon.proc is not None
            daemon.proc.send_signal(signal.SIGKILL)
            daemon.proc.wait(10)
        await watcher.next(topics.availability, lambda m: m.payload == b"offline", wait=30)
    async with watch(mqtt_broker, topics) as late:  # the will is retained
        assert (await late.next(topics.availability)).payload == b"offline"


async def test_broker_restart_is_survived_without_a_restart(
    fresh_broker: Broker, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "site.toml", fresh_broker, two_cameras()[:1],
                          device="restart", mqtt={"keepalive": 5})
    topics = Topics.for_device("restart")
    with DaemonProcess(config, tmp_path) as daemon:
        async with watch(fresh_broker, topics) as watcher:
            before = await frames_of(watcher, topics, "shapes", 3)
        fresh_broker.kill()
        await asyncio.sleep(1.5)
        fresh_broker.start()
        async with watch(fresh_broker, topics) as watcher:
            await watcher.next(topics.availability, lambda m: m.payload == b"online", 20)
            after = await frames_of(watcher, topics, "shapes", 3, wait=20)
        assert daemon.alive(), daemon.log()[-2000:]
        assert daemon.log().count('"event": "ready"') == 1  # never restarted
        gap = after[0].body["frame"] - before[-1].body["frame"]
        assert gap > 15, "frames kept being captured (and numbered) while the broker was away"
        assert daemon.stop() == 0


async def test_a_failing_camera_is_retried_and_reported_while_others_go_on(
    mqtt_broker: Broker, tmp_path: Path
) -> None:
    cameras = [*two_cameras()[:1],
               {"name": "gone", "kind": "opencv", "source": str(tmp_path / "missing.avi"),
                "fps": 5, "pipeline": "face", "reconnect": {"initial": 0.2, "maximum": 0.5}}]
    config = write_config(tmp_path / "site.toml", mqtt_broker, cameras, device="failing")
    topics = Topics.for_device("failing")
    async with watch(mqtt_broker, topics) as watcher:
        with DaemonProcess(config, tmp_path) as daemon:
            await frames_of(watcher, topics, "shapes", 3)
            stats = (await watcher.next(
                topics.stats, lambda m: m.body["cameras"]["gone"]["reconnects"] >= 2, 20)).body
            assert stats["cameras"]["gone"]["state"] == "retrying"
            assert stats["cameras"]["shapes"]["state"] == "online"
            assert stats["cameras"]["shapes"]["fps_out"] > 0
            await frames_of(watcher, topics, "shapes", 3)
            assert daemon.stop() == 0


@pytest.mark.parametrize("command", ["check", "run"])
def test_a_bad_config_is_refused_naming_the_field(command: str, tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('device_id = "x"\n[kpu]\nprofile = "huge"\n[mqtt]\nport = 99999\n')
    done = subprocess.run([sys.executable, "-m", "edged.cli", command, str(config)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert str(config) in done.stderr
    assert "mqtt.port" in done.stderr
    assert "kpu" in done.stderr
    assert "huge" in done.stderr
    assert "Traceback" not in done.stderr
