"""Exchanges, queues and bindings as data; ``declare`` applies them to a channel.

The same data renders ``deploy/rabbitmq/definitions.json``, so the deployed broker and the
code cannot disagree (a test compares them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import ChannelClosedByBroker

from imgline.core.config import BusSettings
from imgline.core.errors import BrokerError

#: Which topics each pipeline service consumes. Host updaters declare a queue per host at run
#: time, bound to their own stream (``image.published.<stream>``; ``imgline.updater.agent``).
SERVICE_TOPICS: dict[str, tuple[str, ...]] = {
    "builder": ("build.requested",),
    "tester": ("image.built",),
    "publisher": ("image.tested",),
}

#: The broker dead-letters on its own after this many extra deliveries beyond ours: a backstop
#: for messages that crash the consumer process before it can count them.
BROKER_LIMIT_MARGIN = 2


@dataclass(frozen=True)
class Queue:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Binding:
    exchange: str
    queue: str
    routing_key: str


@dataclass(frozen=True)
class Topology:
    exchanges: tuple[str, ...]
    queues: tuple[Queue, ...]
    bindings: tuple[Binding, ...]


def events_queue(settings: BusSettings) -> Queue:
    """Every event also lands here, so none is lost for want of a consumer, and status views
    and dashboards read the pipeline's history; the oldest events go first when it is full."""
    return Queue(
        settings.events_queue_name,
        {
            "x-queue-type": "quorum",
            "x-max-length": settings.events_max_length,
            "x-overflow": "drop-head",
        },
    )


def service_topology(settings: BusSettings, topics: tuple[str, ...]) -> Topology:
    """The exchange, the dead-letter pair, the audit queue, and this service's quorum queue
    bound to ``topics``. Every service declares the audit queue, so events are routable (and
    published with ``mandatory``) as soon as any service has started."""
    dlq = Queue(settings.dead_letter_queue, {"x-queue-type": "quorum"})
    events = events_queue(settings)
    queue = Queue(
        settings.queue_name,
        {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": settings.dead_letter_exchange,
            "x-delivery-limit": settings.delivery_limit + BROKER_LIMIT_MARGIN,
        },
    )
    bindings = [
        Binding(settings.dead_letter_exchange, dlq.name, "#"),
        Binding(settings.exchange, events.name, settings.routing_key("#")),
    ]
    bindings += [Binding(settings.exchange, queue.name, settings.routing_key(t)) for t in topics]
    return Topology(
        exchanges=(settings.exchange, settings.dead_letter_exchange),
        queues=(dlq, events, queue),
        bindings=tuple(bindings),
    )


def declare(channel: BlockingChannel, topology: Topology) -> None:
    """Create everything idempotently; a queue that exists with other arguments is an error."""
    try:
        for name in topology.exchanges:
            channel.exchange_declare(name, exchange_type="topic", durable=True)
        for queue in topology.queues:
            channel.queue_declare(queue.name, durable=True, arguments=queue.arguments)
        for b in topology.bindings:
            channel.queue_bind(b.queue, b.exchange, routing_key=b.routing_key)
    except ChannelClosedByBroker as exc:
        raise BrokerError(
            f"the broker refused the topology ({exc.reply_code} {exc.reply_text}); a queue or "
            "exchange probably exists with other arguments (e.g. another delivery_limit): "
            "align the config or delete it"
        ) from exc


def definitions(topologies: list[Topology], vhost: str = "/") -> dict[str, Any]:
    """RabbitMQ's definitions format (``rabbitmqctl import_definitions``) for ``topologies``."""
    exchanges: dict[str, dict[str, Any]] = {}
    queues: dict[str, dict[str, Any]] = {}
    bindings: dict[tuple[str, str, str], dict[str, Any]] = {}
    for topo in topologies:
        for name in topo.exchanges:
            exchanges[name] = {
                "name": name,
                "vhost": vhost,
                "type": "topic",
                "durable": True,
                "auto_delete": False,
                "internal": False,
                "arguments": {},
            }
        for q in topo.queues:
            queues[q.name] = {
                "name": q.name,
                "vhost": vhost,
                "durable": True,
                "auto_delete": False,
                "arguments": dict(q.arguments),
            }
        for b in topo.bindings:
            bindings[(b.exchange, b.queue, b.routing_key)] = {
                "source": b.exchange,
                "vhost": vhost,
                "destination": b.queue,
                "destination_type": "queue",
                "routing_key": b.routing_key,
                "arguments": {},
            }
    return {
        "exchanges": [exchanges[k] for k in sorted(exchanges)],
        "queues": [queues[k] for k in sorted(queues)],
        "bindings": [bindings[k] for k in sorted(bindings)],
    }


def default_definitions_json() -> str:
    """The deployed pipeline's topology with default settings, as committed under deploy/."""
    topos = [
        service_topology(BusSettings(service=svc), topics) for svc, topics in SERVICE_TOPICS.items()
    ]
    return json.dumps(definitions(topos), indent=2, sort_keys=True) + "\n"
