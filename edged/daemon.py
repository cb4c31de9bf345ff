"""The supervisor: starts every part, keeps them running, and stops them cleanly.

Parts run as tasks of one task group: the MQTT publisher, the scheduler, one feed per
camera, the stats timer, the command loop and the systemd watchdog. A camera feed that
fails unexpectedly is logged and restarted after a pause (its own retries cover the usual
failures); any other part failing stops the daemon with an error, so systemd restarts it.
SIGTERM (or SIGINT) finishes the frame in flight, publishes ``offline`` and exits 0; SIGHUP
reloads the config: cameras and pipelines change in place, an invalid config is refused
and the running one kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import faulthandler
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog

from edged.camera.config import CameraConfig
from edged.camera.factory import build_camera
from edged.camera.source import Camera
from edged.config import ConfigError, Settings, load_settings
from edged.control.buttons import ButtonError, build_button
from edged.control.config import (
    BoardButtonConfig,
    ButtonConfig,
    CycleAction,
    EventAction,
    PressKind,
    SwitchAction,
)
from edged.kpu.backend import KpuBackend
from edged.kpu.errors import KpuError
from edged.kpu.serial import BoardButton, BoardDetections, SerialKpu
from edged.kpu.sim.backend import SimulatedKpu
from edged.mqtt.commands import CommandHandler
from edged.mqtt.embedded import embedded_broker, listening
from edged.mqtt.payloads import (
    StatsPayload,
    SwapStats,
    detections_payload,
    event_payload,
    stats_payload,
)
from edged.mqtt.publisher import Command, MqttPublisher
from edged.mqtt.reports import camera_report, models_report, sram_usage
from edged.runtime.definitions import DefinitionError
from edged.runtime.manager import LifecycleError, ModelManager
from edged.runtime.manifest import Yolo2Config
from edged.runtime.pipeline import PipelineDefinition, load_pipeline, pipeline_path
from edged.runtime.registry import ModelRegistry, model_search_path
from edged.runtime.scheduler import Result, Scheduler
from edged.systemd import Notifier, Watchdog, status_line
from edged.vision.detection import make_detections

log = structlog.get_logger(component="daemon")

BROKER_WAIT = 10.0
"""Seconds to wait for the broker before telling systemd we are ready anyway (and why)."""
CAMERA_RESTART_PAUSE = 5.0
DRAIN_SECONDS = 2.0
"""At most this long on SIGTERM for the frame in flight to be published."""


class StartError(Exception):
    """The daemon cannot start: a model, pipeline or config problem, said precisely."""


def pipeline_definitions(
    settings: Settings, registry: ModelRegistry
) -> dict[str, PipelineDefinition]:
    """The pipelines the cameras use, each verified against its model now."""
    definitions = {}
    streamed = settings.kpu.stream_pipeline
    for name in sorted(set(settings.routes.values()) | ({streamed} if streamed else set())):
        try:
            pipeline = load_pipeline(pipeline_path(name, settings.pipelines_dir), registry)
        except LookupError as exc:
            raise StartError(str(exc)) from exc
        definitions[name] = pipeline.definition
    return definitions


@dataclass
class _Feed:
    config: CameraConfig
    camera: Camera
    task: asyncio.Task[None]


class Daemon:
    """One run of edged with one config (reloadable)."""

    def __init__(self, settings: Settings, config_path: Path | None) -> None:
        self.settings = settings
        self.config_path = config_path
        self.notifier = Notifier.from_env()
        self._stop = asyncio.Event()
        self._feeds: dict[str, _Feed] = {}
        self._started = time.monotonic()
        self._reloads = 0
        self._kpu_busy_mark = (time.monotonic(), 0.0)

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        faulthandler.enable()  # a watchdog SIGABRT prints every thread's stack
        settings = self.settings
        present, missing = settings.model_dirs
        for path in missing:
            log.warning("model_directory_missing", path=str(path))
        registry = ModelRegistry.discover(model_search_path(present))
        definitions = pipeline_definitions(settings, registry)
        async with contextlib.AsyncExitStack() as stack:
            if settings.embedded_broker == "auto" and not await listening(
                    settings.mqtt.host, settings.mqtt.port):
                await stack.enter_async_context(
                    embedded_broker(settings.mqtt.host, settings.mqtt.port))
            self.board: SerialKpu | None = None
            self.backend: KpuBackend
            if settings.kpu.backend == "serial":
                assert settings.kpu.serial is not None  # KpuSettings sees to it
                self.board = await stack.enter_async_context(
                    SerialKpu.from_settings(settings.kpu.serial, settings.kpu.profile))
                self.backend = self.board
            else:
                self.backend = await stack.enter_async_context(
                    SimulatedKpu(settings.kpu.profile, settings.kpu.rounding,
                                 process=settings.kpu.process, lanes=settings.kpu.lanes,
                                 workers=settings.kpu.workers))
            self.manager = ModelManager(
                self.backend, registry, definitions, preload=settings.models.preload,
                allow=settings.models.allow, min_swap_interval=settings.models.min_swap_interval)
            await self.manager.start()
            stack.push_async_callback(self.manager.close)
            await self._stream_on_board()
            commands: asyncio.Queue[Command] = asyncio.Queue(maxsize=16)
            self.publisher = await stack.enter_async_context(
                MqttPublisher(settings.mqtt, device_id=settings.device_id, commands=commands))
            self.scheduler = Scheduler(self.manager, self.backend, settings.routes, self._publish)
            self.handler = CommandHandler(self.manager, settings.device_id,
                                          self.publisher.publish_result, self._models_changed)
            self._publish_models()
            self._install_signals()
            try:
                async with asyncio.TaskGroup() as tasks:
                    self._tasks = tasks
                    scheduler = tasks.create_task(self.scheduler.run(), name="scheduler")
                    for config in settings.cameras:
                        self._start_feed(config)
                    others = [
                        tasks.create_task(self._stats_loop(), name="stats"),
                        tasks.create_task(self._command_loop(commands), name="commands"),
                        tasks.create_task(self._ready_then_watch(), name="watchdog"),
                        *(tasks.create_task(self._button(b), name=f"button-{b.name}")
                          for b in settings.buttons if not isinstance(b, BoardButtonConfig)),
                    ]
                    if self.board is not None:
                        others.append(tasks.create_task(self._board_events(self.board),
                                                        name="board-events"))
                    await self._stop.wait()
                    self.notifier.stopping("stopping: finishing the frame in flight")
                    for feed in list(self._feeds.values()):
                        feed.task.cancel()
                    await self._drain()
                    for task in [scheduler, *others]:
                        task.cancel()
            finally:
                self._remove_signals()
        log.info("stopped")

    # -- parts -----------------------------------------------------------------------------

    def _start_feed(self, config: CameraConfig) -> None:
        camera = build_camera(config)
        task = self._tasks.create_task(self._feed(camera), name=f"camera-{config.name}")
        self._feeds[config.name] = _Feed(config, camera, task)

    async def _feed(self, camera: Camera) -> None:
        """Frames of one camera into its mailbox; an unexpected failure restarts the feed."""
        bound = log.bind(camera=camera.name)
        while True:
            try:
                async with contextlib.aclosing(camera.frames()) as frames:
                    async for frame in frames:
                        box = self.scheduler.boxes.get(camera.name)
                        if box is None:  # removed by a reload
                            return
                        box.put(frame)
            except Exception:
                bound.exception("camera_feed_failed", pause=CAMERA_RESTART_PAUSE)
                await asyncio.sleep(CAMERA_RESTART_PAUSE)
            else:
                bound.info("camera_ended")
                return

    async def _button(self, config: ButtonConfig) -> None:
        """Presses of one button turned into actions; a failing input is retried."""
        assert not isinstance(config, BoardButtonConfig)  # those come from the board
        bound = log.bind(button=config.name)
        while True:
            try:
                async with build_button(config) as button:
                    async for event in button:
                        await self._act(config, event.kind)
            except ButtonError as exc:
                bound.error("button_failed", error=str(exc), pause=CAMERA_RESTART_PAUSE)
                await asyncio.sleep(CAMERA_RESTART_PAUSE)

    async def _act(self, config: ButtonConfig, kind: PressKind) -> None:
        action = config.action_for(kind)
        bound = log.bind(button=config.name, kind=kind)
        try:
            match action:
                case EventAction(payload=payload):
                    self.publisher.publish_event(event_payload(
                        device=self.settings.device_id, source="button", name=config.name,
                        kind=kind, payload=payload))
                    return
                case SwitchAction(pipeline=pipeline, model=model):
                    await self.manager.switch(pipeline, model)
                case CycleAction(pipeline=pipeline, models=models):
                    choices = list(models or self.manager.allowed(pipeline))
                    current = self.manager.pipeline_models().get(pipeline)
                    following = choices[(choices.index(current) + 1) % len(choices)] \
                        if current in choices else choices[0]
                    await self.manager.switch(pipeline, following)
        except (LifecycleError, KpuError) as exc:
            bound.warning("button_action_failed", error=str(exc))
            return
        self._models_changed()

    # -- a Maix board on the serial link ------------------------------------------------------

    async def _board_events(self, board: SerialKpu) -> None:
        """The board's BOOT key runs the actions of the ``kind = "board"`` buttons; in stream
        mode its detections are published like a camera's."""
        async for event in board.events():
            match event:
                case BoardButton(kind=kind):
                    for config in self.settings.buttons:
                        if isinstance(config, BoardButtonConfig):
                            await self._act(config, kind)
                case BoardDetections():
                    self._publish_board(event)

    def _models_changed(self) -> None:
        """After a swap, by a button or a command: publish the models, and in stream mode
        start the board's stream again (deinit of the old model stopped it)."""
        self._publish_models()
        if self.board is not None and self.settings.kpu.stream_pipeline is not None:
            self._tasks.create_task(self._restream(), name="board-stream")

    async def _restream(self) -> None:
        try:
            await self._stream_on_board()
        except (KpuError, StartError) as exc:
            log.warning("board_stream_failed", error=str(exc))

    async def _stream_on_board(self) -> None:
        """Stream mode: the board runs its pipeline's current model on its camera."""
        pipeline = self.settings.kpu.stream_pipeline
        if self.board is None or pipeline is None:
            return
        model = self.manager.pipeline_models().get(pipeline)
        handle = self.manager.resident().get(model) if model else None
        if model is None or handle is None:
            return
        decoder = self.manager.registry.get(model).manifest.decoder
        if not isinstance(decoder, Yolo2Config):
            raise StartError(f"kpu.serial.stream_pipeline {pipeline}: model "
                             f"{model} is not a YOLOv2 model; the board decodes only those")
        serial = self.settings.kpu.serial
        assert serial is not None  # stream_pipeline is None without it
        await self.board.stream(handle, anchors=decoder.anchors, threshold=decoder.threshold,
                                nms=decoder.nms, fps=serial.stream_fps)

    def _publish_board(self, event: BoardDetections) -> None:
        serial = self.settings.kpu.serial
        pipeline = self.settings.kpu.stream_pipeline
        if serial is None or pipeline is None or event.model is None:
            return
        frame = event.frame
        boxes = np.array([[b.x, b.y, b.w, b.h] for b in frame.boxes], np.float64).reshape(-1, 4)
        detections = make_detections(
            boxes, np.array([b.score for b in frame.boxes]),
            np.array([b.class_id for b in frame.boxes], np.int64),
            self.manager.registry.get(event.model).manifest.labels, (frame.width, frame.height))
        self.publisher.publish_detections(detections_payload(
            device=self.settings.device_id, camera=serial.stream_camera,
            pipeline=pipeline, model=event.model, frame=frame.frame,
            captured_at=time.time(), latency_ms=float(frame.run_ms),
            image_size=(frame.width, frame.height), detections=detections))

    async def _drain(self) -> None:
        """Give the frame in flight a moment to be published before everything stops."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.scheduler.idle.wait(), DRAIN_SECONDS)

    def _publish(self, result: Result) -> None:
        frame = result.frame
        self.publisher.publish_detections(detections_payload(
            device=self.settings.device_id, camera=frame.camera, pipeline=result.pipeline,
            model=result.model, frame=frame.seq, captured_at=frame.captured,
            latency_ms=result.latency * 1e3, image_size=(frame.width, frame.height),
            detections=result.detections, truth=frame.truth))

    def _publish_models(self) -> None:
        self.publisher.publish_models(
            models_report(self.manager, self.settings.routes, self.settings.device_id))

    async def _command_loop(self, commands: asyncio.Queue[Command]) -> None:
        while True:
            command = await commands.get()
            await self.handler.handle(command)

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.stats.interval)
            self.publisher.publish_stats(self._stats())
            self.notifier.status(self._status())

    def _stats(self) -> StatsPayload:
        now = time.monotonic()
        kpu = self.backend.stats()
        since, busy_then = self._kpu_busy_mark
        self._kpu_busy_mark = (now, kpu.busy_seconds)
        capacity = max(now - since, 1e-9) * self.backend.concurrent_runs
        busy = min(1.0, max(0.0, (kpu.busy_seconds - busy_then) / capacity))
        swaps = self.manager.stats
        last = None if swaps.last is None else round(swaps.last * 1e3, 2)
        swap_stats: SwapStats = {"ok": swaps.swaps, "failed": swaps.failed, "last_ms": last}
        cameras = {
            name: camera_report(feed.camera.stats, self.scheduler.flows[name],
                                self.scheduler.boxes[name].dropped)
            for name, feed in self._feeds.items() if name in self.scheduler.boxes
        }
        flows = self.scheduler.flows.values()
        counters = {"config_reloads": self._reloads,
                    "commands_handled": self.handler.handled,
                    "commands_refused": self.handler.refused,
                    "frames_dropped_swap": sum(f.dropped_swap for f in flows),
                    "frame_errors": sum(f.errors for f in flows)}
        if self.board is not None:  # the serial link: throughput, frames, errors
            link = dataclasses.asdict(self.board.link_stats())
            counters.update({f"link_{k}": v for k, v in link.items()
                             if isinstance(v, int) and not isinstance(v, bool)})
        return stats_payload(
            device=self.settings.device_id, uptime_s=round(now - self._started, 1),
            interval_s=self.settings.stats.interval, cameras=cameras,
            kpu={"backend": self.settings.kpu.backend, "busy": round(busy, 3), "runs": kpu.runs},
            sram=sram_usage(self.manager.memory()), mqtt=self.publisher.stats(),
            swaps=swap_stats, counters=counters)

    def _status(self) -> str:
        fps = {name: feed.camera.stats.fps() for name, feed in self._feeds.items()}
        return status_line(fps, self.manager.pipeline_models())

    async def _ready_then_watch(self) -> None:
        """READY once the models are loaded and the cameras started and the broker is
        reached (or BROKER_WAIT has passed: then the status says so); then the watchdog."""
        try:
            await asyncio.wait_for(self.publisher.wait_online(), BROKER_WAIT)
            self.notifier.ready(self._status())
        except TimeoutError:
            self.notifier.ready(f"broker {self.settings.mqtt.host}:{self.settings.mqtt.port} "
                                "not reachable yet; retrying")
        log.info("ready", cameras=list(self._feeds), pipelines=self.manager.pipeline_models())
        limit = self.settings.watchdog.stall_limit
        await Watchdog.from_env(self.notifier,
                                lambda: self.scheduler.stalled_for() < limit).run()

    # -- signals and reload ----------------------------------------------------------------

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop)
        loop.add_signal_handler(signal.SIGINT, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self._reload_soon)

    def _remove_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)

    def _reload_soon(self) -> None:
        self._tasks.create_task(self.reload(), name="reload")

    async def reload(self) -> None:
        """Apply a changed config in place; refuse an invalid one and keep running."""
        self.notifier.reloading()
        try:
            settings = load_settings(self.config_path)
            definitions = pipeline_definitions(settings, self.manager.registry)
            await self.manager.apply(definitions)
        except (ConfigError, DefinitionError, StartError, LookupError) as exc:
            log.error("reload_refused", config=str(self.config_path), error=str(exc))
            self.notifier.ready(f"reload refused: {exc}"[:200])
            return
        fixed = [section for section in ("mqtt", "kpu", "device_id", "models", "embedded_broker",
                                         "buttons")
                 if getattr(settings, section) != getattr(self.settings, section)]
        if fixed:
            log.warning("reload_needs_restart", sections=fixed)
        self.scheduler.set_routes(settings.routes)
        wanted = {c.name: c for c in settings.cameras}
        for name, feed in list(self._feeds.items()):
            if wanted.get(name) != feed.config:
                feed.task.cancel()
                del self._feeds[name]
        for name, config in wanted.items():
            if name not in self._feeds:
                self._start_feed(config)
        self.settings = settings
        self._reloads += 1
        self._publish_models()
        log.info("reloaded", cameras=list(wanted), pipelines=self.manager.pipeline_models())
        self.notifier.ready(self._status())
