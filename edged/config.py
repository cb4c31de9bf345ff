"""A deployment's settings: one TOML file, validated once at start, overridable per field.

Every field can be set from the environment (``EDGED_MQTT__HOST=broker``, nested with
``__``), which is how systemd drop-ins and containers set site specifics; secrets come from
systemd credentials (``$CREDENTIALS_DIRECTORY/mqtt-password``, see ``LoadCredential=``) or
the environment, never the file. Unknown keys are refused. An error names the file, the
field and what was expected.

Relative paths in the file (model directories, the pipelines directory, camera photos and
folders) are relative to the file, so a config works from any working directory.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from edged.camera.config import CameraConfig
from edged.control.config import ButtonConfig, GpioButtonConfig, SimulatedButtonConfig
from edged.kpu.serial.config import SerialSettings
from edged.kpu.sram import PROFILES
from edged.mqtt.config import MqttSettings
from edged.runtime.definitions import NAME_PATTERN, DefinitionError, Strict, validation_problems
from edged.runtime.pipeline import PROJECT_PIPELINES

CREDENTIALS = {"mqtt-username": ("mqtt", "username"), "mqtt-password": ("mqtt", "password")}
"""systemd credential names and the settings they fill."""


class ConfigError(DefinitionError):
    """A config file (or environment) that cannot be used; names file and field."""


class KpuSettings(Strict):
    """Which accelerator runs the models, and under which memory budget."""

    backend: Literal["sim", "serial"] = Field(
        default="sim",
        description="sim: the simulated K210; serial: a Maix board running "
        "deploy/k210/edged_board.py, on kpu.serial.port")
    profile: str = Field(
        default="c-sdk",
        description=f"SRAM budget of the runtime the models would run under: "
        f"{', '.join(PROFILES)}",
    )
    rounding: Literal["half-even", "half-up"] = Field(
        default="half-even",
        description="activation rounding on exact ties: nncase 0.2 (half-even) or 0.1",
    )
    process: bool = Field(
        default=True,
        description="sim: compute in a process of its own, out of reach of the daemon's "
        "interpreter lock (false: on a thread of the daemon)")
    lanes: int = Field(
        default=1, ge=0,
        description="sim: threads each layer is split across; 1 leaves the other cores to "
        "cameras, decoding and MQTT (best with 4 cameras on 2 cores, measured); "
        "0: one per core")
    workers: int = Field(
        default=1, ge=1, le=16,
        description="sim: frames computed at once, each by a worker of its own (a process "
        "with kpu.process) holding every loaded model; each camera's frames are still "
        "published in order. More than 1 is for machines with cores to spare: on 2 cores "
        "the daemon itself needs the second (10 cameras sustained with 1, fewer with 2, "
        "measured)")

    serial: SerialSettings | None = Field(
        default=None, description='the board and its link, for backend = "serial"')

    @model_validator(mode="after")
    def _known_profile(self) -> Self:
        if self.profile not in PROFILES:
            raise ValueError(f"profile {self.profile!r} is not one of {', '.join(PROFILES)}")
        if self.backend == "serial" and self.serial is None:
            raise ValueError('backend "serial" needs a [kpu.serial] table with at least '
                             'port = "/dev/ttyUSB0"')
        return self

    @property
    def stream_pipeline(self) -> str | None:
        """The pipeline a Maix board runs on its own camera: only in serial stream mode."""
        serial = self.serial
        if self.backend != "serial" or serial is None or serial.mode != "stream":
            return None
        return serial.stream_pipeline


class ModelSettings(Strict):
    """Where models are found and how they may be swapped."""

    search_path: list[Path] = Field(
        default_factory=list,
        description="directories with model manifests and kmodels, after the project's models/",
    )
    preload: list[str] = Field(
        default_factory=list,
        description="models kept resident (when they fit) for instant switches",
    )
    allow: dict[str, list[str]] = Field(
        default_factory=dict,
        description="per pipeline, the models it may be switched to (default: any available)",
    )
    min_swap_interval: float = Field(
        default=1.0, ge=0, description="seconds between two swaps of one pipeline"
    )


class StatsSettings(Strict):
    interval: float = Field(
        default=15.0, ge=0.5, le=3600, description="seconds between two stats messages"
    )


class LogSettings(Strict):
    level: Literal["debug", "info", "warning", "error"] = Field(default="info")
    format: Literal["auto", "json", "console"] = Field(
        default="auto", description="auto: JSON lines unless stderr is a terminal"
    )


class WatchdogSettings(Strict):
    stall_limit: float = Field(
        default=10.0, gt=0, description="seconds without a KPU run while frames wait: unhealthy"
    )


class Settings(BaseSettings):
    """The whole deployment config (``deploy/<site>.toml``)."""

    model_config = SettingsConfigDict(
        env_prefix="EDGED_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    device_id: str = Field(
        default="edged", pattern=NAME_PATTERN, description="this device's name in MQTT topics"
    )
    kpu: KpuSettings = Field(default_factory=KpuSettings)
    models: ModelSettings = Field(default_factory=ModelSettings)
    pipelines_dir: Path = Field(
        default=PROJECT_PIPELINES, description="directory of pipelines/<name>.toml"
    )
    cameras: list[CameraConfig] = Field(default_factory=list, description="frame sources")
    buttons: list[ButtonConfig] = Field(
        default_factory=list, description="buttons that switch models or publish events")
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    embedded_broker: Literal["never", "auto"] = Field(
        default="never",
        description="auto: start a local broker when none listens at mqtt.host:port",
    )
    stats: StatsSettings = Field(default_factory=StatsSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    watchdog: WatchdogSettings = Field(default_factory=WatchdogSettings)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        cameras = [c.name for c in self.cameras]
        buttons = [b.name for b in self.buttons]
        inputs = [str(b.socket) if isinstance(b, SimulatedButtonConfig)
                  else f"{b.device}:{b.line}" for b in self.buttons
                  if isinstance(b, SimulatedButtonConfig | GpioButtonConfig)]
        for what, values in (("camera names", cameras), ("button names", buttons),
                             ("button inputs", inputs)):
            repeated = sorted({v for v in values if values.count(v) > 1})
            if repeated:
                raise ValueError(f"{what} must be unique: {', '.join(repeated)} repeated")
        return self

    @property
    def model_dirs(self) -> tuple[list[Path], list[Path]]:
        """The configured model directories that exist, and those that do not (yet): a site
        folder with no models in it yet is not an error, a model that cannot be found is."""
        paths = self.models.search_path
        return [p for p in paths if p.is_dir()], [p for p in paths if not p.is_dir()]

    @property
    def routes(self) -> dict[str, str]:
        """Camera name to the pipeline its frames go through."""
        return {c.name: c.pipeline for c in self.cameras}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # the environment wins over the file (init), credentials fill only what is missing
        return (env_settings, init_settings, _Credentials(settings_cls))


class _Credentials(PydanticBaseSettingsSource):
    """Secrets from ``$CREDENTIALS_DIRECTORY`` (systemd ``LoadCredential=``)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        folder = os.environ.get("CREDENTIALS_DIRECTORY")
        if not folder:
            return {}
        found: dict[str, dict[str, str]] = {}
        for credential, (section, key) in CREDENTIALS.items():
            path = Path(folder) / credential
            value = path.read_text().strip() if path.is_file() else ""
            if value:  # an empty credential file (install.sh leaves one) means "not set"
                found.setdefault(section, {})[key] = value
        return found


DEMO: dict[str, Any] = {
    "device_id": "edged-demo",
    "cameras": [{"name": "demo", "kind": "shapes", "fps": 30, "pipeline": "shapes"}],
    "embedded_broker": "auto",
}
"""What ``edged run`` runs without a config: the project's own model on a synthetic camera,
publishing to a local broker (an embedded one when none listens on localhost:1883)."""


def load_settings(path: Path | None, defaults: Mapping[str, Any] | None = None) -> Settings:
    """The settings in ``path`` (or ``defaults``), with the environment applied."""
    raw: dict[str, Any] = dict(defaults or {})
    where = str(path) if path else "(built-in settings and environment)"
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text())
        except OSError as exc:
            problem = f"cannot read it: {exc.strerror or exc}"
            raise ConfigError(where, [("(file)", problem)]) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(where, [("(file)", f"not valid TOML: {exc}")]) from exc
        raw = _resolve_paths(raw, path.parent)
    try:
        return Settings(**raw)
    except ValidationError as exc:
        raise ConfigError(where, _with_env_names(validation_problems(exc))) from exc


def _with_env_names(problems: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Say which environment variable could have set the field, when one is set."""
    named = []
    for field, what in problems:
        env = "EDGED_" + re.sub(r"\.\d+", "", field).replace(".", "__").upper()
        named.append((field, f"{what} (from ${env})" if env in os.environ else what))
    return named


def _resolve_paths(raw: Mapping[str, Any], base: Path) -> dict[str, Any]:
    """Relative paths in the file, made relative to the file's folder."""

    def absolute(value: Any) -> Any:
        return str(base / value) if isinstance(value, str) and not Path(value).is_absolute() \
            else value

    out = dict(raw)
    if "pipelines_dir" in out:
        out["pipelines_dir"] = absolute(out["pipelines_dir"])
    models = out.get("models")
    if isinstance(models, dict) and isinstance(models.get("search_path"), list):
        out["models"] = {**models, "search_path": [absolute(p) for p in models["search_path"]]}
    buttons = out.get("buttons")
    if isinstance(buttons, list):
        out["buttons"] = [{**b, **({"socket": absolute(b["socket"])} if "socket" in b else {})}
                          if isinstance(b, dict) else b for b in buttons]
    cameras = out.get("cameras")
    if isinstance(cameras, list):
        out["cameras"] = [
            {**c, **{k: absolute(c[k]) for k in ("photo", "path") if k in c}}
            if isinstance(c, dict) else c
            for c in cameras
        ]
    return out
