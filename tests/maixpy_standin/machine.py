"""MaixPy's ``machine``: ``UART`` on the pty's board end, and ``reset`` as a re-exec.

The UART never blocks the board: ``any()`` asks the pty how many bytes wait (FIONREAD) and
``read(n)`` takes at most those, as MaixPy's ring buffer does. ``reset()`` starts the board
script afresh in the same process slot (``exec``), which is what a reboot looks like from the
host: a boot banner, then a BOOT event with a new boot id.
"""

from __future__ import annotations

import array
import fcntl
import os
import sys
import termios
from typing import NoReturn

from tests.maixpy_standin import _board


class UART:
    UART1, UART2, UART3, UARTHS = 0, 1, 2, 3

    def __init__(self, uart: int = UARTHS, baudrate: int = 115200, bits: int = 8,
                 parity: int | None = None, stop: int = 1, *, timeout: int = 1000,
                 timeout_char: int = 10, read_buf_len: int = 2048) -> None:
        self.uart = uart
        self._fd = _board.uart_fd()
        self.init(baudrate, bits, parity, stop, timeout=timeout, read_buf_len=read_buf_len)

    @staticmethod
    def repl_uart() -> UART:
        return _REPL

    def init(self, baudrate: int = 115200, bits: int = 8, parity: int | None = None,
             stop: int = 1, *, timeout: int = 1000, read_buf_len: int = 2048,
             ide: bool = False, from_ide: bool = True) -> None:
        if not 0 < read_buf_len < 65536:
            raise ValueError(f"read_buf_len {read_buf_len}: MaixPy's ring indices are 16 bits")
        self.baudrate, self.read_buf_len = baudrate, read_buf_len

    def any(self) -> int:
        count = array.array("i", [0])
        fcntl.ioctl(self._fd, termios.FIONREAD, count)
        return int(count[0])

    def read(self, count: int = -1) -> bytes | None:
        available = self.any()
        if not available:
            return None
        return os.read(self._fd, available if count < 0 else min(count, available))

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            done += os.write(self._fd, view[done:])
        return done


_REPL = UART(UART.UARTHS, 115200)


def reset() -> NoReturn:
    """Reboot: run the launcher again in this process (the pty fd is inherited)."""
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
