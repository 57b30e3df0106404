"""Exchanges, queues and bindings as data; ``declare`` applies them to a channel.

The topology has two owners. The shared part (the exchanges, the dead-letter queue, the audit
queue) belongs to the broker's administrator: it comes from the definitions, and no service
may change it. Each service declares only its own queue and the bindings of what it consumes,
which its user's permissions allow (``imgline.core.bus.access``). The same data renders
``deploy/rabbitmq/definitions.json``, so the deployed broker and the code cannot disagree (a
test compares them).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import ChannelClosedByBroker

from imgline.core.bus import access
from imgline.core.bus.connection import ACCESS_REFUSED, NOT_FOUND
from imgline.core.config import BusSettings
from imgline.core.errors import AccessRefusedError, BrokerUnavailableError

#: Which topics each pipeline service consumes. Host updaters declare a queue per host at run
#: time, bound to their own stream (``image.published.<stream>``; ``imgline.updater.agent``).
SERVICE_TOPICS: dict[str, tuple[str, ...]] = {
    r.user: r.consumes for r in access.ROLES if r.consumes and not r.per_host
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
    """``exchanges`` and ``queues`` to create, ``bindings`` to add, and ``expects``: exchanges
    that must already exist (checked, never created, since the service may not configure them)."""

    exchanges: tuple[str, ...]
    queues: tuple[Queue, ...]
    bindings: tuple[Binding, ...]
    expects: tuple[str, ...] = ()


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


def shared_topology(settings: BusSettings) -> Topology:
    """What the administrator declares once for all services: the exchange, the dead-letter
    pair, the retry exchange and the audit queue, bound to every event, so none is lost for
    want of a consumer."""
    dlq = Queue(settings.dead_letter_queue, {"x-queue-type": "quorum"})
    events = events_queue(settings)
    return Topology(
        exchanges=(settings.exchange, settings.dead_letter_exchange, settings.retry_exchange_name),
        queues=(dlq, events),
        bindings=(
            Binding(settings.dead_letter_exchange, dlq.name, "#"),
            Binding(settings.exchange, events.name, settings.routing_key("#")),
        ),
    )


def service_topology(settings: BusSettings, topics: tuple[str, ...]) -> Topology:
    """This service's quorum queue bound to ``topics``, and to the retry exchange under its own
    name (``imgline.core.bus.consumer`` sends failed messages back that way); it expects the
    shared exchanges."""
    queue = Queue(
        settings.queue_name,
        {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": settings.dead_letter_exchange,
            "x-delivery-limit": settings.delivery_limit + BROKER_LIMIT_MARGIN,
        },
    )
    return Topology(
        exchanges=(),
        queues=(queue,),
        bindings=(
            *(Binding(settings.exchange, queue.name, settings.routing_key(t)) for t in topics),
            Binding(settings.retry_exchange_name, queue.name, queue.name),
        ),
        expects=(settings.exchange, settings.dead_letter_exchange, settings.retry_exchange_name),
    )


def declare(channel: BlockingChannel, topology: Topology) -> None:
    """Check what must exist, create the rest idempotently. A missing exchange, a queue that
    exists with other arguments, or a permission the user lacks is a ``BrokerError`` saying so."""
    step = "checking"
    try:
        for name in topology.expects:
            step = f"checking that exchange {name!r} exists"
            channel.exchange_declare(name, exchange_type="topic", passive=True)
        for name in topology.exchanges:
            step = f"declaring exchange {name!r}"
            channel.exchange_declare(name, exchange_type="topic", durable=True)
        for queue in topology.queues:
            step = f"declaring queue {queue.name!r}"
            channel.queue_declare(queue.name, durable=True, arguments=queue.arguments)
        for b in topology.bindings:
            step = f"binding queue {b.queue!r} to {b.exchange!r} with {b.routing_key!r}"
            channel.queue_bind(b.queue, b.exchange, routing_key=b.routing_key)
    except ChannelClosedByBroker as exc:
        if exc.reply_code == ACCESS_REFUSED:
            raise AccessRefusedError(f"the broker refused {step}: {_advice(exc)}") from exc
        raise BrokerUnavailableError(f"the broker refused {step}: {_advice(exc)}") from exc


def _advice(exc: ChannelClosedByBroker) -> str:
    said = f"{exc.reply_code} {exc.reply_text}"
    if exc.reply_code == NOT_FOUND:
        return (
            f"{said}; the shared topology is missing: import deploy/rabbitmq/definitions.json "
            "('imgline definitions' prints them) into the broker"
        )
    if exc.reply_code == ACCESS_REFUSED:
        return (
            f"{said}; this service's user lacks the permission: compare the broker's users with "
            "the output of 'imgline definitions'"
        )
    return (
        f"{said}; a queue or exchange probably exists with other arguments (e.g. another "
        "delivery_limit): align the config or delete it"
    )


def definitions(topologies: list[Topology], vhost: str = access.VHOST) -> dict[str, Any]:
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


def pipeline_definitions(
    settings: BusSettings | None = None,
    passwords: Mapping[str, str] | None = None,
    *,
    admin: bool = False,
) -> dict[str, Any]:
    """Everything a broker needs for the pipeline: the vhost, one user per service with its
    permissions, the shared topology and the pipeline services' queues. ``settings`` gives the
    names (exchange, prefix, queues); its ``service`` is ignored."""
    base = settings or BusSettings(service="imgline")
    topos = [shared_topology(base)]
    for svc, topics in SERVICE_TOPICS.items():
        named = base.model_copy(update={"service": svc, "queue": None})
        topos.append(service_topology(named, topics))
    return {
        **access.account_definitions(base, passwords, admin=admin),
        **definitions(topos),
    }


def default_definitions_json() -> str:
    """The deployed pipeline's definitions with default settings, as committed under deploy/.
    Users carry no password: an operator sets them (docs/security.md)."""
    return json.dumps(pipeline_definitions(), indent=2, sort_keys=True) + "\n"
