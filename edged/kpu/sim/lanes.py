"""Splitting a layer's work (output channels, or tiles of rows) across the machine's cores.

The simulated KPU, like the chip, runs one frame at a time. To use more than one core for
that frame, each large layer's channels or tiles are split into ranges that run at once on
helper threads: the numba kernels, onnxruntime and BLAS release the GIL. BLAS is then held to one
thread per caller, for two reasons measured on a 2-core machine: two callers of a
multi-threaded OpenBLAS oversubscribe the cores, and its idle workers spin at full load
between calls, taking a core from everything else.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache

from threadpoolctl import threadpool_limits

MIN_SPLIT = 20_000
"""Output values below which a layer runs whole: handing half of it to another thread costs
more than the half (tens of microseconds). 5k, 10k and 20k measured alike."""

CHUNKS_PER_LANE = 1
"""Ranges per lane. The lanes take ranges in turn, so the caller runs a late helper's range
itself rather than wait for it to wake. More, smaller ranges would balance finer but were
slower on the face model (smaller GEMMs, more hand-overs): 9.0 ms a frame with 1 per lane,
9.5 with 2, 11.7 with 4, 10.9 on one lane."""


class Lanes:
    """``count`` threads for one layer's ranges: the caller's and ``count - 1`` helpers.
    Safe to share: helpers only ever run ranges, never wait on other work."""

    def __init__(self, count: int) -> None:
        if count < 1:
            raise ValueError(f"lanes need at least one thread, got {count}")
        self.count = count
        self._helpers = None
        if count > 1:
            threadpool_limits(1, user_api="blas")
            self._helpers = ThreadPoolExecutor(count - 1, thread_name_prefix="edged-lane")

    def split(self, items: int, values: int, work: Callable[[int, int], None]) -> None:
        """``work(lo, hi)`` over consecutive ranges covering ``range(items)``, on all lanes
        when the layer computes at least MIN_SPLIT ``values``, else in the caller alone."""
        parts = min(CHUNKS_PER_LANE * self.count, items) if values >= MIN_SPLIT else 1
        if self._helpers is None or parts == 1:
            work(0, items)
            return
        ranges = _Ranges(work, [items * i // parts for i in range(parts + 1)])
        for _ in range(self.count - 1):
            self._helpers.submit(ranges.drain)
        ranges.drain()
        ranges.wait()


class _Ranges:
    """One split's ranges, taken in turn by whichever lane is free."""

    def __init__(self, work: Callable[[int, int], None], bounds: list[int]) -> None:
        self._work = work
        self._bounds = bounds
        self._next = iter(range(len(bounds) - 1))  # next() on it is atomic under the GIL
        self._left = len(bounds) - 1
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._error: BaseException | None = None

    def drain(self) -> None:
        for i in self._next:
            try:
                self._work(self._bounds[i], self._bounds[i + 1])
            except BaseException as exc:  # handed to the caller by wait()
                self._error = self._error or exc
            with self._lock:
                self._left -= 1
                if self._left == 0:
                    self._done.set()

    def wait(self) -> None:
        """Until every range has run (not until every helper has woken); re-raises the
        first error a range raised."""
        self._done.wait()
        if self._error is not None:
            raise self._error


@cache
def machine_lanes() -> Lanes:
    """One lane per core this process may run on (shared by every executor): a
    deployment that keeps cores for other work sets the service's CPUAffinity."""
    return Lanes(len(os.sched_getaffinity(0)))
