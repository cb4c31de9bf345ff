"""Splitting a layer's work (output channels, or tiles of rows) across the machine's cores.

The simulated KPU, like the chip, runs one frame at a time. To use more than one core for
that frame, each large layer's channels or tiles are split into ranges that run at once on
helper threads (the numba kernels, onnxruntime and BLAS release the GIL), where timing the
layer both ways showed that it pays (:class:`SplitChoice`). BLAS is then held to one
thread per caller, for two reasons measured on a 2-core machine: two callers of a
multi-threaded OpenBLAS oversubscribe the cores, and its idle workers spin at full load
between calls, taking a core from everything else.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache

from threadpoolctl import threadpool_limits

MIN_SPLIT = 20_000
"""Output values below which a layer runs whole: handing half of it to another thread costs
more than the half (tens of microseconds). 5k, 10k and 20k measured alike."""

TRIALS = 5
"""Timed runs each way before a :class:`SplitChoice` settles."""

SETTLING_RUNS = 2 * TRIALS + 1
"""Runs of a model after which every layer's :class:`SplitChoice` has settled."""

SPLIT_MARGIN = 0.85
"""How much faster a split must have been to be kept: its helper's work also slows the
layers around it (they share L3 and wake-ups), and a layer's few timed runs are noisy."""

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

    def split(self, items: int, values: int, work: Callable[[int, int], None],
              choice: SplitChoice | None = None) -> None:
        """``work(lo, hi)`` over consecutive ranges covering ``range(items)``, on all lanes
        when the layer computes at least MIN_SPLIT ``values`` and its ``choice`` (if any)
        says so, else in the caller alone."""
        parts = min(CHUNKS_PER_LANE * self.count, items) if values >= MIN_SPLIT else 1
        if self._helpers is None or parts == 1:
            work(0, items)
            return
        split = choice is None or choice.split_next()
        started = time.perf_counter()
        self._run(items, parts if split else 1, work)
        if choice is not None:
            choice.record(split, time.perf_counter() - started)

    def _run(self, items: int, parts: int, work: Callable[[int, int], None]) -> None:
        if parts == 1:
            work(0, items)
            return
        assert self._helpers is not None
        ranges = _Ranges(work, [items * i // parts for i in range(parts + 1)])
        for _ in range(self.count - 1):
            self._helpers.submit(ranges.drain)
        ranges.drain()
        ranges.wait()


class SplitChoice:
    """Whether one layer runs faster split across the lanes or whole, found by timing it.

    A split costs waking the helpers (20-50 µs on a 2-core VM, where waking an idle vCPU
    takes an interrupt) and the lanes then share the L3 cache's bandwidth, so whether it
    pays depends on the machine, the layer's shape and its activation. Measured on such a
    VM: the face model's first layer ran 1.4 times as fast split, its 1x1 layers 0.7 to 0.9
    times; VOC20's large layers 1.1 to 1.6 times. So the first run splits (untimed: it may
    compile or fault pages in), the next TRIALS runs each way alternate, and the split is
    kept if its best time beat the whole's by SPLIT_MARGIN. The bytes never depend on it,
    only the time.
    """

    def __init__(self) -> None:
        self._best = [math.inf, math.inf]  # whole, split
        self._runs = 0

    @property
    def settled(self) -> bool:
        return self._runs >= SETTLING_RUNS

    def split_next(self) -> bool:
        """Whether the next run splits."""
        if self.settled:
            return self._best[1] < SPLIT_MARGIN * self._best[0]
        return self._runs % 2 == 0

    def record(self, split: bool, seconds: float) -> None:
        """The time of a run made as :meth:`split_next` said (ignored once settled)."""
        if self.settled:
            return
        if self._runs:
            self._best[split] = min(self._best[split], seconds)
        self._runs += 1


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
