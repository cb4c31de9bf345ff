"""Boot the stand-in board: MaixPy's boot banner on the UART, then ``edged_board.py``.

Run as a script (``python tests/maixpy_standin/launch.py``) so that this folder comes first
on ``sys.path`` and ``import KPU``, ``machine``, ``sensor``... find the stand-ins. It adds
MicroPython's ``time.ticks_ms``/``ticks_add``/``ticks_diff``/``sleep_ms`` and
``gc.mem_free`` to CPython's modules, changes to the SD card folder (MaixPy's ``_boot.py``
does ``os.chdir("/sd")``) and runs the board script as ``__main__``, unchanged (or, with
``MAIXPY_STANDIN_MAIN``, another script such as ``deploy/k210/boot.py``).
"""

from __future__ import annotations

import gc
import os
import runpy
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent.parent
BOARD_SCRIPT = PROJECT / "deploy" / "k210" / "edged_board.py"
TICKS_PERIOD = 1 << 30  # MicroPython's ticks wrap at 2**30 (MICROPY_PY_UTIME_TICKS_PERIOD)
BANNER = (b"\r\n __  __              _____  __   __  _____   __     __ \r\n"
          b"[MAIXPY] Pll0:freq:832000000\r\n[MAIXPY] Flash:0xc8:0x17\r\n"
          b"init i2c2\r\n[MAIXPY]: find ov2640\r\n[MaixPy] init end\r\n")
"""The start of what MaixPy prints on the REPL UART while it boots: garbage to the host."""


def _ticks_ms() -> int:
    return int(time.monotonic() * 1000) % TICKS_PERIOD


def _ticks_add(ticks: int, delta: int) -> int:
    return (ticks + delta) % TICKS_PERIOD


def _ticks_diff(new: int, old: int) -> int:
    half = TICKS_PERIOD // 2
    return (new - old + half) % TICKS_PERIOD - half


def _sleep_ms(ms: int) -> None:
    time.sleep(ms / 1000)


def _mem_free() -> int:
    from tests.maixpy_standin._board import GC_FREE  # after sys.path is set

    return GC_FREE


def install_shims() -> None:
    """MicroPython's extras on CPython's ``time`` and ``gc``: attributes mypy cannot see."""
    for name, value in (("ticks_ms", _ticks_ms), ("ticks_add", _ticks_add),
                        ("ticks_diff", _ticks_diff), ("sleep_ms", _sleep_ms)):
        setattr(time, name, value)
    setattr(gc, "mem_free", _mem_free)  # noqa: B010


def main() -> None:
    sys.path.insert(1, str(PROJECT))  # edged and tests.maixpy_standin, after the stand-ins
    install_shims()
    root = os.environ.get("MAIXPY_STANDIN_ROOT")
    if root:
        os.chdir(root)
    fd = os.environ.get("MAIXPY_STANDIN_UART_FD")
    if fd is not None and os.environ.get("MAIXPY_STANDIN_BANNER", "1") == "1":
        os.write(int(fd), BANNER)
    # MaixPy runs /sd/boot.py, and /sd is on its sys.path: boot.py imports edged_board
    sys.path.insert(1, str(BOARD_SCRIPT.parent))
    main_script = os.environ.get("MAIXPY_STANDIN_MAIN", str(BOARD_SCRIPT))
    runpy.run_path(main_script, run_name="__main__")


if __name__ == "__main__":
    main()
