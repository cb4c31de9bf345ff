"""A real MQTT broker for tests, in its own process on a free loopback port.

A process, not an in-loop broker, so that a test can kill it (no DISCONNECT, no goodbye:
what a crash or a cable pull looks like to the publisher) and start it again on the same
port. ``mosquitto`` when installed; otherwise amqtt's broker script. Set
``EDGED_TEST_BROKER=amqtt`` (or ``mosquitto``) to choose. Never the system's broker on 1883.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

HOST = "127.0.0.1"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0

BrokerKind = Literal["mosquitto", "amqtt"]
_KINDS: dict[str, BrokerKind] = {"mosquitto": "mosquitto", "amqtt": "amqtt"}


class BrokerError(RuntimeError):
    """The test broker did not start or stop; the message carries its log."""


def free_port() -> int:
    """A loopback port nothing listens on now (the kernel's choice, so not 1883)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def broker_kind() -> BrokerKind:
    chosen = os.environ.get("EDGED_TEST_BROKER")
    if chosen:
        try:
            return _KINDS[chosen]
        except KeyError:
            raise BrokerError(f"EDGED_TEST_BROKER={chosen!r}: use one of {list(_KINDS)}") from None
    return "mosquitto" if shutil.which("mosquitto") else "amqtt"


class Broker:
    """One broker process: ``start``, ``stop`` (SIGTERM), ``kill`` (SIGKILL), ``restart``.

    The port is fixed at construction, so a restarted broker is where clients left it.
    Retained messages do not survive a restart (``persistence false``), as after a crash.
    """

    def __init__(self, workdir: Path, kind: BrokerKind | None = None) -> None:
        self.kind: BrokerKind = kind or broker_kind()
        self.host = HOST
        self.port = free_port()
        self.workdir = workdir
        self.log_path = workdir / "broker.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._command = self._write_config()

    def _write_config(self) -> list[str]:
        if self.kind == "mosquitto":
            conf = self.workdir / "mosquitto.conf"
            conf.write_text(
                f"listener {self.port} {self.host}\n"
                "allow_anonymous true\n"
                "persistence false\n"
                "log_dest stderr\n"
                "log_type error\nlog_type warning\nlog_type notice\n"
            )
            mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
            return [mosquitto, "-c", str(conf)]
        conf = self.workdir / "amqtt.yaml"
        conf.write_text(
            "listeners:\n"
            "  default:\n"
            "    type: tcp\n"
            f"    bind: {self.host}:{self.port}\n"
            "plugins:\n"
            "  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
            "    allow_anonymous: true\n"
        )
        return [sys.executable, "-m", "amqtt.scripts.broker_script", "-c", str(conf)]

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start and wait until the port accepts connections."""
        if self.running:
            raise BrokerError(f"{self.kind} broker on port {self.port} is already running")
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self._command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerError(f"{self.kind} exited at start:\n{self.log()}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
            except OSError:
                time.sleep(0.02)
            else:
                return
        self.kill()
        raise BrokerError(f"{self.kind} did not listen on {self.port} in time:\n{self.log()}")

    def stop(self) -> None:
        """Shut down cleanly (SIGTERM)."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """Die without a word to any client (SIGKILL), as in a crash."""
        self._end(signal.SIGKILL)

    def restart(self) -> None:
        """Kill, then start again on the same port."""
        self.kill()
        self.start()

    def _end(self, sig: signal.Signals) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
