"""The stand-in board's configuration and the state its modules share.

Environment: ``MAIXPY_STANDIN_UART_FD`` (the pty fd the UART reads and writes),
``MAIXPY_STANDIN_HEAP`` (bytes of sys heap free for models at boot), ``MAIXPY_STANDIN_FLASH``
(a file standing for the SPI flash), ``MAIXPY_STANDIN_KEY`` (a path: the BOOT key is down
while it exists), ``MAIXPY_STANDIN_SCENE`` (``shapes`` or ``panzoom:PHOTO:x,y,w,h``; unset:
no camera).
"""

from __future__ import annotations

import os
from pathlib import Path

from edged.kpu.sram import MAIXPY_FULL_MODEL_BYTES, RuntimeProfile, SramAccount

GC_FREE = 480 * 1024
"""What ``gc.mem_free()`` answers: MaixPy's 512 KiB GC heap, a little used."""
FLASH_BYTES = 16 * 1024 * 1024
ERASED = 0xFF


def env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"MAIXPY_STANDIN_{name}", default)


def uart_fd() -> int:
    value = env("UART_FD")
    if value is None:
        raise RuntimeError("MAIXPY_STANDIN_UART_FD is not set: start the board with launch.py")
    return int(value)


ACCOUNT = SramAccount(RuntimeProfile("maixpy-standin",
                                     int(env("HEAP", str(MAIXPY_FULL_MODEL_BYTES)) or 0)))
"""The firmware's sys heap as far as models go: ``kpu.load`` reserves, ``kpu.deinit`` frees."""


def heap_free() -> int:
    return ACCOUNT.report().free


def flash_read(address: int, count: int) -> bytes:
    """``count`` bytes of the flash image at ``address``; past its end, erased flash (0xFF)."""
    if address < 0 or count < 0 or address + count > FLASH_BYTES:
        raise OSError(5, f"flash read [{address:#x}, +{count}) is outside the 16 MiB flash")
    path = env("FLASH")
    data = b""
    if path and Path(path).exists():
        with open(path, "rb") as f:
            f.seek(address)
            data = f.read(count)
    return data + bytes([ERASED]) * (count - len(data))


def key_down() -> bool:
    path = env("KEY")
    return bool(path) and Path(str(path)).exists()
