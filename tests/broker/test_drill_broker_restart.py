"""Fault drill of the bus itself: the broker stops and starts while a handler works on a
message. The system-level drill, a real builder building across the restart, is
tests/image/test_drill_builder.py; tests/broker/test_bus.py has the reconnect and the
messages still queued across a restart."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

import pika
import pytest
from bushelpers import request, running, wait_for

from imgline.core.broker import PrivateBroker
from imgline.core.bus import Consumer, Publisher, topology
from imgline.core.config import BusSettings
from imgline.schemas.messages import BuildRequestedV1

pytestmark = pytest.mark.broker

Settings = Callable[..., BusSettings]


def test_work_finished_while_the_broker_was_down_is_not_done_again(settings: Settings) -> None:
    """Expected: the handler finishes while the broker is down, so its ack is lost and the
    restarted broker hands the message out again; the consumer recognises it (same message id)
    and acks it without calling the handler: one call per message, nothing left queued."""
    s = settings(reconnect_max_seconds=1)
    calls: Counter[str] = Counter()
    working, gate = threading.Event(), threading.Event()

    def handle(msg: BuildRequestedV1) -> None:
        calls[msg.payload.request_id] += 1
        working.set()
        gate.wait(60)

    with PrivateBroker() as broker:
        conn = pika.BlockingConnection(pika.URLParameters(broker.url))
        topology.declare(conn.channel(), topology.shared_topology(s))  # as the fixture does
        conn.close()
        consumer = Consumer(s, broker.url)
        consumer.on(BuildRequestedV1, handle)
        with running(consumer), Publisher(s, broker.url) as pub:
            pub.publish(BuildRequestedV1.from_payload(request("in-hand"), prefix=s.topic_prefix))
            assert working.wait(30)
            broker.stop()
            gate.set()  # done while the broker is away: the ack has nowhere to go
            broker.start()
            wait_for(lambda: consumer.connects >= 2, 60, "a reconnect")
            # one consumer, prefetch 1, the redelivery queued first: once "after" is handled,
            # the redelivered "in-hand" has been dealt with
            pub.publish(BuildRequestedV1.from_payload(request("after"), prefix=s.topic_prefix))
            wait_for(lambda: calls["after"] == 1, 60, "the message published after")
        conn = pika.BlockingConnection(pika.URLParameters(broker.url))
        try:
            left = conn.channel().queue_declare(s.queue_name, passive=True).method.message_count
        finally:
            conn.close()
    assert calls == {"in-hand": 1, "after": 1}
    assert left == 0
