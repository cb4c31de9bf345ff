"""The MQTT topic contract, version 1, as code: every topic edged publishes or reads.

Names that become topic levels (device ids, camera names, command verbs) are checked once,
where they enter, so that a camera called ``front/door`` or ``+`` can never publish on a
topic nobody subscribed to or subscribe to one it should not read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CONTRACT_VERSION = 1
"""The ``v`` field of every JSON payload; bumped only for an incompatible change."""

ONLINE = b"online"
OFFLINE = b"offline"

RESULT_VERB = "result"
"""``<prefix>/cmd/result`` carries replies, so ``result`` is never a command verb."""

MAX_TOPIC_BYTES = 65535
"""MQTT's limit for a topic name in UTF-8 (a two-byte length prefix)."""

_FORBIDDEN = re.compile(r"[+#/\x00-\x1f\x7f-\x9f]")
"""Wildcards, the level separator and control characters (MQTT 3.1.1 section 4.7)."""


class TopicError(ValueError):
    """A name that cannot be one level of an MQTT topic, or a prefix that is not a topic."""


def validate_name(name: str, what: str = "name") -> str:
    """``name`` if it is one usable topic level; a :class:`TopicError` saying why not.

    ``what`` names the thing in the message ("camera name", "device id").
    """
    if not name:
        raise TopicError(f"{what} is empty; it becomes a topic level and must not be")
    bad = _FORBIDDEN.search(name)
    if bad is not None:
        raise TopicError(
            f"{what} {name!r} contains {bad.group()!r} at index {bad.start()}; topic levels "
            "cannot hold '+', '#', '/' or control characters"
        )
    if name != name.strip():
        raise TopicError(f"{what} {name!r} starts or ends with white space")
    return name


def validate_prefix(prefix: str) -> str:
    """``prefix`` if it is one or more valid levels joined by ``/`` and not a ``$`` topic."""
    if prefix.startswith("$"):
        raise TopicError(
            f"topic prefix {prefix!r} starts with '$', which brokers reserve ($SYS); "
            "wildcard subscribers would never see it"
        )
    for level in prefix.split("/"):
        validate_name(level, f"level {level!r} of topic prefix {prefix!r}")
    return prefix


def default_prefix(device_id: str) -> str:
    return f"edged/{validate_name(device_id, 'device id')}"


@dataclass(frozen=True, slots=True)
class Topics:
    """Every topic under one prefix; build with :meth:`for_device`."""

    prefix: str

    def __post_init__(self) -> None:
        self._checked(validate_prefix(self.prefix))

    @classmethod
    def for_device(cls, device_id: str, prefix: str | None = None) -> Topics:
        """The topics of ``device_id``; ``prefix`` defaults to ``edged/<device_id>``."""
        validate_name(device_id, "device id")
        return cls(default_prefix(device_id) if prefix is None else prefix)

    @property
    def availability(self) -> str:
        return f"{self.prefix}/availability"

    @property
    def stats(self) -> str:
        return f"{self.prefix}/stats"

    @property
    def models(self) -> str:
        return f"{self.prefix}/models"

    @property
    def events(self) -> str:
        return f"{self.prefix}/events"

    @property
    def cmd_result(self) -> str:
        return f"{self.prefix}/cmd/{RESULT_VERB}"

    @property
    def command_filter(self) -> str:
        """The subscription that receives every command (and, unavoidably, the replies)."""
        return f"{self.prefix}/cmd/+"

    def detections(self, camera: str) -> str:
        return self._checked(f"{self.prefix}/{validate_name(camera, 'camera name')}/detections")

    def command(self, verb: str) -> str:
        validate_name(verb, "command verb")
        if verb == RESULT_VERB:
            raise TopicError(f"{RESULT_VERB!r} is reserved for replies, not a command verb")
        return self._checked(f"{self.prefix}/cmd/{verb}")

    def verb_of(self, topic: str) -> str | None:
        """The verb of a command topic, or ``None`` for the reply topic or a foreign one."""
        head = f"{self.prefix}/cmd/"
        if not topic.startswith(head):
            return None
        verb = topic.removeprefix(head)
        if not verb or "/" in verb or verb == RESULT_VERB:
            return None
        return verb

    @staticmethod
    def _checked(topic: str) -> str:
        if len(topic.encode()) > MAX_TOPIC_BYTES:
            raise TopicError(f"topic {topic[:64]!r}... is longer than {MAX_TOPIC_BYTES} bytes")
        return topic
