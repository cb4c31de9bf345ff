"""The publisher against a real broker, watched by a real MQTT client.

Every message the watcher receives is validated against its JSON Schema (or, for
availability, the two allowed words) as it arrives; a test fails on any invalid one.
Backoff is a few tens of milliseconds so that the reconnect tests take well under a second.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from typing import Any
from uuid import uuid4

import pytest
from structlog.testing import capture_logs

from edged.mqtt import BackoffSettings, Command, MqttPublisher, MqttSettings, PublisherError
from edged.mqtt.payloads import command_result_payload, encode
from edged.mqtt.publisher import _Backoff
from edged.mqtt.topics import OFFLINE, ONLINE, Topics
from tests.broker import Broker
from tests.conftest import PROJECT
from tests.mqtt_watch import WAIT_S, Received, watch
from tests.test_mqtt_payloads import frame_payload, models_example, stats_example


def settings_for(broker: Broker, **changes: Any) -> MqttSettings:
    return MqttSettings.model_validate(
        {
            "host": broker.host,
            "port": broker.port,
            "timeout": 2.0,
            "backoff": BackoffSettings(initial=0.02, max=0.2),
            **changes,
        }
    )


async def until(condition: Callable[[], bool]) -> None:
    """Poll: counters and connection state have no event to wait on, by design."""
    async with asyncio.timeout(WAIT_S):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def online(publisher: MqttPublisher) -> None:
    await asyncio.wait_for(publisher.wait_online(), WAIT_S)


def is_online(message: Received) -> bool:
    return message.payload == ONLINE


@pytest.fixture
def device() -> str:
    """A device id of the test's own: no retained message of another test is in sight."""
    return f"t{uuid4().hex[:10]}"


# ----------------------------------------------------------------------------- availability


async def test_online_is_retained_after_connect(mqtt_broker: Broker, device: str) -> None:
    async with MqttPublisher(settings_for(mqtt_broker), device_id=device) as publisher:
        await online(publisher)
        # Subscribed after the fact: only the broker's retained copy can arrive.
        async with watch(mqtt_broker, publisher.topics) as late:
            message = await late.next(publisher.topics.availability)
        assert message.payload == ONLINE
        assert message.retain
        assert publisher.stats()["connected"]


async def test_clean_stop_publishes_offline(mqtt_broker: Broker, device: str) -> None:
    topics = Topics.for_device(device)
    async with watch(mqtt_broker, topics) as watcher:
        async with MqttPublisher(settings_for(mqtt_broker), device_id=device) as publisher:
            await watcher.next(topics.availability, is_online)
        assert (await watcher.next(topics.availability)).payload == OFFLINE
    assert not publisher.online
    async with watch(mqtt_broker, topics) as late:
        retained = await late.next(topics.availability)
    assert retained.payload == OFFLINE
    assert retained.retain


async def test_last_will_says_offline_when_the_process_dies(
    mqtt_broker: Broker, device: str
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.mqtt_publisher_proc",
        mqtt_broker.host,
        str(mqtt_broker.port),
        device,
        cwd=PROJECT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        assert await asyncio.wait_for(proc.stdout.readline(), 3 * WAIT_S) == b"online\n"
        topics = Topics.for_device(device)
        async with watch(mqtt_broker, topics) as watcher:
            await watcher.next(topics.availability, is_online)
            proc.kill()  # SIGKILL: no DISCONNECT, no "offline" from the publisher itself
            await proc.wait()
            message = await watcher.next(topics.availability)
        assert message.payload == OFFLINE
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# ----------------------------------------------------------------------------- detections


async def test_detections_arrive_per_camera_and_match_the_schema(
    mqtt_broker: Broker, device: str
) -> None:
    topics = Topics.for_device(device)
    async with (
        watch(mqtt_broker, topics) as watcher,
        MqttPublisher(settings_for(mqtt_broker), device_id=device) as publisher,
    ):
        await online(publisher)
        for n in range(3):
            publisher.publish_detections(frame_payload(device, n, camera="front"))
            publisher.publish_detections(frame_payload(device, n, camera="yard"))
        for camera in ("front", "yard"):
            frames = [(await watcher.next(topics.detections(camera))).body for _ in range(3)]
            assert [f["frame"] for f in frames] == [0, 1, 2]
            assert all(f["camera"] == camera for f in frames)
            assert frames[0] == json.loads(encode(frame_payload(device, 0, camera=camera)))
        stats = publisher.stats()
    assert stats["published"] >= 7  # online + six frames
    assert stats["dropped_queue"] == stats["dropped_disconnected"] == stats["failed"] == 0


async def test_a_full_queue_drops_the_oldest(mqtt_broker: Broker, device: str) -> None:
    topics = Topics.for_device(device)
    settings = settings_for(mqtt_broker, queue_size=4)
    async with (
        watch(mqtt_broker, topics) as watcher,
        MqttPublisher(settings, device_id=device) as publisher,
    ):
        await online(publisher)
        for n in range(10):  # no await in between: the drain cannot run, the queue overflows
            publisher.publish_detections(frame_payload(device, n))
        assert publisher.stats()["dropped_queue"] == 6
        got = [(await watcher.next(topics.detections("front"))).body["frame"] for _ in range(4)]
    assert got == [6, 7, 8, 9]


# ----------------------------------------------------------------------------- reconnect


async def test_reconnects_after_the_broker_restarts(fresh_broker: Broker, device: str) -> None:
    commands: asyncio.Queue[Command] = asyncio.Queue()
    settings = settings_for(fresh_broker)
    async with MqttPublisher(settings, device_id=device, commands=commands) as publisher:
        topics = publisher.topics
        await online(publisher)
        publisher.publish_models(models_example(device))
        publisher.publish_stats(stats_example(device, publisher))
        async with watch(fresh_broker, topics) as watcher:
            await watcher.next(topics.models)
            await watcher.next(topics.stats)

        fresh_broker.kill()
        await until(lambda: not publisher.online)
        publisher.publish_detections(frame_payload(device, 1))  # no connection: dropped
        assert publisher.stats()["dropped_disconnected"] == 1
        swapped = models_example(device, model="ultraface")
        publisher.publish_models(swapped)  # kept, and sent on the next connect
        await until(lambda: publisher.stats()["connect_failures"] >= 2)  # it keeps trying

        fresh_broker.start()  # same port, empty: no retained message survived
        async with watch(fresh_broker, topics) as watcher:
            await online(publisher)
            assert (await watcher.next(topics.availability, is_online)).payload == ONLINE
            assert (await watcher.next(topics.models)).payload == encode(swapped)
            await watcher.next(topics.stats)

            command = b'{"request_id":"r1","pipeline":"faces","model":"ultraface"}'
            await watcher.client.publish(topics.command("switch"), command, qos=1)
            received = await asyncio.wait_for(commands.get(), WAIT_S)
            assert received == Command("switch", command)

            publisher.publish_detections(frame_payload(device, 2))
            assert (await watcher.next(topics.detections("front"))).body["frame"] == 2
        stats = publisher.stats()
    assert stats["reconnects"] == 1
    assert stats["commands_received"] == 1


async def test_state_published_before_the_first_connect_is_sent_on_it(
    fresh_broker: Broker, device: str
) -> None:
    fresh_broker.kill()
    async with MqttPublisher(settings_for(fresh_broker), device_id=device) as publisher:
        publisher.publish_models(models_example(device))
        publisher.publish_detections(frame_payload(device, 0))
        await until(lambda: publisher.stats()["connect_failures"] >= 1)
        fresh_broker.start()
        await online(publisher)
        async with watch(fresh_broker, publisher.topics) as late:
            retained = await late.next(publisher.topics.models)
        assert retained.retain
        assert publisher.stats()["dropped_disconnected"] == 1


def test_backoff_doubles_with_jitter_up_to_max_and_starts_over() -> None:
    backoff = _Backoff(BackoffSettings(initial=1.0, max=8.0))
    ceilings = [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    for ceiling in ceilings:
        assert ceiling / 2 <= backoff.next_delay() <= ceiling
    backoff.reset()
    assert backoff.next_delay() <= 1.0


# ----------------------------------------------------------------------------- commands


async def test_an_oversize_command_is_refused_and_counted(mqtt_broker: Broker, device: str) -> None:
    commands: asyncio.Queue[Command] = asyncio.Queue()
    settings = settings_for(mqtt_broker, command_max_bytes=100)
    topics = Topics.for_device(device)
    async with (
        watch(mqtt_broker, topics) as watcher,
        MqttPublisher(settings, device_id=device, commands=commands) as publisher,
    ):
        await online(publisher)
        huge = b'{"request_id":"big","model":"' + b"x" * 200 + b'"}'
        await watcher.client.publish(topics.command("load"), huge, qos=1)
        reply = (await watcher.next(topics.cmd_result)).body
        assert reply["ok"] is False
        assert reply["verb"] == "load"
        assert reply["request_id"] is None  # an oversize payload is not parsed
        assert reply["error"]["name"] == "ERR_COMMAND_TOO_LARGE"
        assert publisher.stats()["commands_oversize"] == 1
        assert commands.empty()

        await watcher.client.publish(topics.command("load"), b'{"model":"m"}', qos=1)
        assert await asyncio.wait_for(commands.get(), WAIT_S) == Command("load", b'{"model":"m"}')
        # Its own reply came back through cmd/+ and was not taken for a command.
        assert publisher.stats()["commands_received"] == 2


async def test_a_full_command_queue_answers_busy(mqtt_broker: Broker, device: str) -> None:
    commands: asyncio.Queue[Command] = asyncio.Queue(maxsize=1)
    topics = Topics.for_device(device)
    async with (
        watch(mqtt_broker, topics) as watcher,
        MqttPublisher(settings_for(mqtt_broker), device_id=device, commands=commands) as publisher,
    ):
        await online(publisher)
        await watcher.client.publish(topics.command("load"), b'{"model":"a"}', qos=1)
        await watcher.client.publish(
            topics.command("load"), b'{"request_id":"second","model":"b"}', qos=1
        )
        reply = (await watcher.next(topics.cmd_result)).body
        assert reply["error"]["name"] == "ERR_BUSY"
        assert reply["request_id"] == "second"
        assert commands.get_nowait() == Command("load", b'{"model":"a"}')
        assert publisher.stats()["commands_busy"] == 1


async def test_a_retained_command_is_ignored(mqtt_broker: Broker, device: str) -> None:
    commands: asyncio.Queue[Command] = asyncio.Queue()
    topics = Topics.for_device(device)
    async with watch(mqtt_broker, topics) as watcher:
        stale = topics.command("deinit")
        await watcher.client.publish(stale, b'{"model":"m"}', qos=1, retain=True)
        try:
            async with MqttPublisher(
                settings_for(mqtt_broker), device_id=device, commands=commands
            ) as publisher:
                await until(lambda: publisher.stats()["commands_retained"] == 1)
                assert commands.empty()
        finally:
            await watcher.client.publish(stale, b"", qos=1, retain=True)


async def test_results_wait_for_the_connection_and_an_overflow_is_counted(
    mqtt_broker: Broker, device: str
) -> None:
    settings = settings_for(mqtt_broker, state_queue_size=3)
    topics = Topics.for_device(device)
    with capture_logs() as logs:
        publisher = MqttPublisher(settings, device_id=device)
        for n in range(5):  # not connected yet: they wait, the two oldest are lost
            publisher.publish_result(
                command_result_payload(device=device, verb="load", request_id=f"r{n}")
            )
    assert publisher.stats()["state_overflow"] == 2
    dropped = [e["request_id"] for e in logs if e["event"] == "result_dropped"]
    assert dropped == ["r0", "r1"]
    async with watch(mqtt_broker, topics) as watcher, publisher:
        replies = [(await watcher.next(topics.cmd_result)).body for _ in range(3)]
    assert [r["request_id"] for r in replies] == ["r2", "r3", "r4"]


async def test_a_publisher_runs_once(mqtt_broker: Broker, device: str) -> None:
    publisher = MqttPublisher(settings_for(mqtt_broker), device_id=device)
    async with publisher:
        with pytest.raises(PublisherError, match="entered once"):
            await publisher.__aenter__()
