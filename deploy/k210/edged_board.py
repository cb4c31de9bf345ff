# ruff: noqa: UP031, PERF401, SIM105, RUF005, B904, N811
# This file runs on a Maix board under MaixPy (MicroPython), not on the host, and keeps to
# what MicroPython offers: %-formatting (UP031: f-strings are missing from older MaixPy
# builds), explicit loops and list concatenation (PERF401, RUF005: no PEP 448 unpacking in
# displays), try/except/pass (SIM105: no contextlib), no ``raise ... from`` (B904: MicroPython
# prints "exception chaining not supported" on the REPL's UART, which is the protocol's line),
# and MaixPy's own ``import KPU as kpu`` (N811).
"""edged_board.py: the board's side of edged's serial protocol (docs/serial-protocol.md).

The host (a gateway running edged) sends requests over the USB serial port; this script
answers each with OK or ERROR and sends events of its own: BOOT when it starts, DETECTIONS
while streaming, BUTTON for the BOOT key, LOG and FAULT. Models are loaded with MaixPy's
``kpu.load`` from a file on the SD card (uploaded by the host in checked chunks, or put
there by hand) or from a flash offset burnt with kflash; the firmware's own memory account
decides what fits, and its errors (``load error:2006, ERR_NO_MEM ...``) go back to the host
with their codes. Nothing is printed: the REPL's UART carries the protocol.

Copy it to the SD card next to boot.py (see README.md); pressing the BOOT key during the
first second after power-on skips it and keeps the REPL.
"""

import gc
import time

import image
import KPU as kpu
import machine
import micropython
import sensor
import ubinascii
import uos
import ustruct
from fpioa_manager import fm
from machine import UART
from Maix import GPIO, utils

SCRIPT_VERSION = "edged_board 1.0"
PROTOCOL_VERSION = 1
MAGIC = b"\xeb\x90"
HEADER_BYTES = 14
OVERHEAD = 18

BAUD = 1500000
RX_BUFFER = 16384
"""MaixPy's UART ring buffer; its indices are 16 bits, so it must stay below 65536."""
MAX_PAYLOAD = 8192
"""Largest request body taken: a whole frame fits the ring buffer twice over."""
UART_PINS = None
"""None: the USB serial port (the REPL's UART). (tx, rx): UART1 on those pins instead."""
BOOT_KEY_PIN = 16
"""The BOOT key on Maix Bit, Dock, Go and Duino (board_info.BOOT_KEY)."""
KEY_POLL_MS = 10
DEBOUNCE_MS = 30
LONG_PRESS_MS = 1000
FILE_BLOCK = 4096

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

SOURCE_FLASH = 1
INPUT_FLOAT = 0
INPUT_GRAY = 1
TARGET_INPUT = 1
FLAG_CAMERA = 1
FLAG_KMODEL_V4 = 2
PRESS = 0
LONG_PRESS = 1

ERR_BAD_FRAME = 1001
ERR_UNKNOWN_TYPE = 1002
ERR_BAD_REQUEST = 1003
ERR_CHECKSUM = 1004
ERR_NO_CAMERA = 1005
ERR_TOO_LARGE = 1006
ERR_STORAGE = 1007
ERR_INTERNAL = 1008
ERR_PARAM = 2001
ERR_READ_FILE = 2005
ERR_NO_MEM = 2006
ERR_SIZE_NOTMATCH = 2012

KPU_ERROR_NAMES = (
    ("ERR_PARAM", 2001), ("ERR_KMODEL_VERSION", 2002), ("ERR_KMODEL_FORMAT", 2003),
    ("ERR_DECRYPT", 2004), ("ERR_READ_FILE", 2005), ("ERR_NO_MEM", 2006),
    ("ERR_GET_CONV_LAYER", 2007), ("ERR_RUN_MODEL", 2008), ("ERR_MODELS_FULL", 2009),
    ("ERR_PERMITION", 2010), ("ERR_IDX_OUTRANGE", 2011), ("ERR_SIZE_NOTMATCH", 2012),
    ("ERR_OUTPUTS_SET", 2013), ("ERR_NOT_IMPLEMENT", 2014), ("ERR_UNKNOWN", 2015),
)
"""MaixPy's ``get_kpu_err_str`` names: a run error (OSError) carries the name, not the code."""


class Failure(Exception):
    """A request refused with a code; becomes the ERROR reply."""

    def __init__(self, code, text):
        Exception.__init__(self, text)
        self.code = code
        self.text = text


def error_code(exc):
    """The code in a MaixPy error: ``load error:2006, ...`` or a name such as ERR_RUN_MODEL."""
    text = str(exc)
    at = text.find("error:")
    if at >= 0:
        digits = ""
        for ch in text[at + 6:at + 12]:
            if "0" <= ch <= "9":
                digits += ch
            elif digits:
                break
        if digits:
            return int(digits)
    for name, code in KPU_ERROR_NAMES:
        if name in text:
            return code
    if isinstance(exc, MemoryError):
        return ERR_NO_MEM
    return ERR_INTERNAL


def nbytes(part):
    """Bytes in a part of a frame; a KPU fmap counts its own (``size()``), not its items."""
    if hasattr(part, "size"):
        return part.size()
    return len(part)


def text8(value):
    raw = value.encode()[:255]
    return bytes([len(raw)]) + raw


def read_text8(body, at):
    n = body[at]
    return body[at + 1:at + 1 + n].decode(), at + 1 + n


def file_crc(path, size):
    crc = 0
    done = 0
    with open(path, "rb") as f:
        while done < size:
            block = f.read(min(FILE_BLOCK, size - done))
            if not block:
                break
            crc = ubinascii.crc32(block, crc)
            done += len(block)
    return crc, done


def flash_crc(address, size):
    crc = 0
    done = 0
    while done < size:
        n = min(FILE_BLOCK, size - done)
        crc = ubinascii.crc32(utils.flash_read(address + done, n), crc)
        done += n
    return crc


def set_outputs(net, outputs):
    """``kpu.set_outputs`` for each output; the index of the first one refused, or -1."""
    for i in range(len(outputs)):
        w, h, ch = outputs[i]
        if not kpu.set_outputs(net, i, w, h, ch):
            return i
    return -1


def file_size(path):
    try:
        return uos.stat(path)[6]
    except OSError:
        return -1


def next_boot_id():
    """A counter kept on the card, so that every boot has a new id the host can notice."""
    path = "edged_boot.txt"
    count = 0
    try:
        with open(path) as f:
            count = int(f.read().strip() or "0")
    except (OSError, ValueError):
        pass
    count = (count + 1) & 0xFFFFFFFF
    try:
        with open(path, "w") as f:
            f.write("%d" % count)
    except OSError:
        count = time.ticks_ms() | 0x80000000
    return count


class Net:
    """One loaded model: the kpu_net and how its input is fed."""

    def __init__(self, net, kind, shape, outputs):
        self.net = net
        self.kind = kind
        self.shape = shape
        self.outputs = outputs
        self.yolo = None

    def input_bytes(self):
        w, h, ch = self.shape
        return w * h * ch * (4 if self.kind == INPUT_FLOAT else 1)


class Board:
    def __init__(self, uart):
        self.uart = uart
        self.boot_id = next_boot_id()
        self.started = time.ticks_ms()
        self.rx = b""
        self.rx_skipped = 0
        self.rx_bad = 0
        self.event_seq = 0
        self.nets = {}
        self.upload = None
        self.staged = None
        self.camera = None
        self.stream = None
        self.frame = 0
        fm.register(BOOT_KEY_PIN, fm.fpioa.GPIOHS0, force=True)
        self.key = GPIO(GPIO.GPIOHS0, GPIO.IN, GPIO.PULL_UP)
        self.key_down_at = None
        self.key_long_sent = False
        self.key_due = time.ticks_ms()

    # -- frames ------------------------------------------------------------------------------

    def send(self, mtype, seq, parts):
        length = 0
        crc = 0
        for part in parts:
            length += nbytes(part)
            crc = ubinascii.crc32(part, crc)
        head = MAGIC + ustruct.pack("<BBHI", PROTOCOL_VERSION, mtype, seq & 0xFFFF, length)
        self.uart.write(head + ustruct.pack("<I", ubinascii.crc32(head)))
        for part in parts:
            self.uart.write(part)
        self.uart.write(ustruct.pack("<I", crc))

    def event(self, mtype, parts):
        self.send(mtype, self.event_seq, parts)
        self.event_seq = (self.event_seq + 1) & 0xFFFF

    def log(self, level, text):
        self.event(LOG, [bytes([level]), text.encode()])

    def reply(self, seq, parts):
        self.send(OK, seq, [ustruct.pack("<I", self.boot_id)] + parts)

    def refuse(self, seq, code, text):
        self.send(ERROR, seq, [ustruct.pack("<IH", self.boot_id, code), text.encode()])

    def poll(self):
        """Read what the UART holds and handle every whole frame; True if anything came."""
        n = self.uart.any()
        if not n:
            return False
        data = self.uart.read(n)
        if not data:
            return False
        buf = self.rx + data
        pos = 0
        while True:
            start = buf.find(MAGIC, pos)
            if start < 0:
                keep = 1 if len(buf) > pos and buf[-1:] == MAGIC[:1] else 0
                self.rx_skipped += len(buf) - pos - keep
                pos = len(buf) - keep
                break
            self.rx_skipped += start - pos
            pos = start
            if len(buf) - pos < HEADER_BYTES:
                break
            version, mtype, seq, length = ustruct.unpack("<BBHI", buf[pos + 2:pos + 10])
            hcrc = ustruct.unpack("<I", buf[pos + 10:pos + 14])[0]
            if hcrc != ubinascii.crc32(buf[pos:pos + 10]):
                self.rx_skipped += 1
                pos += 1
                continue
            if length > MAX_PAYLOAD:
                self.rx_skipped += 1
                pos += 1
                self.refuse(seq, ERR_TOO_LARGE, "a %d-byte payload, at most %d"
                            % (length, MAX_PAYLOAD))
                continue
            end = pos + HEADER_BYTES + length + 4
            if len(buf) < end:
                break
            payload = buf[pos + HEADER_BYTES:end - 4]
            if ustruct.unpack("<I", buf[end - 4:end])[0] != ubinascii.crc32(payload):
                self.rx_bad += 1
                self.rx_skipped += 1
                pos += 1
                self.refuse(seq, ERR_BAD_FRAME, "payload CRC mismatch: send it again")
                continue
            pos = end
            self.handle(version, mtype, seq, payload)
        self.rx = buf[pos:]
        return True

    def handle(self, version, mtype, seq, payload):
        handler = self.handlers().get(mtype)
        if handler is None:
            self.refuse(seq, ERR_UNKNOWN_TYPE, "no request of type 0x%02x" % mtype)
            return
        if version != PROTOCOL_VERSION and mtype != HELLO:
            self.refuse(seq, ERR_BAD_REQUEST, "protocol version %d, this board speaks %d"
                        % (version, PROTOCOL_VERSION))
            return
        try:
            parts = handler(payload)
        except Failure as exc:
            self.refuse(seq, exc.code, exc.text)
            return
        except Exception as exc:
            self.refuse(seq, error_code(exc), "%s: %s" % (type(exc).__name__, exc))
            return
        self.reply(seq, parts)
        if mtype == RESET:
            time.sleep_ms(100)
            machine.reset()

    def handlers(self):
        return {HELLO: self.on_hello, LOAD: self.on_load, DEINIT: self.on_deinit,
                RUN: self.on_run, STREAM: self.on_stream, MEMINFO: self.on_meminfo,
                RESET: self.on_reset, UPLOAD: self.on_upload, CHUNK: self.on_chunk,
                COMMIT: self.on_commit, ECHO: self.on_echo}

    # -- requests ----------------------------------------------------------------------------

    def hello_parts(self):
        flags = FLAG_KMODEL_V4
        if self.camera is not False:
            flags |= FLAG_CAMERA
        uname = uos.uname()
        firmware = "%s %s" % (uname[0], uname[2])
        return [ustruct.pack("<BIIIIIIB", PROTOCOL_VERSION, self.boot_id,
                             time.ticks_diff(time.ticks_ms(), self.started) & 0xFFFFFFFF,
                             utils.heap_free(), gc.mem_free(), RX_BUFFER,
                             MAX_PAYLOAD + OVERHEAD, flags),
                text8(firmware), text8(SCRIPT_VERSION)]

    def on_hello(self, payload):
        return self.hello_parts()

    def on_echo(self, payload):
        return [payload]

    def on_meminfo(self, payload):
        gc.collect()
        parts = [ustruct.pack("<IIIIB", utils.heap_free(), gc.mem_free(), self.rx_skipped,
                              self.rx_bad, len(self.nets))]
        for handle in sorted(self.nets):
            parts.append(ustruct.pack("<BI", handle, self.nets[handle].net.model_size()))
        return parts

    def on_reset(self, payload):
        return []

    def on_load(self, payload):
        if len(payload) < 23:
            raise Failure(ERR_BAD_REQUEST, "LOAD body of %d bytes" % len(payload))
        source, address, size, crc, verify, version, kind, w, h, ch, count = ustruct.unpack(
            "<BIIIBBBHHHB", payload[:23])
        outputs = []
        at = 23
        for _ in range(count):
            outputs.append(ustruct.unpack("<HHH", payload[at:at + 6]))
            at += 6
        path, at = read_text8(payload, at)
        handle = 1
        while handle in self.nets:
            handle += 1
        if handle > 255:
            raise Failure(2009, "255 handles in use")
        got = 0
        if verify:  # before loading: never hand the KPU something that is not the model
            if source == SOURCE_FLASH:
                got = flash_crc(address, size)
                where = "flash 0x%x" % address
            else:
                try:
                    got = file_crc(path, size)[0]
                except OSError as exc:
                    raise Failure(ERR_READ_FILE, "cannot read %s: %s" % (path, exc))
                where = path
            if got != crc:
                raise Failure(ERR_PARAM, "%s holds another model: crc32 %08x of "
                              "its first %d bytes, expected %08x" % (where, got, size, crc))
        gc.collect()
        net = kpu.load(address if source == SOURCE_FLASH else path)
        refused = -1
        try:
            if version == 4:  # kmodel v4 needs every output's shape before kpu.forward
                refused = set_outputs(net, outputs)
        except BaseException:
            kpu.deinit(net)
            raise
        if refused >= 0:
            kpu.deinit(net)
            raise Failure(ERR_SIZE_NOTMATCH, "kpu.set_outputs(%d, %d, %d, %d) refused"
                          % ((refused,) + tuple(outputs[refused])))
        self.nets[handle] = Net(net, kind, (w, h, ch), len(outputs))
        gc.collect()
        return [ustruct.pack("<BIII", handle, net.model_size(), got, utils.heap_free())]

    def net_of(self, handle):
        entry = self.nets.get(handle)
        if entry is None:
            raise Failure(ERR_PARAM, "no model with handle %d" % handle)
        return entry

    def on_deinit(self, payload):
        handle = payload[0]
        entry = self.net_of(handle)
        if self.stream is not None and self.stream[0] == handle:
            self.stream = None
        del self.nets[handle]
        kpu.deinit(entry.net)
        gc.collect()
        return [ustruct.pack("<I", utils.heap_free())]

    def on_run(self, payload):
        entry = self.net_of(payload[0])
        data = payload[2:]
        if payload[1]:
            if self.staged is None or self.upload is not None:
                raise Failure(ERR_BAD_REQUEST, "RUN of a staged input, but none is committed")
            data = self.staged
        if len(data) != entry.input_bytes():
            raise Failure(ERR_BAD_REQUEST, "input of %d bytes, the model takes %d"
                          % (len(data), entry.input_bytes()))
        feed = self.make_input(entry, data)
        self.staged = None
        start = time.ticks_ms()
        first = kpu.forward(entry.net, feed)
        maps = [first]
        for i in range(1, entry.outputs):
            maps.append(kpu.get_output(entry.net, i))
        run_ms = time.ticks_diff(time.ticks_ms(), start)
        del feed
        parts = [ustruct.pack("<IB", run_ms, len(maps))]
        for fmap in maps:
            parts.append(ustruct.pack("<BI", ord(fmap.typecode()), fmap.size()))
            parts.append(fmap)
        return parts

    def make_input(self, entry, data):
        """MaixPy's ways into ``kpu.forward``: a list of floats, or an image's ``pix_ai``."""
        if entry.kind == INPUT_FLOAT:
            return list(ustruct.unpack("<%df" % (len(data) // 4), data))
        w, h, _ = entry.shape
        img = image.Image(size=(w, h))
        if entry.kind == INPUT_GRAY:
            img = img.to_grayscale()
            i = 0
            for y in range(h):
                for x in range(w):
                    img.set_pixel(x, y, data[i])
                    i += 1
        else:
            plane = w * h
            i = 0
            for y in range(h):
                for x in range(w):
                    img.set_pixel(x, y, (data[i], data[plane + i], data[2 * plane + i]))
                    i += 1
        img.pix_to_ai()
        return img

    def on_upload(self, payload):
        target, size, crc = ustruct.unpack("<BII", payload[:9])
        name, _ = read_text8(payload, 9)
        self.abort_upload()
        if target == TARGET_INPUT:
            self.staged = None
            gc.collect()
            try:
                buf = bytearray(size)
            except MemoryError:
                raise Failure(ERR_NO_MEM, "no room for a %d-byte input" % size)
            self.upload = [target, size, crc, 0, 0, buf, None]
            return [ustruct.pack("<BI", 0, 0), text8("")]
        if "/" in name or ".kmodel" not in name:
            raise Failure(ERR_BAD_REQUEST, "upload name %r: a plain .kmodel file name" % name)
        path = uos.getcwd().rstrip("/") + "/" + name
        if file_size(path) == size and file_crc(path, size)[0] == crc:
            self.log(1, "%s is on the card already" % name)
            return [ustruct.pack("<BI", 1, crc), text8(path)]
        try:
            f = open(path + ".part", "wb")  # noqa: SIM115 - open until COMMIT
        except OSError as exc:
            raise Failure(ERR_STORAGE, "cannot write %s: %s" % (path, exc))
        self.upload = [target, size, crc, 0, 0, f, path]
        return [ustruct.pack("<BI", 0, 0), text8(path)]

    def abort_upload(self):
        if self.upload is not None and self.upload[6] is not None:
            try:
                self.upload[5].close()
                uos.remove(self.upload[6] + ".part")
            except OSError:
                pass
        self.upload = None

    def on_chunk(self, payload):
        up = self.upload
        if up is None:
            raise Failure(ERR_BAD_REQUEST, "CHUNK without UPLOAD")
        offset = ustruct.unpack("<I", payload[:4])[0]
        data = payload[4:]
        if offset != up[3] or offset + len(data) > up[1]:
            self.abort_upload()
            raise Failure(ERR_BAD_REQUEST, "chunk at %d, expected %d of %d"
                          % (offset, up[3], up[1]))
        if up[6] is None:
            up[5][offset:offset + len(data)] = data
        else:
            try:
                up[5].write(data)
            except OSError as exc:
                self.abort_upload()
                raise Failure(ERR_STORAGE, "writing %s: %s" % (up[6], exc))
        up[3] += len(data)
        up[4] = ubinascii.crc32(data, up[4])
        return []

    def on_commit(self, payload):
        up = self.upload
        if up is None:
            raise Failure(ERR_BAD_REQUEST, "COMMIT without UPLOAD")
        _, size, crc, got, got_crc, sink, path = up
        if got != size or got_crc != crc:
            self.abort_upload()
            raise Failure(ERR_CHECKSUM, "received %d of %d bytes, crc32 %08x, expected %08x"
                          % (got, size, got_crc, crc))
        self.upload = None
        if path is None:
            self.staged = sink
            return [ustruct.pack("<BI", 0, got_crc), text8("")]
        sink.close()
        try:
            uos.remove(path)
        except OSError:
            pass
        uos.rename(path + ".part", path)
        return [ustruct.pack("<BI", 0, got_crc), text8(path)]

    def on_stream(self, payload):
        handle, fps100 = ustruct.unpack("<BH", payload[:3])
        if handle == 0:
            self.stream = None
            return [ustruct.pack("<HH", 0, 0)]
        threshold, nms, pairs = ustruct.unpack("<ffB", payload[3:12])
        anchors = ustruct.unpack("<%df" % (2 * pairs), payload[12:12 + 8 * pairs])
        entry = self.net_of(handle)
        if fps100 == 0:
            raise Failure(ERR_BAD_REQUEST, "a stream needs a frame rate above 0")
        w, h, _ = entry.shape
        sensor = self.open_camera(w, h)
        params = (threshold, nms, anchors)
        if entry.yolo != params:  # init_yolo2 mallocs the anchors again on every call
            kpu.init_yolo2(entry.net, threshold, nms, pairs, anchors)
            entry.yolo = params
        period = max(1, 100000 // fps100)
        self.stream = (handle, period, time.ticks_ms(), sensor)
        self.log(1, "streaming model %d at %d.%02d fps on %dx%d camera frames"
                 % (handle, fps100 // 100, fps100 % 100, w, h))
        return [ustruct.pack("<HH", w, h)]

    def open_camera(self, w, h):
        if self.camera is False:
            raise Failure(ERR_NO_CAMERA, "no camera: sensor.reset() failed at an earlier try")
        try:
            if self.camera is None:
                sensor.reset()
                sensor.set_pixformat(sensor.RGB565)
                sensor.set_framesize(sensor.QVGA)
            sensor.set_windowing((w, h))
            sensor.run(1)
        except Exception as exc:
            self.camera = False
            raise Failure(ERR_NO_CAMERA, "no camera: %s" % exc)
        self.camera = (w, h)
        return sensor

    def stream_step(self, now):
        handle, period, due, sensor = self.stream
        if time.ticks_diff(now, due) < 0:
            return False
        due = time.ticks_add(due, period)
        if time.ticks_diff(now, due) > 0:  # late: take the next frame now, never a burst
            due = time.ticks_add(now, period)
        self.stream = (handle, period, due, sensor)
        entry = self.nets[handle]
        captured = time.ticks_ms()
        try:
            img = sensor.snapshot()
            start = time.ticks_ms()
            found = kpu.run_yolo2(entry.net, img)
            run_ms = time.ticks_diff(time.ticks_ms(), start)
        except Exception as exc:
            self.stream = None
            self.event(FAULT, [ustruct.pack("<H", error_code(exc)),
                               ("stream stopped: %s" % exc).encode()])
            return True
        boxes = found or []
        parts = [ustruct.pack("<IIHHHB", self.frame, captured, min(run_ms, 0xFFFF), img.width(),
                              img.height(), min(len(boxes), 255))]
        for obj in boxes[:255]:
            x, y, w, h = obj.rect()
            parts.append(ustruct.pack("<hhHHBf", x, y, w, h, obj.classid(), obj.value()))
        self.event(DETECTIONS, parts)
        self.frame += 1
        return True

    # -- the BOOT key ------------------------------------------------------------------------

    def poll_key(self, now):
        down = self.key.value() == 0
        if down and self.key_down_at is None:
            self.key_down_at = now
            self.key_long_sent = False
        elif down:
            held = time.ticks_diff(now, self.key_down_at)
            if held >= LONG_PRESS_MS and not self.key_long_sent:
                self.key_long_sent = True
                self.event(BUTTON, [ustruct.pack("<BI", LONG_PRESS, held)])
        elif self.key_down_at is not None:
            held = time.ticks_diff(now, self.key_down_at)
            self.key_down_at = None
            if held >= DEBOUNCE_MS and not self.key_long_sent:
                self.event(BUTTON, [ustruct.pack("<BI", PRESS, held)])

    # -- the loop ----------------------------------------------------------------------------

    def run(self):
        self.event(BOOT, self.hello_parts())
        while True:
            busy = self.poll()
            now = time.ticks_ms()
            if self.stream is not None and self.stream_step(now):
                busy = True
            if time.ticks_diff(now, self.key_due) >= 0:
                self.key_due = time.ticks_add(now, KEY_POLL_MS)
                self.poll_key(now)
            if not busy:
                time.sleep_ms(1)


def open_uart():
    """The USB serial port (taking it from the REPL: Ctrl-C bytes must not interrupt), or
    UART1 on ``UART_PINS``."""
    if UART_PINS is not None:
        fm.register(UART_PINS[0], fm.fpioa.UART1_TX, force=True)
        fm.register(UART_PINS[1], fm.fpioa.UART1_RX, force=True)
        return UART(UART.UART1, BAUD, 8, None, 1, timeout=1000, read_buf_len=RX_BUFFER)
    micropython.kbd_intr(-1)
    uart = UART.repl_uart()
    uart.init(BAUD, 8, None, 1, read_buf_len=RX_BUFFER)
    return uart


def main():
    uart = open_uart()
    board = Board(uart)
    try:
        board.run()
    except Exception as exc:
        try:
            board.event(FAULT, [ustruct.pack("<H", ERR_INTERNAL),
                                ("edged_board stopped: %s: %s; resetting"
                                 % (type(exc).__name__, exc)).encode()])
        except Exception:
            pass
        time.sleep_ms(500)
        machine.reset()


if __name__ == "__main__":
    main()
