"""The ``[mqtt]`` settings: where the broker is, how to authenticate, how hard to try.

Every field is described because ``edged check`` and the docs show these descriptions; the
password is a ``SecretStr`` so that no log line or repr ever prints it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator

from edged.mqtt.topics import validate_prefix
from edged.runtime.definitions import Strict


class TlsSettings(Strict):
    """TLS to the broker; an empty section means TLS with the system's CA certificates."""

    ca_file: Path | None = Field(
        default=None, description="CA bundle that signed the broker's certificate (PEM)."
    )
    cert_file: Path | None = Field(
        default=None, description="Client certificate (PEM), for brokers that require one."
    )
    key_file: Path | None = Field(
        default=None, description="Private key of cert_file (PEM), if not inside cert_file."
    )
    insecure: bool = Field(
        default=False,
        description="Skip the check that the certificate names the broker's host. The "
        "certificate is still verified against ca_file; for test rigs only.",
    )

    @model_validator(mode="after")
    def _key_needs_cert(self) -> Self:
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("tls.key_file is set but tls.cert_file is not; set both")
        return self


class BackoffSettings(Strict):
    """Reconnect pacing: each failed attempt doubles the wait up to ``max``, with jitter."""

    initial: float = Field(
        default=0.5, gt=0, description="Seconds before the first reconnect attempt."
    )
    max: float = Field(default=30.0, gt=0, description="Longest wait between attempts, in seconds.")

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.max < self.initial:
            raise ValueError(f"backoff.max ({self.max}) is below backoff.initial ({self.initial})")
        return self


class MqttSettings(Strict):
    """The broker connection and the publisher's bounds."""

    host: str = Field(default="localhost", min_length=1, description="Broker host name or IP.")
    port: int = Field(default=1883, ge=1, le=65535, description="Broker TCP port.")
    client_id: str | None = Field(
        default=None,
        min_length=1,
        description="MQTT client identifier; default edged-<device_id>. Two clients with "
        "one id disconnect each other.",
    )
    username: str | None = Field(default=None, description="User name; needs password.")
    password: SecretStr | None = Field(default=None, description="Password; needs username.")
    tls: TlsSettings | None = Field(default=None, description="TLS; absent means plain TCP.")
    qos: Literal[0, 1, 2] = Field(
        default=0,
        description="QoS of per-frame detections. State (availability, stats, models, "
        "command results) always uses QoS 1.",
    )
    keepalive: int = Field(
        default=60, ge=5, le=65535, description="Seconds between keepalive pings."
    )
    timeout: float = Field(
        default=10.0,
        gt=0,
        description="Seconds to wait for the broker to acknowledge a connect, subscribe or "
        "QoS 1/2 publish; also bounds the flush at shutdown.",
    )
    prefix: str | None = Field(
        default=None,
        description="Topic prefix; default edged/<device_id>. Levels may not hold '+', '#' "
        "or be empty.",
    )
    queue_size: int = Field(
        default=64,
        ge=1,
        description="Detection messages waiting to be sent; when full, the oldest is "
        "dropped and counted.",
    )
    state_queue_size: int = Field(
        default=32,
        ge=1,
        description="Command results waiting to be sent; an overflow is counted and logged.",
    )
    incoming_queue_size: int = Field(
        default=64,
        ge=1,
        description="Received messages not yet read by the publisher; beyond it the MQTT "
        "client discards them.",
    )
    command_max_bytes: int = Field(
        default=64 * 1024,
        ge=1,
        description="Largest command payload accepted; a larger one is refused, counted and "
        "answered with ERR_COMMAND_TOO_LARGE.",
    )
    backoff: BackoffSettings = Field(
        default_factory=BackoffSettings, description="Reconnect pacing."
    )

    @field_validator("prefix")
    @classmethod
    def _valid_prefix(cls, prefix: str | None) -> str | None:
        return None if prefix is None else validate_prefix(prefix)

    @model_validator(mode="after")
    def _credentials_paired(self) -> Self:
        if (self.username is None) != (self.password is None):
            given = "username" if self.password is None else "password"
            raise ValueError(f"mqtt.{given} is set without the other; set both or neither")
        return self
