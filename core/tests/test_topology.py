"""Topology as data: the committed RabbitMQ definitions match what the code declares."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgline.core.bus.topology import (
    BROKER_LIMIT_MARGIN,
    default_definitions_json,
    pipeline_definitions,
    service_topology,
    shared_topology,
)
from imgline.core.config import BusSettings

pytestmark = pytest.mark.unit

DEFINITIONS = Path(__file__).resolve().parents[2] / "deploy" / "rabbitmq" / "definitions.json"


def test_service_declares_only_its_queue_and_expects_the_shared_exchanges() -> None:
    topo = service_topology(BusSettings(service="tester", delivery_limit=4), ("image.built",))
    [queue] = topo.queues
    assert queue.name == "imgline.tester"
    assert queue.arguments == {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": "imgline.dlx",
        "x-delivery-limit": 4 + BROKER_LIMIT_MARGIN,
    }
    assert topo.exchanges == ()  # a service may not configure them: it only checks they exist
    assert topo.expects == ("imgline", "imgline.dlx", "imgline.retry")
    assert [(b.exchange, b.queue, b.routing_key) for b in topo.bindings] == [
        ("imgline", "imgline.tester", "imgline.image.built"),
        # failed tries come back to this queue only, keyed by its name
        ("imgline.retry", "imgline.tester", "imgline.tester"),
    ]


def test_shared_topology_is_the_exchanges_dead_letters_and_audit_queue() -> None:
    topo = shared_topology(BusSettings(service="any"))
    assert topo.exchanges == ("imgline", "imgline.dlx", "imgline.retry")
    dlq, events = topo.queues
    assert dlq.name == "imgline.dead-letter"
    assert {(b.exchange, b.queue, b.routing_key) for b in topo.bindings} == {
        ("imgline.dlx", "imgline.dead-letter", "#"),
        ("imgline", "imgline.events", "imgline.#"),
    }
    # the audit queue: every event, the newest kept when it is full
    assert events.name == "imgline.events"
    assert events.arguments == {
        "x-queue-type": "quorum",
        "x-max-length": 100_000,
        "x-overflow": "drop-head",
    }


def test_definitions_carry_vhost_users_and_every_queue_but_no_password() -> None:
    defs = pipeline_definitions()
    assert [v["name"] for v in defs["vhosts"]] == ["imgline"]
    assert {u["name"] for u in defs["users"]} == {
        "trigger",
        "builder",
        "tester",
        "publisher",
        "updater",
        "ledger",
    }
    assert all(u["password_hash"] == "" and u["tags"] == [] for u in defs["users"])
    assert {q["name"] for q in defs["queues"]} == {
        "imgline.builder",
        "imgline.tester",
        "imgline.publisher",
        "imgline.ledger",
        "imgline.dead-letter",
        "imgline.events",
    }
    assert {e["vhost"] for e in defs["exchanges"] + defs["queues"] + defs["bindings"]} == {
        "imgline"
    }


def test_deploy_definitions_are_current() -> None:
    assert DEFINITIONS.read_text() == default_definitions_json(), (
        "deploy/rabbitmq/definitions.json is stale: run 'make definitions'"
    )
