"""The daemon's one MQTT connection: publishing never blocks a frame, and it outlives the broker.

aiomqtt 2.5 neither reconnects nor buffers, and its ``Client`` must be built inside a running
loop. So one task owns the connection: it builds a fresh client per attempt, waits with
exponential backoff and jitter between attempts, and on every connect re-subscribes to the
commands and republishes the retained state before it announces ``online``. Producers only
ever append to bounded queues, which one drain task empties:

* detections: when full, the oldest is dropped (the freshest frame wins); while
  disconnected they are dropped, never buffered; both are counted.
* retained state (stats, models): only the latest payload of each topic is kept, and it is
  sent again on every connect, so nothing is lost and nothing stale piles up.
* command results: a small queue whose overflow is counted and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from dataclasses import dataclass
from enum import Enum, auto
from pathlib import Path
from types import TracebackType
from typing import NamedTuple, Self

import aiomqtt
import structlog
from structlog.typing import FilteringBoundLogger

from edged.mqtt.config import BackoffSettings, MqttSettings
from edged.mqtt.payloads import (
    CommandErrorCode,
    CommandResultPayload,
    DetectionsPayload,
    EventPayload,
    ModelsPayload,
    PublisherStats,
    StatsPayload,
    command_error,
    command_result_payload,
    encode,
    request_id_of,
)
from edged.mqtt.topics import OFFLINE, ONLINE, Topics

STATE_QOS = 1
"""Availability, stats, models and results must arrive: QoS 1, awaited only by the drain."""


@dataclass(frozen=True, slots=True)
class Command:
    """One command as received: the verb from its topic and the raw payload.

    Parsing and acting on it is the command handler's job; the publisher only guarantees
    the verb is a single topic level (never ``result``) and the payload is within the cap.
    """

    verb: str
    payload: bytes


class PublisherError(Exception):
    """The publisher used outside its lifetime: entered twice."""


class _Kind(Enum):
    DETECTIONS = auto()
    RETAINED = auto()
    RESULT = auto()


class _Outgoing(NamedTuple):
    kind: _Kind
    topic: str
    payload: bytes
    request_id: str | None = None


class _Backoff:
    """Exponential backoff with equal jitter: a wait in ``[d/2, d]``, ``d`` doubling to max.

    The jitter keeps a fleet of devices from reconnecting in lockstep after a broker restart;
    the lower half keeps the wait from collapsing to nothing.
    """

    def __init__(self, settings: BackoffSettings) -> None:
        self._settings = settings
        self._ceiling = settings.initial

    def reset(self) -> None:
        self._ceiling = self._settings.initial

    def next_delay(self) -> float:
        ceiling = self._ceiling
        self._ceiling = min(self._settings.max, ceiling * 2)
        return random.uniform(ceiling / 2, ceiling)


def _str_or_none(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _describe(exc: BaseException) -> str:
    """The first error of a (task) group; aiomqtt puts why a connection ended in
    ``__cause__``, so show both."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    cause = exc.__cause__
    return f"{exc}: {cause}" if cause is not None else str(exc)


class MqttPublisher:
    """Publishes edged's topics and hands commands over; an async context manager.

    ``async with MqttPublisher(settings, device_id="cam-box-1") as mqtt:`` starts the
    connection task and returns at once (the daemon must run without a broker); leaving the
    block flushes what is queued, publishes ``offline`` and disconnects. Every ``publish_*``
    method is synchronous and never waits: call it from the frame path, on the event loop's
    thread (the queues are not thread-safe; a worker thread hands over with
    ``loop.call_soon_threadsafe``). A payload that is not JSON (NaN) is a ``ValueError``.

    Commands arriving on ``<prefix>/cmd/<verb>`` go to ``commands`` as :class:`Command`;
    without a queue the publisher does not subscribe at all.
    """

    def __init__(
        self,
        settings: MqttSettings,
        *,
        device_id: str,
        commands: asyncio.Queue[Command] | None = None,
    ) -> None:
        self.settings = settings
        self.topics = Topics.for_device(device_id, settings.prefix)  # validates device_id
        self.device_id = device_id
        self._client_id = settings.client_id or f"edged-{device_id}"
        self._commands = commands
        self._log: FilteringBoundLogger = structlog.get_logger().bind(
            component="mqtt", device=device_id
        )
        self._detections: deque[_Outgoing] = deque(maxlen=settings.queue_size)
        self._results: deque[_Outgoing] = deque(maxlen=settings.state_queue_size)
        self._retained: dict[str, bytes] = {}
        self._unsent: dict[str, None] = {}
        """Retained topics whose latest payload is not yet sent on this connection."""
        self._detection_topics: dict[str, str] = {}
        self._wakeup = asyncio.Event()
        self._online = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._ever_connected = False
        self._counts: PublisherStats = {
            "connected": False,
            "published": 0,
            "dropped_queue": 0,
            "dropped_disconnected": 0,
            "failed": 0,
            "state_overflow": 0,
            "reconnects": 0,
            "connect_failures": 0,
            "commands_received": 0,
            "commands_oversize": 0,
            "commands_busy": 0,
            "commands_retained": 0,
        }

    # ------------------------------------------------------------------ lifetime

    async def __aenter__(self) -> Self:
        if self._task is not None:
            raise PublisherError(
                "an MqttPublisher is entered once (it reconnects by itself); create a new one"
            )
        self._task = asyncio.create_task(self._run(), name=f"mqtt-{self.device_id}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Flush, publish ``offline``, disconnect; after ``timeout`` leave it to the will."""
        if self._task is None:
            return
        self._stopping.set()
        self._wakeup.set()
        try:
            async with asyncio.timeout(self.settings.timeout):
                await self._task
        except TimeoutError:
            self._log.warning("stop_timed_out", timeout_s=self.settings.timeout)

    @property
    def online(self) -> bool:
        """Connected, subscribed, retained state sent and ``online`` published."""
        return self._online.is_set()

    async def wait_online(self) -> None:
        await self._online.wait()

    def stats(self) -> PublisherStats:
        """Totals since start, for the ``mqtt`` object of the stats payload."""
        counts = self._counts.copy()
        counts["connected"] = self._online.is_set()
        return counts

    # ------------------------------------------------------------------ producers

    def publish_detections(self, payload: DetectionsPayload) -> None:
        """Queue one frame's detections; never waits. A bad camera name is a ``TopicError``."""
        topic = self._detection_topics.get(payload["camera"])
        if topic is None:
            topic = self._detection_topics[payload["camera"]] = self.topics.detections(
                payload["camera"]
            )
        if not self._online.is_set():
            self._counts["dropped_disconnected"] += 1
            return
        if len(self._detections) == self._detections.maxlen:
            self._counts["dropped_queue"] += 1
        self._detections.append(_Outgoing(_Kind.DETECTIONS, topic, encode(payload)))
        self._wakeup.set()

    def publish_stats(self, payload: StatsPayload) -> None:
        """Replace the retained stats; sent now if connected, else on the next connect."""
        self._set_retained(self.topics.stats, encode(payload))

    def publish_models(self, payload: ModelsPayload) -> None:
        """Replace the retained models state; sent now if connected, else on the next connect."""
        self._set_retained(self.topics.models, encode(payload))

    def publish_event(self, payload: EventPayload) -> None:
        """Queue an event message; like a reply, it is kept across a reconnect."""
        self._queue_result(_Outgoing(_Kind.RESULT, self.topics.events, encode(payload), None))

    def publish_result(self, payload: CommandResultPayload) -> None:
        """Queue a command's reply; kept across a reconnect, an overflow is counted."""
        self._queue_result(
            _Outgoing(_Kind.RESULT, self.topics.cmd_result, encode(payload), payload["request_id"])
        )

    def _set_retained(self, topic: str, payload: bytes) -> None:
        self._retained[topic] = payload
        self._unsent[topic] = None
        self._wakeup.set()

    def _queue_result(self, item: _Outgoing, *, front: bool = False) -> None:
        if len(self._results) == self._results.maxlen:
            lost = self._results[-1] if front else self._results[0]
            self._counts["state_overflow"] += 1
            self._log.error(
                "result_dropped",
                reason="state queue full",
                request_id=lost.request_id,
                queue_size=self.settings.state_queue_size,
            )
        if front:
            self._results.appendleft(item)
        else:
            self._results.append(item)
        self._wakeup.set()

    # ------------------------------------------------------------------ connection

    def _new_client(self) -> aiomqtt.Client:
        s = self.settings
        tls = s.tls
        return aiomqtt.Client(
            s.host,
            s.port,
            username=s.username,
            password=None if s.password is None else s.password.get_secret_value(),
            identifier=self._client_id,
            will=aiomqtt.Will(self.topics.availability, OFFLINE, qos=STATE_QOS, retain=True),
            clean_session=True,
            keepalive=s.keepalive,
            timeout=s.timeout,
            max_queued_incoming_messages=s.incoming_queue_size,
            tls_params=None
            if tls is None
            else aiomqtt.TLSParameters(
                ca_certs=_str_or_none(tls.ca_file),
                certfile=_str_or_none(tls.cert_file),
                keyfile=_str_or_none(tls.key_file),
            ),
            tls_insecure=None if tls is None else tls.insecure,
        )

    async def _run(self) -> None:
        """Connect, serve, and on any loss try again after a backoff, until stopped.

        The backoff starts over only after a connection that lasted ``backoff.max``: a broker
        that accepts and then drops us (a duplicate client id) is not hammered.
        """
        loop = asyncio.get_running_loop()
        backoff = _Backoff(self.settings.backoff)
        while not self._stopping.is_set():
            connected_at: float | None = None
            try:
                async with self._new_client() as client:
                    connected_at = loop.time()
                    await self._session(client)
            except* aiomqtt.MqttError as group:
                event = "connect_failed" if connected_at is None else "connection_lost"
                self._log.warning(
                    event,
                    host=self.settings.host,
                    port=self.settings.port,
                    error=_describe(group),
                )
            except* Exception:
                # A bug, not the network: say so loudly, but keep the daemon's MQTT alive.
                self._log.exception("session_crashed")
            if connected_at is None:
                self._counts["connect_failures"] += 1
            elif loop.time() - connected_at >= self.settings.backoff.max:
                backoff.reset()
            if self._stopping.is_set():
                break
            delay = backoff.next_delay()
            self._log.info("reconnect_scheduled", delay_s=round(delay, 3))
            await self._pause(delay)
        self._log.info("stopped", **self.stats())

    async def _pause(self, delay: float) -> None:
        """Sleep ``delay`` seconds, or less when stopping."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._stopping.wait()

    async def _session(self, client: aiomqtt.Client) -> None:
        """One connection: subscribe, retained state, ``online``; serve until stop or loss."""
        if self._ever_connected:
            self._counts["reconnects"] += 1
        self._ever_connected = True
        try:
            if self._commands is not None:
                await client.subscribe(self.topics.command_filter, qos=STATE_QOS)
            self._unsent = dict.fromkeys(self._retained)
            while (item := self._pop_retained()) is not None:
                await self._send(client, item)
            await self._publish(client, self.topics.availability, ONLINE, STATE_QOS, retain=True)
            self._online.set()
            self._log.info(
                "online",
                host=self.settings.host,
                port=self.settings.port,
                client_id=self._client_id,
                prefix=self.topics.prefix,
            )
            async with asyncio.TaskGroup() as tasks:
                listener = tasks.create_task(self._listen(client))
                await self._drain(client)
                listener.cancel()
            await self._publish(client, self.topics.availability, OFFLINE, STATE_QOS, retain=True)
        finally:
            self._online.clear()
            if self._detections:
                self._counts["dropped_disconnected"] += len(self._detections)
                self._detections.clear()

    # ------------------------------------------------------------------ outgoing

    def _pop_retained(self) -> _Outgoing | None:
        if not self._unsent:
            return None
        topic = next(iter(self._unsent))
        del self._unsent[topic]
        return _Outgoing(_Kind.RETAINED, topic, self._retained[topic])

    def _next(self) -> _Outgoing | None:
        """State before detections, so a flood of frames never delays a reply."""
        item = self._pop_retained()
        if item is None and self._results:
            item = self._results.popleft()
        if item is None and self._detections:
            item = self._detections.popleft()
        return item

    async def _drain(self, client: aiomqtt.Client) -> None:
        """Send what is queued, waiting for more; return once stopping and empty."""
        while True:
            item = self._next()
            if item is not None:
                await self._send(client, item)
            elif self._stopping.is_set():
                return
            else:
                self._wakeup.clear()
                await self._wakeup.wait()

    async def _send(self, client: aiomqtt.Client, item: _Outgoing) -> None:
        """Publish one queued message; on failure keep what must not be lost, then raise."""
        qos: int = self.settings.qos if item.kind is _Kind.DETECTIONS else STATE_QOS
        retain = item.kind is _Kind.RETAINED
        try:
            await self._publish(client, item.topic, item.payload, qos, retain=retain)
        except (aiomqtt.MqttError, asyncio.CancelledError):
            # Cancelled: the connection was lost while this was in flight.
            if item.kind is _Kind.RESULT:
                self._queue_result(item, front=True)
            # A retained payload is sent again on the next connect; a frame is gone.
            raise

    async def _publish(
        self, client: aiomqtt.Client, topic: str, payload: bytes, qos: int, *, retain: bool
    ) -> None:
        try:
            await client.publish(topic, payload, qos=qos, retain=retain)
        except aiomqtt.MqttError:
            self._counts["failed"] += 1
            raise
        self._counts["published"] += 1

    # ------------------------------------------------------------------ incoming

    async def _listen(self, client: aiomqtt.Client) -> None:
        """Hand commands over. Also how a lost connection is noticed while nothing is sent:
        the message iterator raises ``MqttError`` on disconnect."""
        async for message in client.messages:
            verb = self.topics.verb_of(message.topic.value)
            payload = message.payload
            # Our own replies arrive on cmd/result; paho always delivers bytes.
            if verb is None or self._commands is None or not isinstance(payload, bytes):
                continue
            self._accept(self._commands, verb, payload, retained=message.retain)

    def _accept(
        self, commands: asyncio.Queue[Command], verb: str, payload: bytes, *, retained: bool
    ) -> None:
        self._counts["commands_received"] += 1
        if retained:
            # A retained command would run again on every reconnect.
            self._counts["commands_retained"] += 1
            self._log.warning(
                "command_ignored", verb=verb, reason="retained; clear the retained message"
            )
            return
        cap = self.settings.command_max_bytes
        if len(payload) > cap:
            self._counts["commands_oversize"] += 1
            self._log.warning(
                "command_refused", verb=verb, reason="too large", size=len(payload), limit=cap
            )
            self._refuse(
                verb,
                None,
                CommandErrorCode.ERR_COMMAND_TOO_LARGE,
                f"payload of {len(payload)} bytes exceeds the limit of {cap} bytes",
            )
            return
        try:
            commands.put_nowait(Command(verb, payload))
        except asyncio.QueueFull:
            self._counts["commands_busy"] += 1
            self._log.warning(
                "command_refused",
                verb=verb,
                reason="command queue full",
                queue_size=commands.maxsize,
            )
            self._refuse(
                verb,
                request_id_of(payload),
                CommandErrorCode.ERR_BUSY,
                f"{commands.maxsize} commands are waiting; nothing was done, retry",
            )

    def _refuse(
        self, verb: str, request_id: str | None, code: CommandErrorCode, message: str
    ) -> None:
        self.publish_result(
            command_result_payload(
                device=self.device_id,
                verb=verb,
                request_id=request_id,
                error=command_error(code, message),
            )
        )
