"""The KPU backend contract on the simulator: workers that play the KPU.

Numeric work (building an executor, running a frame) runs on compute sides
(:mod:`edged.kpu.sim.device`: a thread, or a process of its own), never on the event loop,
so the loop keeps serving cameras and MQTT while a frame runs. Each side has one worker
that does what it is given in order, and every side holds every loaded model: a run goes
to the side with the fewest runs waiting, so with ``workers`` sides that many frames
compute at once (of different cameras; the scheduler publishes them in the order given).
Loads and deinits go to every side, after the work given before them, so a deinit frees a
model only after the runs given before it; and the next run can wait at a worker while
this one computes (no hand-over through the event loop between frames). A call waits for
its work to finish even when cancelled (a thread cannot be interrupted). A compute process
that dies is started again with the loaded models, and the calls that saw it die fail with
a ``RunError``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from types import TracebackType
from typing import Self, TypeVar

import numpy as np
import numpy.typing as npt

from edged.kpu.backend import Arrays, KpuStats, ModelHandle
from edged.kpu.errors import HandleError, RunError
from edged.kpu.kmodel.model import KModel
from edged.kpu.sim.device import ComputeSide, ProcessSide, ThreadSide
from edged.kpu.sim.executor import Rounding, check_inputs
from edged.kpu.sram import MemoryReport, ModelCost, RuntimeProfile, SramAccount

T = TypeVar("T")


@dataclass(frozen=True, eq=False)
class _Loaded:
    handle: ModelHandle
    model: KModel


class SimulatedKpu:
    """A simulated K210 KPU with an exact SRAM account under a runtime profile; computing
    on ``workers`` threads, or with ``process`` processes of their own, each layer split
    across ``lanes`` threads (None or 0: one per core)."""

    def __init__(
        self, profile: str | RuntimeProfile = "c-sdk", rounding: Rounding = "half-even", *,
        process: bool = False, lanes: int | None = None, workers: int = 1,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be 1 or more, got {workers}")
        self._account = SramAccount(profile)
        self._rounding: Rounding = rounding
        self._process = process
        self._lanes = lanes
        self._sides = [self._new_side() for _ in range(workers)]
        self._waiting = [0] * workers  # runs given to each side and not yet returned
        self._loaded: dict[int, _Loaded] = {}
        self._runs = 0
        self._busy = 0.0
        self._closed = False

    @property
    def concurrent_runs(self) -> int:
        """One frame per worker."""
        return len(self._sides)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def load(self, model: KModel, name: str) -> ModelHandle:
        self._check_open()
        rid = self._account.reserve(model, name)
        loads = [(side, side.load(rid, model)) for side in self._sides]
        try:
            for side, loading in loads:
                await self._wait(side, loading)
        except BaseException as exc:
            for side in self._sides:  # unload wherever it loaded, or will (when cancelled)
                side.drop(rid)
            self._account.release(rid)
            if isinstance(exc, BrokenProcessPool):
                raise self._died(exc) from exc
            raise
        handle = ModelHandle(rid, name, model.sha256, ModelCost.of(model).total)
        self._loaded[rid] = _Loaded(handle, model)
        return handle

    async def deinit(self, handle: ModelHandle) -> None:
        self._get(handle)
        del self._loaded[handle.id]  # no run is given to a worker after this
        drops = [(side, side.drop(handle.id)) for side in self._sides]
        try:
            for side, dropping in drops:
                with contextlib.suppress(BrokenProcessPool):  # it took the model with it
                    await self._wait(side, dropping)
        finally:
            self._account.release(handle.id)

    async def run(self, handle: ModelHandle, inputs: Sequence[npt.NDArray[np.generic]]) -> Arrays:
        loaded = self._get(handle)
        checked = check_inputs(loaded.model.inputs, inputs)
        at = self._waiting.index(min(self._waiting))
        side = self._sides[at]
        self._waiting[at] += 1
        try:
            outputs, seconds = await self._wait(side, side.run(handle.id, handle.name, checked))
        except BrokenProcessPool as exc:
            raise self._died(exc) from exc
        finally:
            self._waiting[at] -= 1
        self._runs += 1
        self._busy += seconds
        return outputs

    def memory(self) -> MemoryReport:
        return self._account.report()

    def stats(self) -> KpuStats:
        return KpuStats(self._runs, self._busy)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for rid in list(self._loaded):
            del self._loaded[rid]
            self._account.release(rid)
        for side in self._sides:
            await asyncio.to_thread(side.shutdown)  # after the work given to it

    def _new_side(self) -> ComputeSide:
        side = ProcessSide if self._process else ThreadSide
        return side(self._rounding, self._lanes)

    def _check_open(self) -> None:
        if self._closed:
            raise HandleError("the simulated KPU is closed")

    def _get(self, handle: ModelHandle) -> _Loaded:
        self._check_open()
        loaded = self._loaded.get(handle.id)
        if loaded is None or loaded.handle != handle:
            raise HandleError(f"model {handle.name!r} (handle {handle.id}) is not loaded")
        return loaded

    async def _wait(self, side: ComputeSide, work: Future[T]) -> T:
        """The result of ``work`` given to ``side``; waits for it to finish even when
        cancelled. If the side's process died, starts another before re-raising."""
        future = asyncio.wrap_future(work)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            while not future.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait({future})
            raise
        except BrokenProcessPool:
            if side in self._sides and not self._closed:  # the first call to see it
                again = self._sides[self._sides.index(side)] = self._new_side()
                for rid, loaded in self._loaded.items():  # before any later work
                    again.load(rid, loaded.model)
                side.shutdown(wait=False)
            raise

    def _died(self, exc: BrokenProcessPool) -> RunError:
        return RunError(f"a process of the simulated KPU ended unexpectedly ({exc}); it was "
                        f"started again with {len(self._loaded)} model(s)")
