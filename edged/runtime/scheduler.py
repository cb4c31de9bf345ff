"""The scheduler: frames from the cameras, in turn, through their pipelines on the one KPU.

Three stages, each a task, joined by small hand-overs::

    intake  (takes the freshest frame of the next camera, pre-processes it on a worker)
      -> kpu    (gives it to the backend, which computes concurrent_runs frames at once)
      -> finish (waits for its run, decodes and filters on a worker, hands the result to
                 the publisher)

The intake takes a frame only when the KPU stage has room for it, so the frame it takes is
the freshest one and pre-processing of the next frame overlaps the run of this one. Up to
KPU_DEPTH frames per run the backend computes at once are given to it: the next one waits
at the KPU while this one runs, so the KPU goes from frame to frame without waiting for the
event loop (that hand-over cost about a fifth of the KPU's time with four cameras,
measured). Results are finished in the order the frames were given, so a camera's frames
are published in order even when the backend computes several at once. Every frame
carries the model binding it was prepared for; a frame whose binding was replaced by a
swap is dropped and counted, never run or published under the wrong model.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import structlog

from edged.camera.frame import Frame
from edged.kpu.backend import Arrays, KpuBackend
from edged.kpu.errors import HandleError, KpuError
from edged.runtime.mailbox import Mailbox, Rotation
from edged.runtime.manager import Active, ModelManager
from edged.runtime.meters import LatencyWindow, RateMeter
from edged.runtime.pipeline import Prepared
from edged.vision.detection import Detection

log = structlog.get_logger(component="scheduler")

KPU_DEPTH = 2
"""Frames given to the backend at once for each it computes at once: one running, one
waiting at the KPU."""


@dataclass(frozen=True, eq=False)
class Result:
    """One processed frame: what the publisher needs to build its message."""

    frame: Frame
    pipeline: str
    model: str
    detections: list[Detection]
    latency: float


@dataclass
class Flow:
    """One camera's passage through the scheduler, for the stats topic."""

    processed: int = 0
    published: int = 0
    dropped_swap: int = 0
    errors: int = 0
    out: RateMeter = field(default_factory=RateMeter)
    latency: LatencyWindow = field(default_factory=LatencyWindow)


@dataclass(frozen=True, eq=False)
class _Job:
    frame: Frame
    active: Active
    prepared: Prepared


class Scheduler:
    """Owns the cameras' mailboxes and the three stages; ``run`` until cancelled."""

    def __init__(
        self,
        manager: ModelManager,
        backend: KpuBackend,
        routes: Mapping[str, str],
        publish: Callable[[Result], None],
        *,
        workers: int = 2,
    ) -> None:
        self.manager = manager
        self.backend = backend
        self.routes = dict(routes)
        self.publish = publish
        self.flows = {camera: Flow() for camera in routes}
        self._rotation: Rotation[Frame] = Rotation()
        for camera in routes:
            self._rotation.add(camera)
        self._cpu = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="edged-cpu")
        self._room = asyncio.Semaphore(1)
        self._prepared: asyncio.Queue[_Job] = asyncio.Queue(maxsize=1)
        self._kpu_slots = asyncio.Semaphore(KPU_DEPTH * backend.concurrent_runs)
        self._running: asyncio.Queue[tuple[_Job, asyncio.Task[Arrays]]] = asyncio.Queue()
        self._last_progress = time.monotonic()
        self._in_flight = 0
        self.idle = asyncio.Event()
        """Set while no frame is between pre-processing and publishing."""
        self.idle.set()

    @property
    def boxes(self) -> Mapping[str, Mailbox[Frame]]:
        """Each routed camera's mailbox."""
        return self._rotation.boxes

    def set_routes(self, routes: Mapping[str, str]) -> None:
        """Cameras and their pipelines after a reload; a removed camera's frames in flight
        still finish."""
        for camera in set(self.routes) - set(routes):
            self._rotation.remove(camera)
        for camera in set(routes) - set(self.routes):
            self._rotation.add(camera)
            self.flows.setdefault(camera, Flow())
        self.routes = dict(routes)

    def stalled_for(self) -> float:
        """Seconds without a finished KPU run while a frame is in flight (0 when idle)."""
        if self._in_flight == 0:
            return 0.0
        return time.monotonic() - self._last_progress

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._intake(), name="scheduler-intake")
                tasks.create_task(self._run_kpu(), name="scheduler-kpu")
                tasks.create_task(self._finish(), name="scheduler-finish")
        finally:
            while not self._running.empty():  # given to the backend, never to be finished
                self._running.get_nowait()[1].cancel()
            self._cpu.shutdown(wait=False, cancel_futures=True)

    # -- the stages ---------------------------------------------------------------------------

    async def _intake(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._room.acquire()
            camera, frame = await self._rotation.take()
            if self._in_flight == 0:  # work after a pause: the stall clock starts now
                self._last_progress = time.monotonic()
            pipeline = self.routes.get(camera)
            active = self.manager.active(pipeline) if pipeline is not None else None
            if active is None:  # the pipeline is being swapped (or the camera just went)
                self.flows[camera].dropped_swap += 1
                self._room.release()
                continue
            try:
                prepared = await loop.run_in_executor(self._cpu, active.pipeline.prepare,
                                                      frame.image)
            except (ValueError, TypeError) as exc:
                self.flows[camera].errors += 1
                log.warning("frame_refused", camera=camera, seq=frame.seq, error=str(exc))
                self._room.release()
                continue
            self._in_flight += 1
            self.idle.clear()
            await self._prepared.put(_Job(frame, active, prepared))

    async def _run_kpu(self) -> None:
        while True:
            await self._kpu_slots.acquire()
            job = await self._prepared.get()
            self._room.release()  # the intake prepares the next frame while this one runs
            if not self.manager.is_current(job.active):
                self.flows[job.frame.camera].dropped_swap += 1
                self._kpu_slots.release()
                self._done()
                continue
            run = asyncio.create_task(self.backend.run(job.active.handle, job.prepared.inputs))
            self._running.put_nowait((job, run))  # bounded by the slots

    async def _finish(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            job, run = await self._running.get()
            try:
                outputs = await self._outputs(job, run)
                if outputs is not None:
                    self._publish_result(job, await loop.run_in_executor(
                        self._cpu, job.active.pipeline.finish, outputs, job.prepared.transform))
            except (ValueError, TypeError) as exc:
                self.flows[job.frame.camera].errors += 1
                log.error("decode_failed", camera=job.frame.camera, model=job.active.model,
                          error=str(exc))
            finally:
                self._done()

    async def _outputs(self, job: _Job, run: asyncio.Task[Arrays]) -> Arrays | None:
        """The outputs of ``job``'s run, or None (counted) when it could not run."""
        flow = self.flows[job.frame.camera]
        try:
            return await run
        except HandleError:  # deinitialised between the check and the run: a swap
            flow.dropped_swap += 1
        except KpuError as exc:
            flow.errors += 1
            log.error("kpu_run_failed", camera=job.frame.camera, model=job.active.model,
                      code=exc.code, error=str(exc))
        finally:
            self._kpu_slots.release()
            self._last_progress = time.monotonic()
        return None

    def _publish_result(self, job: _Job, detections: list[Detection]) -> None:
        flow = self.flows[job.frame.camera]
        if not self.manager.is_current(job.active):  # a swap was announced meanwhile
            flow.dropped_swap += 1
            return
        flow.processed += 1
        latency = time.monotonic() - job.frame.monotonic
        flow.latency.add(latency)
        if job.active.pipeline.publishes(detections):
            flow.published += 1
            flow.out.mark()
            self.publish(Result(job.frame, job.active.pipeline.name, job.active.model,
                                detections, latency))

    def _done(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self.idle.set()
