"""``edged run CONFIG`` as a real process, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Self

from tests.broker import Broker
from tests.conftest import FIXTURES


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | Path):
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def write_config(path: Path, broker: Broker, cameras: list[dict[str, Any]], *,
                 device: str = "e2e", stats_interval: float = 1.0,
                 **sections: dict[str, Any]) -> Path:
    """A deployment config for ``broker`` with the fixture kmodels on the model path."""
    lines = [f"device_id = {toml_value(device)}", ""]
    models = {"search_path": [str(FIXTURES / "kmodels")], **sections.pop("models", {})}
    tables = {
        "models": models,
        "mqtt": {"host": broker.host, "port": broker.port, "timeout": 2.0,
                 "backoff": {"initial": 0.1, "max": 0.5}, **sections.pop("mqtt", {})},
        "stats": {"interval": stats_interval},
        "log": {"format": "json"},
        **sections,
    }
    for name, table in tables.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
        lines.append("")
    for camera in cameras:
        lines.append("[[cameras]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in camera.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


class DaemonProcess:
    """One ``edged run`` subprocess; its log goes to a file the test can show."""

    def __init__(self, config: Path | None, workdir: Path, env: dict[str, str] | None = None,
                 args: tuple[str, ...] = ()) -> None:
        self.config = config
        self.log_path = workdir / "edged.log"
        self.env = {**os.environ, **(env or {})}
        if "NOTIFY_SOCKET" not in (env or {}):  # never notify the test runner's own manager
            self.env.pop("NOTIFY_SOCKET", None)
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_from = 0

    def start(self) -> Self:
        self._log_from = self.log_path.stat().st_size if self.log_path.exists() else 0
        command = [sys.executable, "-m", "edged.cli", "run", *self.args]
        if self.config is not None:
            command.append(str(self.config))
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=self.env)
        return self

    def send(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> int:
        """SIGTERM and the exit code."""
        self.send(signal.SIGTERM)
        return self.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log(self) -> str:
        """What this run logged (earlier runs in the same folder are left out)."""
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as log:
            log.seek(self._log_from)
            return log.read().decode(errors="replace")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_for_log(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return
            if not self.alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not in the daemon's log:\n{self.log()[-3000:]}")
