"""MicroPython's ``ustruct``: the subset of CPython's ``struct`` it shares."""

from struct import calcsize, pack, unpack, unpack_from

__all__ = ["calcsize", "pack", "unpack", "unpack_from"]
