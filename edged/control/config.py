"""Button settings: which input is a button (a GPIO line, or a socket for development) and
what its press and long press do.

Actions only name things (a pipeline, a model, an event payload); whether the model exists
or the pipeline allows it is the model manager's call when the action runs, so that a
button bound to a model installed later still validates.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, JsonValue, field_validator

from edged.runtime.definitions import NAME_PATTERN, SEGMENT_PATTERN, Strict

PressKind = Literal["press", "long_press"]
"""What a button reports: a short press (on release) or a long press (once held long enough)."""

SUN_PATH_MAX = 107  # bytes a UNIX socket path may have (sockaddr_un.sun_path less its NUL)

ModelName = Annotated[str, Field(pattern=NAME_PATTERN)]


class CycleAction(Strict):
    """Step a pipeline to the next model of a list, wrapping around after the last."""

    action: Literal["cycle"] = Field(description="Cycle the pipeline's models.")
    pipeline: str = Field(pattern=NAME_PATTERN, description="Pipeline whose model changes.")
    models: list[ModelName] | None = Field(
        default=None,
        min_length=2,
        description="Models to cycle through, in order; unset: every model the pipeline "
        "may run (its allow-list, else the registry). For one model, use 'switch'.",
    )

    @field_validator("models")
    @classmethod
    def _unique(cls, models: list[str] | None) -> list[str] | None:
        if models is not None:
            repeated = sorted({m for m in models if models.count(m) > 1})
            if repeated:
                raise ValueError(f"models are listed more than once: {', '.join(repeated)}")
        return models


class SwitchAction(Strict):
    """Put one named model on a pipeline."""

    action: Literal["switch"] = Field(description="Switch the pipeline to one model.")
    pipeline: str = Field(pattern=NAME_PATTERN, description="Pipeline whose model changes.")
    model: str = Field(pattern=NAME_PATTERN, description="The model to run (its manifest name).")


class EventAction(Strict):
    """Tell the outside world: the daemon publishes the payload to MQTT."""

    action: Literal["event"] = Field(description="Publish an event.")
    payload: Annotated[str, Field(min_length=1)] | dict[str, JsonValue] = Field(
        description="Published as is: a string, or a table sent as a JSON object."
    )


ButtonAction = Annotated[CycleAction | SwitchAction | EventAction, Field(discriminator="action")]
"""What a press runs, chosen by its ``action``: ``cycle``, ``switch`` or ``event``."""


class _Button(Strict):
    name: str = Field(
        pattern=SEGMENT_PATTERN,
        description="Button name, unique in the deployment; logs and events carry it, so "
        "only letters, digits, '_' and '-'.",
    )
    long_press_ms: int = Field(
        default=1000,
        ge=200,
        le=60_000,
        description="Hold at least this long (ms) for a long press; it fires while still held.",
    )
    on_press: ButtonAction = Field(description="What a short press does.")
    on_long_press: ButtonAction | None = Field(
        default=None, description="What a long press does; unset: the same as a press."
    )

    def action_for(self, kind: PressKind) -> ButtonAction:
        """The action ``kind`` runs: a long press without an action of its own is a press."""
        if kind == "long_press" and self.on_long_press is not None:
            return self.on_long_press
        return self.on_press


class GpioButtonConfig(_Button):
    """A push button on a Linux GPIO line, read through the kernel's character device."""

    kind: Literal["gpio"] = Field(description="A GPIO line (needs the gpiod package).")
    chip: str = Field(
        description="GPIO chip: a device path (/dev/gpiochip0) or its name in /dev "
        "(gpiochip0); `gpiodetect` lists them. There is no default because the right chip "
        "differs between boards, and the wrong one reads a different pin."
    )
    line: Annotated[int, Field(ge=0)] | Annotated[str, Field(min_length=1)] = Field(
        description="Line offset on the chip (17 is GPIO17 on a Raspberry Pi) or the line's "
        "name (`gpioinfo` shows names)."
    )
    active_low: bool = Field(
        default=True,
        description="The line reads low while pressed: a button to ground with a pull-up.",
    )
    bias: Literal["pull-up", "pull-down", "disabled", "as-is"] = Field(
        default="pull-up",
        description="Internal bias: pull-up for a button to ground, pull-down for one to "
        "3.3 V, disabled with an external resistor, as-is to leave the chip's setting.",
    )
    debounce_ms: int = Field(
        default=30,
        ge=0,
        le=1000,
        description="A level must hold this long (ms) to count; 0 turns debouncing off. "
        "The kernel does it where it can, edged otherwise.",
    )

    @field_validator("chip")
    @classmethod
    def _path_or_name(cls, chip: str) -> str:
        if "/" in chip and not chip.startswith("/"):
            raise ValueError(f"chip {chip!r}: give an absolute path or a bare name in /dev")
        if not chip.strip("/"):
            raise ValueError("chip is empty")
        return chip

    @property
    def device(self) -> str:
        """The chip's device path: a bare name is looked up in /dev."""
        return self.chip if self.chip.startswith("/") else f"/dev/{self.chip}"


class SimulatedButtonConfig(_Button):
    """A button pressed through a UNIX socket: for development, tests and remote hands."""

    kind: Literal["simulated"] = Field(description="A simulated button on a UNIX socket.")
    socket: Path = Field(
        description="UNIX stream socket the daemon creates (mode 0600; a stale one is "
        "replaced) and removes on exit. Send lines 'press', 'long_press', 'down' or 'up'; "
        "each is answered 'ok' or 'error: ...'."
    )

    @field_validator("socket")
    @classmethod
    def _fits_sockaddr(cls, socket: Path) -> Path:
        size = len(os.fsencode(socket))
        if size > SUN_PATH_MAX:
            raise ValueError(
                f"socket path {str(socket)!r} is {size} bytes; UNIX sockets allow "
                f"{SUN_PATH_MAX}: choose a shorter path"
            )
        return socket


class BoardButtonConfig(_Button):
    """The BOOT key of the Maix board (kpu.backend = "serial"); the board tells a press from
    a long press (held 1 s: LONG_PRESS_MS in edged_board.py), so long_press_ms is unused."""

    kind: Literal["board"] = Field(description="The Maix board's BOOT key.")


ButtonConfig = Annotated[GpioButtonConfig | SimulatedButtonConfig | BoardButtonConfig,
                         Field(discriminator="kind")]
"""One button, chosen by ``kind``: ``gpio``, ``simulated`` or ``board``."""
