"""One-slot mailboxes between cameras and the scheduler: the freshest frame wins.

A camera never waits for the KPU: a newer frame replaces one that was not taken yet, and
the replaced frame is counted as dropped. Latency stays bounded by one frame per camera.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


class Mailbox(Generic[T]):
    """A single slot; ``put`` never blocks, ``take`` empties it."""

    def __init__(self, name: str, doorbell: asyncio.Event) -> None:
        self.name = name
        self._item: T | None = None
        self._doorbell = doorbell
        self.delivered = 0
        self.dropped = 0

    def put(self, item: T) -> None:
        if self._item is not None:
            self.dropped += 1
        self._item = item
        self._doorbell.set()

    def take(self) -> T | None:
        item, self._item = self._item, None
        if item is not None:
            self.delivered += 1
        return item

    @property
    def full(self) -> bool:
        return self._item is not None


class Rotation(Generic[T]):
    """Mailboxes served in turn: after serving one, the next search starts after it, so a
    fast camera cannot starve a slow one."""

    def __init__(self) -> None:
        self.doorbell = asyncio.Event()
        self._boxes: dict[str, Mailbox[T]] = {}
        self._next = 0

    def add(self, name: str) -> Mailbox[T]:
        box: Mailbox[T] = Mailbox(name, self.doorbell)
        self._boxes[name] = box
        return box

    def remove(self, name: str) -> None:
        del self._boxes[name]
        self._next = 0

    @property
    def boxes(self) -> Mapping[str, Mailbox[T]]:
        """Each mailbox by name, in rotation order."""
        return self._boxes

    async def take(self) -> tuple[str, T]:
        """The next waiting item in rotation order, waiting for one if none is there."""
        while True:
            boxes = list(self._boxes.values())
            count = len(boxes)
            for step in range(count):
                box = boxes[(self._next + step) % count]
                item = box.take()
                if item is not None:
                    self._next = (self._next + step + 1) % count
                    return box.name, item
            self.doorbell.clear()
            if any(b.full for b in boxes):  # a put raced the clear
                continue
            await self.doorbell.wait()
