"""Splitting a layer's output channels across the machine's cores.

The simulated KPU, like the chip, runs one frame at a time. To use more than one core for
that frame, each large layer's output channels are split into ranges that run at once on
helper threads: the numba kernels and BLAS release the GIL. BLAS is then held to one
thread per caller, for two reasons measured on a 2-core machine: two callers of a
multi-threaded OpenBLAS oversubscribe the cores, and its idle workers spin at full load
between calls, taking a core from everything else.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache

from threadpoolctl import threadpool_limits

MIN_SPLIT = 20_000
"""Output values below which a layer runs whole: handing half of it to another thread costs
more than the half (tens of microseconds)."""


class Lanes:
    """``count`` threads for one layer's channel ranges: the caller's and ``count - 1``
    helpers. Safe to share: helpers only ever run ranges, never wait on other work."""

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
        parts = min(self.count, items) if values >= MIN_SPLIT else 1
        if self._helpers is None or parts == 1:
            work(0, items)
            return
        bounds = [items * i // parts for i in range(parts + 1)]
        pending = [self._helpers.submit(work, bounds[i], bounds[i + 1])
                   for i in range(1, parts)]
        work(bounds[0], bounds[1])
        for future in pending:
            future.result()


@cache
def machine_lanes() -> Lanes:
    """One lane per core this process may run on (shared by every executor): a
    deployment that keeps cores for other work sets the service's CPUAffinity."""
    return Lanes(len(os.sched_getaffinity(0)))
