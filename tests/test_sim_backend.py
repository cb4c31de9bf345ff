"""The simulated KPU backend: the contract, its thread and its serialisation."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from edged.kpu import sim
from edged.kpu.backend import KpuBackend
from edged.kpu.errors import HandleError, KmodelError, MemoryOverflow, ModelsFull, RunError
from edged.kpu.kmodel import KModel, load_kmodel
from edged.kpu.sim.backend import SimulatedKpu
from edged.kpu.sim.device import ProcessSide
from edged.kpu.sim.executor import Executor, LayerObserver, Rounding, create_executor
from edged.kpu.sim.lanes import Lanes
from edged.kpu.sram import ModelCost
from tests.conftest import golden_cases, kmodel_path

Arrays = list[npt.NDArray[np.generic]]


@pytest.fixture(scope="module")
def iris() -> KModel:
    return load_kmodel(kmodel_path("iris_v3"))


@pytest.fixture(scope="module")
def face() -> KModel:
    return load_kmodel(kmodel_path("maixpy_facedetect_v3"))


@pytest.fixture(scope="module")
def voc() -> KModel:
    return load_kmodel(kmodel_path("voc20_yolo2_v3"))


class Probe:
    """Stands in for the simulator where a test is about the backend, not the numbers:
    records the thread and overlap of runs and can hold a run until released."""

    def __init__(self) -> None:
        self.threads: set[int] = set()
        self.active = 0
        self.most_active = 0
        self.started = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.hold_seconds = 0.0
        self._lock = threading.Lock()

    def executor(self, model: KModel, *, rounding: Rounding = "half-even",
            lanes: Lanes | None = None) -> Executor:
        probe = self

        class Fake:
            def __init__(self) -> None:
                self.model = model

            def run(
                self,
                inputs: Sequence[npt.NDArray[np.generic]],
                observer: LayerObserver | None = None,
            ) -> Arrays:
                with probe._lock:
                    probe.threads.add(threading.get_ident())
                    probe.active += 1
                    probe.most_active = max(probe.most_active, probe.active)
                probe.started.set()
                probe.release.wait(5)
                time.sleep(probe.hold_seconds)
                with probe._lock:
                    probe.active -= 1
                return [np.zeros(t.shape, t.dtype) for t in model.outputs]

        return Fake()


@pytest.fixture
def probe(monkeypatch: pytest.MonkeyPatch) -> Iterator[Probe]:
    p = Probe()
    monkeypatch.setattr(sim.device, "create_executor", p.executor)
    yield p
    p.release.set()


def inputs_for(model: KModel) -> Arrays:
    return [np.zeros(t.shape, t.dtype) for t in model.inputs]


def test_is_a_kpu_backend() -> None:
    backend: KpuBackend = SimulatedKpu()  # checked by mypy against the Protocol
    assert isinstance(backend, SimulatedKpu)


@pytest.mark.parametrize("process", [False, True], ids=["thread", "process"])
async def test_iris_golden_load_run_deinit(iris: KModel, process: bool) -> None:
    cases = golden_cases("iris_v3")
    if not cases:
        pytest.skip("golden outputs of iris_v3 are missing (../shared/fixtures/golden)")
    async with SimulatedKpu(process=process) as kpu:
        empty = kpu.memory()
        handle = await kpu.load(iris, "iris")
        assert (handle.name, handle.sha256) == ("iris", iris.sha256)
        assert handle.nbytes == ModelCost.of(iris).total == kpu.memory().used
        for case in cases:
            outputs = await kpu.run(handle, [case.input])
            assert len(outputs) == len(case.outputs)
            for got, want in zip(outputs, case.outputs, strict=True):
                np.testing.assert_array_equal(got, want)
        assert kpu.stats().runs == len(cases)
        assert kpu.stats().busy_seconds > 0
        await kpu.deinit(handle)
        assert kpu.memory() == empty
        with pytest.raises(HandleError):
            await kpu.deinit(handle)
        with pytest.raises(HandleError):
            await kpu.run(handle, [cases[0].input])
        assert kpu.memory() == empty


async def test_run_happens_off_the_event_loop(
    iris: KModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: set[int] = set()

    def observed(model: KModel, *, rounding: Rounding = "half-even",
            lanes: Lanes | None = None) -> Executor:
        real = create_executor(model, rounding=rounding, lanes=lanes)

        class Observed:
            def __init__(self) -> None:
                self.model = model

            def run(
                self,
                inputs: Sequence[npt.NDArray[np.generic]],
                observer: LayerObserver | None = None,
            ) -> Arrays:
                def seen(
                    index: int, seconds: float, output: npt.NDArray[np.generic] | None
                ) -> None:
                    threads.add(threading.get_ident())

                return real.run(inputs, seen)

        return Observed()

    monkeypatch.setattr(sim.device, "create_executor", observed)
    async with SimulatedKpu() as kpu:
        handle = await kpu.load(iris, "iris")
        await kpu.run(handle, inputs_for(iris))
    assert threads
    assert threading.get_ident() not in threads


@pytest.mark.parametrize(
    "bad",
    [
        [np.zeros(4, np.float64)],
        [np.zeros(5, np.float32)],
        [np.zeros(4, np.float32), np.zeros(4, np.float32)],
        [],
    ],
    ids=["dtype", "shape", "two inputs", "no input"],
)
async def test_wrong_input_is_a_run_error(
    iris: KModel, probe: Probe, bad: list[npt.NDArray[np.generic]]
) -> None:
    async with SimulatedKpu() as kpu:
        handle = await kpu.load(iris, "iris")
        with pytest.raises(RunError, match="2008"):
            await kpu.run(handle, bad)
        assert kpu.stats().runs == 0
        await kpu.run(handle, inputs_for(iris))  # still usable


async def test_refused_loads_leave_memory_unchanged(
    face: KModel, voc: KModel, probe: Probe
) -> None:
    async with SimulatedKpu("maixpy-full") as kpu:
        await kpu.load(voc, "voc")
        before = kpu.memory()
        with pytest.raises(MemoryOverflow, match="memory overflow"):
            await kpu.load(face, "face")
        assert kpu.memory() == before


async def test_sixth_load_is_refused(iris: KModel, probe: Probe) -> None:
    async with SimulatedKpu() as kpu:
        for i in range(5):
            await kpu.load(iris, f"iris{i}")
        before = kpu.memory()
        with pytest.raises(ModelsFull, match="2009"):
            await kpu.load(iris, "iris5")
        assert kpu.memory() == before


@pytest.mark.parametrize("workers", [1, 2])
async def test_executor_failure_releases_the_reservation(
    iris: KModel, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    def broken(model: KModel, *, rounding: Rounding = "half-even",
            lanes: Lanes | None = None) -> Executor:
        raise KmodelError("layer 3 cannot be executed")

    monkeypatch.setattr(sim.device, "create_executor", broken)
    async with SimulatedKpu(workers=workers) as kpu:
        before = kpu.memory()
        with pytest.raises(KmodelError, match="layer 3"):
            await kpu.load(iris, "iris")
        assert kpu.memory() == before


async def test_concurrent_runs_are_serialised(iris: KModel, probe: Probe) -> None:
    probe.hold_seconds = 0.02
    async with SimulatedKpu() as kpu:
        handle = await kpu.load(iris, "iris")
        results = await asyncio.gather(*(kpu.run(handle, inputs_for(iris)) for _ in range(4)))
        assert len(results) == 4
        assert probe.most_active == 1
        assert len(probe.threads) == 1
        assert kpu.stats().runs == 4
        assert kpu.stats().busy_seconds >= 4 * 0.02


async def test_each_worker_runs_a_frame_at_once_and_a_deinit_waits_for_all(
        iris: KModel, probe: Probe) -> None:
    """Two workers: two frames compute at once (on two threads), never more; a deinit
    given meanwhile frees the model only after every run given before it."""
    probe.release.clear()
    async with SimulatedKpu(workers=2) as kpu:
        assert kpu.concurrent_runs == 2
        handle = await kpu.load(iris, "iris")
        runs = [asyncio.create_task(kpu.run(handle, inputs_for(iris))) for _ in range(4)]
        deadline = time.monotonic() + 5
        while probe.active < 2:
            assert time.monotonic() < deadline, "the second worker never started a run"
            await asyncio.sleep(0.01)
        deinit = asyncio.create_task(kpu.deinit(handle))
        await asyncio.sleep(0.05)
        assert not deinit.done()
        assert kpu.memory().used == handle.nbytes
        probe.release.set()
        for outputs in await asyncio.gather(*runs):
            assert [o.shape for o in outputs] == [t.shape for t in iris.outputs]
        await deinit
        assert kpu.memory().used == 0
        assert probe.most_active == 2
        assert len(probe.threads) == 2
        assert kpu.stats().runs == 4


async def test_worker_processes_compute_what_one_computes(face: KModel) -> None:
    """Frames given at once to two processes come back as one executor computes them."""
    rng = np.random.default_rng(7)
    frames = [[rng.integers(0, 256, t.shape, np.uint8) for t in face.inputs] for _ in range(4)]
    reference = create_executor(face)
    want = [reference.run(inputs) for inputs in frames]
    async with SimulatedKpu(process=True, workers=2) as kpu:
        handle = await kpu.load(face, "face")
        got = await asyncio.gather(*(kpu.run(handle, inputs) for inputs in frames))
        assert kpu.stats().runs == 4
    for outputs, expected in zip(got, want, strict=True):
        for a, b in zip(outputs, expected, strict=True):
            np.testing.assert_array_equal(a, b)


async def wait_for(event: threading.Event) -> None:
    """Wait for the KPU thread to signal, without blocking the loop."""
    assert await asyncio.to_thread(event.wait, 5)


async def test_deinit_waits_for_the_run_in_flight(iris: KModel, probe: Probe) -> None:
    probe.release.clear()
    async with SimulatedKpu() as kpu:
        handle = await kpu.load(iris, "iris")
        run = asyncio.create_task(kpu.run(handle, inputs_for(iris)))
        await wait_for(probe.started)
        deinit = asyncio.create_task(kpu.deinit(handle))
        await asyncio.sleep(0.05)
        assert not deinit.done()
        assert kpu.memory().used == handle.nbytes
        probe.release.set()
        outputs = await run
        await deinit
        assert [o.shape for o in outputs] == [t.shape for t in iris.outputs]
        assert kpu.memory().used == 0


async def test_a_cancelled_run_holds_the_kpu_until_it_ends(iris: KModel, probe: Probe) -> None:
    probe.release.clear()
    async with SimulatedKpu() as kpu:
        handle = await kpu.load(iris, "iris")
        run = asyncio.create_task(kpu.run(handle, inputs_for(iris)))
        await wait_for(probe.started)
        run.cancel()
        deinit = asyncio.create_task(kpu.deinit(handle))
        await asyncio.sleep(0.05)
        assert not run.done()
        assert not deinit.done()
        probe.release.set()
        with pytest.raises(asyncio.CancelledError):
            await run
        await deinit
        assert kpu.memory().used == 0


async def test_a_cancelled_load_reserves_nothing(
    iris: KModel, probe: Probe, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow_start = threading.Event()

    def slow(model: KModel, *, rounding: Rounding = "half-even",
            lanes: Lanes | None = None) -> Executor:
        slow_start.set()
        probe.release.wait(5)
        return probe.executor(model, rounding=rounding, lanes=lanes)

    monkeypatch.setattr(sim.device, "create_executor", slow)
    probe.release.clear()
    async with SimulatedKpu() as kpu:
        load = asyncio.create_task(kpu.load(iris, "iris"))
        await wait_for(slow_start)
        load.cancel()
        await asyncio.sleep(0.02)
        probe.release.set()
        with pytest.raises(asyncio.CancelledError):
            await load
        assert kpu.memory().used == 0


async def test_close_frees_everything_and_refuses_more(iris: KModel, probe: Probe) -> None:
    kpu = SimulatedKpu("maixpy-mini")
    async with kpu:
        handle = await kpu.load(iris, "iris")
    assert kpu.memory().used == 0
    await kpu.close()
    with pytest.raises(HandleError, match="closed"):
        await kpu.load(iris, "iris")
    with pytest.raises(HandleError):
        await kpu.run(handle, inputs_for(iris))


@pytest.mark.parametrize(("workers", "idle"), [(1, 0.0), (2, 0.5)],
                         ids=["killed as a run is given", "one of two killed while idle"])
async def test_a_compute_process_that_dies_is_started_again_with_its_models(
        iris: KModel, face: KModel, workers: int, idle: float) -> None:
    """The run that finds the process gone fails with a RunError; the next runs work, on
    the same handles, with the same outputs and the same SRAM account."""
    async with SimulatedKpu(process=True, workers=workers) as kpu:
        handles = [await kpu.load(iris, "iris"), await kpu.load(face, "face")]
        inputs = [np.arange(4, dtype=np.float32)]
        before = await kpu.run(handles[0], inputs)
        memory = kpu.memory()
        side = kpu._sides[0]  # the one the next run goes to
        assert isinstance(side, ProcessSide)
        os.kill(side.pid, signal.SIGKILL)
        await asyncio.sleep(idle)  # long enough for the pool to notice before the run
        with pytest.raises(RunError, match=r"ended unexpectedly.*started again with 2 model"):
            await kpu.run(handles[0], inputs)
        assert kpu.memory() == memory
        for _ in range(2 * workers):  # on every worker
            after = await asyncio.gather(*(kpu.run(handles[0], inputs) for _ in range(workers)))
            np.testing.assert_array_equal(after[-1][0], before[0])
        assert len(await kpu.run(handles[1], inputs_for(face))) == len(face.outputs)
        again = kpu._sides[0]
        assert isinstance(again, ProcessSide)
        assert again.pid != side.pid


def test_the_compute_process_ends_with_a_killed_parent() -> None:
    """A daemon killed with SIGKILL leaves no simulator process behind."""
    with subprocess.Popen(
            [sys.executable, "-c", "from edged.kpu.sim.device import ProcessSide\n"
             "side = ProcessSide('half-even', 1)\nprint(side.pid, flush=True)\n"
             "import time\ntime.sleep(60)\n"], stdout=subprocess.PIPE, text=True) as parent:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        os.kill(child, 0)  # running
        parent.kill()
        parent.wait(10)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}").exists() and b"spawn_main" in Path(
            f"/proc/{child}/cmdline").read_bytes():
        assert time.monotonic() < deadline, "the compute process outlived its parent"
        time.sleep(0.05)
