"""A broker inside edged, for the demo on a machine that has none (amqtt, in-process)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import structlog

log = structlog.get_logger(component="broker")


async def listening(host: str, port: int) -> bool:
    """Whether something accepts TCP connections at ``host:port`` (within a second)."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


@contextlib.asynccontextmanager
async def embedded_broker(host: str, port: int) -> AsyncIterator[None]:
    """An anonymous MQTT broker on ``host:port`` for as long as the context lasts."""
    from amqtt.broker import Broker  # noqa: PLC0415 - only the demo needs it

    logging.getLogger("amqtt").setLevel(logging.WARNING)
    broker = Broker({
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {
            "allow_anonymous": True}},
    })
    await broker.start()
    log.info("embedded_broker_started", host=host, port=port)
    try:
        yield
    finally:
        await broker.shutdown()
        log.info("embedded_broker_stopped")
