"""Splitting a layer's output channels across threads: same bytes, every channel once."""

from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import numpy.typing as npt
import pytest

from edged.kpu.kmodel.kpu_regs import PoolType
from edged.kpu.sim import kpu_kernels
from edged.kpu.sim.kpu_kernels import PreparedConv
from edged.kpu.sim.lanes import (
    CHUNKS_PER_LANE,
    MIN_SPLIT,
    SETTLING_RUNS,
    SPLIT_MARGIN,
    TRIALS,
    Lanes,
    SplitChoice,
)
from tests.test_kpu_kernels import nncase_like_conv, random_conv, unsorted_starts


def test_ranges_cover_every_item_once_on_every_lane() -> None:
    lanes = Lanes(2)
    seen: list[tuple[int, int, str]] = []
    lock = threading.Lock()

    def work(lo: int, hi: int) -> None:
        time.sleep(0.05)  # long enough for the helper to wake and take a range too
        with lock:
            seen.append((lo, hi, threading.current_thread().name))

    lanes.split(20, MIN_SPLIT, work)
    covered = sorted((lo, hi) for lo, hi, _ in seen)
    assert covered[0][0] == 0
    assert covered[-1][1] == 20
    assert all(a[1] == b[0] for a, b in itertools.pairwise(covered))
    assert len(covered) == CHUNKS_PER_LANE * 2
    assert len({name for _, _, name in seen}) == 2  # the caller and a helper
    seen.clear()
    lanes.split(7, MIN_SPLIT - 1, work)  # too small to be worth a hand-over
    assert [(lo, hi) for lo, hi, _ in seen] == [(0, 7)]
    seen.clear()
    lanes.split(1, MIN_SPLIT, work)  # one channel cannot be split
    assert [(lo, hi) for lo, hi, _ in seen] == [(0, 1)]


def test_a_split_choice_times_both_ways_then_keeps_the_faster() -> None:
    """The first run splits untimed; then TRIALS timed runs each way, alternating; the best
    time of each way decides, so one slow outlier does not, and a split must be faster by
    SPLIT_MARGIN."""
    for split_time, whole_time, keeps in ((1.0, 2.0, True), (2.0, 1.0, False),
                                          (0.95 * SPLIT_MARGIN, 1.0, True),
                                          (1.05 * SPLIT_MARGIN, 1.0, False)):
        choice = SplitChoice()
        ways = []
        while not choice.settled:
            split = choice.split_next()
            ways.append(split)
            slow = len(ways) == 2  # an outlier on the first timed run
            choice.record(split, 9.0 if slow else split_time if split else whole_time)
        assert ways == [True] + [False, True] * TRIALS
        assert len(ways) == SETTLING_RUNS  # what `edged kpu profile` runs before timing
        assert choice.split_next() is keeps
        for _ in range(2 * TRIALS + 1):  # settled: later times change nothing
            choice.record(keeps, 100.0)
            choice.record(not keeps, 0.0)
        assert choice.split_next() is keeps


@pytest.mark.parametrize("split_pays", [True, False])
def test_a_layer_settles_on_the_faster_way(split_pays: bool) -> None:
    """Work whose halves take much less than the whole makes splitting pay; work whose
    halves take more than the whole does not. Either way every item is covered each run."""
    lanes, choice = Lanes(2), SplitChoice()
    calls: list[list[tuple[int, int]]] = []

    def work(lo: int, hi: int) -> None:
        whole = hi - lo == 8
        time.sleep(0.015 if whole != split_pays else 0.04)
        calls[-1].append((lo, hi))

    for _ in range(2 * TRIALS + 3):
        calls.append([])
        lanes.split(8, MIN_SPLIT, work, choice)
        assert sorted(calls[-1]) in ([(0, 8)], [(0, 4), (4, 8)])
    assert choice.settled
    assert all(len(run) == (2 if split_pays else 1) for run in calls[-2:])


def test_an_error_in_a_helper_reaches_the_caller() -> None:
    def work(lo: int, hi: int) -> None:
        if lo > 0:
            raise RuntimeError("helper failed")

    with pytest.raises(RuntimeError, match="helper failed"):
        Lanes(2).split(4, MIN_SPLIT, work)


def test_lanes_need_a_thread() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Lanes(0)


@pytest.mark.parametrize("depthwise", [False, True])
@pytest.mark.parametrize("kind", ["per-value", "linear", "piecewise", "table"])
def test_split_layers_compute_the_same_bytes(depthwise: bool, kind: str) -> None:
    """Layers big enough to split (8 channels of 64x64), by two and by three lanes."""
    rng = np.random.default_rng(7 + depthwise)
    pool = PoolType.MAX_2_S2
    if kind == "per-value":
        conv = unsorted_starts(random_conv(rng, depthwise=depthwise, k=3, ic=8, oc=8, h=64,
                                           w=64, pool=pool))
    else:
        conv = nncase_like_conv(rng, k=3, ic=8, oc=8, h=64, w=64, pool=pool,
                                leaky={"linear": "", "piecewise": "3", "table": "14"}[kind],
                                depthwise=depthwise)
    prepared = PreparedConv.from_conv(conv, "half-even")
    x = rng.integers(0, 256, (8, 64, 64)).astype(np.uint8)
    whole = prepared.run(x, Lanes(1))
    assert len(np.unique(whole)) > 1  # not a constant map
    for count in (2, 3):
        np.testing.assert_array_equal(prepared.run(x, Lanes(count)), whole)


@pytest.mark.parametrize("pool", [PoolType.BYPASS, PoolType.MAX_2_S2, PoolType.MEAN_2_S2,
                                  PoolType.RIGHT_TOP_2_S2, PoolType.MAX_4_S4, PoolType.MAX_2_S1])
@pytest.mark.parametrize("kind", ["per-value", "linear", "table"])
def test_tiles_of_rows_compute_the_same_bytes(pool: PoolType, kind: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A map of 101 rows by tiles of 8 (the last one short), on one and two lanes, against
    the same layer computed whole; overlapping pool windows (MAX_2_S1) keep it whole."""
    rng = np.random.default_rng(int(pool))
    x = rng.integers(0, 256, (2, 101, 90)).astype(np.uint8)
    prepared, whole = _layer_with_varied_output(rng, kind, pool, x, monkeypatch)
    monkeypatch.setattr(kpu_kernels, "TILE_PIXELS", 1000)  # tiles of 8 rows
    assert (prepared._tile_rows(101, 90) < 101) == (pool.filter == pool.stride)
    for count in (1, 2):
        np.testing.assert_array_equal(prepared.run(x, Lanes(count)), whole)


def _layer_with_varied_output(
    rng: np.random.Generator, kind: str, pool: PoolType, x: npt.NDArray[np.uint8],
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[PreparedConv, npt.NDArray[np.uint8]]:
    """A 3x3 layer of ``kind`` and its output computed whole (no tiles), drawn until that
    output is not constant (random tables can saturate)."""
    monkeypatch.setattr(kpu_kernels, "TILE_PIXELS", 1 << 30)
    for _ in range(20):
        if kind == "per-value":
            conv = unsorted_starts(random_conv(rng, depthwise=False, k=3, ic=2, oc=3, h=101,
                                               w=90, pool=pool))
        else:
            conv = nncase_like_conv(rng, k=3, ic=2, oc=3, h=101, w=90, pool=pool,
                                    leaky="14" if kind == "table" else "")
        prepared = PreparedConv.from_conv(conv, "half-even")
        whole = prepared.run(x, Lanes(1))
        if len(np.unique(whole)) > 1:
            return prepared, whole
    raise AssertionError("no layer with a varied output")
