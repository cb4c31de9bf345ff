"""The scheduler with a real model on the simulated KPU: flow, fairness and stall detection."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from edged.camera.frame import Frame
from edged.kpu.backend import ModelHandle
from edged.kpu.sim.backend import SimulatedKpu
from edged.runtime.manager import ModelManager
from edged.runtime.pipeline import PipelineDefinition
from edged.runtime.registry import ModelRegistry, model_search_path
from edged.runtime.scheduler import KPU_DEPTH, Result, Scheduler
from tests.conftest import fixture_path


class GatedKpu(SimulatedKpu):
    """A simulated KPU whose runs wait for a gate: a test can stall it at will."""

    def __init__(self, workers: int = 1) -> None:
        super().__init__(workers=workers)
        self.gate = asyncio.Event()
        self.gate.set()
        self.given = 0
        """Runs asked for and not yet returned."""
        self.delays: list[float] = []
        """Seconds the next runs take longer, in the order they are asked for."""

    async def run(self, handle: ModelHandle,
                  inputs: Sequence[npt.NDArray[np.generic]]) -> list[npt.NDArray[np.generic]]:
        self.given += 1
        delay = self.delays.pop(0) if self.delays else 0.0
        try:
            await self.gate.wait()
            outputs = await super().run(handle, inputs)
            await asyncio.sleep(delay)
            return outputs
        finally:
            self.given -= 1


def frame(camera: str, seq: int) -> Frame:
    image = np.zeros((28, 28, 3), np.uint8)
    image[8:20, 12:16] = 255  # a "1"
    return Frame(camera, seq, time.time(), time.monotonic(), image)


async def setup(cameras: Sequence[str], workers: int = 1
                ) -> tuple[GatedKpu, ModelManager, Scheduler, list[Result]]:
    registry = ModelRegistry.discover(model_search_path([fixture_path("kmodels")]))
    backend = GatedKpu(workers)
    manager = ModelManager(backend, registry, {"digits": PipelineDefinition(model="mnist")})
    await manager.start()
    results: list[Result] = []
    scheduler = Scheduler(manager, backend, dict.fromkeys(cameras, "digits"), results.append)
    return backend, manager, scheduler, results


async def wait_until(condition: object, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_frames_flow_to_results_with_latency() -> None:
    backend, manager, scheduler, results = await setup(["cam"])
    task = asyncio.create_task(scheduler.run())
    try:
        for seq in range(5):
            scheduler.boxes["cam"].put(frame("cam", seq))
            await wait_until(lambda n=seq: len(results) > n)
        assert [r.frame.seq for r in results] == [0, 1, 2, 3, 4]
        assert all(r.model == "mnist" and r.pipeline == "digits" for r in results)
        assert all(0 < r.latency < 5 for r in results)
        assert scheduler.flows["cam"].processed == 5
    finally:
        task.cancel()
        await manager.close()
        await backend.close()


async def test_a_stalled_kpu_shows_as_a_stall_only_while_frames_wait() -> None:
    backend, manager, scheduler, results = await setup(["cam"])
    task = asyncio.create_task(scheduler.run())
    try:
        scheduler.boxes["cam"].put(frame("cam", 0))
        await wait_until(lambda: results)
        await asyncio.sleep(0.3)
        assert scheduler.stalled_for() == 0.0  # idle is not stalled
        backend.gate.clear()
        scheduler.boxes["cam"].put(frame("cam", 1))
        await asyncio.sleep(0.5)
        assert scheduler.stalled_for() >= 0.4  # the watchdog's health check now fails
        backend.gate.set()
        await wait_until(lambda: len(results) == 2)
        await asyncio.sleep(0.05)
        assert scheduler.stalled_for() < 0.2
    finally:
        task.cancel()
        await manager.close()
        await backend.close()


async def test_cameras_are_served_in_turn() -> None:
    backend, manager, scheduler, results = await setup(["fast", "slow"])
    task = asyncio.create_task(scheduler.run())
    try:
        for seq in range(12):
            scheduler.boxes["fast"].put(frame("fast", seq))
            if seq % 3 == 0:
                scheduler.boxes["slow"].put(frame("slow", seq))
            await asyncio.sleep(0.02)
        await wait_until(lambda: scheduler.idle.is_set() and not any(
            b.full for b in scheduler.boxes.values()))
        slow = [r.frame.seq for r in results if r.frame.camera == "slow"]
        assert slow == [0, 3, 6, 9]  # no slow frame was starved by the fast camera
    finally:
        task.cancel()
        await manager.close()
        await backend.close()


async def test_the_kpu_is_given_the_next_frame_while_it_runs_one() -> None:
    """KPU_DEPTH frames wait at a stalled KPU, never more; then all finish, in turn."""
    backend, manager, scheduler, results = await setup(["a", "b", "c", "d"])
    task = asyncio.create_task(scheduler.run())
    try:
        backend.gate.clear()
        for camera in "abcd":
            scheduler.boxes[camera].put(frame(camera, 0))
        await wait_until(lambda: backend.given == KPU_DEPTH)
        await asyncio.sleep(0.2)
        assert backend.given == KPU_DEPTH == 2
        backend.gate.set()
        await wait_until(lambda: len(results) == 4)
        assert sorted(r.frame.camera for r in results) == list("abcd")
        assert backend.given == 0
    finally:
        task.cancel()
        await manager.close()
        await backend.close()


async def test_frames_computed_at_once_are_published_in_the_order_given() -> None:
    """Two workers take KPU_DEPTH frames each; the first frame given finishes last, and
    still every result comes out in the order its frame was given."""
    backend, manager, scheduler, results = await setup(["a", "b"], workers=2)
    task = asyncio.create_task(scheduler.run())
    try:
        backend.gate.clear()
        backend.delays = [0.3]
        for seq in range(2):
            scheduler.boxes["a"].put(frame("a", seq))
            scheduler.boxes["b"].put(frame("b", seq))
            await wait_until(lambda n=seq: backend.given == 2 * (n + 1))
        await asyncio.sleep(0.1)
        assert backend.given == 2 * KPU_DEPTH
        backend.gate.set()
        await wait_until(lambda: len(results) == 4)
        assert [(r.frame.camera, r.frame.seq) for r in results] == [
            ("a", 0), ("b", 0), ("a", 1), ("b", 1)]
    finally:
        task.cancel()
        await manager.close()
        await backend.close()
