"""Sliding-window meters for the stats topic: event rates and latency percentiles."""

from __future__ import annotations

import time
from collections import deque

import numpy as np


class RateMeter:
    """Events per second over the last ``window`` seconds (monotonic clock)."""

    def __init__(self, window: float = 5.0, now: float | None = None) -> None:
        self.window = window
        self.total = 0
        self._start = time.monotonic() if now is None else now
        self._times: deque[float] = deque()

    def mark(self, now: float | None = None) -> None:
        self.total += 1
        self._times.append(time.monotonic() if now is None else now)

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        while self._times and now - self._times[0] > self.window:
            self._times.popleft()
        elapsed = min(self.window, now - self._start)
        return len(self._times) / elapsed if elapsed > 0 else 0.0


class LatencyWindow:
    """The last ``size`` latencies (seconds) and their percentiles in milliseconds."""

    def __init__(self, size: int = 600) -> None:
        self._samples: deque[float] = deque(maxlen=size)

    def add(self, seconds: float) -> None:
        self._samples.append(seconds)

    def percentiles_ms(self, *quantiles: float) -> list[float | None]:
        if not self._samples:
            return [None for _ in quantiles]
        values = np.percentile(np.fromiter(self._samples, float), [q * 100 for q in quantiles])
        return [round(float(v) * 1e3, 2) for v in values]
