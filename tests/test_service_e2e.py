"""The daemon as a systemd service: notify protocol, SIGTERM, SIGHUP reloads."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from pathlib import Path

from edged.mqtt.topics import Topics
from tests.broker import Broker
from tests.conftest import kmodel_path
from tests.daemon_proc import DaemonProcess, write_config
from tests.mqtt_watch import watch

START = 60.0


def shapes(name: str) -> dict[str, object]:
    kmodel_path("maixpy_facedetect_v3")  # skips without the fixtures
    return {"name": name, "kind": "shapes", "fps": 10, "pipeline": "face"}


def notify_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.1)
    return sock


def received(sock: socket.socket, until: float) -> list[str]:
    messages = []
    while time.monotonic() < until:
        try:
            messages.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
    return messages


async def test_notify_protocol_of_the_running_daemon(mqtt_broker: Broker, tmp_path: Path) -> None:
    config = write_config(tmp_path / "site.toml", mqtt_broker, [shapes("cam")], device="svc")
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "400000"}
    with (notify_socket(tmp_path / "notify.sock") as sock,
          DaemonProcess(config, tmp_path, env=env) as daemon):
        daemon.wait_for_log('"event": "ready"', START)
        messages = await asyncio.to_thread(received, sock, time.monotonic() + 2.5)
        daemon.send(signal.SIGHUP)
        messages += await asyncio.to_thread(received, sock, time.monotonic() + 1.0)
        assert daemon.stop() == 0
        messages += await asyncio.to_thread(received, sock, time.monotonic() + 0.3)
    text = "\n".join(messages)
    assert "READY=1" in text
    assert any(m.startswith("STATUS=") and "cam" in m and "maixpy_face" in m for m in messages)
    pings = sum("WATCHDOG=1" in m for m in messages)
    assert pings >= 8  # every 0.2 s while the scheduler makes progress
    assert "RELOADING=1" in text
    assert "MONOTONIC_USEC=" in text
    assert "STOPPING=1" in text


async def test_sighup_applies_a_changed_config_in_place(mqtt_broker: Broker,
                                                        tmp_path: Path) -> None:
    config = write_config(tmp_path / "site.toml", mqtt_broker, [shapes("a")], device="hup")
    topics = Topics.for_device("hup")
    async with watch(mqtt_broker, topics) as watcher:
        with DaemonProcess(config, tmp_path) as daemon:
            await watcher.next(topics.detections("a"), wait=START)
            write_config(config, mqtt_broker, [shapes("a"), shapes("b")], device="hup")
            daemon.send(signal.SIGHUP)
            await watcher.next(topics.detections("b"), wait=20)
            models = (await watcher.next(topics.models,
                                         lambda m: "b" in m.body["pipelines"]["face"]["cameras"],
                                         20)).body
            assert models["pipelines"]["face"]["cameras"] == ["a", "b"]
            first = (await watcher.next(topics.detections("a"))).body["frame"]

            config.write_text("device_id = 'hup'\n[mqtt]\nport = 'not a port'\n")
            daemon.send(signal.SIGHUP)
            daemon.wait_for_log('"event": "reload_refused"', 20)
            later = [(await watcher.next(topics.detections(c), wait=10)).body["frame"]
                     for c in ("a", "b")]
            assert daemon.alive()
            assert later[0] > first  # the old config keeps running
            assert daemon.stop() == 0
    assert "mqtt.port" in daemon.log()
