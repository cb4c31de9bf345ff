# ruff: noqa: N999 - MaixPy's module is called Maix
"""MaixPy's ``Maix`` module: ``GPIO`` (the BOOT key) and ``utils`` (sys heap, flash reads)."""

from __future__ import annotations

from tests.maixpy_standin import _board


class GPIO:
    """A GPIOHS input; the BOOT key reads 0 while pressed (it pulls the line low)."""

    GPIOHS0 = 0
    IN = 0
    PULL_UP = 2

    def __init__(self, gpio: int, mode: int, pull: int = 0) -> None:
        self.gpio, self.mode, self.pull = gpio, mode, pull

    def value(self) -> int:
        return 0 if _board.key_down() else 1


class _Utils:
    @staticmethod
    def heap_free() -> int:
        return _board.heap_free()

    @staticmethod
    def flash_read(address: int, count: int) -> bytes:
        return _board.flash_read(address, count)

    @staticmethod
    def gc_heap_size() -> int:
        return 512 * 1024


utils = _Utils()
