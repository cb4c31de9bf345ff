"""Reading definition files (model manifests, pipelines) with errors that say where.

A user who edits a TOML file needs the file, the field and what was expected, not a
traceback; every problem found in one file is reported at once.
"""

from __future__ import annotations

import tomllib
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
"""Model and pipeline names go into MQTT payloads and commands: no spaces, ``/``, ``+``, ``#``."""

SEGMENT_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
"""Camera and button names (and a camera's pipeline): a segment of MQTT topics and logs."""

Score = Annotated[float, Field(ge=0.0, le=1.0)]

Problem = tuple[str, str]
"""A dotted field path (``decoder.anchors``) and what is wrong with it."""


class Strict(BaseModel):
    """Every definition refuses unknown keys: a typo must not silently become a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DefinitionError(ValueError):
    """A definition file that cannot be used: which file, which fields, and why."""

    def __init__(self, file: Path | str, problems: Sequence[Problem]) -> None:
        if not problems:
            raise ValueError("a DefinitionError needs at least one problem")
        self.file = file
        self.problems = tuple(problems)
        super().__init__(str(self))

    @property
    def field(self) -> str:
        """The first field at fault."""
        return self.problems[0][0]

    def __str__(self) -> str:
        return f"{self.file}: " + "; ".join(f"{field}: {what}" for field, what in self.problems)


def read_toml(path: Path, error: type[DefinitionError]) -> dict[str, Any]:
    """The TOML file's top-level table, or ``error`` naming the file and the line."""
    try:
        with path.open("rb") as stream:
            return tomllib.load(stream)
    except OSError as exc:
        raise error(path, [("(file)", f"cannot read: {exc.strerror or exc}")]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise error(path, [("(toml)", str(exc))]) from exc


def validation_problems(exc: ValidationError, union_tags: Collection[str] = ()) -> list[Problem]:
    """Pydantic's errors as ``(field, what)`` pairs.

    Pydantic puts the chosen member of a tagged union into the location
    (``decoder.yolo2.anchors``); those ``union_tags`` are dropped, as the user never wrote
    them, and a wrong or missing tag is reported on the discriminator field itself.
    """
    problems = []
    for error in exc.errors(include_url=False):
        loc = [str(part) for i, part in enumerate(error["loc"]) if i == 0 or part not in union_tags]
        message = error["msg"]
        if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            ctx = error.get("ctx", {})
            loc.append(str(ctx.get("discriminator", "type")).strip("'"))
            expected = ctx.get("expected_tags")
            message = (
                f"'{ctx.get('tag')}' is not one of {expected}"
                if error["type"] == "union_tag_invalid"
                else "Field required"
            )
        elif error["type"] == "extra_forbidden":
            message = "unknown field (misspelt, or in the wrong table?)"
        elif not isinstance(error.get("input"), dict | list) and error["type"] != "missing":
            message = f"{message} (got {error['input']!r})"
        problems.append((".".join(loc) or "(top level)", message))
    return problems
