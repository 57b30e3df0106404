"""Topology as data: the committed RabbitMQ definitions match what the code declares."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgline.core.bus.topology import (
    BROKER_LIMIT_MARGIN,
    default_definitions_json,
    service_topology,
)
from imgline.core.config import BusSettings

pytestmark = pytest.mark.unit

DEFINITIONS = Path(__file__).resolve().parents[2] / "deploy" / "rabbitmq" / "definitions.json"


def test_service_queue_is_quorum_with_dead_letter_and_broker_backstop() -> None:
    topo = service_topology(BusSettings(service="tester", delivery_limit=4), ("image.built",))
    dlq, events, queue = topo.queues
    assert queue.name == "imgline.tester"
    assert queue.arguments == {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": "imgline.dlx",
        "x-delivery-limit": 4 + BROKER_LIMIT_MARGIN,
    }
    assert dlq.name == "imgline.dead-letter"
    assert {(b.exchange, b.queue, b.routing_key) for b in topo.bindings} == {
        ("imgline.dlx", "imgline.dead-letter", "#"),
        ("imgline", "imgline.events", "imgline.#"),
        ("imgline", "imgline.tester", "imgline.image.built"),
    }
    # the audit queue: every event, the newest kept when it is full
    assert events.name == "imgline.events"
    assert events.arguments == {
        "x-queue-type": "quorum",
        "x-max-length": 100_000,
        "x-overflow": "drop-head",
    }


def test_deploy_definitions_are_current() -> None:
    assert DEFINITIONS.read_text() == default_definitions_json(), (
        "deploy/rabbitmq/definitions.json is stale: "
        "run 'uv run imgline definitions -o deploy/rabbitmq/definitions.json'"
    )
