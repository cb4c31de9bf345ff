"""The frame-source abstraction: pacing, sequence numbers, failures, retries and stats.

Every camera kind only says how to get the next image (``Camera._read``). Everything a
consumer relies on is done once, here: frames come at the configured rate on a monotonic
schedule without drift, a late consumer makes the camera skip slots (counted) instead of
building a backlog, a failing source is closed and retried with backoff while its stats say
why, and the iteration can be cancelled at any await.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum

from edged.camera.frame import Frame, GroundTruth, Image

log = logging.getLogger(__name__)


class CameraError(Exception):
    """A source failed (cannot open, cannot read, stalled); the camera retries it."""


class EndOfStream(Exception):
    """A finite source (a video file or folder without looping) has no more frames."""


class CameraState(StrEnum):
    """Where a camera is, as the stats topic reports it."""

    STARTING = "starting"
    ONLINE = "online"
    RETRYING = "retrying"
    STOPPED = "stopped"


@dataclass
class CameraStats:
    """Counters of one camera, readable at any time (by the stats publisher).

    ``skipped`` counts schedule slots that passed without a frame because the consumer or
    the source was late; ``reconnects`` counts reopen attempts after a failure; ``stalls``
    counts gaps between frames longer than ``stall_gap`` (Frigate's measure of a flaky
    camera: a gap over max(2 frame intervals, 2 s)), whether or not they led to a reopen.
    """

    stall_gap: float = 2.0
    window: float = 5.0
    state: CameraState = CameraState.STARTING
    frames: int = 0
    skipped: int = 0
    reconnects: int = 0
    failures: int = 0
    stalls: int = 0
    last_error: str | None = None
    _times: deque[float] = field(default_factory=deque, repr=False)
    _last: float | None = field(default=None, repr=False)

    def record_frame(self, monotonic: float) -> None:
        if self._last is not None and monotonic - self._last > self.stall_gap:
            self.stalls += 1
        self._last = monotonic
        self.frames += 1
        self.state = CameraState.ONLINE
        self._times.append(monotonic)
        self._forget(monotonic)

    def record_failure(self, error: str) -> None:
        self.failures += 1
        self.last_error = error
        self.state = CameraState.RETRYING

    def fps(self, now: float | None = None) -> float:
        """Frames per second over the last ``window`` seconds; falls when frames stop coming."""
        now = time.monotonic() if now is None else now
        self._forget(now)
        if len(self._times) < 2 or now <= self._times[0]:
            return 0.0
        return (len(self._times) - 1) / (now - self._times[0])

    def as_dict(self) -> dict[str, object]:
        """The stats as the JSON object of this camera in the stats topic."""
        return {
            "state": str(self.state),
            "fps": round(self.fps(), 2),
            "frames": self.frames,
            "skipped": self.skipped,
            "reconnects": self.reconnects,
            "failures": self.failures,
            "stalls": self.stalls,
            "last_error": self.last_error,
        }

    def _forget(self, now: float) -> None:
        while self._times and self._times[0] < now - self.window:
            self._times.popleft()


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter, so many cameras that fail together do not retry together.

    The delay before attempt ``n`` (from 0) is ``initial * factor**n``, capped at ``maximum``,
    then spread by up to ``±jitter`` of itself and capped again.
    """

    initial: float = 1.0
    maximum: float = 30.0
    factor: float = 2.0
    jitter: float = 0.25

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        exponent = min(attempt, 64)  # beyond this the cap has long been reached; avoid overflow
        base = min(self.maximum, self.initial * self.factor**exponent)
        return min(self.maximum, base * (1.0 + self.jitter * (2.0 * rand() - 1.0)))


class Pacer:
    """Slots at ``t0 + n / fps`` on a monotonic clock: no drift, however long each frame takes.

    A caller that comes back after its slot gets the latest slot that has begun, at once, and
    is told how many slots it missed; it never gets a burst of frames to catch up.
    """

    def __init__(
        self,
        fps: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.fps = fps
        self._clock = clock
        self._sleep = sleep
        self._t0: float | None = None
        self._next = 0

    def restart(self) -> None:
        """Anchor the schedule afresh at the next call: an outage is not counted as skips."""
        self._t0 = None

    async def wait(self) -> int:
        """Wait for the next slot; return how many slots passed unused since the last call."""
        now = self._clock()
        if self._t0 is None:
            self._t0, self._next = now, 1
            return 0
        due = self._t0 + self._next / self.fps
        if now < due:
            await self._sleep(due - now)
            self._next += 1
            return 0
        current = max(self._next, math.floor((now - self._t0) * self.fps))
        skipped = current - self._next
        self._next = current + 1
        return skipped


@dataclass(frozen=True, slots=True)
class Capture:
    """What a source read: the image, its ground truth, and when it was taken."""

    image: Image
    captured: float
    monotonic: float
    truth: tuple[GroundTruth, ...] = ()

    @classmethod
    def stamp(cls, image: Image, truth: tuple[GroundTruth, ...] = ()) -> Capture:
        """A capture taken now."""
        return cls(image, time.time(), time.monotonic(), truth)


class Camera(ABC):
    """A paced, cancellable, self-healing source of frames.

    Iterate ``frames()`` (ideally inside ``contextlib.aclosing`` so the source is released as
    soon as the consumer stops). Subclasses implement ``_read`` (raising ``CameraError`` on a
    failure, ``EndOfStream`` at the end of a finite source) and ``_close``.
    """

    def __init__(
        self,
        name: str,
        fps: float,
        *,
        source: str,
        backoff: Backoff | None = None,
        stall_timeout: float | None = None,
    ) -> None:
        if not 0 < fps <= 1000:
            raise ValueError(f"camera {name!r}: fps must be in (0, 1000], got {fps}")
        self.name = name
        self.fps = fps
        self.source = source
        self.stats = CameraStats(stall_gap=max(2.0 / fps, 2.0))
        self._backoff = backoff or Backoff()
        self._stall_timeout = stall_timeout
        self._seq = 0
        self._iterating = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.source}, {self.fps:g} fps)"

    async def frames(self) -> AsyncGenerator[Frame, None]:
        """Frames at ``fps`` until cancelled or a finite source ends; failures are retried."""
        if self._iterating:
            raise RuntimeError(f"camera {self.name!r}: frames() is already being iterated")
        self._iterating = True
        self.stats.state = CameraState.STARTING
        pacer = Pacer(self.fps)
        attempt = 0
        try:
            while True:
                self.stats.skipped += await pacer.wait()
                try:
                    capture = await self._read_in_time()
                except EndOfStream:
                    log.info("camera %s: %s has no more frames", self.name, self.source)
                    return
                except CameraError as exc:
                    await self._recover(exc, attempt)
                    attempt += 1
                    pacer.restart()
                    continue
                if attempt:
                    log.info("camera %s: online again after %d attempts", self.name, attempt)
                    attempt = 0
                self.stats.record_frame(capture.monotonic)
                frame = Frame(
                    camera=self.name,
                    seq=self._seq,
                    captured=capture.captured,
                    monotonic=capture.monotonic,
                    image=capture.image,
                    truth=capture.truth,
                )
                self._seq += 1
                yield frame
        finally:
            self._close()
            self.stats.state = CameraState.STOPPED
            self._iterating = False

    async def _recover(self, error: CameraError, attempt: int) -> None:
        """Close the failed source, say why, and wait (backoff) before it is reopened."""
        self._close()
        self.stats.record_failure(str(error))
        delay = self._backoff.delay(attempt)
        log.warning("camera %s: %s; retrying in %.2f s", self.name, error, delay)
        await asyncio.sleep(delay)
        self.stats.reconnects += 1

    async def _read_in_time(self) -> Capture:
        if self._stall_timeout is None:
            return await self._read()
        try:
            async with asyncio.timeout(self._stall_timeout):
                return await self._read()
        except TimeoutError:
            raise CameraError(
                f"{self.source}: no frame for {self._stall_timeout:g} s (stalled)"
            ) from None

    @abstractmethod
    async def _read(self) -> Capture:
        """The next image; opens the source first if needed. Never blocks the event loop."""

    def _close(self) -> None:  # noqa: B027 - sources without resources need not close anything
        """Let go of the source (it is reopened by the next ``_read``); must not block."""
