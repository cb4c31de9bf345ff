"""Model lifecycle in the running daemon: switch, load and deinit by MQTT or a button."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edged.control.buttons import press_sync
from edged.mqtt.topics import Topics
from tests.broker import Broker
from tests.conftest import PROJECT, fixture_path, kmodel_path
from tests.daemon_proc import DaemonProcess, write_config
from tests.maixpy_standin.harness import StandinBoard
from tests.mqtt_watch import Received, Watcher, watch

START = 60.0
VOC = set((PROJECT / "models" / "voc20.txt").read_text().split())


def camera(name: str = "cam", pipeline: str = "face") -> dict[str, Any]:
    kmodel_path("maixpy_facedetect_v3")  # skips without the fixtures
    return {"name": name, "kind": "shapes", "fps": 10, "pipeline": pipeline}


async def command(broker: Broker, topics: Topics, verb: str, body: dict[str, Any] | bytes,
                  ) -> str:
    request_id = uuid.uuid4().hex
    payload = body if isinstance(body, bytes) else json.dumps({**body, "request_id": request_id})
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.publish(topics.command(verb), payload, qos=1)
    return request_id


async def reply(watcher: Watcher, topics: Topics, request_id: str | None) -> Received:
    return await watcher.next(topics.cmd_result,
                              lambda m: request_id is None or m.body["request_id"] == request_id,
                              wait=30)


async def started(watcher: Watcher, topics: Topics) -> dict[str, Any]:
    await watcher.next(topics.availability, lambda m: m.payload == b"online", START)
    await watcher.next(topics.detections("cam"), wait=START)
    body: dict[str, Any] = (await watcher.next(topics.models, wait=START)).body
    return body


async def test_switch_by_mqtt_changes_the_model_exactly_at_the_reply(
    mqtt_broker: Broker, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "site.toml", mqtt_broker, [camera()], device="switch",
                          models={"min_swap_interval": 0})
    topics = Topics.for_device("switch")
    async with watch(mqtt_broker, topics) as watcher:
        with DaemonProcess(config, tmp_path) as daemon:
            await started(watcher, topics)
            request = await command(mqtt_broker, topics, "switch",
                                    {"pipeline": "face", "model": "voc20_v3"})
            answer = await reply(watcher, topics, request)
            for _ in range(5):
                await watcher.next(topics.detections("cam"),
                                   lambda m: m.body["model"] == "voc20_v3", 30)
            stats = (await watcher.next(topics.stats, wait=10)).body
            assert daemon.stop() == 0
    assert answer.body["ok"], answer.body
    assert answer.body["changed"]["pipelines"] == {"face": {"from": "maixpy_face",
                                                            "to": "voc20_v3"}}
    assert answer.body["changed"]["loaded"] == ["voc20_v3"]
    assert answer.body["changed"]["unloaded"] == ["maixpy_face"]
    order = [m for m in watcher.history if m.topic in (topics.cmd_result,
                                                         topics.detections("cam"))]
    at = order.index(next(m for m in order if m.topic == topics.cmd_result))
    before, after = order[:at], order[at + 1:]
    assert before
    assert all(m.body["model"] == "maixpy_face" for m in before)
    assert after
    assert all(m.body["model"] == "voc20_v3" for m in after)
    assert all(d["label"] in VOC for m in after for d in m.body["detections"])
    assert stats["swaps"]["ok"] == 1
    assert stats["swaps"]["failed"] == 0
    assert stats["swaps"]["last_ms"] > 0


async def test_load_beyond_maixpy_full_is_memory_overflow_and_changes_nothing(
    mqtt_broker: Broker, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "site.toml", mqtt_broker, [camera()], device="full",
                          kpu={"profile": "maixpy-full"})
    topics = Topics.for_device("full")
    async with watch(mqtt_broker, topics) as watcher:
        with DaemonProcess(config, tmp_path) as daemon:
            models = await started(watcher, topics)
            request = await command(mqtt_broker, topics, "load", {"model": "voc20_v3"})
            answer = (await reply(watcher, topics, request)).body
            after = [await watcher.next(topics.detections("cam"), wait=10) for _ in range(3)]
            assert daemon.alive()
            assert daemon.stop() == 0
    assert answer["ok"] is False
    assert answer["error"]["code"] == 2006
    assert answer["error"]["name"] == "ERR_NO_MEM"
    assert "memory overflow" in answer["error"]["message"]
    assert answer["sram"] == models["sram"]  # the account is unchanged
    assert all(m.body["model"] == "maixpy_face" for m in after)


async def test_with_preload_both_fit_under_c_sdk_and_the_switch_is_instant(
    mqtt_broker: Broker, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "site.toml", mqtt_broker, [camera()], device="preload",
                          models={"preload": ["maixpy_face", "voc20_v3"],
                                  "min_swap_interval": 0})
    topics = Topics.for_device("preload")
    async with watch(mqtt_broker, topics) as watcher:
        with DaemonProcess(config, tmp_path) as daemon:
            models = await started(watcher, topics)
            assert {m["name"] for m in models["models"]} == {"maixpy_face", "voc20_v3"}
            request = await command(mqtt_broker, topics, "switch",
                                    {"pipeline": "face", "model": "voc20_v3"})
            answer = (await reply(watcher, topics, request)).body
            assert daemon.stop() == 0
    assert answer["ok"], answer
    assert "loaded" not in answer["changed"]  # nothing had to be loaded: instant
    assert "unloaded" not in answer["changed"]
    assert answer["sram"]["used"] == models["sram"]["used"]


@pytest.fixture
def broken_models(tmp_path: Path) -> Path:
    """A models folder with a corrupted kmodel (its manifest has the corrupted bytes' sha256)
    and a model whose manifest's sha256 does not match its file."""
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(PROJECT / "models" / "voc20.txt", folder / "voc20.txt")
    manifest = (PROJECT / "models" / "voc20_v3.toml").read_text()
    original = next(line.split('"')[1] for line in manifest.splitlines()
                    if line.startswith("sha256"))
    cut = kmodel_path("voc20_yolo2_v3").read_bytes()[:5000]
    (folder / "cut.kmodel").write_bytes(cut)
    (folder / "cut.toml").write_text(manifest.replace("voc20_yolo2_v3.kmodel", "cut.kmodel")
                                     .replace(original, hashlib.sha256(cut).hexdigest()))
    shutil.copy(fixture_path("kmodels", "voc20_yolo2_v3.kmodel"), folder / "wrong.kmodel")
    (folder / "wrong.toml").write_text(manifest.replace("voc20_yolo2_v3.kmodel", "wrong.kmodel")
                                       .replace(original, "0" * 64))
    return folder


async def test_broken_models_give_error_replies_and_the_old_model_runs_on(
    mqtt_broker: Broker, tmp_path: Path, broken_models: Path
) -> None:
    config = write_config(tmp_path / "site.toml", mqtt_broker, [camera()], device="broken",
                          models={"search_path": [str(fixture_path("kmodels")),
                                                  str(broken_models)],
                                  "min_swap_interval": 0})
    topics = Topics.for_device("broken")
    async with watch(mqtt_broker, topics) as watcher:
        with DaemonProcess(config, tmp_path) as daemon:
            await started(watcher, topics)
            answers = []
            for model in ("cut", "wrong"):
                request = await command(mqtt_broker, topics, "switch",
                                        {"pipeline": "face", "model": model})
                answers.append((await reply(watcher, topics, request)).body)
            after = [await watcher.next(topics.detections("cam"), wait=10) for _ in range(3)]
            assert daemon.stop() == 0
    cut, wrong = answers
    assert cut["ok"] is False
    assert cut["error"]["code"] == 2003  # ERR_KMODEL_FORMAT: the truncated file
    assert wrong["ok"] is False
    assert wrong["error"]["name"] == "ERR_MODEL_UNUSABLE"
    assert "sha256" in wrong["error"]["message"]
    assert all(m.body["model"] == "maixpy_face" for m in after)


class _Running:
    """One daemon shared by the generated malformed-command examples."""

    def __init__(self, broker: Broker, workdir: Path) -> None:
        self.broker = broker
        self.topics = Topics.for_device("fuzz")
        config = write_config(workdir / "site.toml", broker, [camera()], device="fuzz")
        self.daemon = DaemonProcess(config, workdir).start()
        self.daemon.wait_for_log('"event": "ready"', timeout=START)


@pytest.fixture(scope="module")
def running(mqtt_broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Running]:
    kmodel_path("maixpy_facedetect_v3")
    run = _Running(mqtt_broker, tmp_path_factory.mktemp("fuzz"))
    yield run
    run.daemon.kill()


VERBS = st.sampled_from(["switch", "load", "deinit", "models", "reboot", "x" * 40])
BODIES = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=40).map(str.encode),
    st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                 lambda inner: st.lists(inner, max_size=3)
                 | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                 max_leaves=8).map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"pipeline": st.text(max_size=12), "model": st.text(max_size=12)})
    .map(lambda v: json.dumps(v).encode()),
    st.just(b"{" * 5000),
    st.just(json.dumps({"model": "m" * 70000}).encode()),
)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(verb=VERBS, body=BODIES)
def test_malformed_commands_get_error_replies_and_the_daemon_keeps_running(
    running: _Running, verb: str, body: bytes
) -> None:
    async def round_trip() -> dict[str, Any]:
        async with watch(running.broker, running.topics) as watcher:
            await command(running.broker, running.topics, verb, body)
            answer: dict[str, Any] = (await reply(watcher, running.topics, None)).body
            return answer

    answer = asyncio.run(round_trip())
    assert running.daemon.alive(), running.daemon.log()[-2000:]
    if verb != "models":  # none of these bodies names a real pipeline and model
        assert answer["ok"] is False
    if answer["ok"] is False:
        assert answer["error"]["code"] >= 2000
        assert answer["error"]["message"]


async def test_the_simulated_button_cycles_models(mqtt_broker: Broker, tmp_path: Path) -> None:
    socket = tmp_path / "button.sock"
    config = write_config(tmp_path / "site.toml", mqtt_broker, [camera()], device="button",
                          models={"min_swap_interval": 0})
    with config.open("a") as f:
        f.write(f'\n[[buttons]]\nname = "mode"\nkind = "simulated"\nsocket = "{socket}"\n'
                '[buttons.on_press]\naction = "cycle"\npipeline = "face"\n'
                'models = ["maixpy_face", "voc20_v3"]\n')
    topics = Topics.for_device("button")
    async with watch(mqtt_broker, topics) as watcher:
        with DaemonProcess(config, tmp_path) as daemon:
            await started(watcher, topics)
            seen = []
            for expected in ("voc20_v3", "maixpy_face"):
                await asyncio.to_thread(press_sync, socket)

                def runs(m: Received, model: str = expected) -> bool:
                    return bool(m.body["model"] == model)

                frame = await watcher.next(topics.detections("cam"), runs, 30)
                seen.append(frame.body["model"])
            assert daemon.stop() == 0
    assert seen == ["voc20_v3", "maixpy_face"]


async def test_the_boards_boot_key_switches_the_model_through_the_daemon(
    mqtt_broker: Broker, tmp_path: Path
) -> None:
    """A Maix board on a serial line (the stand-in board on a pseudo-terminal) is the KPU;
    its BOOT key, bound to a cycle action, swaps the pipeline's model."""

    with StandinBoard(tmp_path / "board") as board:
        config = write_config(
            tmp_path / "site.toml", mqtt_broker, [camera()], device="board",
            models={"min_swap_interval": 0},
            kpu={"backend": "serial", "profile": "c-sdk",
                 "serial": {"port": board.port, "mode": "host", "timeout": 2.0}})
        with config.open("a") as f:
            f.write('\n[[buttons]]\nname = "boot"\nkind = "board"\n'
                    '[buttons.on_press]\naction = "cycle"\npipeline = "face"\n'
                    'models = ["maixpy_face", "voc20_v3"]\n')
        topics = Topics.for_device("board")
        async with watch(mqtt_broker, topics) as watcher:
            with DaemonProcess(config, tmp_path) as daemon:
                await started(watcher, topics)
                board.key_down()
                await asyncio.sleep(0.2)
                board.key_up()

                def new_model(m: Received) -> bool:
                    return bool(m.body["model"] == "voc20_v3")

                frame = await watcher.next(topics.detections("cam"), new_model, 60)
                stats = (await watcher.next(topics.stats, wait=10)).body
                assert daemon.stop() == 0
        assert frame.body["model"] == "voc20_v3"
        link = stats["counters"]  # the stats show the link's traffic, frames and errors
        assert link["link_bytes_out"] > 0
        assert link["link_frames_in"] > 0
        assert link["link_bad_frames"] == 0
