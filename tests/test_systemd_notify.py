"""The notify protocol against real AF_UNIX datagram sockets, as systemd would receive it."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from edged.systemd import Notifier, Watchdog, status_line, watchdog_interval

# WATCHDOG_USEC for the timing tests: pings every 100 ms.
TIMEOUT_USEC = 200_000
PERIOD = TIMEOUT_USEC / 2 / 1_000_000


def drain(sock: socket.socket) -> list[bytes]:
    """Every datagram queued on a non-blocking socket."""
    got = []
    while True:
        try:
            got.append(sock.recv(4096))
        except BlockingIOError:
            return got


@pytest.fixture
def listener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket bound in tmp_path and named by NOTIFY_SOCKET, as systemd sets it."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", str(TIMEOUT_USEC))
    with sock:
        yield sock


@pytest.fixture
def notifier(listener: socket.socket) -> Iterator[Notifier]:
    with Notifier.from_env() as n:
        yield n


class Pings:
    """Receives on the event loop while a watchdog runs, so the socket queue never fills."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.messages: list[bytes] = []

    async def receive(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self.messages.append(await loop.sock_recv(self.sock, 4096))

    async def count_during(self, seconds: float) -> int:
        before = len(self.messages)
        await asyncio.sleep(seconds)
        return len(self.messages) - before


def test_messages_are_exact(notifier: Notifier, listener: socket.socket) -> None:
    assert notifier.enabled
    assert notifier.ready()
    notifier.ready("2 cameras up")
    notifier.status("gate-left 30.0 fps; models: faces=maixpy_face")
    notifier.watchdog()
    notifier.stopping()
    notifier.extend_timeout(5_000_000)
    assert drain(listener) == [
        b"READY=1",
        b"READY=1\nSTATUS=2 cameras up",
        b"STATUS=gate-left 30.0 fps; models: faces=maixpy_face",
        b"WATCHDOG=1",
        b"STOPPING=1",
        b"EXTEND_TIMEOUT_USEC=5000000",
    ]
    assert notifier.send_errors == 0


def test_reloading_carries_the_monotonic_time(notifier: Notifier, listener: socket.socket) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    [message] = drain(listener)
    match = re.fullmatch(rb"RELOADING=1\nMONOTONIC_USEC=(\d+)", message)
    assert match is not None, message
    assert before <= int(match[1]) <= after


def test_status_text_cannot_forge_other_fields(notifier: Notifier, listener: socket.socket) -> None:
    notifier.status("model x\nWATCHDOG=1\r\0")
    notifier.status("y" * 5000)
    notifier.status("y" + "é" * 1000)  # byte 1024 is inside an "é": cut before it
    assert drain(listener) == [
        b"STATUS=model x WATCHDOG=1 ",
        b"STATUS=" + b"y" * 1024,
        ("STATUS=y" + "é" * 511).encode(),
    ]


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"edged-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        with Notifier.from_env() as notifier:
            assert notifier.ready()
        assert drain(sock) == [b"READY=1"]


def test_without_notify_socket_everything_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    with Notifier.from_env() as notifier:
        assert not notifier.enabled
        assert not notifier.ready()
        assert not notifier.watchdog()
        assert notifier.send_errors == 0


def test_send_failures_are_counted_and_logged_once(tmp_path: Path) -> None:
    with Notifier(str(tmp_path / "nobody-listens.sock")) as notifier, capture_logs() as logs:
        assert not notifier.ready()
        assert not notifier.status("x")
        assert not notifier.watchdog()
    assert notifier.send_errors == 3
    assert [e["event"] for e in logs] == ["notify_failed"]
    assert logs[0]["component"] == "systemd"


def test_unsupported_address_is_a_no_op() -> None:
    with capture_logs() as logs, Notifier("vsock:2:1234") as notifier:
        assert not notifier.enabled
        assert not notifier.ready()
    assert [e["event"] for e in logs] == ["notify_socket_unsupported"]


def test_status_line() -> None:
    assert (
        status_line({"gate-left": 29.96, "gate-right": 30.0}, {"faces": "maixpy_face"})
        == "gate-left 30.0 fps, gate-right 30.0 fps; models: faces=maixpy_face"
    )
    assert status_line({}, {}) == "no cameras; models: none"


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        (None, None, None),
        ("30000000", None, 30.0),
        ("30000000", "self", 30.0),
        ("30000000", "parent", None),
        ("0", None, None),
        ("soon", None, None),
        ("30000000", "not-a-pid", None),
    ],
)
def test_watchdog_interval(usec: str | None, pid: str | None, expected: float | None) -> None:
    env = {} if usec is None else {"WATCHDOG_USEC": usec}
    if pid is not None:
        env["WATCHDOG_PID"] = {"self": str(os.getpid()), "parent": str(os.getppid())}.get(pid, pid)
    assert watchdog_interval(env) == expected


async def test_watchdog_pings_at_half_the_interval(
    notifier: Notifier, listener: socket.socket
) -> None:
    pings = Pings(listener)
    watchdog = Watchdog.from_env(notifier, lambda: True)
    assert watchdog.timeout == TIMEOUT_USEC / 1_000_000
    async with asyncio.TaskGroup() as tg:
        receiver = tg.create_task(pings.receive())
        task = tg.create_task(watchdog.run())
        # Ticks at 0, 100, ..., 1000 ms: 11 when nothing is late. Pinging at the full
        # interval would give 6, at a quarter 21; a loaded machine may lose a few.
        count = await pings.count_during(10.5 * PERIOD)
        task.cancel()
        receiver.cancel()
    assert 8 <= count <= 12, count
    assert set(pings.messages) == {b"WATCHDOG=1"}
    assert watchdog.pings == count


async def test_no_pings_while_the_pipeline_stalls(
    notifier: Notifier, listener: socket.socket
) -> None:
    alive = False
    pings = Pings(listener)
    watchdog = Watchdog.from_env(notifier, lambda: alive)
    with capture_logs() as logs:
        async with asyncio.TaskGroup() as tg:
            receiver = tg.create_task(pings.receive())
            task = tg.create_task(watchdog.run())
            stalled = await pings.count_during(3.5 * PERIOD)
            alive = True
            resumed = await pings.count_during(3.5 * PERIOD)
            alive = False
            await asyncio.sleep(1.5 * PERIOD)  # the tick in flight may still ping
            stalled_again = await pings.count_during(3.5 * PERIOD)
            task.cancel()
            receiver.cancel()
    assert (stalled, stalled_again) == (0, 0)
    assert resumed >= 2
    # Why pings stop is logged once per stall, not once per tick.
    events = [e["event"] for e in logs if e["event"].startswith("watchdog_")]
    assert events == [
        "watchdog_started",
        "watchdog_withheld",
        "watchdog_resumed",
        "watchdog_withheld",
    ]


async def test_a_failing_health_check_withholds_pings(
    notifier: Notifier, listener: socket.socket
) -> None:
    def broken() -> bool:
        raise RuntimeError("scheduler gone")

    pings = Pings(listener)
    with capture_logs() as logs:
        async with asyncio.TaskGroup() as tg:
            receiver = tg.create_task(pings.receive())
            task = tg.create_task(Watchdog.from_env(notifier, broken).run())
            count = await pings.count_during(2.5 * PERIOD)
            assert not task.done()
            task.cancel()
            receiver.cancel()
    assert count == 0
    [withheld] = [e for e in logs if e["event"] == "watchdog_withheld"]
    assert "scheduler gone" in withheld["reason"]


async def test_no_pings_when_systemd_watches_another_process(
    notifier: Notifier, listener: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_PID", str(os.getppid()))
    watchdog = Watchdog.from_env(notifier, lambda: True)
    assert watchdog.timeout is None
    await asyncio.wait_for(watchdog.run(), timeout=1)  # returns at once
    assert drain(listener) == []


async def test_no_pings_without_a_watchdog(
    notifier: Notifier, listener: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WATCHDOG_USEC")
    await asyncio.wait_for(Watchdog.from_env(notifier, lambda: True).run(), timeout=1)
    assert drain(listener) == []
