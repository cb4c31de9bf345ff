"""MQTT commands: validated once, applied through the model manager, answered exactly once.

A command that is not JSON, does not match its verb's schema, names an unknown pipeline or
model, or cannot be carried out gets an error reply on ``<prefix>/cmd/result`` and changes
nothing; the daemon never stops for a bad command. Model errors keep MaixPy's codes
(``2006 ERR_NO_MEM``: memory overflow; ``2002 ERR_KMODEL_VERSION``; ...).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edged.kpu.errors import KpuError
from edged.mqtt.payloads import (
    REQUEST_ID_MAX,
    Changes,
    CommandErrorCode,
    CommandResultPayload,
    ErrorInfo,
    ModelsState,
    command_error,
    command_result_payload,
    request_id_of,
)
from edged.mqtt.publisher import Command
from edged.mqtt.reports import models_state, sram_totals
from edged.runtime.manager import (
    Change,
    InUseError,
    LifecycleError,
    ModelManager,
    ModelUnusableError,
    NotAllowedError,
    NotLoadedError,
    RateLimitedError,
    UnknownModelError,
    UnknownPipelineError,
)

log = structlog.get_logger(component="commands")

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    request_id: str | None = Field(default=None, min_length=1, max_length=REQUEST_ID_MAX)


class SwitchCommand(_Command):
    pipeline: str = Field(pattern=NAME)
    model: str = Field(pattern=NAME)


class LoadCommand(_Command):
    model: str = Field(pattern=NAME)


class DeinitCommand(_Command):
    model: str = Field(pattern=NAME)


class ModelsCommand(_Command):
    pass


VERBS: dict[str, type[_Command]] = {
    "switch": SwitchCommand,
    "load": LoadCommand,
    "deinit": DeinitCommand,
    "models": ModelsCommand,
}

_CODES: dict[type[LifecycleError], CommandErrorCode] = {
    UnknownPipelineError: CommandErrorCode.ERR_UNKNOWN_PIPELINE,
    UnknownModelError: CommandErrorCode.ERR_UNKNOWN_MODEL,
    NotAllowedError: CommandErrorCode.ERR_NOT_ALLOWED,
    RateLimitedError: CommandErrorCode.ERR_RATE_LIMITED,
    InUseError: CommandErrorCode.ERR_IN_USE,
    NotLoadedError: CommandErrorCode.ERR_NOT_LOADED,
    ModelUnusableError: CommandErrorCode.ERR_MODEL_UNUSABLE,
}


class BadCommand(Exception):
    """A command refused before anything was tried."""

    def __init__(self, code: CommandErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def parse(verb: str, payload: bytes) -> _Command:
    """The command, validated; :class:`BadCommand` says what is wrong and where."""
    schema = VERBS.get(verb)
    if schema is None:
        raise BadCommand(CommandErrorCode.ERR_UNKNOWN_VERB,
                         f"unknown verb {verb!r} (known: {', '.join(VERBS)})")
    try:
        body = json.loads(payload) if payload.strip() else {}
    except (ValueError, RecursionError) as exc:
        raise BadCommand(CommandErrorCode.ERR_BAD_COMMAND, f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadCommand(CommandErrorCode.ERR_BAD_COMMAND,
                         f"expected a JSON object, got {type(body).__name__}")
    try:
        return schema.model_validate(body)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(command)'}: {e['msg']}"
            for e in exc.errors()
        )
        raise BadCommand(CommandErrorCode.ERR_BAD_COMMAND, problems) from None


def error_info(exc: Exception) -> ErrorInfo:
    """The reply's ``error`` for anything a command can raise."""
    if isinstance(exc, BadCommand):
        return command_error(exc.code, str(exc))
    if isinstance(exc, ModelUnusableError) and exc.kpu is not None:
        return {"code": exc.kpu.code, "name": exc.kpu.name, "message": str(exc)}
    if isinstance(exc, KpuError):
        return {"code": exc.code, "name": exc.name, "message": str(exc)}
    code = next((c for kind, c in _CODES.items() if isinstance(exc, kind)),
                CommandErrorCode.ERR_BAD_COMMAND)
    return command_error(code, str(exc))


def _changes(change: Change) -> Changes:
    changes: Changes = {}
    if change.loaded:
        changes["loaded"] = list(change.loaded)
    if change.unloaded:
        changes["unloaded"] = list(change.unloaded)
    if change.pipeline is not None and change.previous != change.model:
        changes["pipelines"] = {change.pipeline: {"from": change.previous, "to": change.model}}
    return changes


class CommandHandler:
    """Applies commands one at a time and replies to each through ``reply``."""

    def __init__(
        self,
        manager: ModelManager,
        device_id: str,
        reply: Callable[[CommandResultPayload], None],
        on_change: Callable[[], None],
    ) -> None:
        self.manager = manager
        self.device_id = device_id
        self.reply = reply
        self.on_change = on_change
        self.handled = 0
        self.refused = 0

    async def handle(self, command: Command) -> None:
        request_id = request_id_of(command.payload)
        replied = False

        def answer(error: ErrorInfo | None = None, changed: Changes | None = None,
                   state: ModelsState | None = None) -> None:
            nonlocal replied
            replied = True
            self.reply(command_result_payload(
                device=self.device_id, verb=command.verb, request_id=request_id,
                sram=sram_totals(self.manager.memory()), error=error, changed=changed,
                state=state))

        async def announce(change: Change) -> None:
            answer(changed=_changes(change))

        try:
            parsed = parse(command.verb, command.payload)
            match parsed:
                case SwitchCommand(pipeline=pipeline, model=model):
                    change = await self.manager.switch(pipeline, model, announce=announce)
                    if not replied:  # a switch to the model already running
                        answer(changed=_changes(change))
                case LoadCommand(model=model):
                    answer(changed=_changes(await self.manager.load(model)))
                case DeinitCommand(model=model):
                    answer(changed=_changes(await self.manager.deinit(model)))
                case _:
                    answer(state=models_state(self.manager))
        except (BadCommand, LifecycleError, KpuError) as exc:
            self.refused += 1
            info = error_info(exc)
            log.warning("command_refused", verb=command.verb, request_id=request_id,
                        code=info["code"], error=info["message"])
            if not replied:
                answer(error=info)
            return
        self.handled += 1
        self.on_change()
