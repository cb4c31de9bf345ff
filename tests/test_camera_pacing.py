"""The frame-source contract: pacing without drift, skipped slots, retries, stalls, stats."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Callable

import numpy as np
import pytest

from edged.camera import (
    Backoff,
    Camera,
    CameraError,
    CameraState,
    CameraStats,
    Capture,
    EndOfStream,
    Frame,
    Pacer,
    SceneCamera,
)
from edged.camera.frame import GroundTruth, Image

FPS = 30.0


class FakeClock:
    """A monotonic clock that moves only when the code under test sleeps or the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps = 0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.now += seconds


async def test_pacer_keeps_every_slot_on_schedule_whatever_each_frame_costs() -> None:
    clock = FakeClock()
    pacer = Pacer(FPS, clock=clock, sleep=clock.sleep)
    rng = random.Random(0)
    starts = []
    for _ in range(3000):  # 100 s of frames: any drift would add up
        assert await pacer.wait() == 0
        starts.append(clock.now)
        clock.now += rng.uniform(0.0, 0.95) / FPS  # the consumer's work, under one period
    expected = 1000.0 + np.arange(3000) / FPS
    assert np.abs(np.array(starts) - expected).max() < 1e-9


async def test_pacer_late_consumer_skips_slots_instead_of_catching_up() -> None:
    clock = FakeClock()
    pacer = Pacer(FPS, clock=clock, sleep=clock.sleep)
    frames = skipped = 0
    for _ in range(100):
        skipped += await pacer.wait()
        frames += 1
        last = clock.now
        clock.now += 2.5 / FPS  # each frame takes two and a half periods
    assert clock.sleeps == 0  # always late: never a wait, never a burst
    last_slot = math.floor((last - 1000.0) * FPS + 1e-9)
    assert frames + skipped == last_slot + 1  # every slot was either delivered or counted
    assert skipped == pytest.approx(1.5 * frames, abs=2)


async def test_pacer_restart_anchors_a_new_schedule() -> None:
    clock = FakeClock()
    pacer = Pacer(10.0, clock=clock, sleep=clock.sleep)
    await pacer.wait()
    clock.now += 60.0  # an outage
    pacer.restart()
    assert await pacer.wait() == 0
    anchor = clock.now
    assert await pacer.wait() == 0
    assert clock.now == pytest.approx(anchor + 0.1)


def test_backoff_grows_by_factor_to_the_cap_with_bounded_jitter() -> None:
    backoff = Backoff(initial=0.5, maximum=8.0, factor=2.0, jitter=0.25)
    assert [backoff.delay(n, rand=lambda: 0.5) for n in range(7)] == [
        0.5,
        1.0,
        2.0,
        4.0,
        8.0,
        8.0,
        8.0,
    ]
    assert backoff.delay(1, rand=lambda: 0.0) == pytest.approx(0.75)
    assert backoff.delay(1, rand=lambda: 1.0) == pytest.approx(1.25)
    assert backoff.delay(10_000, rand=lambda: 1.0) == 8.0  # capped, no overflow


def test_stats_count_gaps_as_stalls_and_measure_fps_over_a_window() -> None:
    stats = CameraStats(stall_gap=2.0, window=5.0)
    for t in [0.0, 0.1, 0.2, 2.3, 2.4, 10.0]:  # gaps of 2.1 s and 7.6 s
        stats.record_frame(t)
    assert stats.stalls == 2
    assert stats.fps(now=10.0) == 0.0  # one frame in the window: no rate yet
    for n in range(1, 51):
        stats.record_frame(10.0 + n / 10)
    assert stats.fps(now=15.0) == pytest.approx(10.0, rel=0.03)
    assert stats.fps(now=17.5) == pytest.approx(5.0, rel=0.1)  # frames stopped: the rate falls
    assert stats.as_dict()["stalls"] == 2


class Flat:
    """The cheapest scene: a black frame without objects."""

    def render(self, index: int) -> tuple[Image, tuple[GroundTruth, ...]]:
        return np.zeros((8, 8, 3), np.uint8), ()


async def take(camera: Camera, count: int, *, work: float = 0.0) -> list[tuple[Frame, float]]:
    """``count`` frames, each with the monotonic time it arrived; ``work`` s spent per frame."""
    received = []
    async with contextlib.aclosing(camera.frames()) as frames:
        async for frame in frames:
            received.append((frame, time.monotonic()))
            if len(received) == count:
                break
            await asyncio.sleep(work)
    return received


async def test_camera_delivers_its_fps_in_real_time_without_drift() -> None:
    camera = SceneCamera("flat", FPS, Flat(), source="flat scene")
    received = await take(camera, 61)  # two seconds
    stamps = np.array([frame.monotonic for frame, _ in received])
    assert [frame.seq for frame, _ in received] == list(range(61))
    elapsed = stamps - stamps[0]
    assert elapsed[30] == pytest.approx(1.0, abs=0.1)  # ~30 frames in ~1 s
    assert elapsed[60] == pytest.approx(2.0, abs=0.05)  # no drift over 2 s
    assert np.abs(elapsed - np.arange(61) / FPS).max() < 0.05
    assert camera.stats.fps(now=stamps[-1]) == pytest.approx(FPS, rel=0.1)
    assert camera.stats.frames == 61
    assert camera.stats.state is CameraState.STOPPED


async def test_slow_consumer_makes_counted_skips_not_a_backlog() -> None:
    camera = SceneCamera("flat", FPS, Flat(), source="flat scene")
    received = await take(camera, 6, work=0.1)  # three periods of work per frame
    seqs = [frame.seq for frame, _ in received]
    assert seqs == sorted(set(seqs))
    assert camera.stats.skipped >= 8  # about two slots per frame
    ages = [arrived - frame.monotonic for frame, arrived in received]
    assert max(ages) < 0.05  # every frame is fresh: nothing queued behind the consumer


class Scripted(Camera):
    """A source that follows a script: "ok" gives a frame, "fail" fails, "hang" never returns."""

    def __init__(
        self, *script: str, stall_timeout: float | None = None, backoff: Backoff | None = None
    ) -> None:
        super().__init__(
            "scripted",
            200.0,
            source="scripted source",
            backoff=backoff or Backoff(initial=0.001, maximum=0.002),
            stall_timeout=stall_timeout,
        )
        self.script = list(script)
        self.closed = 0

    async def _read(self) -> Capture:
        step = self.script.pop(0) if self.script else "end"
        if step == "hang":
            await asyncio.Event().wait()
        if step == "fail":
            raise CameraError("scripted source: read failed")
        if step == "end":
            raise EndOfStream("scripted source")
        return Capture.stamp(np.zeros((4, 4, 3), np.uint8))

    def _close(self) -> None:
        self.closed += 1


async def collect(camera: Camera) -> list[Frame]:
    async with contextlib.aclosing(camera.frames()) as frames:
        return [frame async for frame in frames]


async def test_failures_are_retried_and_sequence_numbers_continue() -> None:
    camera = Scripted("ok", "ok", "fail", "fail", "ok", "ok")
    frames = await collect(camera)
    assert [frame.seq for frame in frames] == [0, 1, 2, 3]
    stats = camera.stats
    assert (stats.failures, stats.reconnects) == (2, 2)
    assert stats.last_error == "scripted source: read failed"
    assert camera.closed == 3  # after each failure, and at the end
    assert stats.state is CameraState.STOPPED  # the finite source ended


async def test_a_stalled_source_is_closed_and_reopened() -> None:
    camera = Scripted("ok", "hang", "ok", stall_timeout=0.05)
    frames = await collect(camera)
    assert [frame.seq for frame in frames] == [0, 1]
    assert (camera.stats.failures, camera.stats.reconnects) == (1, 1)
    assert camera.stats.last_error == "scripted source: no frame for 0.05 s (stalled)"


async def until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` (as the stats publisher reads stats) for up to 3 s."""
    for _ in range(600):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not met within 3 s")


async def test_state_follows_the_source() -> None:
    camera = Scripted("fail", "ok", "hang", backoff=Backoff(0.1, 0.1, jitter=0.0))
    states = [camera.stats.state]
    task = asyncio.create_task(collect(camera))
    await until(lambda: camera.stats.failures == 1)
    states.append(camera.stats.state)
    await until(lambda: camera.stats.frames == 1)
    states.append(camera.stats.state)
    assert camera.stats.as_dict()["reconnects"] == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    states.append(camera.stats.state)
    assert states == ["starting", "retrying", "online", "stopped"]


async def test_cancelling_the_consumer_releases_the_source() -> None:
    camera = Scripted("ok", "ok", "ok", "hang")
    task = asyncio.create_task(collect(camera))
    await until(lambda: camera.stats.frames == 3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert camera.closed == 1
    assert camera.stats.state is CameraState.STOPPED


async def test_one_consumer_at_a_time() -> None:
    camera = Scripted("ok", "hang")
    async with contextlib.aclosing(camera.frames()) as frames:
        await anext(frames)
        with pytest.raises(RuntimeError, match="already being iterated"):
            await anext(camera.frames())
