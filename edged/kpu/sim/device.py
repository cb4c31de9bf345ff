"""Where the simulated KPU computes: a thread of this process, or a process of its own.

The loaded models' executors (their working memory and KPU RAM) live on the side that
computes, and one worker there runs everything in order, as the one KPU would. A thread
shares the daemon's interpreter lock: a frame's ~200 hand-overs between Python and the
numba and onnxruntime kernels each wait while a camera, the decoders or MQTT run Python,
which slowed the face model from 7.7 to 9.4 ms a frame beside a thread holding the lock a
fifth of the time, measured. A process of its own has its own lock; the frames cross in
shared memory (:mod:`edged.kpu.sim.shared_inputs`), the outputs as pickled arrays, and a
crash of that process reaches the backend as ``BrokenProcessPool``.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from edged.kpu.backend import Arrays
from edged.kpu.errors import KpuError, RunError
from edged.kpu.kmodel import parse_kmodel
from edged.kpu.kmodel.model import KModel
from edged.kpu.sim.executor import Executor, Rounding, create_executor
from edged.kpu.sim.lanes import Lanes, machine_lanes
from edged.kpu.sim.shared_inputs import InputBlocks, Layout, read_inputs

T = TypeVar("T")


class LoadedExecutors:
    """The executors of the loaded models, by SRAM reservation id, on the side that
    computes; touched only by its one worker."""

    def __init__(self, rounding: Rounding, lanes: int | None) -> None:
        self._rounding: Rounding = rounding
        self._lanes = Lanes(lanes) if lanes else machine_lanes()
        self._executors: dict[int, Executor] = {}

    def load(self, rid: int, model: KModel | bytes) -> None:
        """An executor for ``model`` (parsed here when it comes as the file's bytes)."""
        parsed = parse_kmodel(model) if isinstance(model, bytes) else model
        self._executors[rid] = create_executor(parsed, rounding=self._rounding,
                                               lanes=self._lanes)

    def run(self, rid: int, name: str, inputs: Sequence[npt.NDArray[np.generic]]
            ) -> tuple[Arrays, float]:
        """One frame and the seconds it took; unexpected failures become ``RunError``."""
        start = time.perf_counter()
        try:
            outputs = self._executors[rid].run(inputs)  # a KeyError too: a reload failed
        except KpuError:
            raise
        except Exception as exc:
            raise RunError(f"the simulator failed on model {name!r}: {exc!r}") from exc
        return outputs, time.perf_counter() - start

    def drop(self, rid: int) -> None:
        """Forget ``rid``'s executor; nothing to do where it never loaded."""
        self._executors.pop(rid, None)


class ComputeSide(Protocol):
    """One worker that runs the loaded models' executors in order."""

    def load(self, rid: int, model: KModel) -> Future[None]: ...

    def run(self, rid: int, name: str,
            inputs: Sequence[npt.NDArray[np.generic]]) -> Future[tuple[Arrays, float]]: ...

    def drop(self, rid: int) -> Future[None]: ...

    def shutdown(self, wait: bool = True) -> None:
        """Stop the worker after what it was given (waiting for that with ``wait``); the
        executors go with it."""
        ...


class ThreadSide:
    """A thread of this process computes."""

    def __init__(self, rounding: Rounding, lanes: int | None) -> None:
        self._executors = LoadedExecutors(rounding, lanes)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edged-kpu")

    def load(self, rid: int, model: KModel) -> Future[None]:
        return self._worker.submit(self._executors.load, rid, model)

    def run(self, rid: int, name: str,
            inputs: Sequence[npt.NDArray[np.generic]]) -> Future[tuple[Arrays, float]]:
        return self._worker.submit(self._executors.run, rid, name, inputs)

    def drop(self, rid: int) -> Future[None]:
        return self._worker.submit(self._executors.drop, rid)

    def shutdown(self, wait: bool = True) -> None:
        self._worker.shutdown(wait=wait)


_child_executors: LoadedExecutors | None = None
"""In a :class:`ProcessSide`'s process: the executors it computes with."""


PR_SET_PDEATHSIG = 1
"""Linux's prctl option: a signal for this process when its parent ends."""


def _start_child(rounding: Rounding, lanes: int | None, parent: int) -> None:
    global _child_executors  # noqa: PLW0603 - the child process's one piece of state
    _end_with_parent(parent)
    _child_executors = LoadedExecutors(rounding, lanes)


def _end_with_parent(parent: int) -> None:
    """End this process when ``parent`` (the thread that started it) ends, even by
    SIGKILL: the pool's own pipes do not tell a child its parent is gone, so a killed
    daemon would leave its compute process behind."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # ended before the request was made
        os._exit(1)


def _in_child() -> LoadedExecutors:
    assert _child_executors is not None, "the KPU process was started without its state"
    return _child_executors


def _child_load(rid: int, data: bytes) -> None:
    _in_child().load(rid, data)


def _child_run(rid: int, name: str, block: str, layout: Layout) -> tuple[Arrays, float]:
    return _in_child().run(rid, name, read_inputs(block, layout))


def _child_drop(rid: int) -> None:
    _in_child().drop(rid)


class ProcessSide:
    """A process of its own computes (started fresh, not forked from a daemon with
    threads); models go to it as their files' bytes, frames through shared memory."""

    def __init__(self, rounding: Rounding, lanes: int | None) -> None:
        self._worker = ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_child, initargs=(rounding, lanes, os.getpid()))
        self._pid = self._worker.submit(os.getpid)  # starts it now, not at the first load
        self._blocks = InputBlocks()

    @property
    def pid(self) -> int:
        """The compute process's id (once it has started)."""
        return self._pid.result()

    def load(self, rid: int, model: KModel) -> Future[None]:
        return self._submit(_child_load, rid, model.data)

    def run(self, rid: int, name: str,
            inputs: Sequence[npt.NDArray[np.generic]]) -> Future[tuple[Arrays, float]]:
        block, layout = self._blocks.put(inputs)
        running = self._submit(_child_run, rid, name, block.name, layout)
        running.add_done_callback(lambda _: self._blocks.release(block))
        return running

    def drop(self, rid: int) -> Future[None]:
        return self._submit(_child_drop, rid)

    def _submit(self, work: Callable[..., T], *args: object) -> Future[T]:
        """``work`` given to the process; one that died while idle gives a future that
        fails with ``BrokenProcessPool``, as if it had died during the work."""
        try:
            return self._worker.submit(work, *args)
        except BrokenProcessPool as exc:
            failed: Future[T] = Future()
            failed.set_exception(exc)
            return failed

    def shutdown(self, wait: bool = True) -> None:
        self._worker.shutdown(wait=wait)
        self._blocks.close()
