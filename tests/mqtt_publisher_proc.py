"""A publisher in a process of its own, for tests that SIGKILL it to see the last will.

``python -m tests.mqtt_publisher_proc HOST PORT DEVICE_ID``: prints ``online`` on stdout
once the publisher is online (its logs go to stderr), then waits to be killed.
"""

from __future__ import annotations

import asyncio
import sys

import structlog

from edged.mqtt import MqttPublisher, MqttSettings


async def main(host: str, port: int, device_id: str) -> None:
    settings = MqttSettings(host=host, port=port, timeout=2)
    async with MqttPublisher(settings, device_id=device_id) as publisher:
        await publisher.wait_online()
        sys.stdout.write("online\n")
        sys.stdout.flush()
        await asyncio.Event().wait()


if __name__ == "__main__":
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
