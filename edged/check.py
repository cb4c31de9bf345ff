"""``edged check CONFIG``: everything that can be known before starting, without starting.

The config itself, every pipeline its cameras use, each pipeline's model (its file, its
sha256, the manifest against the kmodel) and whether the models the daemon would load at
start fit the SRAM budget of the chosen runtime profile. No camera or broker is opened.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edged.config import ConfigError, Settings, load_settings
from edged.kpu.serial.config import check_port
from edged.kpu.sram import ModelCost, get_profile
from edged.runtime.definitions import DefinitionError
from edged.runtime.pipeline import load_pipeline, pipeline_path
from edged.runtime.registry import ModelRegistry, UnknownModel, model_search_path


@dataclass
class CheckReport:
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check(path: Path | None, defaults: dict[str, object] | None = None) -> CheckReport:
    report = CheckReport()
    try:
        settings = load_settings(path, defaults)
    except ConfigError as exc:
        report.problems.append(str(exc))
        return report
    report.lines.append(f"config {path or '(built-in demo)'}: valid; device {settings.device_id}")
    serial = settings.kpu.serial
    if settings.kpu.backend == "serial" and serial is not None:
        problem = check_port(serial)
        report.problems += [problem] if problem else []
        report.lines += [] if problem else [f"kpu.serial.port {serial.port}: opens"]
    _check_models(settings, report)
    return report


def _check_models(settings: Settings, report: CheckReport) -> None:
    present, missing = settings.model_dirs
    report.lines += [f"models.search_path: {path} does not exist (skipped)" for path in missing]
    registry = ModelRegistry.discover(model_search_path(present))
    needed: dict[str, ModelCost] = {}
    wanted = set(settings.routes.values())
    serial = settings.kpu.serial
    if serial is not None and serial.stream_pipeline is not None:
        wanted.add(serial.stream_pipeline)  # the board runs it on its own camera
    for name in sorted(wanted):
        try:
            pipeline = load_pipeline(pipeline_path(name, settings.pipelines_dir), registry)
        except (DefinitionError, LookupError) as exc:
            report.problems.append(str(exc))
            continue
        model = pipeline.model
        needed[model.name] = ModelCost.of(model.kmodel)
        cameras = ", ".join(c for c, p in settings.routes.items() if p == name) or (
            "the board's camera")
        report.lines.append(f"pipeline {name}: model {model.name} ({model.kmodel_path}), "
                            f"sha256 ok; cameras {cameras}")
    for name in settings.models.preload:
        try:
            needed[name] = ModelCost.of(registry.get(name).kmodel)
        except (DefinitionError, UnknownModel) as exc:
            report.problems.append(f"models.preload: {exc}")
    profile = get_profile(settings.kpu.profile)
    total = sum(cost.total for cost in needed.values())
    verdict = f"{total:,} of {profile.model_bytes:,} bytes under {profile.name}"
    if total > profile.model_bytes or len(needed) > profile.max_models:
        report.problems.append(
            f"memory overflow: the models loaded at start ({', '.join(needed)}) need {verdict} "
            f"(load error:2006, ERR_NO_MEM); drop some from models.preload or choose a "
            "larger kpu.profile")
    else:
        report.lines.append(f"SRAM at start: {verdict}")
