"""Buttons at run time: GPIO lines and simulated buttons as async sources of press events.

Both kinds feed the same :class:`PressDetector`, so a simulated ``down``/``up`` pair is
judged exactly as a GPIO press would be. A button is an async context manager and an async
iterator: ``async with build_button(config) as button: async for event in button: ...``.
Iteration ends when the button is closed, and raises :class:`ButtonError` if the input fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Self, cast, get_args

import structlog
from structlog.typing import FilteringBoundLogger

from edged.control.config import (
    GpioButtonConfig,
    PressKind,
    SimulatedButtonConfig,
)

if TYPE_CHECKING:
    import gpiod

Command = Literal["press", "long_press", "down", "up"]
"""What a simulated button's socket accepts, one per line."""

COMMANDS: tuple[str, ...] = get_args(Command)
QUEUE_SIZE = 64  # events nobody reads yet; a person cannot press faster than that is drained
MAX_LINE = 256  # bytes: a longer line on a simulated button's socket is not a command
REPLY_TIMEOUT_S = 5.0  # a simulated button answers at once; longer means it is hung


class ButtonError(Exception):
    """A button that cannot be opened or read, or a press that did not arrive; says why."""


@dataclass(frozen=True, slots=True)
class ButtonEvent:
    """One press: ``at`` is monotonic time (``time.monotonic``, the event loop's clock) of the
    release for a press, and of the moment the hold became long for a long press."""

    button: str
    kind: PressKind
    at: float


class PressDetector:
    """Turns a button's down/up edges, with their times, into press and long_press events.

    Pure (the caller supplies every time), so fake clocks test it. An edge counts once the
    line has held its new level for ``debounce_s`` and then with the edge's own time, so a
    bounce that comes back within the window is never seen. A hold of ``long_press_s`` is
    one long press, reported by :meth:`poll` while the button is still down; the release
    after it reports nothing. Call :meth:`poll` at :attr:`deadline` when there is one.
    """

    def __init__(self, button: str, long_press_s: float, debounce_s: float = 0.0) -> None:
        if long_press_s <= 0 or debounce_s < 0:
            raise ValueError(
                f"long_press_s must be > 0 and debounce_s >= 0, not {long_press_s} and {debounce_s}"
            )
        self.button = button
        self.long_press_s = long_press_s
        self.debounce_s = debounce_s
        self._down_at: float | None = None  # when the counted press began
        self._long_sent = False
        self._pending: tuple[bool, float] | None = None  # an edge still in its debounce window

    @property
    def pressed(self) -> bool:
        """Whether a counted press is under way."""
        return self._down_at is not None

    @property
    def deadline(self) -> float | None:
        """When :meth:`poll` may have something to say: a debounce window or a hold ends."""
        if self._pending is not None:
            return self._pending[1] + self.debounce_s
        if self._down_at is not None and not self._long_sent:
            return self._down_at + self.long_press_s
        return None

    def edge(self, pressed: bool, at: float) -> list[ButtonEvent]:
        """The line went down (``pressed``) or up at ``at``; events that are now certain."""
        events = self.poll(at)
        if self._pending is not None:
            if pressed != self._pending[0]:
                self._pending = None  # back to the counted level within the window: a bounce
        elif pressed != self.pressed:  # else a repeat, or a release never seen pressed
            self._pending = (pressed, at)
        return events + self.poll(at)

    def poll(self, now: float) -> list[ButtonEvent]:
        """Events due by ``now``: an edge that outlasted its window, a hold that became long."""
        events: list[ButtonEvent] = []
        if self._pending is not None:
            pressed, at = self._pending
            self._held_until(at, events)  # whatever comes of the edge, the hold lasted this long
            if now < at + self.debounce_s:  # the sum deadline gives, so a poll then counts
                return events
            self._pending = None
            if pressed:
                self._down_at, self._long_sent = at, False
            else:
                if not self._long_sent:
                    events.append(ButtonEvent(self.button, "press", at))
                self._down_at = None
        self._held_until(now, events)
        return events

    def _held_until(self, until: float, events: list[ButtonEvent]) -> None:
        """A press still down at ``until`` that has lasted long enough is a long press, once."""
        if self._down_at is None or self._long_sent:
            return
        if until >= self._down_at + self.long_press_s:
            self._long_sent = True
            events.append(ButtonEvent(self.button, "long_press", self._down_at + self.long_press_s))


class Button(ABC):
    """What every button shares: the detector, the timer that polls it, the queue of events.

    Subclasses open their input in :meth:`_open`, report edges to :meth:`_edge` (or whole
    presses to :meth:`_emit`) and let it go in :meth:`_release`.
    """

    def __init__(self, name: str, long_press_ms: int) -> None:
        self.name = name
        self._log: FilteringBoundLogger = structlog.get_logger().bind(
            component="button", button=name
        )
        self._detector = PressDetector(name, long_press_ms / 1000)
        self._queue: asyncio.Queue[ButtonEvent | None] = asyncio.Queue(QUEUE_SIZE)
        self._started = False
        self._timer: asyncio.TimerHandle | None = None
        self._failure: ButtonError | None = None
        self._closed = False

    async def start(self) -> None:
        """Open the input, once; a :class:`ButtonError` says why it cannot be."""
        if self._started:
            raise RuntimeError(f"button {self.name!r} was already started")
        self._started = True
        await self._open()

    async def close(self) -> None:
        """Let the input go and end iteration; safe to call twice or after a failed start."""
        if self._closed:
            return
        self._closed = True
        self._cancel_timer()
        self._end()
        await self._release()
        self._log.info("closed")

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> ButtonEvent:
        event = await self._queue.get()
        if event is None:
            self._queue.put_nowait(None)  # every later call ends as well
            if self._failure is not None:
                raise self._failure
            raise StopAsyncIteration
        return event

    @abstractmethod
    async def _open(self) -> None:
        """Open the input and start reporting to :meth:`_edge` or :meth:`_emit`."""

    @abstractmethod
    async def _release(self) -> None:
        """Stop reporting and let the input go; also after a failed or no :meth:`_open`."""

    def _edge(self, pressed: bool, at: float) -> None:
        """The input went down or up at ``at`` (monotonic seconds)."""
        self._emit(self._detector.edge(pressed, at))
        self._schedule()

    def _emit(self, events: list[ButtonEvent]) -> None:
        for event in events:
            self._log.info("button_event", kind=event.kind, at=round(event.at, 3))
            if self._queue.full():
                dropped = self._queue.get_nowait()
                self._log.warning(
                    "event_dropped", reason="nobody reads the button", dropped=dropped
                )
            self._queue.put_nowait(event)

    def _fail(self, error: ButtonError) -> None:
        """The input broke: iteration raises ``error`` once the queued events are read."""
        self._log.error("failed", error=str(error))
        self._failure = error
        self._cancel_timer()
        self._end()

    def _end(self) -> None:
        if self._queue.full():
            self._queue.get_nowait()
        self._queue.put_nowait(None)

    def _schedule(self) -> None:
        """Poll the detector when its debounce window or long-press hold runs out."""
        self._cancel_timer()
        deadline = self._detector.deadline
        if deadline is not None and not self._closed:
            self._timer = asyncio.get_running_loop().call_at(deadline, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self._emit(self._detector.poll(asyncio.get_running_loop().time()))
        self._schedule()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class GpioButton(Button):
    """A button on a GPIO line through libgpiod v2: kernel edge events, read when the line
    request's file descriptor is readable, so the event loop never blocks on it.

    A button already held when edged starts counts from its next press.
    """

    def __init__(self, config: GpioButtonConfig) -> None:
        super().__init__(config.name, config.long_press_ms)
        self.config = config
        self._request: gpiod.LineRequest | None = None
        self._rising: gpiod.EdgeEvent.Type | None = None

    async def _open(self) -> None:
        try:
            # Imported here: only GPIO buttons need it, and most boxes have no GPIO.
            import gpiod  # noqa: PLC0415
            from gpiod.line import Bias, Direction, Edge  # noqa: PLC0415
        except ImportError as error:
            raise ButtonError(
                f"button {self.name!r}: GPIO buttons need the gpiod package, version 2 (the "
                "libgpiod v2 Python bindings; Debian's python3-libgpiod 1.x does not fit): "
                "pip install 'edged[gpio]'"
            ) from error
        config = self.config
        settings = gpiod.LineSettings(
            direction=Direction.INPUT,
            edge_detection=Edge.BOTH,
            bias=Bias[config.bias.upper().replace("-", "_")],  # "pull-up" -> Bias.PULL_UP
            active_low=config.active_low,  # the kernel then reports a press as a rising edge
            debounce_period=timedelta(milliseconds=config.debounce_ms),
        )
        try:
            chip = gpiod.Chip(config.device)
        except OSError as error:
            raise self._cannot(error) from error
        with chip:
            request, kernel_debounce = self._request_line(chip, settings)
        self._request = request
        self._rising = gpiod.EdgeEvent.Type.RISING_EDGE
        if not kernel_debounce:
            self._detector.debounce_s = config.debounce_ms / 1000
        asyncio.get_running_loop().add_reader(request.fd, self._on_readable)
        self._log.info(
            "started",
            chip=config.device,
            line=config.line,
            offset=request.offsets[0],
            debounce="off" if not config.debounce_ms else "kernel" if kernel_debounce else "edged",
        )

    def _request_line(
        self, chip: gpiod.Chip, settings: gpiod.LineSettings
    ) -> tuple[gpiod.LineRequest, bool]:
        """The line's request, and whether the kernel debounces it (else edged must)."""
        line = self.config.line
        try:
            offset = chip.line_offset_from_id(line)
        except ValueError as error:  # an offset beyond the chip's lines
            lines = chip.get_info().num_lines
            raise self._cannot(f"the chip has lines 0 to {lines - 1}") from error
        except OSError as error:  # a name no line has
            raise self._cannot(f"the chip has no line named {line!r}") from error
        try:
            request = chip.request_lines({offset: settings}, consumer="edged")
        except OSError as error:
            raise self._cannot(error, _holder(chip, offset)) from error
        try:
            info = chip.get_line_info(offset)
        except OSError as error:
            request.release()
            raise self._cannot(error) from error
        return request, info.debounced and info.debounce_period == settings.debounce_period

    def _cannot(self, reason: object, holder: str = "") -> ButtonError:
        """``button 'mode': cannot request line 17 on /dev/gpiochip0: <reason> (<hint>)``."""
        hint = ""
        if isinstance(reason, PermissionError):
            hint = f" (edged's user needs read-write access to {self.config.device})"
        elif isinstance(reason, FileNotFoundError):
            hint = " (no such GPIO chip: `gpiodetect` lists them)"
        elif holder:
            hint = f" (in use by {holder!r})"
        return ButtonError(
            f"button {self.name!r}: cannot request line {self.config.line} on "
            f"{self.config.device}: {reason}{hint}"
        )

    def _on_readable(self) -> None:
        assert self._request is not None  # the reader lives and dies with the request
        try:
            edges = self._request.read_edge_events()
        except OSError as error:  # the chip went away (an unplugged USB GPIO adapter, say)
            self._stop_reading()
            self._fail(
                ButtonError(
                    f"button {self.name!r}: reading line {self.config.line} on "
                    f"{self.config.device} failed: {error}"
                )
            )
            return
        for edge in edges:
            self._edge(edge.event_type == self._rising, edge.timestamp_ns / 1e9)

    def _stop_reading(self) -> None:
        if self._request is not None:
            asyncio.get_running_loop().remove_reader(self._request.fd)

    async def _release(self) -> None:
        self._stop_reading()
        request, self._request = self._request, None
        if request is not None:
            request.release()


def _holder(chip: gpiod.Chip, offset: int) -> str:
    """Who holds a line, for an error message; empty if nobody or unknown."""
    try:
        info = chip.get_line_info(offset)
    except OSError:
        return ""
    return (info.consumer or "another program") if info.used else ""


class SimulatedButton(Button):
    """A button on a UNIX stream socket: each line ``press``, ``long_press``, ``down`` or
    ``up`` is answered ``ok`` or ``error: ...``; anything else is logged and refused, and the
    button goes on. ``down``/``up`` are timed on arrival, like GPIO edges.
    """

    def __init__(self, config: SimulatedButtonConfig) -> None:
        super().__init__(config.name, config.long_press_ms)
        self.config = config
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Transport] = set()
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the socket we made

    async def _open(self) -> None:
        path = self.config.socket
        await self._remove_stale(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(os.fspath(path))
            made = os.stat(path)
            self._identity = (made.st_dev, made.st_ino)
            # Before listen() nobody can connect, so this leaves no moment of a wider mode.
            os.chmod(path, 0o600)
            self._server = await asyncio.get_running_loop().create_unix_server(
                lambda: _Client(self._command, self._clients, self._log), sock=sock
            )
        except OSError as error:
            sock.close()
            self._remove_own_socket()
            raise ButtonError(f"button {self.name!r}: cannot listen on {path}: {error}") from error
        self._log.info("started", socket=str(path))

    async def _remove_stale(self, path: Path) -> None:
        """Remove a socket left by a process that is gone; refuse a live one or a non-socket."""
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return
        except OSError as error:
            raise ButtonError(f"button {self.name!r}: cannot use {path}: {error}") from error
        if not stat.S_ISSOCK(mode):
            raise ButtonError(
                f"button {self.name!r}: {path} exists and is not a socket; "
                "edged leaves it alone: remove it or choose another path"
            )
        try:
            async with asyncio.timeout(1.0):
                _, writer = await asyncio.open_unix_connection(os.fspath(path))
        except ConnectionRefusedError:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            self._log.info("stale_socket_removed", socket=str(path))
            return
        except TimeoutError:
            pass  # a listener too busy to accept is still a listener
        except OSError as error:
            raise ButtonError(f"button {self.name!r}: cannot use {path}: {error}") from error
        else:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        raise ButtonError(
            f"button {self.name!r}: {path} is in use by another process (another edged?)"
        )

    def _command(self, line: bytes) -> bytes:
        """Carry out one line from a client; the reply to send back."""
        text = line.decode("utf-8", "replace").strip()
        now = asyncio.get_running_loop().time()
        if text in ("press", "long_press"):
            self._emit([ButtonEvent(self.name, cast(PressKind, text), now)])
        elif text in ("down", "up"):
            self._edge(text == "down", now)
        else:
            self._log.warning("unknown_command", command=text[:64])
            return (
                f"error: unknown command {text[:64]!r}; expected one of {', '.join(COMMANDS)}\n"
            ).encode()
        return b"ok\n"

    async def _release(self) -> None:
        server, self._server = self._server, None
        for client in list(self._clients):
            client.close()
        self._remove_own_socket()
        if server is not None:
            server.close()
            await server.wait_closed()

    def _remove_own_socket(self) -> None:
        """Unlink the socket if it is still the one we made, not a later process's."""
        path = self.config.socket
        with contextlib.suppress(OSError):
            found = os.lstat(path)
            if (found.st_dev, found.st_ino) == self._identity:
                path.unlink()


class _Client(asyncio.Protocol):
    """One connection to a simulated button: lines in, one reply per non-empty line out."""

    def __init__(
        self,
        command: Callable[[bytes], bytes],
        clients: set[asyncio.Transport],
        log: FilteringBoundLogger,
    ) -> None:
        self._command = command
        self._clients = clients
        self._log = log
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._clients.add(self._transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._clients.discard(self._transport)

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None  # data follows connection_made
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        for line in lines:
            self._answer(line)
        if len(self._buffer) > MAX_LINE:
            self._log.warning("line_too_long", limit=MAX_LINE)
            self._transport.write(f"error: line longer than {MAX_LINE} bytes\n".encode())
            self._transport.close()

    def eof_received(self) -> None:
        """A last line without its newline still counts (``printf press | nc -U``)."""
        self._answer(self._buffer)
        self._buffer = b""

    def _answer(self, line: bytes) -> None:
        if line.strip() and self._transport is not None:
            self._transport.write(self._command(line))


def build_button(config: GpioButtonConfig | SimulatedButtonConfig) -> Button:
    """The button a config describes, not yet started."""
    if isinstance(config, GpioButtonConfig):
        return GpioButton(config)
    return SimulatedButton(config)


async def press(socket_path: Path | str, kind: Command = "press") -> None:
    """Press a simulated button: send ``kind`` and wait for its ``ok``; else ButtonError.

    Gives up after REPLY_TIMEOUT_S; wrap it in ``asyncio.timeout`` to wait less.
    """
    try:
        async with asyncio.timeout(REPLY_TIMEOUT_S):
            reader, writer = await asyncio.open_unix_connection(os.fspath(socket_path))
            try:
                writer.write(f"{kind}\n".encode())
                reply = await reader.readline()
            finally:
                writer.close()
    except TimeoutError as error:
        raise ButtonError(
            f"button at {socket_path}: no reply within {REPLY_TIMEOUT_S} s"
        ) from error
    except OSError as error:
        raise ButtonError(f"button at {socket_path}: {error}") from error
    _check_reply(socket_path, reply)


def press_sync(
    socket_path: Path | str, kind: Command = "press", timeout: float = REPLY_TIMEOUT_S
) -> None:
    """:func:`press` for code without an event loop (the command line)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(os.fspath(socket_path))
            sock.sendall(f"{kind}\n".encode())
            with sock.makefile("rb") as replies:
                reply = replies.readline()
    except TimeoutError as error:
        raise ButtonError(f"button at {socket_path}: no reply within {timeout} s") from error
    except OSError as error:
        raise ButtonError(f"button at {socket_path}: {error}") from error
    _check_reply(socket_path, reply)


def _check_reply(socket_path: Path | str, reply: bytes) -> None:
    text = reply.decode("utf-8", "replace").strip()
    if text != "ok":
        raise ButtonError(f"button at {socket_path}: {text or 'closed without a reply'}")
