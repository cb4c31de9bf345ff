"""Buttons: the press detector on fake clocks, simulated buttons over real UNIX sockets, the
config, and GPIO as far as it goes without hardware (a fake chip stands in for the kernel)."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from edged.control import (
    ButtonAction,
    ButtonConfig,
    ButtonError,
    ButtonEvent,
    CycleAction,
    EventAction,
    GpioButton,
    GpioButtonConfig,
    PressDetector,
    SimulatedButton,
    SimulatedButtonConfig,
    SwitchAction,
    build_button,
    press,
    press_sync,
)

BUTTON = TypeAdapter[ButtonConfig](ButtonConfig)
ON_PRESS = {"action": "cycle", "pipeline": "face"}


def sim_config(path: Path, **fields: Any) -> SimulatedButtonConfig:
    base = {"kind": "simulated", "name": "sim", "socket": path, "on_press": ON_PRESS}
    config = BUTTON.validate_python(base | fields)
    assert isinstance(config, SimulatedButtonConfig)
    return config


def gpio_config(**fields: Any) -> GpioButtonConfig:
    base = {"kind": "gpio", "name": "mode", "chip": "gpiochip0", "line": 17, "on_press": ON_PRESS}
    config = BUTTON.validate_python(base | fields)
    assert isinstance(config, GpioButtonConfig)
    return config


# --- PressDetector ----------------------------------------------------------------------


def due(detector: PressDetector) -> float:
    """The detector's deadline, exactly: what the button's timer polls it with."""
    assert detector.deadline is not None
    return detector.deadline


def test_short_press_is_reported_on_release() -> None:
    detector = PressDetector("b", long_press_s=1.0)
    assert detector.edge(True, 10.0) == []
    assert due(detector) == 11.0
    assert detector.edge(False, 10.3) == [ButtonEvent("b", "press", 10.3)]
    assert (detector.deadline, detector.pressed) == (None, False)


def test_long_press_fires_once_while_held_and_release_adds_nothing() -> None:
    detector = PressDetector("b", long_press_s=1.0)
    detector.edge(True, 10.0)
    assert detector.poll(10.9) == []
    assert detector.poll(11.0) == [ButtonEvent("b", "long_press", 11.0)]
    assert detector.poll(11.5) == []
    assert (detector.deadline, detector.pressed) == (None, True)
    assert detector.edge(False, 12.0) == []
    assert detector.poll(20.0) == []
    detector.edge(True, 21.0)  # the next press starts afresh
    assert detector.edge(False, 21.2) == [ButtonEvent("b", "press", 21.2)]


def test_a_late_poll_still_gives_one_long_press_at_the_threshold() -> None:
    detector = PressDetector("b", long_press_s=1.0, debounce_s=0.02)
    detector.edge(True, 0.0)
    assert detector.edge(False, 5.0) == [ButtonEvent("b", "long_press", 1.0)]
    assert detector.poll(6.0) == []


def test_bounces_within_the_debounce_window_are_ignored() -> None:
    detector = PressDetector("b", long_press_s=1.0, debounce_s=0.02)
    # Contacts chatter on the way down, settle, chatter on the way up.
    for pressed, at in [(True, 0.0), (False, 0.003), (True, 0.006)]:
        assert detector.edge(pressed, at) == []
    assert detector.deadline == pytest.approx(0.026)
    assert (detector.poll(0.025), detector.pressed) == ([], False)
    # Down since 0.006, and held for the window:
    assert (detector.poll(due(detector)), detector.pressed) == ([], True)
    for pressed, at in [(False, 0.2), (True, 0.203), (False, 0.206)]:
        assert detector.edge(pressed, at) == []
    assert detector.deadline == pytest.approx(0.226)
    assert detector.poll(due(detector)) == [ButtonEvent("b", "press", 0.206)]
    # A glitch shorter than the window is no press at all.
    assert detector.edge(True, 1.0) == []
    assert detector.edge(False, 1.005) == []
    assert (detector.poll(5.0), detector.pressed) == ([], False)


# --- SimulatedButton over a real socket ---------------------------------------------------


def kind_of(path: Path) -> str:
    """What is at ``path``: async tests may not touch files themselves (ASYNC240)."""
    if path.is_socket():
        return "socket"
    return "file" if path.exists() else "missing"


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "b.sock"


@pytest.fixture
async def sim(sock_path: Path) -> AsyncIterator[SimulatedButton]:
    button = build_button(sim_config(sock_path, long_press_ms=200))
    assert isinstance(button, SimulatedButton)
    async with button:
        yield button


async def test_simulated_press_and_long_press(sim: SimulatedButton, sock_path: Path) -> None:
    assert os.stat(sock_path).st_mode & 0o777 == 0o600
    await press(sock_path)
    await asyncio.to_thread(press_sync, sock_path, "long_press")
    first, second = await anext(sim), await anext(sim)
    assert (first.button, first.kind, second.kind) == ("sim", "press", "long_press")
    assert first.at <= second.at <= asyncio.get_running_loop().time()


async def test_simulated_down_up_timing_gives_press_or_long_press(
    sim: SimulatedButton, sock_path: Path
) -> None:
    loop = asyncio.get_running_loop()
    before = loop.time()
    await press(sock_path, "down")
    after = loop.time()
    held = await asyncio.wait_for(anext(sim), 2.0)  # fires while the button is still down
    assert held.kind == "long_press"
    assert before + 0.2 <= held.at <= after + 0.2
    await press(sock_path, "up")  # the release after a long press reports nothing
    await press(sock_path, "down")
    await press(sock_path, "up")
    assert (await asyncio.wait_for(anext(sim), 2.0)).kind == "press"
    assert sim._queue.empty()


async def test_garbage_is_refused_and_the_button_keeps_working(
    sim: SimulatedButton, sock_path: Path
) -> None:
    reader, writer = await asyncio.open_unix_connection(str(sock_path))
    writer.write(b"jump\n\xff\xfe\n\nPRESS\npress\n")
    replies = [await reader.readline() for _ in range(4)]
    assert [r.split(b":")[0] for r in replies] == [b"error", b"error", b"error", b"ok\n"]
    assert b"expected one of press, long_press, down, up" in replies[0]
    assert (await anext(sim)).kind == "press"
    writer.write(b"x" * 300)  # no newline in sight: refused, and this client is dropped
    assert (await reader.readline()).startswith(b"error: line longer")
    assert await reader.read() == b""
    writer.close()
    await press(sock_path)
    assert (await anext(sim)).kind == "press"
    assert sim._queue.empty()


async def test_a_line_without_newline_before_eof_counts(
    sim: SimulatedButton, sock_path: Path
) -> None:
    reader, writer = await asyncio.open_unix_connection(str(sock_path))
    writer.write(b"press")
    writer.write_eof()
    assert await reader.read() == b"ok\n"
    writer.close()
    assert (await anext(sim)).kind == "press"


async def test_close_removes_the_socket_and_ends_iteration(sock_path: Path) -> None:
    async with SimulatedButton(sim_config(sock_path)) as button:
        waiting = asyncio.ensure_future(anext(button))
        await asyncio.sleep(0)
    assert kind_of(sock_path) == "missing"
    with pytest.raises(StopAsyncIteration):
        await waiting
    with pytest.raises(ButtonError, match="No such file"):
        await press(sock_path)


async def test_stale_socket_is_replaced_but_live_ones_and_files_are_not(
    sock_path: Path,
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(sock_path))  # closed without unlink: what a killed daemon leaves
    config = sim_config(sock_path)
    async with SimulatedButton(config) as button:
        await press(sock_path)
        assert (await anext(button)).kind == "press"
        with pytest.raises(ButtonError, match="in use by another process"):
            await SimulatedButton(config).start()
        assert kind_of(sock_path) == "socket"  # the refused one did not take it away
    await asyncio.to_thread(sock_path.write_text, "notes")
    with pytest.raises(ButtonError, match="exists and is not a socket"):
        await SimulatedButton(config).start()
    assert kind_of(sock_path) == "file"


# --- config ---------------------------------------------------------------------------------


def test_gpio_config_defaults_and_actions() -> None:
    config = gpio_config(
        on_long_press={"action": "switch", "pipeline": "face", "model": "ultraface"}
    )
    assert (config.device, config.active_low, config.bias) == ("/dev/gpiochip0", True, "pull-up")
    assert isinstance(config.action_for("press"), CycleAction)
    assert config.action_for("long_press") == SwitchAction(
        action="switch", pipeline="face", model="ultraface"
    )
    bare = gpio_config(chip="/dev/gpiochip4", line="GPIO17")
    assert (bare.device, bare.line) == ("/dev/gpiochip4", "GPIO17")
    assert bare.action_for("long_press") is bare.on_press  # no long action: a press
    event = TypeAdapter[ButtonAction](ButtonAction).validate_python(
        {"action": "event", "payload": {"scene": "door", "n": 1}}
    )
    assert isinstance(event, EventAction)
    assert event.payload == {"scene": "door", "n": 1}


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"bias": "pull-sideways"}, "bias"),
        ({"debounce_ms": -1}, "debounce_ms"),
        ({"long_press_ms": 50}, "long_press_ms"),
        ({"chip": "dev/gpiochip0"}, "absolute path"),
        ({"on_press": {"action": "explode", "pipeline": "face"}}, "action"),
        ({"on_press": {"action": "cycle"}}, "pipeline"),
        ({"on_press": {"action": "switch", "pipeline": "face"}}, "model"),
        ({"on_press": {"action": "cycle", "pipeline": "f", "models": ["a", "b", "a"]}}, "more"),
        ({"pin": 17}, "pin"),
    ],
)
def test_config_refuses(fields: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        gpio_config(**fields)


def test_simulated_socket_path_must_fit_a_sockaddr() -> None:
    with pytest.raises(ValidationError, match="UNIX sockets allow"):
        BUTTON.validate_python(
            {"kind": "simulated", "name": "s", "socket": "/tmp/" + "x" * 120, "on_press": ON_PRESS}
        )


# --- GPIO -----------------------------------------------------------------------------------


@pytest.fixture
def gpiod() -> ModuleType:
    module: ModuleType = pytest.importorskip("gpiod", reason="the gpio extra is not installed")
    return module


@pytest.mark.skipif(os.path.exists("/dev/gpiochip0"), reason="this machine has a GPIO chip")
async def test_gpio_without_a_chip_says_which_chip_line_and_why(gpiod: ModuleType) -> None:
    with pytest.raises(ButtonError) as caught:
        await GpioButton(gpio_config()).start()
    assert str(caught.value).startswith(
        "button 'mode': cannot request line 17 on /dev/gpiochip0: "
        "[Errno 2] No such file or directory"
    )


async def test_gpio_without_gpiod_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gpiod", None)  # import gpiod now raises ImportError
    with pytest.raises(ButtonError, match=r"button 'mode': .*gpiod.*pip install 'edged\[gpio\]'"):
        await GpioButton(gpio_config()).start()


class FakeRequest:
    """A line request whose edge events the test queues; a pipe makes its fd readable."""

    def __init__(self, gpiod: ModuleType) -> None:
        self._gpiod = gpiod
        self.fd, self._wake = os.pipe()
        self.offsets = [17]
        self.queued: list[Any] = []
        self.released = False

    def push(self, pressed: bool, at: float) -> None:
        edges = self._gpiod.EdgeEvent.Type
        kind = edges.RISING_EDGE if pressed else edges.FALLING_EDGE
        self.queued.append(self._gpiod.EdgeEvent(kind.value, int(at * 1e9), 17, 0, 0))
        os.write(self._wake, b".")

    def read_edge_events(self) -> list[Any]:
        os.read(self.fd, 1024)
        events, self.queued = self.queued, []
        return events

    def release(self) -> None:
        self.released = True
        os.close(self.fd)
        os.close(self._wake)


class FakeChip:
    """The kernel's side of a 54-line chip, as much as GpioButton asks of it."""

    request: FakeRequest
    settings: Any = None
    kernel_debounces = True
    busy_with = ""

    def __init__(self, path: str) -> None:
        self.path = path

    def __enter__(self) -> FakeChip:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def line_offset_from_id(self, line: int | str) -> int:
        if line in {"BUTTON", 17}:
            return 17
        if isinstance(line, str):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory")
        raise ValueError("line offset of out range")

    def get_info(self) -> SimpleNamespace:
        return SimpleNamespace(num_lines=54)

    def request_lines(self, config: dict[int, Any], consumer: str) -> FakeRequest:
        if FakeChip.busy_with:
            raise OSError(errno.EBUSY, "Device or resource busy")
        FakeChip.settings = config[17]
        return FakeChip.request

    def get_line_info(self, offset: int) -> SimpleNamespace:
        return SimpleNamespace(
            used=bool(FakeChip.busy_with),
            consumer=FakeChip.busy_with,
            debounced=FakeChip.kernel_debounces,
            debounce_period=FakeChip.settings.debounce_period if FakeChip.settings else None,
        )


@pytest.fixture
def fake_chip(gpiod: ModuleType, monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FakeChip]]:
    monkeypatch.setattr(gpiod, "Chip", FakeChip)
    FakeChip.request = FakeRequest(gpiod)
    FakeChip.settings, FakeChip.kernel_debounces, FakeChip.busy_with = None, True, ""
    yield FakeChip
    if not FakeChip.request.released:
        FakeChip.request.release()


async def test_gpio_edges_become_presses_with_edged_debouncing_where_the_kernel_does_not(
    gpiod: ModuleType, fake_chip: type[FakeChip]
) -> None:
    fake_chip.kernel_debounces = False
    async with GpioButton(gpio_config(long_press_ms=200)) as button:
        settings = fake_chip.settings
        assert settings.edge_detection == gpiod.line.Edge.BOTH
        assert settings.bias == gpiod.line.Bias.PULL_UP
        assert settings.active_low is True
        assert settings.debounce_period == timedelta(milliseconds=30)
        t0 = asyncio.get_running_loop().time() - 1.0
        for pressed, at in [(True, 0.0), (False, 0.005), (True, 0.01), (False, 0.1)]:
            fake_chip.request.push(pressed, t0 + at)  # a press with contact bounce
        event = await asyncio.wait_for(anext(button), 2.0)
        assert event.kind == "press"
        assert event.at == pytest.approx(t0 + 0.1)
        fake_chip.request.push(True, asyncio.get_running_loop().time())
        assert (await asyncio.wait_for(anext(button), 2.0)).kind == "long_press"
    assert fake_chip.request.released
    assert button._queue.qsize() == 1  # only the end-of-iteration mark


@pytest.mark.parametrize(
    ("line", "busy_with", "reason"),
    [
        (99, "", "line 99 on /dev/gpiochip0: the chip has lines 0 to 53"),
        ("DOORBELL", "", "line DOORBELL on /dev/gpiochip0: the chip has no line named 'DOORBELL'"),
        (17, "gpio-keys", "[Errno 16] Device or resource busy (in use by 'gpio-keys')"),
    ],
)
async def test_gpio_line_errors_say_why(
    fake_chip: type[FakeChip], line: int | str, busy_with: str, reason: str
) -> None:
    fake_chip.busy_with = busy_with
    with pytest.raises(ButtonError) as caught:
        await GpioButton(gpio_config(line=line)).start()
    assert str(caught.value).startswith("button 'mode': cannot request line ")
    assert str(caught.value).endswith(reason)
