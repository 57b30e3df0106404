"""Whatever a publisher puts in a delivery's properties or body, the consumer's delivery
callback returns and settles the delivery: a message it cannot read is dead-lettered with the
reason, never an exception that would end the service (docs/architecture.md, "Services")."""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import Future

import pika.exceptions
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pika.spec import Basic, BasicProperties

from imgline.core.bus import Consumer, policy
from imgline.core.bus.consumer import ATTEMPTS_HEADER, ROUTING_KEY_HEADER, decode
from imgline.core.config import BusSettings
from imgline.schemas import payloads as p
from imgline.schemas.messages import BuildRequestedV1

pytestmark = pytest.mark.unit

TOPIC = "imgline.build.requested"


def _nested(leaves: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    """``leaves`` and small lists and tables of them, nested."""
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=6,
    )


# what pika can hand over in a header table: strings, numbers, booleans, None, bytes, nested
# lists and tables
header_value = _nested(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary()
)
headers = st.dictionaries(
    st.sampled_from(
        ["fedora_messaging_schema", "fedora_messaging_severity", "x-delivery-count", "sent-at"]
    )
    | st.text(max_size=12),
    header_value,
    max_size=5,
)
encodings = st.none() | st.sampled_from(["utf-8", "x-bogus", "rot13", "utf-32", "", "zlib"])
json_value = _nested(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
)
bodies = st.binary(max_size=64) | st.builds(
    lambda d: json.dumps(d).encode(), st.dictionaries(st.text(max_size=6), json_value)
)


def _valid() -> BuildRequestedV1:
    request = p.BuildRequested(
        request_id="r1", source=p.InlineSource(kickstart="lang en_US.UTF-8\n"), name="node"
    )
    return BuildRequestedV1.from_payload(request)


@given(
    rk=st.text(max_size=40),
    hdrs=st.none() | headers,
    encoding=encodings,
    content_type=st.none() | st.text(max_size=20),
    body=bodies,
)
@settings(max_examples=150, deadline=None)
def test_decode_never_raises(
    rk: str,
    hdrs: dict[str, object] | None,
    encoding: str | None,
    content_type: str | None,
    body: bytes,
) -> None:
    props = BasicProperties(headers=hdrs, content_encoding=encoding, content_type=content_type)
    msg, reason = decode(rk, props, body)
    assert (msg is None) == bool(reason)


def _consumer(handler: Callable[[BuildRequestedV1], None], **settings: float) -> Consumer:
    """Never connected: deliveries go straight to its callback, as pika would hand them."""
    consumer = Consumer(BusSettings(service="svc", **settings), "amqp://127.0.0.1:1/%2F")
    consumer.on(BuildRequestedV1, handler)
    return consumer


def _settle(consumer: Consumer, tag: int) -> tuple[policy.Outcome, str]:
    future = consumer._inflight[tag].future
    assert isinstance(future, Future), "the delivery was left without an outcome"
    return future.result(timeout=10)


@given(
    hdrs=st.none() | headers,
    keep_schema=st.booleans(),
    encoding=encodings,
    body=st.none() | bodies,
)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_delivery_is_settled_and_the_callback_returns(
    hdrs: dict[str, object] | None, keep_schema: bool, encoding: str | None, body: bytes | None
) -> None:
    """Random properties and bodies, some over a real message's headers and body."""
    handled: list[BuildRequestedV1] = []
    consumer = _consumer(handled.append)
    good = _valid()
    if keep_schema:
        hdrs = {**(hdrs or {}), **(good._properties.headers or {})}
    if body is None:
        body = good._encoded_body
    props = BasicProperties(headers=hdrs, content_encoding=encoding, message_id=None)
    consumer._on_delivery(Basic.Deliver(delivery_tag=7, routing_key=TOPIC), props, body)
    outcome, reason = _settle(consumer, 7)
    if outcome is policy.Outcome.INVALID:
        decision = policy.decide(outcome, reason, 1, 5)
        assert decision.verdict is policy.Verdict.DEAD_LETTER and reason
    else:
        assert outcome is policy.Outcome.DONE and len(handled) == 1


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"content_encoding": "x-bogus"}, "undecodable delivery: LookupError: unknown encoding"),
        ({"headers": {"fedora_messaging_schema": ["a", "b"]}}, "undecodable delivery: TypeError"),
        ({"headers": {"x-delivery-count": "9" * 400}}, ""),
    ],
    ids=["unknown encoding", "list as schema header", "odd delivery count"],
)
def test_hostile_properties_of_real_deliveries(change: dict[str, object], expected: str) -> None:
    handled: list[BuildRequestedV1] = []
    consumer = _consumer(handled.append)
    good = _valid()
    props = good._properties
    for name, value in change.items():
        merged = {**(props.headers or {}), **value} if isinstance(value, dict) else value
        setattr(props, name, merged)
    consumer._on_delivery(
        Basic.Deliver(delivery_tag=1, routing_key=good.topic), props, good._encoded_body
    )
    outcome, reason = _settle(consumer, 1)
    if expected:
        assert outcome is policy.Outcome.INVALID and reason.startswith(expected), reason
        assert not handled
    else:
        assert outcome is policy.Outcome.DONE and len(handled) == 1


class _Channel:
    """Records how deliveries were settled and what was published; ``refuse`` makes every
    publish fail as an unroutable one would."""

    is_open = True

    def __init__(self, refuse: bool = False) -> None:
        self.calls: list[tuple[str, int, bool]] = []
        self.published: list[tuple[str, str, BasicProperties, bool]] = []
        self.refuse = refuse

    def basic_ack(self, tag: int) -> None:
        self.calls.append(("ack", tag, False))

    def basic_reject(self, tag: int, requeue: bool = True) -> None:
        self.calls.append(("reject", tag, requeue))

    def basic_nack(self, tag: int, requeue: bool = True) -> None:
        self.calls.append(("nack", tag, requeue))

    def basic_publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: BasicProperties,
        mandatory: bool = False,
    ) -> None:
        if self.refuse:
            raise pika.exceptions.UnroutableError([])
        self.published.append((exchange, routing_key, properties, mandatory))


def _fail(_msg: BuildRequestedV1) -> None:
    raise RuntimeError("flaky mirror")


def _deliver(
    consumer: Consumer,
    tag: int,
    exchange: str = "imgline",
    headers: dict[str, object] | None = None,
) -> None:
    good = _valid()
    props = good._properties
    props.headers = {**(props.headers or {}), **(headers or {})}
    rk = consumer.settings.queue_name if exchange.endswith(".retry") else good.topic
    consumer._on_delivery(
        Basic.Deliver(delivery_tag=tag, exchange=exchange, routing_key=rk),
        props,
        good._encoded_body,
    )


def test_a_failed_try_goes_back_to_its_own_queue_counted_in_a_header() -> None:
    """The count in the message itself holds on every RabbitMQ version, whether or not the
    broker counts requeues toward x-delivery-count (4.3 counts only basic.reject)."""
    consumer = _consumer(_fail, retry_delay_seconds=0)
    channel = _Channel()
    consumer._side = channel  # type: ignore[assignment]
    _deliver(consumer, 1, headers={"x-delivery-count": 1})
    _settle(consumer, 1)
    consumer._finish_done(channel)  # type: ignore[arg-type]
    assert channel.calls == [("ack", 1, False)]
    [(exchange, key, props, mandatory)] = channel.published
    assert (exchange, key, mandatory) == ("imgline.retry", "imgline.svc", True)
    assert props.headers[ATTEMPTS_HEADER] == 2
    assert props.headers[ROUTING_KEY_HEADER] == TOPIC
    assert "x-delivery-count" not in props.headers
    assert props.headers["fedora_messaging_schema"] == "imgline.build.requested.v1"

    # the copy comes back through the retry exchange: its third try, under its own topic
    handled: list[BuildRequestedV1] = []
    again = _consumer(handled.append)
    _deliver(again, 2, "imgline.retry", dict(props.headers))
    assert again._inflight[2].attempt == 3
    assert _settle(again, 2) == (policy.Outcome.DONE, "")
    assert handled[0].topic == TOPIC


def test_only_the_retry_exchange_carries_a_believed_attempt_count() -> None:
    # anyone who may publish the topic could set the header; only the service's own user can
    # send through the retry exchange to its queue
    consumer = _consumer(lambda _m: None)
    _deliver(consumer, 1, headers={ATTEMPTS_HEADER: 99, ROUTING_KEY_HEADER: "imgline.x"})
    assert consumer._inflight[1].attempt == 1
    assert consumer._inflight[1].routing_key == TOPIC


def test_the_last_try_is_dead_lettered_with_its_own_topic() -> None:
    consumer = _consumer(_fail, retry_delay_seconds=0, delivery_limit=3)
    channel = _Channel()
    consumer._side = channel  # type: ignore[assignment]
    _deliver(consumer, 1, "imgline.retry", {ATTEMPTS_HEADER: 2, ROUTING_KEY_HEADER: TOPIC})
    _settle(consumer, 1)
    consumer._finish_done(channel)  # type: ignore[arg-type]
    [(exchange, key, props, _)] = channel.published
    assert (exchange, key) == ("imgline.dlx", TOPIC)
    assert props.headers[ATTEMPTS_HEADER] == 3
    assert channel.calls == [("ack", 1, False)]


def test_a_refused_send_back_is_rejected_so_the_broker_counts_it() -> None:
    """RabbitMQ 4.3 counts only basic.reject toward a quorum queue's delivery limit; a message
    handed back unprocessed (the consumer is stopping) is nacked and does not use up a try."""
    consumer = _consumer(_fail, retry_delay_seconds=0)
    channel = _Channel(refuse=True)
    consumer._side = channel  # type: ignore[assignment]
    _deliver(consumer, 1)
    _settle(consumer, 1)
    consumer.stop()
    _deliver(consumer, 2)
    consumer._finish_done(channel)  # type: ignore[arg-type]
    assert sorted(channel.calls) == [("nack", 2, True), ("reject", 1, True)]
