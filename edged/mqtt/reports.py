"""The retained state payloads (models, stats) built from the running daemon's parts."""

from __future__ import annotations

from collections.abc import Mapping

from edged.camera.source import CameraStats as CaptureStats
from edged.kpu.sram import MemoryReport
from edged.mqtt.payloads import (
    CameraStats,
    ModelListing,
    ModelsPayload,
    ModelsState,
    PipelineModel,
    SramTotals,
    SramUsage,
    models_payload,
)
from edged.runtime.manager import ModelManager
from edged.runtime.scheduler import Flow


def sram_totals(report: MemoryReport) -> SramTotals:
    return {"profile": report.profile, "total": report.total, "used": report.used,
            "free": report.free}


def sram_usage(report: MemoryReport) -> SramUsage:
    return {**sram_totals(report),
            "models": [{"id": m.id, "name": m.name, "bytes": m.nbytes} for m in report.models]}


def models_state(manager: ModelManager) -> ModelsState:
    """cmd/models' answer: every available model, whether it is loaded, who runs it."""
    runs = manager.pipeline_models()
    resident = manager.resident()
    listings: list[ModelListing] = [
        {"name": listing.name, "resident": listing.name in resident,
         "pipelines": sorted(p for p, m in runs.items() if m == listing.name)}
        for listing in manager.registry.listings if listing.available
    ]
    return {"models": listings, "pipelines": {p: runs.get(p) for p in manager.definitions}}


def models_report(manager: ModelManager, routes: Mapping[str, str], device: str) -> ModelsPayload:
    """The retained ``models`` topic: loaded models, each pipeline's model and cameras."""
    runs = manager.pipeline_models()
    pipelines: dict[str, PipelineModel] = {
        p: {"model": runs.get(p), "cameras": sorted(c for c, q in routes.items() if q == p)}
        for p in manager.definitions
    }
    loaded = [{"id": h.id, "name": h.name, "sha256": h.sha256, "bytes": h.nbytes}
              for h in manager.resident().values()]
    return models_payload(device=device, sram=sram_totals(manager.memory()),
                          models=loaded, pipelines=pipelines)  # type: ignore[arg-type]


def camera_report(capture: CaptureStats, flow: Flow, mailbox_dropped: int) -> CameraStats:
    p50, p99 = flow.latency.percentiles_ms(0.5, 0.99)
    return {
        "state": capture.state.value,
        "fps_in": round(capture.fps(), 2),
        "fps_out": round(flow.out.rate(), 2),
        "dropped_frames": mailbox_dropped + flow.dropped_swap + capture.skipped,
        "latency_ms": {"p50": p50, "p99": p99},
        "reconnects": capture.reconnects,
    }
