"""The wire format between edged and a Maix board: frames, message bodies and error codes.

Written down in ``docs/serial-protocol.md``; ``deploy/k210/edged_board.py`` is the board's
side, in MicroPython, and keeps its own copy of the constants (a test compares them). A
frame is::

    magic EB 90 | version u8 | type u8 | seq u16 | length u32 | header crc32 u32
    | payload (length bytes) | payload crc32 u32

all little-endian. The header has its own CRC so that a corrupt length never swallows the
frames behind it: :class:`FrameDecoder` checks the header, then the payload, and on any
failure steps one byte past the magic and scans again, counting what it skipped. CRC-32 is
zlib's (``binascii.crc32``), which MaixPy has as ``ubinascii.crc32``.

Requests (types 0x01-0x0B) carry the host's sequence number 1..65535; the board answers
each with OK (0x80) or ERROR (0x81) under the same number, and every answer starts with the
board's boot id, so a board that rebooted in between is noticed on the very next reply.
Events (0xC0-0xC4) are numbered by the board's own counter, so lost events are counted.
"""

from __future__ import annotations

import binascii
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np
import numpy.typing as npt

from edged.kpu.errors import (
    FirstLayerError,
    HandleError,
    KmodelFormatError,
    KmodelVersionError,
    KpuError,
    ModelsFull,
    RunError,
)
from edged.kpu.kmodel.model import KModel, TensorSpec

MAGIC = b"\xeb\x90"
"""The classic 0xEB90 PCM frame-sync word: rare in ASCII boot banners and REPL text."""
PROTOCOL_VERSION = 1
HEADER = struct.Struct("<2sBBHI")
HEADER_BYTES = HEADER.size + 4  # the fields, then their CRC
TRAILER_BYTES = 4
OVERHEAD = HEADER_BYTES + TRAILER_BYTES
MAX_PAYLOAD = 4 * 1024 * 1024
"""The host accepts board frames up to this size (the largest output set of the fixture
models is about 100 KB); the board states its own, much smaller, limit in HELLO."""
SEQ_MODULO = 1 << 16


class MsgType(IntEnum):
    """Frame types: requests from the host, replies and events from the board."""

    HELLO = 0x01
    LOAD = 0x02
    DEINIT = 0x03
    RUN = 0x04
    STREAM = 0x05
    MEMINFO = 0x06
    RESET = 0x07
    UPLOAD = 0x08
    CHUNK = 0x09
    COMMIT = 0x0A
    ECHO = 0x0B
    OK = 0x80
    ERROR = 0x81
    BOOT = 0xC0
    DETECTIONS = 0xC1
    BUTTON = 0xC2
    LOG = 0xC3
    FAULT = 0xC4


EVENT_TYPES = frozenset({MsgType.BOOT, MsgType.DETECTIONS, MsgType.BUTTON, MsgType.LOG,
                         MsgType.FAULT})


class Source(IntEnum):
    """Where LOAD finds the kmodel: a file on the board (SD card, or an upload) or flash."""

    FILE = 0
    FLASH = 1


class InputKind(IntEnum):
    """How the board hands a host tensor to ``kpu.forward`` (MaixPy takes an image or a list).

    FLOAT: a list of floats (exact). GRAY: a grayscale image, ``pix_to_ai`` copies its bytes
    (exact). RGB565: an RGB565 image, so each channel keeps 5, 6 and 5 bits (lossy: see
    :func:`rgb565_roundtrip`); MaixPy has no way to fill a 3-channel ``pix_ai`` exactly.
    """

    FLOAT = 0
    GRAY = 1
    RGB565 = 2


class Target(IntEnum):
    """What an UPLOAD fills: a kmodel file on the board's card, or a RUN input in RAM."""

    MODEL = 0
    INPUT = 1


FLAG_CAMERA = 1
FLAG_KMODEL_V4 = 2

# The protocol's own error codes; 2001-2015 are MaixPy's (``sipeed_kpu_err_t``).
ERR_BAD_FRAME = 1001
ERR_UNKNOWN_TYPE = 1002
ERR_BAD_REQUEST = 1003
ERR_CHECKSUM = 1004
ERR_NO_CAMERA = 1005
ERR_TOO_LARGE = 1006
ERR_STORAGE = 1007
ERR_INTERNAL = 1008

PROTOCOL_ERRORS = {
    ERR_BAD_FRAME: "BAD_FRAME",
    ERR_UNKNOWN_TYPE: "UNKNOWN_TYPE",
    ERR_BAD_REQUEST: "BAD_REQUEST",
    ERR_CHECKSUM: "CHECKSUM",
    ERR_NO_CAMERA: "NO_CAMERA",
    ERR_TOO_LARGE: "TOO_LARGE",
    ERR_STORAGE: "STORAGE",
    ERR_INTERNAL: "INTERNAL",
}

MAIXPY_ERRORS = {
    2001: "ERR_PARAM",
    2002: "ERR_KMODEL_VERSION",
    2003: "ERR_KMODEL_FORMAT",
    2004: "ERR_DECRYPT",
    2005: "ERR_READ_FILE",
    2006: "ERR_NO_MEM",
    2007: "ERR_GET_CONV_LAYER",
    2008: "ERR_RUN_MODEL",
    2009: "ERR_MODELS_FULL",
    2010: "ERR_PERMITION",
    2011: "ERR_IDX_OUTRANGE",
    2012: "ERR_SIZE_NOTMATCH",
    2013: "ERR_OUTPUTS_NODONE",
    2014: "ERR_NOT_IMPLEMENT",
    2015: "ERR_UNKNOWN",
}
"""``sipeed_kpu_err_t`` (MaixPy-v1 ``components/kendryte_sdk/include/sipeed_kpu.h``)."""


def crc32(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    """zlib's CRC-32, as MaixPy's ``ubinascii.crc32(data, value)`` computes it."""
    return binascii.crc32(data, value) & 0xFFFFFFFF


# --- frames -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    type: int
    seq: int
    payload: bytes
    version: int = PROTOCOL_VERSION


def encode_frame(mtype: int, seq: int, payload: bytes = b"", *,
                 version: int = PROTOCOL_VERSION) -> bytes:
    header = HEADER.pack(MAGIC, version, mtype, seq % SEQ_MODULO, len(payload))
    return b"".join((header, struct.pack("<I", crc32(header)), payload,
                     struct.pack("<I", crc32(payload))))


@dataclass
class DecoderCounts:
    """What the decoder threw away, for link stats."""

    skipped_bytes: int = 0
    """Bytes that were not part of a good frame: garbage, boot banners, corrupt frames."""
    bad_headers: int = 0
    bad_payloads: int = 0
    """Frames whose header was good and payload CRC was not (bit errors, lost bytes)."""
    oversize: int = 0


@dataclass
class FrameDecoder:
    """Bytes in, whole frames out, resynchronising on anything that is not a good frame.

    ``on_bad_payload(type, seq)`` is told of a frame whose header was good but payload was
    not (the board answers those with ERROR BAD_FRAME so the host can resend at once).
    """

    max_payload: int = MAX_PAYLOAD
    on_bad_payload: Callable[[int, int], None] | None = None
    counts: DecoderCounts = field(default_factory=DecoderCounts)
    _buffer: bytearray = field(default_factory=bytearray)

    @property
    def pending(self) -> int:
        """Bytes held: the start of a frame not complete yet."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame]:
        self._buffer += data
        frames: list[Frame] = []
        buf = self._buffer
        pos = 0
        while True:
            start = buf.find(MAGIC, pos)
            if start < 0:
                # keep a last byte that may be the first half of the magic
                keep = 1 if len(buf) > pos and buf[-1:] == MAGIC[:1] else 0
                self._skip(len(buf) - pos - keep)
                pos = len(buf) - keep
                break
            self._skip(start - pos)
            pos = start
            if len(buf) - pos < HEADER_BYTES:
                break
            _, version, mtype, seq, length = HEADER.unpack_from(buf, pos)
            (hcrc,) = struct.unpack_from("<I", buf, pos + HEADER.size)
            if hcrc != crc32(memoryview(buf)[pos:pos + HEADER.size]):
                self.counts.bad_headers += 1
                self._skip(1)
                pos += 1
                continue
            if length > self.max_payload:
                self.counts.oversize += 1
                self._skip(1)
                pos += 1
                continue
            end = pos + HEADER_BYTES + length + TRAILER_BYTES
            if len(buf) < end:
                break
            payload = bytes(buf[pos + HEADER_BYTES:end - TRAILER_BYTES])
            (pcrc,) = struct.unpack_from("<I", buf, end - TRAILER_BYTES)
            if pcrc != crc32(payload):
                self.counts.bad_payloads += 1
                if self.on_bad_payload is not None:
                    self.on_bad_payload(mtype, seq)
                self._skip(1)
                pos += 1
                continue
            frames.append(Frame(mtype, seq, payload, version))
            pos = end
        del buf[:pos]
        return frames

    def _skip(self, count: int) -> None:
        self.counts.skipped_bytes += count


# --- bodies -------------------------------------------------------------------------------------


class ProtocolError(KpuError):
    """Bytes that do not follow the protocol: a malformed body, or another version.

    MaixPy has no code for a link fault, so these carry its catch-all, ERR_UNKNOWN (2015).
    """

    def __str__(self) -> str:
        return f"serial protocol: {self.detail}"


# The fixed parts of the bodies, each written down once for encode and decode.
_HELLO = struct.Struct("<BIIIIIIB")
_LOAD = struct.Struct("<BIIIBBB3HB")  # ..., input shape, count of output shapes
_SHAPE = struct.Struct("<3H")
_LOAD_REPLY = struct.Struct("<BIII")
_RUN_REPLY = struct.Struct("<IB")
_OUTPUT = struct.Struct("<BI")  # typecode, length
_STREAM = struct.Struct("<BHffB")
_MEMINFO = struct.Struct("<IIIIB")
_HANDLE = struct.Struct("<BI")  # handle, model size
_UPLOAD = struct.Struct("<BII")
_UPLOAD_REPLY = struct.Struct("<BI")
_DETECTIONS = struct.Struct("<IIHHHB")
_BOX = struct.Struct("<hhHHBf")
_BUTTON = struct.Struct("<BI")
_STREAM_SIZE = struct.Struct("<HH")
_ERROR = struct.Struct("<H")
_BOOT_ID = struct.Struct("<I")


class _Reader:
    """Little-endian fields off a body; running short is a :class:`ProtocolError`."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.pos, self.what = data, 0, what

    def fields(self, layout: struct.Struct) -> tuple[Any, ...]:
        """The next ``layout.size`` bytes, unpacked."""
        if self.pos + layout.size > len(self.data):
            raise ProtocolError(f"{self.what}: body of {len(self.data)} bytes ends at byte "
                                f"{self.pos}, {layout.size} more expected")
        values = layout.unpack_from(self.data, self.pos)
        self.pos += layout.size
        return values

    def u(self, fmt: str) -> int:
        (value,) = self.fields(struct.Struct("<" + fmt))
        return int(value)

    def f32(self) -> float:
        (value,) = self.fields(struct.Struct("<f"))
        return float(value)

    def raw(self, count: int) -> bytes:
        if self.pos + count > len(self.data):
            raise ProtocolError(f"{self.what}: {count} bytes at byte {self.pos} run past the "
                                f"body's {len(self.data)}")
        value = self.data[self.pos:self.pos + count]
        self.pos += count
        return value

    def text(self) -> str:
        """A string with a one-byte length."""
        return self.raw(self.u("B")).decode("utf-8", "replace")

    def rest(self) -> bytes:
        value = self.data[self.pos:]
        self.pos = len(self.data)
        return value


def _text(value: str) -> bytes:
    raw = value.encode()
    if len(raw) > 255:
        raise ValueError(f"{value[:40]!r}...: at most 255 bytes on the wire, got {len(raw)}")
    return bytes([len(raw)]) + raw


@dataclass(frozen=True, slots=True)
class HelloInfo:
    """HELLO's answer and the BOOT event: who the board is and what it can take."""

    protocol: int
    boot_id: int
    uptime_ms: int
    heap_free: int
    """MaixPy's ``utils.heap_free()``: the sys heap models are loaded into."""
    gc_free: int
    rx_buffer: int
    """The board's UART receive buffer: what the host may have in flight at once."""
    max_frame: int
    """The largest frame (header and CRCs included) the board accepts."""
    flags: int
    firmware: str
    script: str

    @property
    def camera(self) -> bool:
        return bool(self.flags & FLAG_CAMERA)

    @property
    def max_body(self) -> int:
        """The largest request body a frame the board accepts can carry."""
        return self.max_frame - OVERHEAD

    def encode(self) -> bytes:
        return _HELLO.pack(self.protocol, self.boot_id, self.uptime_ms, self.heap_free,
                           self.gc_free, self.rx_buffer, self.max_frame,
                           self.flags) + _text(self.firmware) + _text(self.script)

    @classmethod
    def decode(cls, body: bytes) -> HelloInfo:
        r = _Reader(body, "HELLO")
        protocol, boot_id, uptime, heap, gc_free, rx_buffer, max_frame, flags = r.fields(_HELLO)
        return cls(protocol, boot_id, uptime, heap, gc_free, rx_buffer, max_frame, flags,
                   r.text(), r.text())


Shape3 = tuple[int, int, int]
"""``(w, h, ch)`` as MaixPy's ``set_outputs`` and ``check_img_format`` count them."""


@dataclass(frozen=True, slots=True)
class LoadRequest:
    source: Source
    address: int
    """Flash offset for ``Source.FLASH``; 0 otherwise."""
    size: int
    crc32: int
    """Of the host's kmodel: the board checks what it loaded against both when ``verify``."""
    verify: bool
    kmodel_version: int
    input_kind: InputKind
    input_shape: Shape3
    outputs: tuple[Shape3, ...]
    """For ``kpu.set_outputs`` (kmodel v4 needs every output's shape before ``forward``)."""
    path: str

    def encode(self) -> bytes:
        head = _LOAD.pack(self.source, self.address, self.size, self.crc32, self.verify,
                          self.kmodel_version, self.input_kind, *self.input_shape,
                          len(self.outputs))
        shapes = b"".join(_SHAPE.pack(*s) for s in self.outputs)
        return head + shapes + _text(self.path)

    @classmethod
    def decode(cls, body: bytes) -> LoadRequest:
        r = _Reader(body, "LOAD")
        source, address, size, crc, verify, version, kind, w, h, ch, count = r.fields(_LOAD)
        outputs = tuple(r.fields(_SHAPE) for _ in range(count))
        return cls(Source(source), address, size, crc, bool(verify), version, InputKind(kind),
                   (w, h, ch), outputs, r.text())


@dataclass(frozen=True, slots=True)
class LoadReply:
    handle: int
    model_size: int
    """``kpu_net.model_size()``: the bytes MaixPy loaded."""
    crc32: int
    """Of those bytes as the board read them back (0 when not verified)."""
    heap_free: int

    def encode(self) -> bytes:
        return _LOAD_REPLY.pack(self.handle, self.model_size, self.crc32, self.heap_free)

    @classmethod
    def decode(cls, body: bytes) -> LoadReply:
        return cls(*_Reader(body, "LOAD reply").fields(_LOAD_REPLY))


@dataclass(frozen=True, slots=True)
class RunReply:
    run_ms: int
    outputs: tuple[tuple[str, bytes], ...]
    """Per output: MaixPy's fmap typecode (``'f'`` float32, ``'B'`` uint8) and the bytes."""

    def encode(self) -> bytes:
        parts = [_RUN_REPLY.pack(self.run_ms, len(self.outputs))]
        for typecode, data in self.outputs:
            parts.append(_OUTPUT.pack(ord(typecode), len(data)) + data)
        return b"".join(parts)

    @classmethod
    def decode(cls, body: bytes) -> RunReply:
        r = _Reader(body, "RUN reply")
        run_ms, count = r.fields(_RUN_REPLY)
        outputs = []
        for _ in range(count):
            typecode, nbytes = r.fields(_OUTPUT)
            outputs.append((chr(typecode), r.raw(nbytes)))
        return cls(run_ms, tuple(outputs))


@dataclass(frozen=True, slots=True)
class StreamRequest:
    """Run ``handle`` on the board's camera with ``kpu.run_yolo2``; handle 0 stops."""

    handle: int
    fps: float
    threshold: float = 0.5
    nms: float = 0.3
    anchors: tuple[float, ...] = ()

    def encode(self) -> bytes:
        return (_STREAM.pack(self.handle, round(self.fps * 100), self.threshold, self.nms,
                             len(self.anchors) // 2)
                + struct.pack(f"<{len(self.anchors)}f", *self.anchors))

    @classmethod
    def decode(cls, body: bytes) -> StreamRequest:
        r = _Reader(body, "STREAM")
        handle, fps, threshold, nms, pairs = r.fields(_STREAM)
        return cls(handle, fps / 100, threshold, nms, tuple(r.f32() for _ in range(2 * pairs)))


@dataclass(frozen=True, slots=True)
class MemInfo:
    heap_free: int
    gc_free: int
    rx_skipped: int
    """Bytes the board skipped while resynchronising (garbage from the host's side)."""
    rx_bad: int
    """Frames with a good header and a bad payload the board refused (and NAKed)."""
    handles: tuple[tuple[int, int], ...]
    """``(handle, model_size)`` of every model loaded on the board."""

    def encode(self) -> bytes:
        return (_MEMINFO.pack(self.heap_free, self.gc_free, self.rx_skipped, self.rx_bad,
                              len(self.handles))
                + b"".join(_HANDLE.pack(h, s) for h, s in self.handles))

    @classmethod
    def decode(cls, body: bytes) -> MemInfo:
        r = _Reader(body, "MEMINFO")
        heap_free, gc_free, rx_skipped, rx_bad, count = r.fields(_MEMINFO)
        handles = tuple(r.fields(_HANDLE) for _ in range(count))
        return cls(heap_free, gc_free, rx_skipped, rx_bad, handles)


@dataclass(frozen=True, slots=True)
class UploadBegin:
    target: Target
    size: int
    crc32: int
    name: str
    """The file's name on the board (``Target.MODEL``); MaixPy wants ``.kmodel`` in it."""

    def encode(self) -> bytes:
        return _UPLOAD.pack(self.target, self.size, self.crc32) + _text(self.name)

    @classmethod
    def decode(cls, body: bytes) -> UploadBegin:
        r = _Reader(body, "UPLOAD")
        target, size, crc = r.fields(_UPLOAD)
        return cls(Target(target), size, crc, r.text())


@dataclass(frozen=True, slots=True)
class UploadReply:
    """UPLOAD's answer (``present``: the card has this file already, skip the chunks) and
    COMMIT's (``crc32`` of what arrived); ``path`` is the file's path on the board."""

    present: bool
    crc32: int
    path: str

    def encode(self) -> bytes:
        return _UPLOAD_REPLY.pack(self.present, self.crc32) + _text(self.path)

    @classmethod
    def decode(cls, body: bytes) -> UploadReply:
        r = _Reader(body, "UPLOAD reply")
        present, crc = r.fields(_UPLOAD_REPLY)
        return cls(bool(present), crc, r.text())


def encode_chunk(offset: int, data: bytes) -> bytes:
    return struct.pack("<I", offset) + data


@dataclass(frozen=True, slots=True)
class BoardBox:
    """One ``kpu.run_yolo2`` result: ``rect()`` in pixels of the board's frame, class, score."""

    x: int
    y: int
    w: int
    h: int
    class_id: int
    score: float


@dataclass(frozen=True, slots=True)
class Detections:
    frame: int
    ticks_ms: int
    """The board's ``time.ticks_ms()`` at capture (wraps at 2**30 on MicroPython)."""
    run_ms: int
    width: int
    height: int
    boxes: tuple[BoardBox, ...]

    def encode(self) -> bytes:
        head = _DETECTIONS.pack(self.frame, self.ticks_ms, self.run_ms, self.width,
                                self.height, len(self.boxes))
        return head + b"".join(_BOX.pack(b.x, b.y, b.w, b.h, b.class_id, b.score)
                               for b in self.boxes)

    @classmethod
    def decode(cls, body: bytes) -> Detections:
        r = _Reader(body, "DETECTIONS")
        frame, ticks, run_ms, width, height, count = r.fields(_DETECTIONS)
        boxes = tuple(BoardBox(*r.fields(_BOX)) for _ in range(count))
        return cls(frame, ticks, run_ms, width, height, boxes)


PRESS, LONG_PRESS = 0, 1
"""BUTTON kinds: released before a second, or held for one (reported while still held)."""


@dataclass(frozen=True, slots=True)
class ButtonEvent:
    """BUTTON's body: PRESS or LONG_PRESS, and how long the key was held (ms)."""

    kind: int
    held_ms: int

    @classmethod
    def decode(cls, body: bytes) -> ButtonEvent:
        return cls(*_Reader(body, "BUTTON").fields(_BUTTON))


@dataclass(frozen=True, slots=True)
class LogEvent:
    """LOG's body: a level, then the text."""

    level: int
    text: str

    @classmethod
    def decode(cls, body: bytes) -> LogEvent:
        r = _Reader(body, "LOG")
        return cls(r.u("B"), r.rest().decode("utf-8", "replace"))


def stream_size(body: bytes) -> tuple[int, int]:
    """STREAM's OK answer: the camera's width and height."""
    width, height = _Reader(body, "STREAM reply").fields(_STREAM_SIZE)
    return width, height


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """ERROR's body (and FAULT's): a code, 2001-2015 MaixPy's, 1001-1008 the protocol's."""

    code: int
    text: str

    @property
    def name(self) -> str:
        return MAIXPY_ERRORS.get(self.code) or PROTOCOL_ERRORS.get(self.code, "ERR_UNKNOWN")

    def encode(self) -> bytes:
        return _ERROR.pack(self.code) + self.text.encode()

    @classmethod
    def decode(cls, body: bytes) -> ErrorReply:
        r = _Reader(body, "ERROR")
        (code,) = r.fields(_ERROR)
        return cls(code, r.rest().decode("utf-8", "replace"))


def split_reply(body: bytes) -> tuple[int, bytes]:
    """An OK or ERROR body: the board's boot id, then the answer itself."""
    r = _Reader(body, "reply")
    (boot_id,) = r.fields(_BOOT_ID)
    return boot_id, r.rest()


# --- errors from the board ----------------------------------------------------------------------


class BoardError(KpuError):
    """An error the board reported with a code edged has no class for (2004, 2005, 1005...)."""

    def __init__(self, code: int, name: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.name = name

    def __str__(self) -> str:
        if self.code in MAIXPY_ERRORS:
            return super().__str__()
        return f"board error {self.code} {self.name}: {self.detail}"


_ERROR_CLASSES: dict[int, Callable[[str], KpuError]] = {
    cls.code: cls for cls in (HandleError, KmodelVersionError, KmodelFormatError,
                              FirstLayerError, RunError, ModelsFull)}


def board_error(reply: ErrorReply, where: str) -> KpuError:
    """The edged error for a board's ERROR (2006 is the caller's: it needs the sizes)."""
    detail = f"{where}: the board says {reply.text!r}"
    make = _ERROR_CLASSES.get(reply.code)
    return make(detail) if make else BoardError(reply.code, reply.name, detail)


# --- what the board does to host tensors ----------------------------------------------------------


def _table(bits_from: int, bits_to: int) -> tuple[int, ...]:
    """OpenMV's ``rgb2rgb_tab.c`` tables: ``round(i * (2**to - 1) / (2**from - 1))``."""
    top_from, top_to = (1 << bits_from) - 1, (1 << bits_to) - 1
    return tuple(round(i * top_to / top_from) for i in range(top_from + 1))


RB825, G826, RB528, G628 = _table(8, 5), _table(8, 6), _table(5, 8), _table(6, 8)


def rgb565_roundtrip(tensor: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """A planar RGB tensor ``(..., 3, H, W)`` as the KPU sees it after the board put it
    through an RGB565 image and ``pix_to_ai``: ``COLOR_R8_G8_B8_TO_RGB565`` then
    ``COLOR_RGB565_TO_R8`` (and G, B), so R and B keep 5 bits and G keeps 6."""
    out = np.empty_like(tensor)
    for channel, (down, up) in enumerate(((RB825, RB528), (G826, G628), (RB825, RB528))):
        lut = np.asarray(up, np.uint8)[np.asarray(down)]
        out[..., channel, :, :] = lut[tensor[..., channel, :, :]]
    return out


# --- host tensors to RUN bodies, RUN replies to arrays ------------------------------------------

U16 = 0xFFFF


@dataclass(frozen=True, slots=True)
class InputPlan:
    """How a model's one input travels and reaches ``kpu.forward`` (see :class:`InputKind`)."""

    kind: InputKind
    shape: Shape3
    nbytes: int

    def encode(self, tensor: npt.NDArray[np.generic]) -> bytes:
        dtype = "<f4" if self.kind == InputKind.FLOAT else np.uint8
        return np.ascontiguousarray(tensor, dtype=dtype).tobytes()


def _not_implemented(detail: str) -> BoardError:
    return BoardError(2014, "ERR_NOT_IMPLEMENT", detail)


def input_plan(model: KModel, name: str) -> InputPlan:
    """MaixPy feeds one input: floats as a list, uint8 as a 1- or 3-channel image."""
    if len(model.inputs) != 1:
        raise _not_implemented(f"model {name!r} takes {len(model.inputs)} inputs; MaixPy's "
                               "kpu.forward feeds exactly one")
    spec = model.inputs[0]
    if spec.dtype == "float32":
        count = spec.nbytes // 4
        if count > U16:
            raise _not_implemented(f"model {name!r}: {count} float inputs, at most {U16}")
        return InputPlan(InputKind.FLOAT, (count, 1, 1), spec.nbytes)
    dims = spec.shape
    if len(dims) < 3 or any(d != 1 for d in dims[:-3]) or dims[-3] not in (1, 3) \
            or max(dims[-2:]) > U16:
        raise _not_implemented(f"model {name!r} takes uint8{list(dims)}; MaixPy feeds uint8 "
                               "models through a grayscale or RGB image (1 or 3 channels)")
    channels, height, width = dims[-3:]
    kind = InputKind.GRAY if channels == 1 else InputKind.RGB565
    return InputPlan(kind, (width, height, channels), spec.nbytes)


def output_shapes(model: KModel) -> tuple[Shape3, ...]:
    """Each output as ``(w, h, ch)`` for ``kpu.set_outputs``: NCHW, with N folded into ch."""
    shapes = []
    for spec in model.outputs:
        dims = (1,) * max(0, 4 - len(spec.shape)) + spec.shape
        width, height = dims[-1], dims[-2]
        channels = int(np.prod(dims[:-2]))
        shapes.append((min(width, U16), min(height, U16), min(channels, U16)))
    return tuple(shapes)


_TYPECODES: dict[str, np.dtype[np.generic]] = {"f": np.dtype("<f4"), "B": np.dtype(np.uint8)}


def decode_outputs(reply: RunReply, specs: Sequence[TensorSpec]) -> list[npt.NDArray[np.generic]]:
    """The outputs as the model declares them; a ``ValueError`` says which one differs."""
    if len(reply.outputs) != len(specs):
        raise ValueError(f"the board sent {len(reply.outputs)} outputs, the model declares "
                         f"{len(specs)}")
    arrays: list[npt.NDArray[np.generic]] = []
    for i, ((typecode, data), spec) in enumerate(zip(reply.outputs, specs, strict=True)):
        dtype = _TYPECODES.get(typecode)
        if dtype is None or dtype != np.dtype(spec.dtype):
            raise ValueError(f"output {i} came as typecode {typecode!r}, the model declares "
                             f"{spec.dtype}")
        if len(data) != spec.nbytes:
            raise ValueError(f"output {i} has {len(data)} bytes, the model declares "
                             f"{spec.dtype}{list(spec.shape)} ({spec.nbytes} bytes)")
        arrays.append(np.frombuffer(data, dtype).astype(spec.dtype).reshape(spec.shape))
    return arrays
