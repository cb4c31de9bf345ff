"""The KPU backend contract on the simulator: one worker thread plays the one KPU.

Numeric work (building an executor, running a frame) runs on a single-thread pool owned by
the backend, never on the event loop, so the loop keeps serving cameras and MQTT while a
frame runs. An asyncio lock orders loads, deinits and runs; the lock is held until the
worker is idle again, even when the awaiting task is cancelled (a thread cannot be
interrupted), so a deinit never frees a model that is still running.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from types import TracebackType
from typing import Self, TypeVar

import numpy as np
import numpy.typing as npt

from edged.kpu.backend import KpuStats, ModelHandle
from edged.kpu.errors import HandleError, KpuError, RunError
from edged.kpu.kmodel.model import KModel
from edged.kpu.sim.executor import Executor, Rounding, check_inputs, create_executor
from edged.kpu.sram import MemoryReport, ModelCost, RuntimeProfile, SramAccount

T = TypeVar("T")
Arrays = list[npt.NDArray[np.generic]]


@dataclass(frozen=True, eq=False)
class _Loaded:
    handle: ModelHandle
    executor: Executor


class SimulatedKpu:
    """A simulated K210 KPU with an exact SRAM account under a runtime profile."""

    def __init__(
        self, profile: str | RuntimeProfile = "c-sdk", rounding: Rounding = "half-even"
    ) -> None:
        self._account = SramAccount(profile)
        self._rounding: Rounding = rounding
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edged-kpu")
        self._lock = asyncio.Lock()
        self._loaded: dict[int, _Loaded] = {}
        self._runs = 0
        self._busy = 0.0
        self._closed = False

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
        async with self._lock:
            self._check_open()
            rid = self._account.reserve(model, name)
            try:
                executor = await self._on_worker(
                    partial(create_executor, model, rounding=self._rounding)
                )
            except BaseException:
                self._account.release(rid)
                raise
            handle = ModelHandle(rid, name, model.sha256, ModelCost.of(model).total)
            self._loaded[rid] = _Loaded(handle, executor)
            return handle

    async def deinit(self, handle: ModelHandle) -> None:
        async with self._lock:
            self._get(handle)
            del self._loaded[handle.id]
            self._account.release(handle.id)

    async def run(self, handle: ModelHandle, inputs: Sequence[npt.NDArray[np.generic]]) -> Arrays:
        async with self._lock:
            loaded = self._get(handle)
            checked = check_inputs(loaded.executor.model.inputs, inputs)
            outputs, seconds = await self._on_worker(partial(_timed_run, loaded, checked))
            self._runs += 1
            self._busy += seconds
            return outputs

    def memory(self) -> MemoryReport:
        return self._account.report()

    def stats(self) -> KpuStats:
        return KpuStats(self._runs, self._busy)

    async def close(self) -> None:
        async with self._lock:
            if self._closed:
                return
            self._closed = True
            for rid in list(self._loaded):
                del self._loaded[rid]
                self._account.release(rid)
            self._worker.shutdown(wait=True)  # idle: the lock is held

    def _check_open(self) -> None:
        if self._closed:
            raise HandleError("the simulated KPU is closed")

    def _get(self, handle: ModelHandle) -> _Loaded:
        self._check_open()
        loaded = self._loaded.get(handle.id)
        if loaded is None or loaded.handle != handle:
            raise HandleError(f"model {handle.name!r} (handle {handle.id}) is not loaded")
        return loaded

    async def _on_worker(self, fn: Callable[[], T]) -> T:
        """``fn()`` on the KPU thread; waits for it to finish even when cancelled."""
        future = asyncio.get_running_loop().run_in_executor(self._worker, fn)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            while not future.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait({future})
            raise


def _timed_run(loaded: _Loaded, inputs: Arrays) -> tuple[Arrays, float]:
    """One frame on the KPU thread; unexpected failures become ``RunError`` (2008)."""
    start = time.perf_counter()
    try:
        outputs = loaded.executor.run(inputs)
    except KpuError:
        raise
    except Exception as exc:
        raise RunError(f"the simulator failed on model {loaded.handle.name!r}: {exc!r}") from exc
    return outputs, time.perf_counter() - start
