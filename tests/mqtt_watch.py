"""A real MQTT client that sees what a dashboard sees, checking every message's schema."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

import aiomqtt

from edged.mqtt.topics import Topics
from tests.broker import Broker
from tests.test_mqtt_payloads import check_message

WAIT_S = 5.0


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    body: Any


class Watcher:
    """What a dashboard sees: everything edged publishes under one prefix, in order.

    A message on a topic none of its filters match is the broker's error, not edged's: it
    is kept in ``strays`` and not delivered. amqtt 0.12.1 sends a connecting client the
    retained messages matching *any* client's subscriptions (``Broker._client_connected``
    loops over ``self._subscriptions``); mosquitto never does.
    """

    def __init__(self, client: aiomqtt.Client, topics: Topics, filters: list[str]) -> None:
        self.client = client
        self.topics = topics
        self.filters = filters
        self.strays: list[str] = []
        self._pending: list[Received] = []
        self.history: list[Received] = []
        """Every valid message, in arrival order, taken or not."""
        self._errors: list[BaseException] = []
        self._arrived = asyncio.Event()

    async def read(self) -> None:
        with suppress(aiomqtt.MqttError):  # the broker was killed under us
            async for message in self.client.messages:
                payload = message.payload
                assert isinstance(payload, bytes)
                topic = message.topic.value
                if not any(message.topic.matches(f) for f in self.filters):
                    self.strays.append(topic)
                    continue
                try:
                    body = check_message(self.topics, topic, payload)
                except Exception as exc:
                    exc.add_note(f"message on {topic}: {payload[:500]!r}")
                    self._errors.append(exc)
                else:
                    received = Received(topic, payload, message.retain, body)
                    self._pending.append(received)
                    self.history.append(received)
                self._arrived.set()

    def raise_errors(self) -> None:
        if self._errors:
            raise self._errors[0]

    async def next(
        self, topic: str, where: Callable[[Received], bool] | None = None, wait: float = WAIT_S
    ) -> Received:
        """The first message on ``topic`` (matching ``where``) not taken yet."""
        try:
            async with asyncio.timeout(wait):
                while True:
                    self.raise_errors()
                    for i, message in enumerate(self._pending):
                        if message.topic == topic and (where is None or where(message)):
                            return self._pending.pop(i)
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            seen = [(m.topic, m.payload[:60]) for m in self._pending]
            raise AssertionError(f"nothing on {topic} in {wait} s; waiting: {seen}") from None

    def taken(self, topic: str) -> list[Received]:
        """Every message on ``topic`` not taken yet, oldest first, taking them."""
        self.raise_errors()
        found = [m for m in self._pending if m.topic == topic]
        self._pending = [m for m in self._pending if m.topic != topic]
        return found


@asynccontextmanager
async def watch(broker: Broker, topics: Topics) -> AsyncIterator[Watcher]:
    async with aiomqtt.Client(broker.host, broker.port, identifier=f"watch-{uuid4().hex}") as c:
        filters = [
            topics.availability,
            topics.stats,
            topics.models,
            topics.cmd_result,
            topics.events,
            f"{topics.prefix}/+/detections",
        ]
        await c.subscribe([(f, 1) for f in filters])
        watcher = Watcher(c, topics, filters)
        reader = asyncio.create_task(watcher.read())
        try:
            yield watcher
        finally:
            reader.cancel()
            with suppress(asyncio.CancelledError):
                await reader
    watcher.raise_errors()


