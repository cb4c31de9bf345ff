"""``[kpu.serial]``: a physical K210 (a Maix board running ``edged_board.py``) on a serial
port, and the port check ``edged check`` runs.

Models are uploaded to the board's SD card by default (once: the board keeps them under
their content's name); ``models`` names those already on the board, on the card or burnt
into flash with ``edged device kfpkg`` and kflash, which the board then loads in place after
checking that they are the same bytes as the host's kmodel.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, field_validator, model_validator

from edged.runtime.definitions import NAME_PATTERN, Strict

Mode = Literal["host", "stream"]

FLASH_PREFIX = "flash:"
MAIXPY_MODEL_SUFFIXES = (".kmodel", ".smodel", ".emodel")
"""``kpu.load`` takes a path only if it contains one of these (``Maix_kpu.c``, ``strstr``)."""


@dataclass(frozen=True, slots=True)
class BoardLocation:
    """Where a model already is on the board: a file path, or a flash offset."""

    path: str | None = None
    flash: int | None = None

    @classmethod
    def parse(cls, text: str) -> Self:
        """``flash:0x300000`` (an offset kflash burnt it at) or ``/sd/face.kmodel``."""
        if text.startswith(FLASH_PREFIX):
            raw = text.removeprefix(FLASH_PREFIX)
            try:
                offset = int(raw, 0)
            except ValueError:
                raise ValueError(f"{text!r}: the flash offset {raw!r} is not a number "
                                 "(write it like flash:0x300000)") from None
            if offset <= 0:  # MaixPy: "model_addr must > 0"
                raise ValueError(f"{text!r}: a flash offset must be above 0")
            return cls(flash=offset)
        if len(text.encode()) > 255:
            raise ValueError(f"{text[:40]!r}...: a board path has at most 255 bytes")
        if not text.startswith("/"):
            raise ValueError(f"{text!r}: a board path starts with /sd/ or /flash/, or use "
                             "flash:OFFSET for a model burnt into flash")
        if not any(suffix in text for suffix in MAIXPY_MODEL_SUFFIXES):
            raise ValueError(f"{text!r}: MaixPy's kpu.load takes only paths containing "
                             f"{', '.join(MAIXPY_MODEL_SUFFIXES)}")
        return cls(path=text)

    def __str__(self) -> str:
        return f"{FLASH_PREFIX}{self.flash:#x}" if self.flash is not None else str(self.path)


class SerialSettings(Strict):
    """The board's port, the link's pace and timeouts, and where its models are."""

    port: str = Field(
        description="the board's serial port, e.g. /dev/ttyUSB0 or a stable "
        "/dev/serial/by-id/... name")
    baud: int = Field(
        default=1_500_000, ge=9600, le=3_000_000,
        description="line rate; must equal BAUD in edged_board.py. 1.5 Mbaud (MaixPy IDE's "
        "rate) moves about 150 kB/s: a 320x240 RGB frame takes about 1.5 s")
    mode: Mode = Field(
        default="host",
        description="host: the daemon's cameras feed the board frame by frame (small inputs "
        "only); stream: the board runs the model on its own camera and sends detections")
    stream_pipeline: str | None = Field(
        default=None,
        description="stream mode: the pipeline whose model (a YOLOv2 manifest) the board runs "
        "on its camera")
    stream_camera: str = Field(
        default="board", pattern=NAME_PATTERN,  # it names MQTT topics
        description="stream mode: the camera name the board's detections are published under")
    stream_fps: float = Field(
        default=15.0, gt=0, le=60,
        description="stream mode: frames per second the board's camera loop aims at")
    timeout: float = Field(
        default=2.0, gt=0, description="seconds to wait for the answer to a short request")
    run_timeout: float = Field(
        default=10.0, gt=0,
        description="seconds a RUN may take on the board besides moving its bytes: building "
        "the image from them, the model, the outputs")
    load_timeout: float = Field(
        default=60.0, gt=0,
        description="seconds for a LOAD: the board reads and checks the model from its card "
        "or flash")
    connect_timeout: float = Field(
        default=10.0, gt=0,
        description="seconds to wait for the board to answer at start or after a reset "
        "(MaixPy boots in about 3 s)")
    chunk_size: int = Field(
        default=4096, ge=256, le=65536,
        description="bytes per upload chunk (cut to what the board accepts per frame)")
    window: int = Field(
        default=2, ge=1, le=8,
        description="upload chunks in flight at once (cut to what the board's receive "
        "buffer holds)")
    models: dict[str, str] = Field(
        default_factory=dict,
        description="models already on the board, by manifest name: '/sd/face.kmodel' or "
        "'flash:0x300000'; others are uploaded to its SD card")

    @field_validator("models")
    @classmethod
    def _locations(cls, models: dict[str, str]) -> dict[str, str]:
        for name, where in models.items():
            try:
                BoardLocation.parse(where)
            except ValueError as exc:
                raise ValueError(f"model {name!r}: {exc}") from None
        return models

    @model_validator(mode="after")
    def _stream_has_a_pipeline(self) -> Self:
        if self.mode == "stream" and self.stream_pipeline is None:
            raise ValueError('mode "stream" needs stream_pipeline: the pipeline whose model '
                             "the board runs on its camera")
        return self

    @property
    def locations(self) -> dict[str, BoardLocation]:
        return {name: BoardLocation.parse(where) for name, where in self.models.items()}


def check_port(settings: SerialSettings) -> str | None:
    """Why ``kpu.serial.port`` cannot be used, or None: it exists and opens (and is closed
    again at once, with DTR and RTS released so the board is not reset)."""
    from serial import SerialException  # noqa: PLC0415 - only the check needs pyserial here

    from edged.kpu.serial.link import open_port  # noqa: PLC0415

    port = settings.port
    if "://" not in port and not Path(port).exists():
        return (f"kpu.serial.port {port} does not exist: is the board plugged in? "
                "(ls /dev/serial/by-id/)")
    try:
        open_port(port, settings.baud).close()
    except (SerialException, OSError, ValueError) as exc:
        code = getattr(exc, "errno", None)
        hint = {
            errno.EACCES: ": add the user edged runs as to the dialout group",
            errno.EBUSY: ": another program holds it (a serial terminal, MaixPy IDE, kflash?)",
        }.get(code if isinstance(code, int) else -1, "")
        return f"kpu.serial.port {port} cannot be opened: {exc}{hint}"
    return None
