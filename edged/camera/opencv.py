"""OpenCV capture: a camera device, an RTSP/HTTP stream or a video file, read in its own thread.

``cv2.VideoCapture`` blocks (opening a stream, waiting for a frame, a dead network), so each
opened capture belongs to one dedicated thread from open to release. Only that thread touches
it: closing never races a read in progress, it only asks the thread to finish, and the thread
releases the capture when its current call returns (bounded by the FFmpeg read timeout). A
reopen starts a new thread; a thread stuck on a dead stream cannot delay it, and it never
occupies the event loop's shared executor that pre-processing needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edged.camera.frame import Image
from edged.camera.source import Backoff, Camera, CameraError, Capture, EndOfStream


class SourceKind(StrEnum):
    """How a source behaves: live sources are read continuously, files one frame per slot."""

    DEVICE = "device"
    STREAM = "stream"
    FILE = "file"


@dataclass(frozen=True, slots=True)
class CaptureSource:
    """What to open: a device index or path, a stream URL, or a video file."""

    kind: SourceKind
    target: int | str

    @classmethod
    def parse(cls, source: int | str | Path) -> CaptureSource:
        """``0``, ``"0"``: device index; ``/dev/...``: device; ``scheme://``: stream; else file."""
        if isinstance(source, int) or (isinstance(source, str) and source.isdigit()):
            index = int(source)
            if index < 0:
                raise ValueError(f"camera device index must be >= 0, got {index}")
            return cls(SourceKind.DEVICE, index)
        text = str(source)
        if not text:
            raise ValueError("camera source is empty: give a device, a URL or a video file")
        if "://" in text:
            return cls(SourceKind.STREAM, text)
        if text.startswith("/dev/"):
            return cls(SourceKind.DEVICE, text)
        return cls(SourceKind.FILE, str(Path(text).expanduser()))

    @property
    def live(self) -> bool:
        """Devices and streams run at their own rate; only the freshest frame is wanted."""
        return self.kind is not SourceKind.FILE

    def __str__(self) -> str:
        match self.kind:
            case SourceKind.DEVICE:
                return f"camera device {self.target}"
            case SourceKind.STREAM:
                return f"stream {_redact(str(self.target))}"
            case SourceKind.FILE:
                return f"video file {self.target}"


def _redact(url: str) -> str:
    """The URL without its password: descriptions end up in logs and on the stats topic."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user_info, host = parts.netloc.rsplit("@", 1)
    netloc = f"{user_info.split(':', 1)[0]}:***@{host}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


class OpenCvCamera(Camera):
    """A ``cv2.VideoCapture`` source, reopened with backoff when it fails or stalls.

    A video file is read one frame per schedule slot and, with ``loop``, starts again at its
    end; without it the camera stops there. Devices and streams are read continuously and
    the freshest frame is taken at each slot, so a slow consumer never sees stale frames.
    ``size`` (width, height) is asked of a device and enforced on every frame by resizing.
    """

    def __init__(
        self,
        name: str,
        fps: float,
        source: int | str | Path,
        *,
        size: tuple[int, int] | None = None,
        loop: bool = True,
        stall_timeout: float = 10.0,
        backoff: Backoff | None = None,
    ) -> None:
        self.capture_source = CaptureSource.parse(source)
        super().__init__(
            name,
            fps,
            source=str(self.capture_source),
            backoff=backoff,
            stall_timeout=stall_timeout,
        )
        self._size = size
        self._loop = loop
        self._read_timeout = stall_timeout
        self._reader: _Reader | None = None
        self._latest: Capture | Exception | None = None
        self._arrived = asyncio.Event()

    async def _read(self) -> Capture:
        if self._reader is None:
            self._reader = _Reader(
                self.capture_source,
                camera=self.name,
                size=self._size,
                rewind=self._loop,
                timeout=self._read_timeout,
                deliver=self._deliver,
                event_loop=asyncio.get_running_loop(),
            )
        self._reader.want()
        while self._latest is None:
            self._arrived.clear()
            await self._arrived.wait()
        item, self._latest = self._latest, None
        if isinstance(item, Exception):
            raise item
        return item

    def _deliver(self, reader: _Reader, item: Capture | Exception) -> None:
        """Runs on the event loop: keep the freshest frame, or the first error."""
        if reader is not self._reader or isinstance(self._latest, Exception):
            return
        self._latest = item
        self._arrived.set()

    def _close(self) -> None:
        if self._reader is not None:
            self._reader.stop()
            self._reader = None
        self._latest = None


class _Reader:
    """One opened capture and the thread that owns it, from open to release."""

    def __init__(
        self,
        source: CaptureSource,
        *,
        camera: str,
        size: tuple[int, int] | None,
        rewind: bool,
        timeout: float,
        deliver: Callable[[_Reader, Capture | Exception], None],
        event_loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._source = source
        self._size = size
        self._rewind = rewind
        self._timeout_ms = max(1, round(timeout * 1000))
        self._deliver = deliver
        self._event_loop = event_loop
        self._wanted = threading.Event()
        self._stopped = threading.Event()
        thread = threading.Thread(target=self._run, name=f"camera-{camera}", daemon=True)
        thread.start()

    def want(self) -> None:
        """Ask for a frame; a file is read only when asked, a live source all the time."""
        self._wanted.set()

    def stop(self) -> None:
        """Ask the thread to release the capture and end; never waits for it."""
        self._stopped.set()
        self._wanted.set()

    def _run(self) -> None:
        try:
            self._read_until_stopped()
        except (CameraError, EndOfStream) as exc:
            self._post(exc)
        except Exception as exc:  # cv2.error and the like: report it, never die silently
            self._post(CameraError(f"{self._source}: {type(exc).__name__}: {exc}"))

    def _read_until_stopped(self) -> None:
        capture = self._open()
        try:
            read_since_open = 0
            while True:
                if not self._source.live:
                    self._wanted.wait()
                    self._wanted.clear()
                if self._stopped.is_set():
                    return
                ok, image = capture.read()
                if not ok and not self._source.live and read_since_open and self._rewind:
                    capture.release()
                    capture = self._open()
                    read_since_open = 0
                    ok, image = capture.read()
                wall, mono = time.time(), time.monotonic()
                if self._stopped.is_set():
                    return
                if not ok:
                    raise self._read_failure(read_since_open)
                read_since_open += 1
                self._post(Capture(self._fit(image), wall, mono))
        finally:
            capture.release()

    def _read_failure(self, read_since_open: int) -> Exception:
        if self._source.live:
            return CameraError(f"{self._source}: read failed (stream ended or device lost)")
        if read_since_open == 0:
            return CameraError(
                f"{self._source}: no frame could be read (not a video, or an unknown codec)"
            )
        return EndOfStream(str(self._source))

    def _open(self) -> Any:
        source = self._source
        is_path = isinstance(source.target, str) and source.kind is not SourceKind.STREAM
        if is_path and not Path(str(source.target)).exists():
            raise CameraError(f"{source}: no such file")
        if source.kind is SourceKind.DEVICE:
            capture = cv2.VideoCapture(source.target, cv2.CAP_ANY)
            capture.set(cv2.CAP_PROP_READ_TIMEOUT_MSEC, self._timeout_ms)
            if self._size is not None:
                capture.set(cv2.CAP_PROP_FRAME_WIDTH, self._size[0])
                capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self._size[1])
        else:
            timeouts = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                self._timeout_ms,
                cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                self._timeout_ms,
            ]
            capture = cv2.VideoCapture(str(source.target), cv2.CAP_FFMPEG, timeouts)
        if not capture.isOpened():
            capture.release()
            raise CameraError(f"{source}: OpenCV cannot open it (VideoCapture.isOpened() is false)")
        return capture

    def _fit(self, image: Image) -> Image:
        """BGR, 8-bit, at the configured size, whatever the source delivers."""
        if image.dtype != np.uint8:
            raise CameraError(f"{self._source}: frames are {image.dtype}, only 8-bit is supported")
        if image.ndim == 2:
            image = np.asarray(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), np.uint8)
        elif image.shape[2] == 4:
            image = np.asarray(cv2.cvtColor(image, cv2.COLOR_BGRA2BGR), np.uint8)
        if self._size is not None and (image.shape[1], image.shape[0]) != self._size:
            image = np.asarray(
                cv2.resize(image, self._size, interpolation=cv2.INTER_AREA), np.uint8
            )
        return image

    def _post(self, item: Capture | Exception) -> None:
        with contextlib.suppress(RuntimeError):  # the event loop is closed: nobody listens
            self._event_loop.call_soon_threadsafe(self._deliver, self, item)
