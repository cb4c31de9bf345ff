"""Every JSON payload of the MQTT contract v1: its shape, its builder and its one encoding.

The TypedDicts are the shapes ``docs/schemas/*.schema.json`` check, so the type checker
catches a missing field where the daemon fills a payload, and the schema tests catch a
drift between the two. Builders add what every payload carries (``v``, ``device``, ``ts``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from enum import IntEnum
from typing import Literal, NotRequired, TypedDict

from edged.camera.frame import GroundTruth
from edged.mqtt.topics import CONTRACT_VERSION
from edged.vision.detection import Detection

LATENCY_DIGITS = 2
REQUEST_ID_MAX = 128
"""Longest ``request_id`` echoed back; a longer one is treated as absent."""


def encode(payload: Mapping[str, object]) -> bytes:
    """Compact UTF-8 JSON; NaN and infinity are refused (``ValueError``): they are not JSON."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def iso_utc(when: datetime | float) -> str:
    """ISO 8601 UTC with milliseconds (``2026-07-23T10:00:00.123Z``) from an aware datetime
    or Unix seconds; a naive datetime is a ``ValueError`` (its zone would be a guess)."""
    if isinstance(when, datetime):
        if when.tzinfo is None:
            raise ValueError(f"naive datetime {when.isoformat()}: give it a time zone")
        moment = when.astimezone(UTC)
    else:
        moment = datetime.fromtimestamp(when, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _now(now: datetime | None) -> str:
    return iso_utc(datetime.now(UTC) if now is None else now)


# ----------------------------------------------------------------------------- detections


class ImageSize(TypedDict):
    w: int
    h: int


class DetectionsPayload(TypedDict):
    v: int
    device: str
    camera: str
    pipeline: str
    model: str
    frame: int
    ts: str
    latency_ms: float
    image: ImageSize
    detections: list[dict[str, object]]
    """Items are :meth:`edged.vision.detection.Detection.to_dict`."""
    truth: NotRequired[list[TruthItem]]


class TruthItem(TypedDict):
    label: str
    class_id: int
    box: dict[str, float]


def detections_payload(
    *,
    device: str,
    camera: str,
    pipeline: str,
    model: str,
    frame: int,
    captured_at: datetime | float,
    latency_ms: float,
    image_size: tuple[int, int],
    detections: Iterable[Detection],
    truth: Iterable[GroundTruth] = (),
) -> DetectionsPayload:
    """One processed frame; ``captured_at`` is the capture time, ``image_size`` ``(w, h)``;
    ``truth`` is a synthetic camera's ground truth, published when there is any."""
    w, h = image_size
    payload: DetectionsPayload = {
        "v": CONTRACT_VERSION,
        "device": device,
        "camera": camera,
        "pipeline": pipeline,
        "model": model,
        "frame": frame,
        "ts": iso_utc(captured_at),
        "latency_ms": round(latency_ms, LATENCY_DIGITS),
        "image": {"w": w, "h": h},
        "detections": [d.to_dict() for d in detections],
    }
    known: list[TruthItem] = [
        {"label": t.label, "class_id": t.class_id,
         "box": dict(zip("xywh", (round(v, 2) for v in t.box), strict=True))}
        for t in truth
    ]
    if known:
        payload["truth"] = known
    return payload


# ----------------------------------------------------------------------------- stats

CameraState = Literal["starting", "online", "retrying", "stopped"]


class Latency(TypedDict):
    """Capture to publish, over the stats interval; ``None`` when no frame was processed."""

    p50: float | None
    p99: float | None


class CameraStats(TypedDict):
    state: CameraState
    fps_in: float
    fps_out: float
    dropped_frames: int
    latency_ms: Latency
    reconnects: int


class KpuUsage(TypedDict):
    backend: str
    busy: float
    """Share of the stats interval the KPU spent running models, 0..1."""
    runs: int


class SramTotals(TypedDict):
    profile: str
    total: int
    used: int
    free: int


class ModelSram(TypedDict):
    id: int
    name: str
    bytes: int


class SramUsage(SramTotals):
    models: list[ModelSram]


class PublisherStats(TypedDict):
    """The publisher's own counters, totals since start (``MqttPublisher.stats``)."""

    connected: bool
    published: int
    dropped_queue: int
    dropped_disconnected: int
    failed: int
    state_overflow: int
    reconnects: int
    connect_failures: int
    commands_received: int
    commands_oversize: int
    commands_busy: int
    commands_retained: int


class SwapStats(TypedDict):
    ok: int
    failed: int
    last_ms: float | None


class StatsPayload(TypedDict):
    v: int
    device: str
    ts: str
    uptime_s: float
    interval_s: float
    cameras: dict[str, CameraStats]
    kpu: KpuUsage
    sram: SramUsage
    mqtt: PublisherStats
    swaps: NotRequired[SwapStats]
    counters: NotRequired[dict[str, int]]


def stats_payload(
    *,
    device: str,
    uptime_s: float,
    interval_s: float,
    cameras: Mapping[str, CameraStats],
    kpu: KpuUsage,
    sram: SramUsage,
    mqtt: PublisherStats,
    swaps: SwapStats | None = None,
    counters: Mapping[str, int] | None = None,
    now: datetime | None = None,
) -> StatsPayload:
    """The periodic snapshot; ``counters`` holds named totals the schema need not list."""
    payload: StatsPayload = {
        "v": CONTRACT_VERSION,
        "device": device,
        "ts": _now(now),
        "uptime_s": uptime_s,
        "interval_s": interval_s,
        "cameras": dict(cameras),
        "kpu": kpu,
        "sram": sram,
        "mqtt": mqtt,
    }
    if swaps is not None:
        payload["swaps"] = swaps
    if counters is not None:
        payload["counters"] = dict(counters)
    return payload


# ----------------------------------------------------------------------------- models


class LoadedModel(TypedDict):
    id: int
    name: str
    sha256: str
    bytes: int


class PipelineModel(TypedDict):
    model: str | None
    cameras: list[str]


class ModelsPayload(TypedDict):
    v: int
    device: str
    ts: str
    sram: SramTotals
    models: list[LoadedModel]
    pipelines: dict[str, PipelineModel]


def models_payload(
    *,
    device: str,
    sram: SramTotals,
    models: Iterable[LoadedModel],
    pipelines: Mapping[str, PipelineModel],
    now: datetime | None = None,
) -> ModelsPayload:
    """What is loaded, what each pipeline runs, and the SRAM it takes."""
    return {
        "v": CONTRACT_VERSION,
        "device": device,
        "ts": _now(now),
        "sram": sram,
        "models": list(models),
        "pipelines": dict(pipelines),
    }


# ----------------------------------------------------------------------------- cmd/result


class CommandErrorCode(IntEnum):
    """edged's own command errors (4000-4999); KPU errors keep MaixPy's (2001-2015)."""

    ERR_BAD_COMMAND = 4000
    """Not JSON, or not valid against ``command.schema.json``."""
    ERR_UNKNOWN_VERB = 4001
    ERR_COMMAND_TOO_LARGE = 4002
    ERR_BUSY = 4003
    """The command queue is full; nothing was done, try again."""
    ERR_UNKNOWN_PIPELINE = 4004
    ERR_UNKNOWN_MODEL = 4005
    ERR_NOT_ALLOWED = 4006
    """The model is not in the pipeline's allow-list."""
    ERR_RATE_LIMITED = 4007
    """The pipeline was swapped too recently; try again later."""
    ERR_IN_USE = 4008
    """A model a pipeline runs cannot be deinitialised."""
    ERR_NOT_LOADED = 4009
    ERR_MODEL_UNUSABLE = 4010
    """The model's files or manifest are broken (e.g. a sha256 mismatch)."""


class ErrorInfo(TypedDict):
    code: int
    name: str
    message: str


def command_error(code: CommandErrorCode, message: str) -> ErrorInfo:
    return {"code": int(code), "name": code.name, "message": message}


ModelChange = TypedDict("ModelChange", {"from": str | None, "to": str | None})


class Changes(TypedDict, total=False):
    """What a command changed; empty when it changed nothing (always so on error)."""

    loaded: list[str]
    unloaded: list[str]
    pipelines: dict[str, ModelChange]


class ModelListing(TypedDict):
    name: str
    resident: bool
    pipelines: list[str]


class ModelsState(TypedDict):
    """cmd/models' answer: every available model and what each pipeline runs."""

    models: list[ModelListing]
    pipelines: dict[str, str | None]


class CommandResultPayload(TypedDict):
    v: int
    device: str
    ts: str
    verb: str
    request_id: str | None
    ok: bool
    error: ErrorInfo | None
    changed: Changes
    sram: NotRequired[SramTotals]
    state: NotRequired[ModelsState]


def command_result_payload(
    *,
    device: str,
    verb: str,
    request_id: str | None,
    sram: SramTotals | None = None,
    error: ErrorInfo | None = None,
    changed: Changes | None = None,
    state: ModelsState | None = None,
    now: datetime | None = None,
) -> CommandResultPayload:
    """The one reply to a command: ``ok`` exactly when ``error`` is ``None``, with the SRAM
    account as the command left it."""
    if error is not None and changed:
        raise ValueError(f"a failed {verb!r} command changed {changed}; failures change nothing")
    payload: CommandResultPayload = {
        "v": CONTRACT_VERSION,
        "device": device,
        "ts": _now(now),
        "verb": verb,
        "request_id": request_id,
        "ok": error is None,
        "error": error,
        "changed": changed if changed is not None else {},
    }
    if sram is not None:
        payload["sram"] = sram
    if state is not None:
        payload["state"] = state
    return payload


class EventPayload(TypedDict):
    v: int
    device: str
    ts: str
    source: str
    name: str
    kind: str
    payload: object


def event_payload(
    *, device: str, source: str, name: str, kind: str, payload: object,
    now: datetime | None = None,
) -> EventPayload:
    """Something that happened on the device (a button press bound to an ``event`` action)."""
    return {"v": CONTRACT_VERSION, "device": device, "ts": _now(now), "source": source,
            "name": name, "kind": kind, "payload": payload}


def request_id_of(payload: bytes) -> str | None:
    """The command's ``request_id`` if it has a usable one, so even a refusal can be matched."""
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    request_id = body.get("request_id") if isinstance(body, dict) else None
    if isinstance(request_id, str) and 0 < len(request_id) <= REQUEST_ID_MAX:
        return request_id
    return None
