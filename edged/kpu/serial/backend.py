"""The KPU backend contract on a physical K210: a Maix board on a serial link.

``SerialKpu`` keeps the contract of ``edged.kpu.backend``: one lock orders loads, deinits and
runs; a refused load changes nothing. The board's memory account is the authority: its
``kpu.load`` decides what fits, and ERR_NO_MEM from it is a ``MemoryOverflow``. The host
mirrors it, model by model, as the fall in the board's free sys heap each load caused.

The board may restart at any time (reset button, power, watchdog, a crash in MaixPy). Every
reply carries the board's boot id, and the board announces each boot, so a restart is
noticed at the next reply or event; the host then loads the models it had loaded again (an
uploaded model is still on the SD card, so nothing is sent twice) and restarts the stream.
Handles stay valid across that. An operation caught by the restart is tried once more.

Models are fed one of two ways (``mode``): host-fed, a tensor per RUN, which the link's
rate limits to small inputs; or STREAM, where the board runs a YOLOv2 model on its own
camera at up to 30 fps and sends only detections (``events()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Literal, Self, TypeVar

import numpy as np
import numpy.typing as npt
import structlog

from edged.kpu.backend import Arrays, KpuStats, ModelHandle
from edged.kpu.errors import HandleError, KpuError, MemoryOverflow, RunError
from edged.kpu.kmodel.model import KModel
from edged.kpu.serial.config import BoardLocation, Mode, SerialSettings
from edged.kpu.serial.link import (
    BoardReset,
    BoardTimeout,
    LinkClosed,
    LinkCounters,
    LinkMeasure,
    Refused,
    SerialLink,
    describe_link,
    line_bytes_per_second,
)
from edged.kpu.serial.protocol import (
    LONG_PRESS,
    OVERHEAD,
    PROTOCOL_VERSION,
    BoardBox,
    ButtonEvent,
    Detections,
    ErrorReply,
    Frame,
    HelloInfo,
    InputPlan,
    LoadReply,
    LoadRequest,
    LogEvent,
    MemInfo,
    MsgType,
    ProtocolError,
    RunReply,
    Source,
    StreamRequest,
    Target,
    UploadBegin,
    UploadReply,
    board_error,
    crc32,
    decode_outputs,
    encode_chunk,
    input_plan,
    output_shapes,
    stream_size,
)
from edged.kpu.sim.executor import check_inputs
from edged.kpu.sram import MemoryReport, ModelCost, ModelMemory, RuntimeProfile, get_profile

log = structlog.get_logger(component="kpu.serial")
T = TypeVar("T")

ECHO_BYTES = 4096
HELLO_RETRY_S = 1.0
SLOW_FRAME_S = 0.1
"""A host-fed frame slower than this over the link gets a warning that says what it means."""


PressKind = Literal["press", "long_press"]


@dataclass(frozen=True, slots=True)
class BoardDetections:
    """One camera frame of the board in stream mode, as ``kpu.run_yolo2`` found it.

    Boxes are in pixels of the board's frame (``frame.width`` x ``frame.height``);
    ``received`` is ``time.monotonic()`` on arrival, ``frame.ticks_ms`` the board's clock.
    """

    model: str | None
    frame: Detections
    received: float

    @property
    def boxes(self) -> tuple[BoardBox, ...]:
        return self.frame.boxes


@dataclass(frozen=True, slots=True)
class BoardButton:
    """The board's BOOT key: a press, or a hold of a second (reported while still held)."""

    kind: PressKind
    held_ms: int
    at: float


@dataclass(frozen=True, slots=True)
class BoardLog:
    level: int
    text: str


@dataclass(frozen=True, slots=True)
class BoardFault:
    """Something failed on the board outside a request (a stream stopped, the script)."""

    code: int
    name: str
    text: str


@dataclass(frozen=True, slots=True)
class BoardRestarted:
    """The board restarted; ``reloaded`` models are back under the same handles."""

    boot_id: int
    reloaded: tuple[str, ...]
    lost: tuple[str, ...]


BoardEvent = BoardDetections | BoardButton | BoardLog | BoardFault | BoardRestarted


@dataclass(frozen=True, slots=True)
class SerialStats:
    """The link for stats: its rate, what crossed it, and what went wrong."""

    port: str
    baud: int
    mode: Mode
    boot_id: int | None
    firmware: str | None
    measured_bytes_per_s: int | None
    """ECHO at connect, both directions."""
    rtt_ms: float | None
    run_bytes_per_s: int | None
    """Bytes moved during RUNs over the time the RUNs took (transfer and KPU)."""
    bytes_in: int
    bytes_out: int
    frames_in: int
    frames_out: int
    skipped_bytes: int
    """Garbage on the line and corrupt frames, skipped while resynchronising."""
    bad_frames: int
    timeouts: int
    resends: int
    stray_replies: int
    """Board frames that answer nothing waited for (late replies after a timeout)."""
    events_lost: int
    events_dropped: int
    resets: int
    reconnects: int
    runs: int
    stream_frames: int
    detections: int


class ModelMismatch(KpuError):
    """The file or flash offset named for a model holds other bytes than the host's kmodel.

    MaixPy's ERR_PARAM (2001): "please check param, load address or kmodel file name".
    """

    code = 2001
    name = "ERR_PARAM"


@dataclass
class _Active:
    handle: ModelHandle
    model: KModel
    plan: InputPlan
    location: BoardLocation | None
    board: int
    """The board's handle; changes when the model is loaded again after a restart."""


@dataclass(frozen=True)
class _Stream:
    host_id: int
    request: StreamRequest


class SerialKpu:
    """A K210 on a Maix board at ``port``; see the module doc. Use as ``async with``."""

    def __init__(
        self,
        port: str,
        baud: int = 1_500_000,
        *,
        profile: str | RuntimeProfile = "maixpy-full",
        mode: Mode = "host",
        timeout: float = 2.0,
        run_timeout: float = 10.0,
        load_timeout: float = 60.0,
        connect_timeout: float = 10.0,
        chunk_size: int = 4096,
        window: int = 2,
        locations: Mapping[str, BoardLocation] | None = None,
        max_events: int = 256,
    ) -> None:
        self.port, self.baud, self.mode = port, baud, mode
        self.profile = get_profile(profile)
        self.timeout, self.run_timeout = timeout, run_timeout
        self.load_timeout, self.connect_timeout = load_timeout, connect_timeout
        self.chunk_size, self.window = chunk_size, window
        self.locations = dict(locations or {})
        self._max_events = max_events
        self._lock = asyncio.Lock()
        self._link: SerialLink | None = None
        self._hello: HelloInfo | None = None
        self._measure: LinkMeasure | None = None
        self._budget = 0
        self._active: dict[int, _Active] = {}
        self._ids = itertools.count(1)
        self._stream: _Stream | None = None
        self._events: asyncio.Queue[BoardEvent] | None = None
        self._pump: asyncio.Task[None] | None = None
        self._recovering: asyncio.Task[None] | None = None
        self._closed = False
        self._runs = self._stream_frames = self._detections = self._resets = 0
        self._reconnects = self._events_dropped = self._run_bytes = 0
        self._busy = 0.0

    @classmethod
    def from_settings(cls, settings: SerialSettings, profile: str | RuntimeProfile) -> Self:
        return cls(settings.port, settings.baud, profile=profile, mode=settings.mode,
                   timeout=settings.timeout, run_timeout=settings.run_timeout,
                   load_timeout=settings.load_timeout,
                   connect_timeout=settings.connect_timeout, chunk_size=settings.chunk_size,
                   window=settings.window, locations=settings.locations)

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    # -- connecting --------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the port, shake hands, clear what a previous host left on the board, and
        measure the line. ``BoardTimeout`` when the board does not answer."""
        self._events = asyncio.Queue(self._max_events)
        try:
            await self._connect()
            info = self.hello
            measure = self._measure = await self._linked().measure(
                min(ECHO_BYTES, info.max_body - 4), self.timeout)
        except BaseException:
            if self._link is not None:
                await self._link.close()
            raise
        log.info("board_connected", port=self.port, baud=self.baud, mode=self.mode,
                 firmware=info.firmware, script=info.script, boot=info.boot_id,
                 heap_free=info.heap_free, rtt_ms=round(measure.rtt_s * 1e3, 2),
                 measured_bytes_per_s=round(measure.bytes_per_s),
                 meaning=" ".join(describe_link(measure)))
        self._pump = asyncio.create_task(self._event_pump(), name=f"kpu-serial-{self.port}")

    async def _connect(self) -> None:
        await self._connect_link_only()
        info = await self._await_board(self.connect_timeout)
        self._check_version(info)
        self._hello = info
        await self._stop_board_stream()
        stale = (await self._meminfo()).handles
        for board_handle, _ in stale:
            await self._deinit_on_board(board_handle)
        if stale:
            log.warning("board_models_dropped", port=self.port, count=len(stale),
                        reason="loaded by an earlier host session")
        self._budget = (await self._meminfo()).heap_free

    async def _await_board(self, within: float) -> HelloInfo:
        """HELLO until the board answers (it may still be booting), or ``BoardTimeout``."""
        deadline = time.monotonic() + within
        link = self._linked()
        while True:
            left = deadline - time.monotonic()
            try:
                reply = await link.request(MsgType.HELLO, within=max(0.05, min(HELLO_RETRY_S,
                                                                                left)))
                return HelloInfo.decode(reply.body)
            except (BoardTimeout, BoardReset):
                if time.monotonic() >= deadline:
                    raise BoardTimeout(
                        f"no answer from the board on {self.port} within {within:g} s: is it "
                        f"powered, running edged_board.py (deploy/k210/README.md), at "
                        f"{self.baud} baud?") from None

    def _check_version(self, info: HelloInfo) -> None:
        if info.protocol != PROTOCOL_VERSION:
            raise ProtocolError(
                f"the board on {self.port} runs {info.script} (protocol {info.protocol}); "
                f"this edged speaks protocol {PROTOCOL_VERSION}: copy deploy/k210/"
                "edged_board.py from this edged onto the board's SD card")

    @property
    def hello(self) -> HelloInfo:
        if self._hello is None:
            raise LinkClosed(f"the board on {self.port} is not connected (open() first)")
        return self._hello

    @property
    def measure(self) -> LinkMeasure | None:
        return self._measure

    def _linked(self) -> SerialLink:
        if self._closed or self._link is None:
            raise LinkClosed(f"the serial KPU on {self.port} is closed")
        return self._link

    # -- the contract ------------------------------------------------------------------------

    async def load(self, model: KModel, name: str) -> ModelHandle:
        async with self._lock:
            plan = input_plan(model, name)
            location = self.locations.get(name)
            board, nbytes = await self._recovering_op(
                lambda _: self._load_on_board(model, name, plan, location))
            handle = ModelHandle(next(self._ids), name, model.sha256, nbytes)
            self._active[handle.id] = _Active(handle, model, plan, location, board)
            self._warn_if_slow(name, plan)
            return handle

    async def deinit(self, handle: ModelHandle) -> None:
        async with self._lock:
            self._get(handle)

            async def once(attempt: int) -> None:
                try:
                    await self._deinit_on_board(self._get(handle).board)
                except Refused as exc:
                    if not (attempt and exc.reply.code == HandleError.code):
                        raise self._refusal(exc, f"deinit of {handle.name!r}") from None

            await self._recovering_op(once)
            del self._active[handle.id]
            if self._stream is not None and self._stream.host_id == handle.id:
                self._stream = None

    async def run(self, handle: ModelHandle, inputs: Sequence[npt.NDArray[np.generic]]) -> Arrays:
        async with self._lock:
            active = self._get(handle)
            checked = check_inputs(active.model.inputs, inputs)
            data = active.plan.encode(checked[0])
            start = time.perf_counter()
            before = self._moved()
            reply = await self._recovering_op(lambda _: self._run_on_board(handle, data))
            self._busy += time.perf_counter() - start
            self._run_bytes += self._moved() - before
            self._runs += 1
            try:
                return decode_outputs(reply, active.model.outputs)
            except ValueError as exc:
                raise RunError(f"model {handle.name!r} on the board on {self.port}: {exc}"
                               ) from None

    def memory(self) -> MemoryReport:
        models = tuple(ModelMemory(a.handle.id, a.handle.name, a.handle.nbytes,
                                   ModelCost.of(a.model)) for a in self._active.values())
        return MemoryReport.of(self.profile.name, self._budget, models)

    @property
    def concurrent_runs(self) -> int:
        """The board's one KPU."""
        return 1

    def stats(self) -> KpuStats:
        """Runs and the seconds they held the KPU, transfers over the link included."""
        return KpuStats(self._runs, self._busy)

    async def close(self) -> None:
        async with self._lock:
            if self._closed:
                return
            for task in (self._pump, self._recovering):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if self._link is not None and self._link.is_open:
                with contextlib.suppress(KpuError, Refused):  # a silent board: one timeout
                    await self._stop_board_stream()
                    for active in self._active.values():
                        await self._deinit_on_board(active.board)
                await self._link.close()
            self._closed = True
            self._active.clear()

    # -- beyond the contract -----------------------------------------------------------------

    async def stream(self, handle: ModelHandle, *, anchors: Sequence[float], threshold: float,
                     nms: float, fps: float) -> tuple[int, int]:
        """Run ``handle`` (a YOLOv2 model) on the board's camera with ``kpu.run_yolo2`` at up to
        ``fps``; detections arrive as ``BoardDetections`` from :meth:`events`. Returns the
        camera frame's size. A stream survives board restarts; deinit or
        :meth:`stop_stream` ends it."""
        async with self._lock:
            request = StreamRequest(0, fps, threshold, nms, tuple(anchors))
            self._get(handle)
            stream = _Stream(handle.id, request)
            width, height = await self._recovering_op(lambda _: self._start_stream(stream))
            self._stream = stream
            return width, height

    async def stop_stream(self) -> None:
        async with self._lock:
            self._stream = None
            await self._recovering_op(lambda _: self._stop_board_stream())

    async def reset(self) -> None:
        """Restart the board (RESET), wait for it, and load the active models again."""
        async with self._lock:
            with contextlib.suppress(BoardReset):
                await self._call(MsgType.RESET)
            await self._recover(None, expect_new=True)

    async def meminfo(self) -> MemInfo:
        """The board's own view: free sys and GC heap, its handles, its receive errors."""
        async with self._lock:
            return await self._recovering_op(lambda _: self._meminfo())

    async def events(self) -> AsyncIterator[BoardEvent]:
        """Board events: detections (stream mode), BOOT key presses, logs, faults, restarts.
        One reader; when it falls behind, the oldest events are dropped and counted."""
        if self._events is None:
            raise LinkClosed(f"the board on {self.port} is not connected (open() first)")
        while True:
            yield await self._events.get()

    def link_stats(self) -> SerialStats:
        counters = self._link.counters if self._link is not None else LinkCounters()
        decoder = counters.decoder
        measure = self._measure
        return SerialStats(
            port=self.port, baud=self.baud, mode=self.mode,
            boot_id=self._hello.boot_id if self._hello else None,
            firmware=self._hello.firmware if self._hello else None,
            measured_bytes_per_s=round(measure.bytes_per_s) if measure else None,
            rtt_ms=round(measure.rtt_s * 1e3, 3) if measure else None,
            run_bytes_per_s=round(self._run_bytes / self._busy) if self._busy else None,
            bytes_in=counters.bytes_in, bytes_out=counters.bytes_out,
            frames_in=counters.frames_in, frames_out=counters.frames_out,
            skipped_bytes=decoder.skipped_bytes,
            bad_frames=decoder.bad_headers + decoder.bad_payloads,
            timeouts=counters.timeouts, resends=counters.resends,
            stray_replies=counters.stray_replies, events_lost=counters.events_lost,
            events_dropped=self._events_dropped + counters.events_dropped,
            resets=self._resets, reconnects=self._reconnects, runs=self._runs,
            stream_frames=self._stream_frames, detections=self._detections)

    # -- operations on the board -------------------------------------------------------------

    async def _stop_board_stream(self) -> None:
        await self._call(MsgType.STREAM, StreamRequest(0, 0).encode())

    async def _deinit_on_board(self, board_handle: int) -> None:
        await self._call(MsgType.DEINIT, bytes([board_handle]))

    async def _call(self, mtype: MsgType, body: bytes = b"", *,
                    within: float | None = None) -> bytes:
        """One request; a reply under another boot id means the board restarted."""
        link = self._linked()
        try:
            reply = await link.request(mtype, body, within=within or self.timeout)
        except Refused as exc:
            self._check_boot(exc.boot_id)
            raise
        self._check_boot(reply.boot_id)
        return reply.body

    def _check_boot(self, boot_id: int) -> None:
        if self._hello is not None and boot_id != self._hello.boot_id:
            raise BoardReset(f"the board on {self.port} restarted (boot {boot_id}, was "
                             f"{self._hello.boot_id})")

    async def _meminfo(self) -> MemInfo:
        return MemInfo.decode(await self._call(MsgType.MEMINFO))

    async def _recovering_op(self, op: Callable[[int], Awaitable[T]]) -> T:
        """``op(attempt)``, tried again once after a board restart, a lost reply or a port
        that went away; a board that answers nothing raises ``BoardTimeout``."""
        for attempt in (0, 1):
            try:
                return await op(attempt)
            except BoardReset as exc:
                if attempt:
                    raise
                await self._recover(exc.info)
            except BoardTimeout as exc:
                if attempt:
                    raise
                await self._after_timeout(exc)
            except LinkClosed:
                if attempt or self._closed:
                    raise
                await self._reopen()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _after_timeout(self, exc: BoardTimeout) -> None:
        """A request went unanswered: restarted, lost reply, or a silent board?"""
        log.warning("board_request_unanswered", port=self.port, error=str(exc))
        try:
            reply = await self._linked().request(MsgType.HELLO, within=self.timeout)
        except (BoardTimeout, BoardReset):
            raise BoardTimeout(
                f"{exc}, nor to HELLO after it: the board is silent (powered? running "
                f"edged_board.py? at {self.baud} baud?)") from None
        info = HelloInfo.decode(reply.body)
        if info.boot_id != self.hello.boot_id:
            await self._recover(info)
            return
        # the same boot: the reply was lost; drop what the board holds that we do not know
        known = {a.board for a in self._active.values()}
        for board_handle, _ in (await self._meminfo()).handles:
            if board_handle not in known:
                await self._deinit_on_board(board_handle)

    async def _reopen(self) -> None:
        self._reconnects += 1
        log.warning("board_reconnecting", port=self.port)
        old = self._hello
        if self._link is not None:
            await self._link.close()
        await self._connect_link_only()
        info = await self._await_board(self.connect_timeout)
        if old is None or info.boot_id != old.boot_id:
            await self._recover(info)

    async def _connect_link_only(self) -> None:
        counters = self._link.counters if self._link is not None else None
        link = self._link = SerialLink(self.port, self.baud, counters=counters)
        await link.open()
        if self._pump is not None:
            self._pump.cancel()
            self._pump = asyncio.create_task(self._event_pump(), name=f"kpu-serial-{self.port}")

    async def _recover(self, info: HelloInfo | None, *, expect_new: bool = False) -> None:
        """The board restarted: adopt its new boot, load the active models again, restart
        the stream. Models that no longer load are dropped (their handles become stale)."""
        old = self.hello.boot_id
        if info is None or info.boot_id == old:
            info = await self._await_board(self.connect_timeout)
            deadline = time.monotonic() + self.connect_timeout
            while expect_new and info.boot_id == old and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                info = await self._await_board(self.connect_timeout)
        if info.boot_id == old:
            return
        self._check_version(info)
        self._hello = info
        self._resets += 1
        self._budget = (await self._meminfo()).heap_free
        reloaded, lost = [], []
        for host_id, active in list(self._active.items()):
            try:
                board, nbytes = await self._load_on_board(active.model, active.handle.name,
                                                           active.plan, active.location)
            except (KpuError, Refused) as exc:
                log.error("board_model_lost", port=self.port, model=active.handle.name,
                          error=str(exc))
                del self._active[host_id]
                lost.append(active.handle.name)
                continue
            active.board = board
            active.handle = replace(active.handle, nbytes=nbytes)
            reloaded.append(active.handle.name)
        stream = self._stream
        if stream is not None and stream.host_id in self._active:
            await self._start_stream(stream)
        elif stream is not None:
            self._stream = None
        log.warning("board_restarted", port=self.port, boot=info.boot_id,
                    reloaded=reloaded, lost=lost)
        self._emit(BoardRestarted(info.boot_id, tuple(reloaded), tuple(lost)))

    def _get(self, handle: ModelHandle) -> _Active:
        if self._closed:
            raise HandleError(f"the serial KPU on {self.port} is closed")
        active = self._active.get(handle.id)
        if active is None or active.handle.name != handle.name:
            raise HandleError(f"model {handle.name!r} (handle {handle.id}) is not loaded on "
                              f"the board on {self.port}")
        return active

    def _refusal(self, exc: Refused, where: str) -> KpuError:
        return board_error(exc.reply, f"{where} on the board on {self.port}")

    async def _load_on_board(self, model: KModel, name: str, plan: InputPlan,
                             location: BoardLocation | None) -> tuple[int, int]:
        """LOAD (uploading first when the model is not on the board); the board's handle
        and the bytes of sys heap the load took."""
        data = model.data
        if location is None:
            path = await self._upload(Target.MODEL, data, f"edged-{model.sha256[:16]}.kmodel")
            source, address, verify = Source.FILE, 0, False
        else:
            path = location.path or ""
            source = Source.FILE if location.path else Source.FLASH
            address, verify = location.flash or 0, True
        request = LoadRequest(source, address, len(data), crc32(data), verify, model.version,
                              plan.kind, plan.shape, output_shapes(model), path)
        before = (await self._meminfo()).heap_free
        try:
            reply = LoadReply.decode(await self._call(MsgType.LOAD, request.encode(),
                                                      within=self.load_timeout))
        except Refused as exc:
            raise self._load_error(exc.reply, model, name, location or path, before) from None
        took = before - reply.heap_free
        return reply.handle, took if took > 0 else ModelCost.of(model).total

    def _load_error(self, reply: ErrorReply, model: KModel, name: str,
                    where: BoardLocation | str, free: int) -> KpuError:
        context = f"loading {name!r} from {where} on the board on {self.port}"
        if reply.code == MemoryOverflow.code:
            cost = ModelCost.of(model)
            return MemoryOverflow(
                f"{context}: the board has {free} bytes of sys heap free and the model needs "
                f"about {cost.total} ({cost.itemised()}); the board says {reply.text!r}",
                needed=cost.total, free=free)
        if reply.code == ModelMismatch.code and "another model" in reply.text:
            return ModelMismatch(f"{context}: {reply.text}; burn or copy {name} there again")
        return board_error(reply, context)

    async def _upload(self, target: Target, data: bytes, name: str) -> str:
        """UPLOAD, CHUNKs (a window of them in flight), COMMIT; the path on the board."""
        begin = UploadBegin(target, len(data), crc32(data), name)
        try:
            started = UploadReply.decode(await self._call(MsgType.UPLOAD, begin.encode()))
            if started.present:
                return started.path
            info = self.hello
            chunk = min(self.chunk_size, info.max_body - 4)
            window = max(1, min(self.window, info.rx_buffer // (chunk + OVERHEAD + 4)))
            flying: list[asyncio.Task[bytes]] = []
            try:
                for offset in range(0, len(data), chunk):
                    if len(flying) >= window:
                        await flying.pop(0)
                    flying.append(asyncio.create_task(self._call(
                        MsgType.CHUNK, encode_chunk(offset, data[offset:offset + chunk]),
                        within=self.timeout + chunk / line_bytes_per_second(self.baud))))
                    await asyncio.sleep(0)  # let it write before the next one is made
                for task in flying:
                    await task
            finally:
                for task in flying:
                    task.cancel()
                await asyncio.gather(*flying, return_exceptions=True)
            committed = UploadReply.decode(await self._call(MsgType.COMMIT))
        except Refused as exc:
            raise self._refusal(exc, f"uploading {len(data)} bytes to {name}") from None
        return committed.path

    async def _run_on_board(self, handle: ModelHandle, data: bytes) -> RunReply:
        active = self._get(handle)
        staged = len(data) + 2 > self.hello.max_body
        if staged:
            await self._upload(Target.INPUT, data, "")
        body = bytes([active.board, staged]) + (b"" if staged else data)
        within = self.run_timeout + 2 * len(data) / line_bytes_per_second(self.baud)
        try:
            return RunReply.decode(await self._call(MsgType.RUN, body, within=within))
        except Refused as exc:
            raise self._refusal(exc, f"running {handle.name!r}") from None

    async def _start_stream(self, stream: _Stream) -> tuple[int, int]:
        active = self._active.get(stream.host_id)
        if active is None:
            raise HandleError(f"the streaming model (handle {stream.host_id}) is not loaded")
        request = replace(stream.request, handle=active.board)
        try:
            body = await self._call(MsgType.STREAM, request.encode())
        except Refused as exc:
            raise self._refusal(exc, f"streaming {active.handle.name!r}") from None
        return stream_size(body)

    def _moved(self) -> int:
        link = self._link
        return link.counters.bytes_in + link.counters.bytes_out if link else 0

    def _warn_if_slow(self, name: str, plan: InputPlan) -> None:
        measure = self._measure
        if self.mode != "host" or measure is None:
            return
        seconds = plan.nbytes / measure.effective_bytes_per_s
        if seconds > SLOW_FRAME_S:
            log.warning("host_fed_frames_slow", model=name, port=self.port,
                        input_bytes=plan.nbytes, seconds_per_frame=round(seconds, 3),
                        max_fps=round(1 / seconds, 2),
                        advice="host-fed frames suit small inputs; for camera-rate detection "
                        "set kpu.serial.mode = \"stream\" and use the board's camera")

    # -- events ------------------------------------------------------------------------------

    async def _event_pump(self) -> None:
        link = self._linked()
        while True:
            frame = await link.next_event()
            try:
                self._on_event(frame)
            except KpuError as exc:
                log.warning("board_event_unreadable", port=self.port, type=frame.type,
                            error=str(exc))

    def _on_event(self, frame: Frame) -> None:
        match frame.type:
            case MsgType.BOOT:
                info = HelloInfo.decode(frame.payload)
                if self._hello is not None and info.boot_id != self._hello.boot_id and (
                        self._recovering is None or self._recovering.done()):
                    self._recovering = asyncio.create_task(self._recover_locked(info))
            case MsgType.DETECTIONS:
                found = Detections.decode(frame.payload)
                stream = self._stream
                active = self._active.get(stream.host_id) if stream else None
                self._stream_frames += 1
                self._detections += len(found.boxes)
                self._emit(BoardDetections(active.handle.name if active else None, found,
                                           time.monotonic()))
            case MsgType.BUTTON:
                button = ButtonEvent.decode(frame.payload)
                self._emit(BoardButton("long_press" if button.kind == LONG_PRESS else "press",
                                       button.held_ms, time.monotonic()))
            case MsgType.LOG:
                entry = LogEvent.decode(frame.payload)
                log.info("board_log", port=self.port, level=entry.level, text=entry.text)
                self._emit(BoardLog(entry.level, entry.text))
            case MsgType.FAULT:
                fault = ErrorReply.decode(frame.payload)
                log.warning("board_fault", port=self.port, code=fault.code, text=fault.text)
                if "stream stopped" in fault.text:
                    self._stream = None
                self._emit(BoardFault(fault.code, fault.name, fault.text))

    async def _recover_locked(self, info: HelloInfo) -> None:
        async with self._lock:
            if self._closed or info.boot_id == self.hello.boot_id:
                return
            try:
                await self._recover(info)
            except KpuError as exc:  # the next operation will try again and say why
                log.error("board_recovery_failed", port=self.port, error=str(exc))

    def _emit(self, event: BoardEvent) -> None:
        queue = self._events
        if queue is None:
            return
        if queue.full():
            queue.get_nowait()
            self._events_dropped += 1
        queue.put_nowait(event)
