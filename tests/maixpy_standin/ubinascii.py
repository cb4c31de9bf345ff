"""MicroPython's ``ubinascii``: CPython's ``binascii`` has the same ``crc32(data, value)``."""

from binascii import crc32, hexlify, unhexlify

__all__ = ["crc32", "hexlify", "unhexlify"]
