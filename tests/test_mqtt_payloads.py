"""The MQTT contract without a broker: topic names, payload builders, schemas, settings.

The JSON Schemas in docs/schemas are the contract consumers validate against; these tests
hold the builders, the publisher's counters and the examples in docs/mqtt.md to them.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from datetime import UTC, datetime, timedelta, timezone
from functools import cache
from typing import Any

import aiomqtt
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, ValidationError
from pydantic import ValidationError as SettingsError

from edged.mqtt import MqttPublisher, MqttSettings, TopicError, Topics, validate_name
from edged.mqtt.payloads import (
    CommandErrorCode,
    CommandResultPayload,
    DetectionsPayload,
    ModelsPayload,
    StatsPayload,
    command_error,
    command_result_payload,
    detections_payload,
    encode,
    iso_utc,
    models_payload,
    request_id_of,
    stats_payload,
)
from edged.mqtt.topics import OFFLINE, ONLINE, validate_prefix
from edged.vision.detection import make_detections
from tests.conftest import PROJECT

SCHEMAS = PROJECT / "docs" / "schemas"
SCHEMA_NAMES = ["detections", "stats", "models", "cmd_result", "command", "event"]
TS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


@cache
def schema(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    return loaded


def check(name: str, instance: object) -> None:
    """Validate against ``docs/schemas/<name>.schema.json`` (``name#verb``: a command verb)."""
    file, _, verb = name.partition("#")
    root = schema(file)
    Draft202012Validator(
        root["$defs"][verb] if verb else root, format_checker=Draft202012Validator.FORMAT_CHECKER
    ).validate(instance)


def check_message(topics: Topics, topic: str, payload: bytes) -> object:
    """Validate one message edged published, by its topic; returns the decoded body."""
    if topic == topics.availability:
        assert payload in (ONLINE, OFFLINE), payload
        return payload.decode()
    body = json.loads(payload)
    if topic == topics.stats:
        check("stats", body)
    elif topic == topics.models:
        check("models", body)
    elif topic == topics.cmd_result:
        check("cmd_result", body)
    elif topic == topics.events:
        check("event", body)
    elif topic == topics.detections(body["camera"]):
        check("detections", body)
    else:
        raise AssertionError(f"edged does not publish on {topic!r}")
    return body


# ----------------------------------------------------------------------------- examples

NOW = datetime(2026, 7, 23, 10, 0, 0, 123456, tzinfo=UTC)


def frame_payload(device: str, n: int, camera: str = "front") -> DetectionsPayload:
    """A frame with two real detections, built the way a pipeline builds it."""
    found = make_detections(
        np.array([[10.0, 20.0, 30.0, 40.0], [0.0, 0.0, 320.0, 240.0]]),
        np.array([0.91234567, 0.5]),
        np.array([1, 7]),
        ["background", "face"],
        (320, 240),
    )
    return detections_payload(
        device=device,
        camera=camera,
        pipeline="faces",
        model="maixpy_facedetect",
        frame=n,
        captured_at=NOW,
        latency_ms=21.3749,
        image_size=(320, 240),
        detections=found,
    )


def stats_example(device: str, publisher: MqttPublisher, **extra: Any) -> StatsPayload:
    return stats_payload(
        device=device,
        uptime_s=12.5,
        interval_s=15.0,
        cameras={
            "front": {
                "state": "online",
                "fps_in": 30.0,
                "fps_out": 29.9,
                "dropped_frames": 3,
                "latency_ms": {"p50": 20.1, "p99": 31.0},
                "reconnects": 0,
            }
        },
        kpu={"backend": "sim", "busy": 0.4, "runs": 375},
        sram={
            "profile": "c-sdk",
            "total": 5767168,
            "used": 1000,
            "free": 5766168,
            "models": [{"id": 1, "name": "maixpy_facedetect", "bytes": 1000}],
        },
        mqtt=publisher.stats(),
        now=NOW,
        **extra,
    )


def models_example(device: str, model: str = "maixpy_facedetect") -> ModelsPayload:
    return models_payload(
        device=device,
        sram={"profile": "c-sdk", "total": 5767168, "used": 1000, "free": 5766168},
        models=[{"id": 1, "name": model, "sha256": "ab" * 32, "bytes": 1000}],
        pipelines={"faces": {"model": model, "cameras": ["front"]}},
        now=NOW,
    )


# ----------------------------------------------------------------------------- topics


def test_topics_of_the_contract() -> None:
    t = Topics.for_device("cam-box-1")
    assert t.prefix == "edged/cam-box-1"
    assert t.availability == "edged/cam-box-1/availability"
    assert t.detections("front") == "edged/cam-box-1/front/detections"
    assert t.stats == "edged/cam-box-1/stats"
    assert t.models == "edged/cam-box-1/models"
    assert t.command("switch") == "edged/cam-box-1/cmd/switch"
    assert t.cmd_result == "edged/cam-box-1/cmd/result"
    assert t.command_filter == "edged/cam-box-1/cmd/+"
    assert Topics.for_device("x", prefix="site-a/k210/x").stats == "site-a/k210/x/stats"


def test_result_is_not_a_verb() -> None:
    t = Topics.for_device("d")
    with pytest.raises(TopicError, match="reserved"):
        t.command("result")
    assert t.verb_of(t.cmd_result) is None
    assert t.verb_of("edged/other/cmd/switch") is None
    assert t.verb_of("edged/d/cmd/switch") == "switch"


@pytest.mark.parametrize(
    ("name", "why"),
    [("", "empty"), ("a/b", "'/'"), ("+", "'\\+'"), ("cam#1", "'#'"), ("a\x00", "'\\\\x00'")],
)
def test_bad_names_are_refused_with_the_reason(name: str, why: str) -> None:
    with pytest.raises(TopicError, match=why):
        Topics.for_device("d").detections(name)


@pytest.mark.parametrize("prefix", ["", "a//b", "/a", "a/", "$SYS/edged", "a/+/b"])
def test_bad_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(TopicError):
        Topics(prefix)


def _usable(name: str) -> bool:
    """The rule, stated independently of the implementation: MQTT 3.1.1 section 4.7."""
    return (
        name != ""
        and not set(name) & set("+#/")
        and not any(unicodedata.category(c) == "Cc" for c in name)
        and name == name.strip()
    )


@given(st.text(max_size=20))
def test_validate_name_accepts_exactly_the_usable_levels(name: str) -> None:
    if not _usable(name):
        with pytest.raises(TopicError):
            validate_name(name)
        return
    assert validate_name(name) == name
    topic = Topics.for_device("dev").detections(name)
    # aiomqtt, the schemas and the topic level count agree with the rule.
    assert aiomqtt.Topic(topic).value.split("/") == ["edged", "dev", name, "detections"]
    check("detections", {**frame_payload("dev", 0), "camera": name})


# JSON Schema patterns are ECMA-262, where "$" is the end of the string; Python's re, which
# the jsonschema package uses, also lets "$" match before a final newline. Names ending in
# one are refused by validate_name and by ECMA validators; Python's check cannot see it.
@given(st.text(max_size=20).filter(lambda v: not v.endswith("\n")))
def test_schemas_name_pattern_agrees_with_validate_name(name: str) -> None:
    payload = {**frame_payload("dev", 0), "camera": name}
    if _usable(name):
        check("detections", payload)
    else:
        with pytest.raises(ValidationError):
            check("detections", payload)


@given(st.text(min_size=1, max_size=12).filter(_usable).filter(lambda v: v != "result"))
def test_command_topics_round_trip(verb: str) -> None:
    t = Topics.for_device("dev")
    topic = t.command(verb)
    assert aiomqtt.Topic(topic).matches(t.command_filter)
    assert t.verb_of(topic) == verb


@given(st.lists(st.text(min_size=1, max_size=8).filter(_usable), min_size=1, max_size=4))
def test_prefixes_are_levels_joined_by_slashes(levels: list[str]) -> None:
    prefix = "/".join(levels)
    if prefix.startswith("$"):
        with pytest.raises(TopicError, match=r"\$"):
            validate_prefix(prefix)
    else:
        assert Topics(prefix).availability == f"{prefix}/availability"


# ----------------------------------------------------------------------------- payloads


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_schemas_are_valid_draft_2020_12(name: str) -> None:
    Draft202012Validator.check_schema(schema(name))
    assert schema(name)["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_detections_payload_is_compact_and_valid() -> None:
    payload = frame_payload("cam-box-1", 7)
    check("detections", payload)
    data = encode(payload)
    assert b" " not in data  # compact: no space after ',' or ':' (no label has one)
    assert json.loads(data) == payload
    assert payload["ts"] == "2026-07-23T10:00:00.123Z"
    assert payload["latency_ms"] == 21.37
    first = payload["detections"][0]
    assert first == {
        "label": "face",
        "class_id": 1,
        "score": 0.91235,
        "box": {"x": 10.0, "y": 20.0, "w": 30.0, "h": 40.0},
        "box_norm": {"x": 0.03125, "y": 0.08333, "w": 0.09375, "h": 0.16667},
    }
    assert payload["detections"][1]["label"] == "7"  # no label: its class number


def test_timestamps_are_utc_with_milliseconds() -> None:
    assert iso_utc(0.0) == "1970-01-01T00:00:00.000Z"
    east = NOW.astimezone(timezone(timedelta(hours=8)))
    assert iso_utc(east) == "2026-07-23T10:00:00.123Z"
    assert TS.match(iso_utc(datetime.now(UTC)))
    with pytest.raises(ValueError, match="naive"):
        iso_utc(datetime(2026, 1, 1))


def test_nan_is_refused_not_sent() -> None:
    payload = frame_payload("d", 0)
    payload["latency_ms"] = math.nan
    with pytest.raises(ValueError, match="JSON"):
        encode(payload)


def test_stats_payload_validates_with_the_publishers_own_counters() -> None:
    publisher = MqttPublisher(MqttSettings(), device_id="d")
    minimal = stats_example("d", publisher)
    check("stats", minimal)
    assert "swaps" not in minimal
    assert "counters" not in minimal
    full = stats_example(
        "d",
        publisher,
        swaps={"ok": 2, "failed": 1, "last_ms": 180.5},
        counters={"config_reloads": 1},
    )
    check("stats", full)


@pytest.mark.parametrize(
    "change",
    [
        {"surprise": 1},
        {"mqtt": {"connected": True}},
        {"counters": {"BadName": 1}},
        {"counters": {"ok": -1}},
        {"kpu": {"backend": "sim", "busy": 1.5, "runs": 0}},
    ],
)
def test_stats_schema_is_closed(change: dict[str, object]) -> None:
    payload = {**stats_example("d", MqttPublisher(MqttSettings(), device_id="d")), **change}
    with pytest.raises(ValidationError):
        check("stats", payload)


def test_models_payload_validates() -> None:
    check("models", models_example("d"))
    idle = models_payload(
        device="d",
        sram={"profile": "maixpy-full", "total": 2101248, "used": 0, "free": 2101248},
        models=[],
        pipelines={"faces": {"model": None, "cameras": []}},
    )
    check("models", idle)


def test_command_results_validate_and_failures_change_nothing() -> None:
    ok: CommandResultPayload = command_result_payload(
        device="d",
        verb="switch",
        request_id="r1",
        changed={"pipelines": {"faces": {"from": "a", "to": "b"}}, "loaded": ["b"]},
    )
    check("cmd_result", ok)
    assert ok["ok"] is True
    assert ok["error"] is None
    refused = command_result_payload(
        device="d",
        verb="load",
        request_id=None,
        error={"code": 2006, "name": "ERR_NO_MEM", "message": "memory overflow: ..."},
    )
    check("cmd_result", refused)
    assert refused["ok"] is False
    assert refused["changed"] == {}
    with pytest.raises(ValueError, match="change nothing"):
        command_result_payload(
            device="d",
            verb="load",
            request_id=None,
            error=command_error(CommandErrorCode.ERR_BUSY, "busy"),
            changed={"loaded": ["m"]},
        )
    with pytest.raises(ValidationError):
        check("cmd_result", {**ok, "ok": False})  # a failure must say why
    with pytest.raises(ValidationError):
        check("cmd_result", {**refused, "ok": True})  # success with an error


def test_command_errors_carry_code_and_name() -> None:
    error = command_error(CommandErrorCode.ERR_COMMAND_TOO_LARGE, "too big")
    assert error == {"code": 4002, "name": "ERR_COMMAND_TOO_LARGE", "message": "too big"}


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b'{"request_id":"r-1","model":"m"}', "r-1"),
        (b'{"model":"m"}', None),
        (b'{"request_id":7}', None),
        (b'{"request_id":""}', None),
        (b'{"request_id":"' + b"x" * 129 + b'"}', None),
        (b"[1,2]", None),
        (b"not json", None),
        (b"\xff\xfe", None),
        (b"[" * 100_000, None),
    ],
)
def test_request_id_of_never_fails(payload: bytes, expected: str | None) -> None:
    assert request_id_of(payload) == expected


@pytest.mark.parametrize(
    ("verb", "command", "valid"),
    [
        ("switch", {"request_id": "r", "pipeline": "faces", "model": "m"}, True),
        ("switch", {"pipeline": "faces"}, False),
        ("load", {"model": "m"}, True),
        ("load", {"model": "m", "force": True}, False),
        ("deinit", {"model": ""}, False),
        ("deinit", {"model": "m", "request_id": 3}, False),
    ],
)
def test_command_schema_per_verb(verb: str, command: dict[str, object], valid: bool) -> None:
    if valid:
        check(f"command#{verb}", command)
    else:
        with pytest.raises(ValidationError):
            check(f"command#{verb}", command)


DOC_EXAMPLES = re.findall(
    r"<!-- schema: ([\w#]+) -->\n```json\n(.*?)\n```",
    (PROJECT / "docs" / "mqtt.md").read_text(),
    re.DOTALL,
)


@pytest.mark.parametrize(("name", "example"), DOC_EXAMPLES)
def test_docs_examples_validate(name: str, example: str) -> None:
    check(name, json.loads(example))


def test_every_payload_schema_has_a_docs_example() -> None:
    documented = {name.partition("#")[0] for name, _ in DOC_EXAMPLES}
    assert documented == set(SCHEMA_NAMES)


# ----------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"username": "u"}, "username is set without the other"),
        ({"password": "p"}, "password is set without the other"),
        ({"port": 0}, "greater than or equal to 1"),
        ({"port": 65536}, "less than or equal to 65535"),
        ({"hostname": "x"}, "Extra inputs are not permitted"),
        ({"prefix": "site/+/x"}, "'\\+'"),
        ({"qos": 3}, "Input should be 0, 1 or 2"),
        ({"backoff": {"initial": 5, "max": 1}}, "below backoff.initial"),
        ({"tls": {"key_file": "k.pem"}}, "tls.cert_file is not"),
        ({"tls": {"verify": False}}, "Extra inputs are not permitted"),
    ],
)
def test_settings_refuse_with_the_field(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        MqttSettings.model_validate(fields)


def test_password_never_shows() -> None:
    settings = MqttSettings.model_validate({"username": "edged", "password": "hunter2", "tls": {}})
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(settings.model_dump())
    assert settings.tls is not None
    assert settings.tls.ca_file is None
