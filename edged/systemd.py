"""systemd's notify protocol: readiness, status, reload and stop, and a progress watchdog.

A few lines of the protocol (``sd_notify(3)``) rather than a dependency: one datagram of
``KEY=VALUE`` lines to the AF_UNIX socket named by ``$NOTIFY_SOCKET``. Without that
variable (a terminal, a container, a test) every call is a no-op, and a failed send is
counted and logged once, never raised: the daemon must not die because systemd went away.

Startup, reload and stop, as the daemon drives them::

    notifier = Notifier.from_env()
    ... cameras, KPU and broker up ...
    notifier.ready(status_line(fps, models))
    tg.create_task(Watchdog.from_env(notifier, healthy).run())  # after READY, see Watchdog
    ... every stats interval: notifier.status(status_line(fps, models))
    ... SIGHUP:  notifier.reloading(); reload; notifier.ready()
    ... SIGTERM: notifier.stopping(); drain; notifier.close()
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Mapping

import structlog

# Lazy until first use, so it follows whatever structlog configuration the daemon sets.
_log = structlog.get_logger(component="systemd")

# systemd drops a notification of PIPE_BUF (4096) bytes or more; STATUS= is the only
# free text, so it is cut to this many bytes.
_STATUS_MAX = 1024


class Notifier:
    """Sends notify messages to ``address`` (a path, or ``@name`` for an abstract socket)."""

    def __init__(self, address: str | None) -> None:
        self.address = address
        self.send_errors = 0
        self._sock: socket.socket | None = None
        self._target = ""
        if not address:
            return
        if address.startswith("@"):
            self._target = "\0" + address[1:]
        elif address.startswith("/"):
            self._target = address
        else:  # vsock: and other transports of newer systemd; sd_notify(3) has more
            _log.warning("notify_socket_unsupported", socket=address)
            return
        try:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        except OSError as exc:
            _log.warning("notify_socket_failed", socket=address, error=str(exc))
            return
        # A full receive queue must not stall the event loop: EAGAIN is a failed send.
        self._sock.setblocking(False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        return cls(environ.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def ready(self, status: str | None = None) -> bool:
        """Startup (or a reload) is complete; ``status`` goes in the same datagram."""
        return self._send("READY=1", status)

    def status(self, text: str) -> bool:
        """The one-line state ``systemctl status`` shows."""
        return self._send(None, text)

    def watchdog(self) -> bool:
        return self._send("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        return self._send("STOPPING=1", status)

    def reloading(self) -> bool:
        """A reload began; send :meth:`ready` when it is done.

        systemd >= 253 pairs the message with the time it was sent, so it can tell this
        reload from an earlier one; 252 ignores the extra field.
        """
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self._send(f"RELOADING=1\nMONOTONIC_USEC={now_usec}")

    def extend_timeout(self, usec: int) -> bool:
        """Ask for ``usec`` more microseconds to finish starting, reloading or stopping."""
        if usec <= 0:
            raise ValueError(f"extend_timeout takes a positive number of microseconds: {usec}")
        return self._send(f"EXTEND_TIMEOUT_USEC={usec}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, fields: str | None, status: str | None = None) -> bool:
        if self._sock is None:
            return False
        lines = [] if fields is None else [fields]
        if status is not None:
            # A newline would start another assignment (a model name could forge
            # WATCHDOG=1) and a NUL makes systemd drop the whole message.
            clean = status.replace("\n", " ").replace("\r", " ").replace("\0", "")
            cut = clean.encode()[:_STATUS_MAX].decode(errors="ignore")
            lines.append("STATUS=" + cut)
        message = "\n".join(lines)
        try:
            self._sock.sendto(message.encode(), self._target)
        except OSError as exc:
            self.send_errors += 1
            if self.send_errors == 1:
                _log.warning(
                    "notify_failed",
                    socket=self.address,
                    message=message,
                    error=str(exc),
                    note="further failures are only counted",
                )
            return False
        return True


def status_line(fps: Mapping[str, float], models: Mapping[str, str]) -> str:
    """``STATUS=`` text: frames per second per camera, then the active model per pipeline.

    >>> status_line({"gate-left": 29.96, "gate-right": 30.0}, {"faces": "maixpy_face"})
    'gate-left 30.0 fps, gate-right 30.0 fps; models: faces=maixpy_face'
    """
    cameras = ", ".join(f"{name} {rate:.1f} fps" for name, rate in fps.items()) or "no cameras"
    active = ", ".join(f"{pipe}={model}" for pipe, model in models.items()) or "none"
    return f"{cameras}; models: {active}"


def watchdog_interval(environ: Mapping[str, str] = os.environ) -> float | None:
    """systemd's watchdog timeout in seconds, or None when it does not watch this process.

    ``WATCHDOG_PID`` names the process systemd expects pings from; a child that inherited
    the environment must stay quiet.
    """
    usec = environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = environ.get("WATCHDOG_PID")
    try:
        value = int(usec)
        ours = not pid or int(pid) == os.getpid()
    except ValueError:
        value, ours = 0, True
    if not ours:
        return None
    if value <= 0:
        _log.warning("watchdog_env_invalid", watchdog_usec=usec, watchdog_pid=pid)
        return None
    return value / 1_000_000


class Watchdog:
    """Pings systemd every half ``timeout`` seconds, but only while ``healthy()`` is true.

    ``healthy`` is the daemon's progress check, e.g.
    ``lambda: scheduler.last_progress_age() < stall_limit``. While it is false (or raises)
    no ping is sent, so systemd aborts and restarts a stalled service one ``timeout``
    after the last ping; when it is true again the pings resume. A blocked event loop
    sends none either, as it should.

    Start it after READY=1: systemd arms its timer only then (or at the first ping), so
    a slow first start (numba compiling its cache) is bounded by TimeoutStartSec instead.
    """

    def __init__(
        self, notifier: Notifier, healthy: Callable[[], bool], timeout: float | None
    ) -> None:
        self.notifier = notifier
        self.healthy = healthy
        self.timeout = timeout
        self.pings = 0
        self._withholding = False

    @classmethod
    def from_env(
        cls,
        notifier: Notifier,
        healthy: Callable[[], bool],
        environ: Mapping[str, str] = os.environ,
    ) -> Watchdog:
        return cls(notifier, healthy, watchdog_interval(environ))

    async def run(self) -> None:
        """Ping until cancelled; returns at once when systemd does not watch us."""
        if self.timeout is None or not self.notifier.enabled:
            return
        period = self.timeout / 2
        _log.info("watchdog_started", timeout_s=self.timeout, ping_every_s=period)
        while True:
            self._tick()
            await asyncio.sleep(period)

    def _tick(self) -> None:
        try:
            alive = self.healthy()
            reason = "pipeline made no progress"
        except Exception as exc:  # a broken check must not kill the task; it withholds
            alive = False
            reason = f"health check failed: {exc!r}"
        if not alive:
            if not self._withholding:
                self._withholding = True
                _log.error(
                    "watchdog_withheld",
                    reason=reason,
                    timeout_s=self.timeout,
                    effect="systemd restarts the service unless progress resumes",
                )
            return
        if self._withholding:
            self._withholding = False
            _log.warning("watchdog_resumed")
        if self.notifier.watchdog():
            self.pings += 1
