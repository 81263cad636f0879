"""A gateway-like process for tests/loopback/test_mqtt.py: runs MqttPublisher until killed.

Usage: ``python mqtt_publisher_process.py BROKER_URL PREFIX NODE``. Prints ``connected``
on stdout once the publisher is connected (online status published), then publishes one
presence event and waits forever, so that a test can ``kill -9`` it and watch the broker
publish the last will.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime

from gateway.events.mqtt import MqttPublisher, MqttSettings
from gateway.events.ports import Topics
from gateway.events.schema import presence_payload
from gateway.logs import configure_logging


async def main(url: str, prefix: str, node: str) -> None:
    configure_logging("json", "WARNING")  # logs to stderr; stdout carries "connected"
    topics = Topics(prefix, node)
    async with MqttPublisher(MqttSettings(url), topics) as publisher:
        await publisher.wait_connected()
        publisher.publish(
            topics.presence_suffix("agent-1"),
            presence_payload(
                agent="agent-1",
                status="Available",
                previous=None,
                reason="registered",
                node=node,
                timestamp=datetime.now(UTC),
            ),
            retain=True,
        )
        print("connected", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
