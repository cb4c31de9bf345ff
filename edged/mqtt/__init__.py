"""MQTT: the topic contract v1, its payloads and the publisher that owns the connection.

See ``docs/mqtt.md`` for every topic and ``docs/schemas`` for every payload.
"""

from edged.mqtt.config import BackoffSettings, MqttSettings, TlsSettings
from edged.mqtt.publisher import Command, MqttPublisher, PublisherError
from edged.mqtt.topics import CONTRACT_VERSION, TopicError, Topics, validate_name

__all__ = [
    "CONTRACT_VERSION",
    "BackoffSettings",
    "Command",
    "MqttPublisher",
    "MqttSettings",
    "PublisherError",
    "TlsSettings",
    "TopicError",
    "Topics",
    "validate_name",
]
