"""The serial KPU backend against deploy/k210/edged_board.py itself, run under CPython on one
end of a pty with stand-ins for MaixPy's modules (tests/maixpy_standin) computing with the
simulated KPU: outputs must equal the simulator's, the board's memory account is real, and
the board can be reset, frozen, silenced and fed garbage."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import shutil
import struct
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from edged.kpu.backend import KpuBackend
from edged.kpu.errors import HandleError, KpuError, MemoryOverflow
from edged.kpu.kmodel import KModel, load_kmodel
from edged.kpu.serial import (
    BoardButton,
    BoardDetections,
    BoardEvent,
    BoardLocation,
    BoardLog,
    BoardRestarted,
    BoardTimeout,
    LinkError,
    ModelMismatch,
    SerialKpu,
    SerialSettings,
    check_port,
    write_kfpkg,
)
from edged.kpu.serial.cli import add_device_commands
from edged.kpu.serial.link import SerialLink
from edged.kpu.serial.protocol import (
    PROTOCOL_VERSION,
    BoardError,
    Frame,
    HelloInfo,
    MemInfo,
    MsgType,
    encode_frame,
    rgb565_roundtrip,
)
from edged.kpu.sim.executor import create_executor
from edged.kpu.sram import ModelCost
from tests.conftest import PROJECT, fixture_path, kmodel_path
from tests.maixpy_standin.harness import FakeBoard, StandinBoard
from tests.maixpy_standin.sensor import scene_from

FACE_ANCHORS = (1.889, 2.5245, 2.9465, 3.94056, 3.99987, 5.3658, 5.155437, 6.92275,
                6.718375, 9.01025)
Arrays = list[npt.NDArray[np.generic]]


@pytest.fixture
def board(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[StandinBoard]:
    params: dict[str, Any] = getattr(request, "param", {})
    with StandinBoard(tmp_path, **params) as standin:
        yield standin
        if "Traceback" in standin.log():
            print(standin.log())  # shown with the failure


@asynccontextmanager
async def connected(board: StandinBoard, **options: Any) -> AsyncIterator[SerialKpu]:
    options = {"timeout": 1.0, "connect_timeout": 10.0, **options}
    async with SerialKpu(board.port, **options) as kpu:
        yield kpu


def _model(name: str) -> KModel:
    return load_kmodel(kmodel_path(name))


def _random_input(model: KModel, seed: int = 0) -> Arrays:
    rng = np.random.default_rng(seed)
    spec = model.inputs[0]
    if spec.dtype == "float32":
        return [rng.uniform(0, 8, spec.shape).astype(np.float32)]
    return [rng.integers(0, 256, spec.shape, dtype=np.uint8)]


def _simulated(model: KModel, inputs: Arrays) -> Arrays:
    return create_executor(model).run(inputs)


async def _next(kpu: SerialKpu, kind: type[BoardEvent], within: float = 5.0) -> Any:
    async def wait() -> BoardEvent:
        async for event in kpu.events():
            if isinstance(event, kind):
                return event
        raise AssertionError("events() ended")  # pragma: no cover

    return await asyncio.wait_for(wait(), within)


# --- load, run, deinit ---------------------------------------------------------------------------


async def test_load_run_deinit_give_the_simulators_outputs(board: StandinBoard) -> None:
    models = {name: _model(name) for name in ("maixpy_mnist_v3", "iris_v3", "iris_v4")}
    async with connected(board) as kpu:
        backend: KpuBackend = kpu  # the contract, checked by mypy
        assert backend is kpu
        timeouts = kpu.link_stats().timeouts  # HELLOs while the board was still booting
        assert kpu.hello.protocol == PROTOCOL_VERSION
        assert kpu.hello.firmware.startswith("MaixPy")
        budget = kpu.memory().total
        handles = {name: await kpu.load(model, name) for name, model in models.items()}
        for name, model in models.items():
            inputs = _random_input(model)
            outputs = await kpu.run(handles[name], inputs)
            for got, want in zip(outputs, _simulated(model, inputs), strict=True):
                assert (got.dtype, got.shape) == (want.dtype, want.shape)
                assert np.array_equal(got, want), name
        memory = kpu.memory()
        assert [m.nbytes for m in memory.models] == [ModelCost.of(m).total
                                                     for m in models.values()]
        assert memory.used == sum(ModelCost.of(m).total for m in models.values())
        board_view = await kpu.meminfo()
        assert board_view.heap_free == budget - memory.used
        assert len(board_view.handles) == 3
        for handle in handles.values():
            await kpu.deinit(handle)
        assert kpu.memory().used == 0
        assert (await kpu.meminfo()).heap_free == budget
        with pytest.raises(HandleError, match="not loaded"):
            await kpu.run(handles["iris_v3"], _random_input(models["iris_v3"]))
        assert kpu.stats().runs == 3
        assert kpu.link_stats().timeouts == timeouts


async def test_an_rgb_frame_goes_through_the_boards_rgb565_image(board: StandinBoard) -> None:
    """A 320x240 RGB input (230400 bytes) is staged in chunks and reaches the KPU as MaixPy's
    ``pix_to_ai`` leaves an RGB565 image: 5, 6 and 5 bits per channel."""
    face = _model("maixpy_facedetect_v3")
    inputs = _random_input(face, seed=3)
    async with connected(board, chunk_size=4096) as kpu:
        handle = await kpu.load(face, "face")
        outputs = await kpu.run(handle, inputs)
        assert kpu.link_stats().bytes_out > 230400
    want = _simulated(face, [rgb565_roundtrip(inputs[0])])  # type: ignore[arg-type]
    assert np.array_equal(outputs[0], want[0])


async def test_an_uploaded_model_is_kept_on_the_card(board: StandinBoard) -> None:
    mnist = _model("maixpy_mnist_v3")
    async with connected(board) as kpu:
        await kpu.deinit(await kpu.load(mnist, "mnist"))
        sent = kpu.link_stats().bytes_out
        handle = await kpu.load(mnist, "mnist")
        assert kpu.link_stats().bytes_out - sent < 1000  # UPLOAD found it: no chunks
        log = await _next(kpu, BoardLog)
        assert "on the card already" in log.text
        inputs = _random_input(mnist)
        assert np.array_equal((await kpu.run(handle, inputs))[0], _simulated(mnist, inputs)[0])
    assert (board.sd / f"edged-{mnist.sha256[:16]}.kmodel").read_bytes() == mnist.data
    link = SerialLink(board.port, 1_500_000)  # closing deinitialised it on the board
    await link.open()
    assert MemInfo.decode((await link.request(MsgType.MEMINFO, within=2)).body).handles == ()
    await link.close()


@pytest.mark.parametrize("board", [{"heap": 500_000}], indirect=True)
async def test_a_model_too_big_for_the_board_is_err_no_mem_and_changes_nothing(
        board: StandinBoard) -> None:
    mnist, face = _model("maixpy_mnist_v3"), _model("maixpy_facedetect_v3")
    async with connected(board) as kpu:
        handle = await kpu.load(mnist, "mnist")
        before, board_before = kpu.memory(), await kpu.meminfo()
        with pytest.raises(MemoryOverflow) as caught:
            await kpu.load(face, "face")
        error = caught.value
        assert error.code == 2006
        assert "memory overflow" in str(error)
        assert "ERR_NO_MEM: memory not enough" in str(error)  # the firmware's own words
        assert error.needed == ModelCost.of(face).total
        assert error.free == board_before.heap_free
        assert kpu.memory() == before
        assert await kpu.meminfo() == board_before
        inputs = _random_input(mnist)
        assert np.array_equal((await kpu.run(handle, inputs))[0], _simulated(mnist, inputs)[0])


async def test_models_on_the_card_and_in_flash_load_in_place(
        board: StandinBoard, tmp_path: Path) -> None:
    mnist, iris = _model("maixpy_mnist_v3"), _model("iris_v3")
    board.burn(write_kfpkg(kmodel_path("maixpy_mnist_v3"), 0x300000,
                           tmp_path / "mnist.kfpkg").path)
    board.burn(write_kfpkg(kmodel_path("iris_v3"), 0x400000, tmp_path / "iris.kfpkg").path)
    on_card = board.sd / "models" / "iris.kmodel"
    on_card.parent.mkdir()
    shutil.copy(kmodel_path("iris_v3"), on_card)
    locations = {"mnist": BoardLocation.parse("flash:0x300000"),
                 "iris": BoardLocation.parse(str(on_card)),
                 "wrong": BoardLocation.parse("flash:0x400000"),
                 "absent": BoardLocation.parse(str(board.sd / "absent.kmodel"))}
    async with connected(board, locations=locations) as kpu:
        for name, model in (("mnist", mnist), ("iris", iris)):
            handle = await kpu.load(model, name)
            inputs = _random_input(model)
            assert np.array_equal((await kpu.run(handle, inputs))[0],
                                  _simulated(model, inputs)[0])
        assert kpu.link_stats().bytes_out < 20_000  # nothing was uploaded
        loaded = kpu.memory()
        with pytest.raises(ModelMismatch, match=r"flash 0x400000 holds another model.*"
                           r"burn or copy wrong there again") as caught:
            await kpu.load(mnist, "wrong")
        assert caught.value.code == 2001
        with pytest.raises(BoardError, match=r"load error:2005, ERR_READ_FILE: loading 'absent' "
                           r"from .*absent.kmodel .*cannot read"):
            await kpu.load(iris, "absent")
        assert kpu.memory() == loaded
    assert not list(board.sd.glob("edged-*.kmodel"))


# --- stream, button ------------------------------------------------------------------------------


def _face_scene() -> str:
    photo = fixture_path("images", "grace_hopper.jpg")
    box = json.loads(fixture_path("faces.json").read_text())["grace_hopper.jpg"]
    return f"panzoom:{photo}:{','.join(str(v) for v in box)}"


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


@pytest.fixture
def camera_board(tmp_path: Path) -> Iterator[StandinBoard]:
    with StandinBoard(tmp_path, scene=_face_scene()) as standin:
        yield standin


async def test_stream_delivers_detections_at_the_configured_rate(
        camera_board: StandinBoard) -> None:
    fps = 2.0
    async with connected(camera_board, mode="stream") as kpu:
        handle = await kpu.load(_model("maixpy_facedetect_v3"), "face")
        size = await kpu.stream(handle, anchors=FACE_ANCHORS, threshold=0.5, nms=0.3, fps=fps)
        assert size == (320, 240)
        frames = [await _next(kpu, BoardDetections) for _ in range(4)]
        await kpu.stop_stream()
        stats = kpu.link_stats()
    assert [f.frame.frame for f in frames] == [0, 1, 2, 3]
    assert all(f.model == "face" for f in frames)
    ticks = [f.frame.ticks_ms for f in frames]  # the board's clock at each capture
    period_ms, mean_ms = 1000 / fps, (ticks[-1] - ticks[0]) / (len(ticks) - 1)
    assert min(b - a for a, b in itertools.pairwise(ticks)) >= 0.8 * period_ms
    assert 0.95 * period_ms <= mean_ms <= 1.5 * period_ms  # never faster, no drift
    assert stats.stream_frames >= 4
    scene = scene_from(_face_scene())
    best = 0.0
    for found in frames:
        (truth,) = scene.render(found.frame.frame)[1]  # the model's input is the whole frame
        best = max([best, *(_iou((b.x, b.y, b.w, b.h), truth.box) for b in found.boxes)])
    assert best > 0.4  # the board's run_yolo2 finds the face the scene put there


async def test_stream_without_a_camera_says_so(board: StandinBoard) -> None:
    async with connected(board) as kpu:
        handle = await kpu.load(_model("maixpy_facedetect_v3"), "face")
        with pytest.raises(BoardError, match="no camera") as caught:
            await kpu.stream(handle, anchors=FACE_ANCHORS, threshold=0.5, nms=0.3, fps=5)
        assert (caught.value.code, caught.value.name) == (1005, "NO_CAMERA")


async def test_the_boot_key_reaches_events_as_press_and_long_press(
        board: StandinBoard) -> None:
    async with connected(board) as kpu:
        board.key_down()
        await asyncio.sleep(0.15)
        board.key_up()
        press = await _next(kpu, BoardButton)
        assert press.kind == "press"
        assert 100 <= press.held_ms < 1000
        board.key_down()
        long_press = await _next(kpu, BoardButton, within=3.0)
        board.key_up()
        assert long_press.kind == "long_press"
        assert long_press.held_ms >= 1000


# --- a noisy line, a board that restarts, a silent board -----------------------------------------


async def test_garbage_on_the_line_is_skipped_and_counted_both_ways(
        board: StandinBoard) -> None:
    iris = _model("iris_v3")
    async with connected(board) as kpu:
        handle = await kpu.load(iris, "iris")
        skipped, board_skipped = kpu.link_stats().skipped_bytes, (await kpu.meminfo()).rx_skipped
        timeouts = kpu.link_stats().timeouts
        noise = b"\x00garbage from a loose wire\xff" * 20
        board.to_host(noise)
        board.to_board(b"AT+RESET\r\n" * 30)
        corrupt = bytearray(encode_frame(MsgType.MEMINFO, 999, b"x"))
        corrupt[14] ^= 0x55
        board.to_board(bytes(corrupt))
        inputs = _random_input(iris)
        assert np.array_equal((await kpu.run(handle, inputs))[0], _simulated(iris, inputs)[0])
        board_view = await kpu.meminfo()
        stats = kpu.link_stats()
    assert stats.skipped_bytes - skipped == len(noise)
    assert board_view.rx_skipped - board_skipped == 300 + len(corrupt)
    assert board_view.rx_bad == 1
    assert stats.timeouts == timeouts


async def test_replies_nobody_waits_for_are_reported_as_stray(board: StandinBoard) -> None:
    iris = _model("iris_v3")
    async with connected(board) as kpu:
        handle = await kpu.load(iris, "iris")
        before = kpu.link_stats()
        boot = struct.pack("<I", kpu.hello.boot_id)
        board.to_host(encode_frame(MsgType.OK, 0, boot))  # 0 is never a request's number
        board.to_host(encode_frame(MsgType.ERROR, 60000, boot + struct.pack("<H", 2001)))
        inputs = _random_input(iris)
        assert np.array_equal((await kpu.run(handle, inputs))[0], _simulated(iris, inputs)[0])
        stats = kpu.link_stats()
    assert stats.stray_replies - before.stray_replies == 2
    assert (stats.timeouts, stats.resends) == (before.timeouts, before.resends)


async def test_a_board_reset_mid_run_is_noticed_and_the_model_reloaded(
        board: StandinBoard) -> None:
    mnist = _model("maixpy_mnist_v3")
    inputs = _random_input(mnist)
    async with connected(board) as kpu:
        handle = await kpu.load(mnist, "mnist")
        boot, sent = kpu.hello.boot_id, kpu.link_stats().bytes_out
        board.freeze()
        running = asyncio.create_task(kpu.run(handle, inputs))
        await asyncio.sleep(0.2)
        board.kill()  # power off mid-run; power on: banner, BOOT, a new boot id
        board.start()
        outputs = await asyncio.wait_for(running, 20)
        assert np.array_equal(outputs[0], _simulated(mnist, inputs)[0])
        assert kpu.hello.boot_id != boot
        stats = kpu.link_stats()
        assert stats.resets == 1
        assert stats.bytes_out - sent < 10_000  # reloaded from the card, not uploaded again
        assert [m.name for m in kpu.memory().models] == ["mnist"]
        assert len((await kpu.meminfo()).handles) == 1
        restarted = await _next(kpu, BoardRestarted)
        assert restarted.reloaded == ("mnist",)
        assert restarted.lost == ()


async def test_reset_restarts_the_board_and_keeps_the_handles(board: StandinBoard) -> None:
    iris = _model("iris_v4")
    inputs = _random_input(iris)
    async with connected(board) as kpu:
        handle = await kpu.load(iris, "iris")
        boot = kpu.hello.boot_id
        await kpu.reset()
        assert kpu.hello.boot_id != boot
        assert np.array_equal((await kpu.run(handle, inputs))[0], _simulated(iris, inputs)[0])
        assert kpu.link_stats().resets == 1


async def test_a_silent_board_times_out_with_a_clear_error(tmp_path: Path) -> None:
    with StandinBoard(tmp_path, start=False) as absent:
        kpu = SerialKpu(absent.port, connect_timeout=0.5)
        with pytest.raises(BoardTimeout, match=rf"no answer from the board on {absent.port} "
                           r"within 0.5 s: is it powered, running edged_board.py"):
            await kpu.open()


async def test_a_board_that_hangs_mid_session_times_out(board: StandinBoard) -> None:
    iris = _model("iris_v3")
    async with connected(board, timeout=0.3, run_timeout=0.3) as kpu:
        handle = await kpu.load(iris, "iris")
        board.freeze()
        with pytest.raises(BoardTimeout, match=r"no answer to RUN .*nor to HELLO after it: "
                           r"the board is silent"):
            await kpu.run(handle, _random_input(iris))
        board.thaw()
        inputs = _random_input(iris, seed=1)
        assert np.array_equal((await kpu.run(handle, inputs))[0], _simulated(iris, inputs)[0])
        assert kpu.link_stats().timeouts >= 2


async def test_an_unplugged_board_is_reported_as_such(board: StandinBoard) -> None:
    iris = _model("iris_v3")
    async with connected(board, timeout=0.5, run_timeout=0.5) as kpu:
        handle = await kpu.load(iris, "iris")
        board.unplug()
        with pytest.raises(LinkError, match=rf"serial link: cannot open serial port "
                           rf"{board.port}: .*No such file or directory"):
            await kpu.run(handle, _random_input(iris))
        assert kpu.link_stats().reconnects == 1


async def test_a_board_of_another_protocol_version_is_refused() -> None:
    newer = HelloInfo(PROTOCOL_VERSION + 1, 7, 0, 2_000_000, 400_000, 16384, 8210, 0,
                      "MaixPy 0.6.2", "edged_board 9.0")

    def answer(frame: Frame) -> Iterator[bytes]:
        yield encode_frame(MsgType.OK, frame.seq, struct.pack("<I", 7) + newer.encode())

    refused = pytest.raises(KpuError, match=r"runs edged_board 9.0 \(protocol 2\); this edged "
                            r"speaks protocol 1: copy deploy/k210/edged_board.py")
    with FakeBoard(answer) as fake, refused:
        await SerialKpu(fake.port, connect_timeout=2).open()


# --- settings and the port check -----------------------------------------------------------------


def test_check_port_says_what_is_wrong(board: StandinBoard, tmp_path: Path) -> None:
    assert check_port(SerialSettings(port=board.port)) is None
    missing = check_port(SerialSettings(port="/dev/ttyUSB-edged-none"))
    assert missing == ("kpu.serial.port /dev/ttyUSB-edged-none does not exist: is the board "
                       "plugged in? (ls /dev/serial/by-id/)")
    not_a_tty = tmp_path / "not-a-port"
    not_a_tty.write_text("")
    problem = check_port(SerialSettings(port=str(not_a_tty)))
    assert problem is not None
    assert problem.startswith(f"kpu.serial.port {not_a_tty} cannot be opened: ")


def test_settings_refuse_unknown_keys_and_bad_locations() -> None:
    settings = SerialSettings(port="/dev/ttyUSB0",
                              models={"face": "flash:0x300000", "mnist": "/sd/mnist.kmodel"})
    assert settings.baud == 1_500_000
    assert settings.locations["face"] == BoardLocation(flash=0x300000)
    assert str(settings.locations["mnist"]) == "/sd/mnist.kmodel"
    with pytest.raises(ValueError, match="baudrate"):
        SerialSettings(port="/dev/ttyUSB0", baudrate=115200)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="model 'face': 'flash:3M': the flash offset '3M'"):
        SerialSettings(port="/dev/ttyUSB0", models={"face": "flash:3M"})
    with pytest.raises(ValueError, match=r"only paths containing \.kmodel"):
        SerialSettings(port="/dev/ttyUSB0", models={"face": "/sd/face.bin"})


def test_device_hello_says_what_the_board_is_and_what_its_link_means(
        board: StandinBoard, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="edged")
    add_device_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["device", "hello", board.port])
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert f"{board.port}: edged_board 1.0 on MaixPy 0.6.2-standin, protocol 1" in out
    assert "sys heap free 2101248 bytes (for models)" in out
    assert "a 320x240 RGB frame (230400 bytes) takes 1.54 s" in out


async def test_boot_py_starts_the_board_script_unless_boot_is_pressed(tmp_path: Path) -> None:
    boot_py = PROJECT / "deploy" / "k210" / "boot.py"
    with StandinBoard(tmp_path, main=boot_py, start=False) as standin:
        standin.key_down()
        standin.start()
        assert await asyncio.to_thread(standin.wait, 10) == 0
        assert "edged_board not started: BOOT key pressed" in standin.log()
        standin.key_up()
        standin.start()
        async with connected(standin) as kpu:
            assert kpu.hello.script == "edged_board 1.0"
