"""One-slot mailboxes and the fair rotation between cameras."""

from __future__ import annotations

import asyncio

from edged.runtime.mailbox import Rotation
from edged.runtime.meters import LatencyWindow, RateMeter


async def test_newest_item_wins_and_drops_are_counted() -> None:
    rotation: Rotation[int] = Rotation()
    box = rotation.add("cam")
    for value in range(5):
        box.put(value)
    assert await rotation.take() == ("cam", 4)
    assert box.dropped == 4
    assert box.delivered == 1
    assert not box.full


async def test_fast_camera_cannot_starve_a_slow_one() -> None:
    rotation: Rotation[int] = Rotation()
    fast, slow = rotation.add("fast"), rotation.add("slow")
    served: list[str] = []
    for tick in range(30):
        fast.put(tick)  # the fast camera always has a frame waiting
        if tick % 3 == 0:
            slow.put(tick)
        name, _ = await rotation.take()
        served.append(name)
    assert served.count("slow") == 10  # every slow frame served, none lost
    assert slow.dropped == 0


async def test_take_waits_for_a_put() -> None:
    rotation: Rotation[str] = Rotation()
    box = rotation.add("cam")
    waiter = asyncio.create_task(rotation.take())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    box.put("frame")
    assert await asyncio.wait_for(waiter, 1) == ("cam", "frame")


def test_rate_meter_counts_events_in_its_window() -> None:
    meter = RateMeter(window=2.0, now=0.0)
    for i in range(60):
        meter.mark(now=i / 30)  # 30 per second for two seconds
    assert abs(meter.rate(now=2.0) - 30.0) < 1.0
    assert meter.rate(now=10.0) == 0.0
    assert meter.total == 60


def test_latency_percentiles() -> None:
    window = LatencyWindow(size=100)
    assert window.percentiles_ms(0.5) == [None]
    for ms in range(1, 101):
        window.add(ms / 1000)
    p50, p99 = window.percentiles_ms(0.5, 0.99)
    assert p50 is not None
    assert 49 <= p50 <= 51
    assert p99 is not None
    assert 98 <= p99 <= 100
