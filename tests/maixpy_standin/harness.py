"""The tests' side of the stand-in board: a pty, the board process, its key, its flash;
and a scripted fake board for tests of the link alone.

``StandinBoard`` opens a pseudo-terminal pair, puts it in raw mode and starts ``launch.py``
on the master end; the host backend opens ``board.port`` (the slave's path). The harness
keeps both fds open, so the line never hangs up while the board is killed and restarted
(a power cycle), frozen (a hung board) or absent (a silent line).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import tty
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Self

from edged.kpu.serial.protocol import Frame, FrameDecoder

LAUNCH = Path(__file__).resolve().parent / "launch.py"


class StandinBoard:
    """One stand-in Maix board in a temporary folder (its SD card, flash and key)."""

    def __init__(self, root: Path, *, heap: int | None = None, scene: str | None = None,
                 main: Path | None = None, start: bool = True) -> None:
        self.root = root
        self.sd = root / "sd"
        self.sd.mkdir(parents=True, exist_ok=True)
        self.flash = root / "flash.bin"
        self.key = root / "boot_key_down"
        self.heap, self.scene, self.main = heap, scene, main
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.port = os.ttyname(self.slave)
        self.process: subprocess.Popen[bytes] | None = None
        if start:
            self.start()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def start(self) -> None:
        """Power on: the board boots, prints its banner and announces itself."""
        env = {**os.environ, "MAIXPY_STANDIN_UART_FD": str(self.master),
               "MAIXPY_STANDIN_ROOT": str(self.sd), "MAIXPY_STANDIN_FLASH": str(self.flash),
               "MAIXPY_STANDIN_KEY": str(self.key)}
        if self.heap is not None:
            env["MAIXPY_STANDIN_HEAP"] = str(self.heap)
        if self.scene is not None:
            env["MAIXPY_STANDIN_SCENE"] = self.scene
        if self.main is not None:
            env["MAIXPY_STANDIN_MAIN"] = str(self.main)
        with open(self.root / "board.log", "ab") as log:
            self.process = subprocess.Popen([sys.executable, str(LAUNCH)], env=env,
                                            pass_fds=(self.master,), stdout=log, stderr=log)

    def wait(self, seconds: float) -> int:
        """The exit status of a board that stops by itself."""
        assert self.process is not None
        return self.process.wait(seconds)

    def kill(self) -> None:
        """Power off, at once, whatever the board was doing."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def freeze(self) -> None:
        """A hung board: it stops answering but keeps the line."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def unplug(self) -> None:
        """The USB cable pulled: the board is gone and so is its port."""
        self.kill()
        with contextlib.suppress(OSError):
            os.close(self.master)

    def to_host(self, data: bytes) -> None:
        """Bytes on the line from the board's side (call while the board is idle)."""
        os.write(self.master, data)

    def to_board(self, data: bytes) -> None:
        """Bytes on the line from the host's side."""
        os.write(self.slave, data)

    def key_down(self) -> None:
        self.key.touch()

    def key_up(self) -> None:
        self.key.unlink(missing_ok=True)

    def burn(self, kfpkg: Path) -> None:
        """Write a kfpkg into the flash as kflash does: each bin of flash-list.json at its
        address (``sha256Prefix: false`` bins raw), padded to 4 KiB data frames."""
        with zipfile.ZipFile(kfpkg) as package:
            listing = json.loads(package.read("flash-list.json"))
            mode = "r+b" if self.flash.exists() else "w+b"
            with open(self.flash, mode) as flash:
                for entry in listing["files"]:
                    assert entry["sha256Prefix"] is False, "the stand-in burns raw bins only"
                    data = package.read(entry["bin"])
                    flash.seek(int(entry["address"]))
                    flash.write(data + bytes(-len(data) % 4096))

    def log(self) -> str:
        path = self.root / "board.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.thaw()
            self.kill()
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


Handler = Callable[[Frame], Iterable[bytes]]


class FakeBoard:
    """A scripted board on a pty for link tests: ``handler`` answers each frame it gets
    with the bytes to send back (a thread reads the master end)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.port = os.ttyname(self.slave)
        self.received: list[Frame] = []
        self.decoder = FrameDecoder()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fake-board", daemon=True)
        self._thread.start()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.02)
            if not ready:
                continue
            for frame in self.decoder.feed(os.read(self.master, 65536)):
                self.received.append(frame)
                for data in self.handler(frame):
                    os.write(self.master, data)

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)
