"""The serial link to a Maix board: frames over pyserial-asyncio-fast, requests matched to
replies by sequence number, events queued, timeouts, and a measure of the line.

One :class:`SerialLink` per port. ``request`` sends a frame and waits for the reply with
the same sequence number; several may be in flight (chunked uploads keep a small window).
A reply the board NAKs (ERROR BAD_FRAME: the payload arrived corrupt) is sent again at once.
Events go to a bounded queue that drops its oldest entry when full, and counts it; gaps in
the board's event numbering are counted as lost. A BOOT event means the board restarted:
every request in flight fails with :class:`BoardReset`, since the board forgot them.

The port is opened with DTR and RTS released: Maix boards wire them to the K210's BOOT and
RESET pins for kflash (its ``reset_to_boot_*`` sequences end with both ``False``), so
asserting them, as a plain ``serial.Serial(port)`` does, can hold the chip in reset or ISP.
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
from dataclasses import dataclass, field
from typing import cast

import serial
import serial_asyncio_fast

from edged.kpu.errors import KpuError
from edged.kpu.serial.protocol import (
    ERR_BAD_FRAME,
    EVENT_TYPES,
    OVERHEAD,
    SEQ_MODULO,
    DecoderCounts,
    ErrorReply,
    Frame,
    FrameDecoder,
    HelloInfo,
    MsgType,
    encode_frame,
    split_reply,
)

CLOSE_TIMEOUT = 2.0


def line_bytes_per_second(baud: int) -> float:
    """What a baud rate carries at most: 8N1 sends ten bits per byte (start, 8 data, stop)."""
    return baud / 10


class LinkError(KpuError):
    """The link failed, not the model: MaixPy has no code for that, so ERR_UNKNOWN (2015)."""

    def __str__(self) -> str:
        return f"serial link: {self.detail}"


class BoardTimeout(LinkError):
    """No answer within the timeout: a silent, busy or unplugged board, or a wrong baud rate."""


class LinkClosed(LinkError):
    """The port is closed (unplugged, or closed by us)."""


class BoardReset(LinkError):
    """The board restarted (a BOOT event, or a reply under a new boot id)."""

    def __init__(self, detail: str, info: HelloInfo | None = None) -> None:
        super().__init__(detail)
        self.info = info


class Refused(Exception):
    """The board answered ERROR; the backend turns it into the matching ``KpuError``."""

    def __init__(self, boot_id: int, reply: ErrorReply) -> None:
        super().__init__(f"{reply.code} {reply.name}: {reply.text}")
        self.boot_id = boot_id
        self.reply = reply


@dataclass(frozen=True, slots=True)
class Reply:
    """An OK: the board's boot id, and the body after it."""

    boot_id: int
    body: bytes


@dataclass(frozen=True, slots=True)
class LinkMeasure:
    """What a measurement on connect found: round trip and throughput, both directions."""

    baud: int
    rtt_s: float
    """An empty ECHO, there and back."""
    bytes_per_s: float
    """Frame bytes both ways over the time of a full-size ECHO."""

    @property
    def nominal_bytes_per_s(self) -> float:
        """What the baud rate allows (:func:`line_bytes_per_second`)."""
        return line_bytes_per_second(self.baud)

    @property
    def effective_bytes_per_s(self) -> float:
        """The measured rate, but never above the baud rate's (a pty is not baud-limited)."""
        return min(self.bytes_per_s, self.nominal_bytes_per_s)


@dataclass
class LinkCounters:
    """Everything the link saw, for stats."""

    bytes_in: int = 0
    bytes_out: int = 0
    frames_in: int = 0
    frames_out: int = 0
    timeouts: int = 0
    resends: int = 0
    stray_replies: int = 0
    """Replies to requests no longer waited for (late answers after a timeout, unknown
    numbers), and board frames that are neither replies nor events."""
    events_lost: int = 0
    """Gaps in the board's event numbering: events the line corrupted."""
    events_dropped: int = 0
    """Events nobody read in time (the queue was full)."""
    decoder: DecoderCounts = field(default_factory=DecoderCounts)


def open_port(port: str, baud: int) -> serial.Serial:
    """The port, opened in this thread, with DTR and RTS released (see the module doc)."""
    instance = serial.serial_for_url(port, baudrate=baud, do_not_open=True)
    instance.dtr = False
    instance.rts = False
    instance.open()
    return instance


class SerialLink(asyncio.Protocol):
    """Frames to and from one board; see the module doc."""

    def __init__(self, port: str, baud: int, *, max_events: int = 256,
                 counters: LinkCounters | None = None) -> None:
        """``counters`` carries a previous link's counts over a reconnection."""
        self.port, self.baud = port, baud
        self.counters = counters or LinkCounters()
        self._decoder = FrameDecoder(counts=self.counters.decoder)
        self._transport: asyncio.Transport | None = None
        self._closed_reason = "not opened yet"
        self._closing = False
        self._made = asyncio.Event()
        self._lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending: dict[int, asyncio.Future[Frame]] = {}
        self._seq = 0
        self._events: collections.deque[Frame] = collections.deque(maxlen=max_events)
        self._event_ready = asyncio.Event()
        self._next_event_seq: int | None = None

    @property
    def is_open(self) -> bool:
        return self._transport is not None

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            instance = await loop.run_in_executor(None, open_port, self.port, self.baud)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise LinkClosed(f"cannot open serial port {self.port}: {exc}") from exc
        self._lost = loop.create_future()
        await serial_asyncio_fast.connection_for_serial(loop, lambda: self, instance)
        await self._made.wait()  # connection_made runs soon; requests need the transport

    async def close(self) -> None:
        """Close the port and wait until it is closed (the transport does it on a thread)."""
        transport, self._closing = self._transport, True
        self._fail_pending(LinkClosed(f"serial port {self.port} closed"))
        if transport is not None:
            transport.close()
            await asyncio.wait_for(asyncio.shield(self._lost), CLOSE_TIMEOUT)

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._made.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._closed_reason = "closed" if self._closing else f"lost ({exc or 'hang-up'})"
        self._fail_pending(LinkClosed(f"serial port {self.port} {self._closed_reason}"))
        if not self._lost.done():
            self._lost.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.counters.bytes_in += len(data)
        for frame in self._decoder.feed(data):
            self.counters.frames_in += 1
            if frame.type in (MsgType.OK, MsgType.ERROR):
                future = self._pending.pop(frame.seq, None)
                if future is None or future.done():
                    self.counters.stray_replies += 1
                else:
                    future.set_result(frame)
            elif frame.type in EVENT_TYPES:
                self._event(frame)
            else:
                self.counters.stray_replies += 1

    def _event(self, frame: Frame) -> None:
        if frame.type == MsgType.BOOT:
            info = HelloInfo.decode(frame.payload)
            self._fail_pending(BoardReset(
                f"the board on {self.port} restarted (boot {info.boot_id})", info))
        elif self._next_event_seq is not None:
            self.counters.events_lost += (frame.seq - self._next_event_seq) % SEQ_MODULO
        self._next_event_seq = (frame.seq + 1) % SEQ_MODULO
        if len(self._events) == self._events.maxlen:
            self.counters.events_dropped += 1
        self._events.append(frame)
        self._event_ready.set()

    def _fail_pending(self, exc: Exception) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(exc)

    # -- requests and events -----------------------------------------------------------------

    async def request(self, mtype: MsgType, body: bytes = b"", *, within: float,
                      resends: int = 2) -> Reply:
        """Send and wait for the reply: ``Reply`` for OK; ``Refused`` for ERROR;
        ``BoardTimeout``, ``BoardReset`` or ``LinkClosed`` when no reply can come."""
        while True:
            frame = await self._exchange(mtype, body, within)
            boot_id, rest = split_reply(frame.payload)
            if frame.type == MsgType.OK:
                return Reply(boot_id, rest)
            error = ErrorReply.decode(rest)
            if error.code == ERR_BAD_FRAME and resends > 0:
                resends -= 1
                self.counters.resends += 1
                continue
            raise Refused(boot_id, error)

    async def _exchange(self, mtype: MsgType, body: bytes, within: float) -> Frame:
        transport = self._transport
        if transport is None:
            raise LinkClosed(f"serial port {self.port} is {self._closed_reason}")
        seq = self._next_seq()
        future: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._pending[seq] = future
        data = encode_frame(mtype, seq, body)
        transport.write(data)
        self.counters.bytes_out += len(data)
        self.counters.frames_out += 1
        try:
            return await asyncio.wait_for(asyncio.shield(future), within)
        except TimeoutError:
            self.counters.timeouts += 1
            raise BoardTimeout(
                f"no answer to {mtype.name} from the board on {self.port} within {within:g} s"
            ) from None
        finally:
            if self._pending.get(seq) is future:
                del self._pending[seq]

    def _next_seq(self) -> int:
        for _ in range(SEQ_MODULO):
            self._seq = self._seq % (SEQ_MODULO - 1) + 1  # 1..65535: 0 is never a request
            if self._seq not in self._pending:
                return self._seq
        raise LinkError(f"65535 requests in flight on {self.port}")  # pragma: no cover

    async def next_event(self) -> Frame:
        """The oldest event not taken yet; waits for one."""
        while not self._events:
            self._event_ready.clear()
            await self._event_ready.wait()
        return self._events.popleft()

    async def measure(self, size: int, within: float) -> LinkMeasure:
        """An empty ECHO for the round trip, then ``size`` bytes there and back."""
        start = time.perf_counter()
        await self.request(MsgType.ECHO, within=within)
        rtt = time.perf_counter() - start
        payload = os.urandom(size)
        start = time.perf_counter()
        reply = await self.request(MsgType.ECHO, payload, within=within)
        elapsed = time.perf_counter() - start
        if reply.body != payload:
            raise LinkError(f"the board on {self.port} echoed {len(reply.body)} bytes that "
                            f"differ from the {size} sent")
        frame_bytes = 2 * (size + OVERHEAD + 4)  # the reply also carries the boot id
        return LinkMeasure(self.baud, rtt, frame_bytes / max(elapsed, 1e-9))


QVGA_RGB_BYTES = 320 * 240 * 3
EXAMPLES = (("a 28x28 grey digit (mnist)", 28 * 28), ("a 64x64 RGB input", 64 * 64 * 3),
            ("a 320x240 RGB frame", QVGA_RGB_BYTES))


def describe_link(measure: LinkMeasure) -> list[str]:
    """What the line means for host-fed frames, in a few sentences for logs and the CLI."""
    rate = measure.effective_bytes_per_s
    lines = [f"{measure.baud} baud carries at most {measure.nominal_bytes_per_s / 1e3:.0f} kB/s "
             f"(8N1); measured {measure.bytes_per_s / 1e3:.0f} kB/s, round trip "
             f"{measure.rtt_s * 1e3:.1f} ms."]
    for what, nbytes in EXAMPLES:
        seconds = nbytes / rate + measure.rtt_s
        lines.append(f"Host-fed, {what} ({nbytes} bytes) takes {seconds:.3g} s "
                     f"(at most {1 / seconds:.3g} fps).")
    lines.append("Host-fed frames suit small inputs; 30 fps needs stream mode, where the "
                 "board runs the model on its own camera and sends detections only.")
    return lines
