"""The bus consumer's decisions: what each message is settled with, and what is sent on."""

from __future__ import annotations

from typing import Any

import pytest
from forgemessages import (
    END,
    MESSAGE_ID,
    PAGURE_TOPIC,
    encoded,
    fm_headers,
    pagure_project,
    pagure_receive,
)
from pika.spec import Basic, BasicProperties
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from imgline.core.bus.policy import Verdict
from imgline.core.config import BusSettings
from imgline.core.errors import BrokerUnavailableError
from imgline.schemas import payloads as p
from imgline.trigger.adapters.forgebus import ForgeBusConsumer, forge_settings, forge_topology
from imgline.trigger.domain.rules import Seen, load_rules
from imgline.trigger.forgebus import RESULTS, ForgeBus, ForgeBusMetrics, Outcome
from imgline.trigger.settings import ForgeBusConfig, TriggerConfig

pytestmark = pytest.mark.unit

RULES = load_rules(
    """
[[rule]]
repository = "fedora-iot/*"
forge = "pagure"
url = "https://pagure.io/fedora-iot/node-os.git"
paths = ["kickstarts/**"]
name = "node"
kickstart_path = "kickstarts/node.ks"
"""
)
HEADERS = fm_headers("pagure.git.receive")


def consumer(
    sent: list[p.BuildRequested], fail: bool = False, registry: CollectorRegistry | None = None
) -> ForgeBus:
    def publish(req: p.BuildRequested) -> None:
        if fail:
            raise BrokerUnavailableError("broker down")
        sent.append(req)

    metrics = ForgeBusMetrics(registry) if registry is not None else None
    return ForgeBus("pagure", RULES, Seen(100, 3600, lambda: 0.0), publish, metrics=metrics)


def test_a_push_is_requested_once_and_a_redelivery_is_acked_without_another() -> None:
    sent: list[p.BuildRequested] = []
    bus = consumer(sent)
    body = encoded(pagure_receive())
    first = bus.handle(PAGURE_TOPIC, HEADERS, body, MESSAGE_ID)
    again = bus.handle(PAGURE_TOPIC, HEADERS, body, MESSAGE_ID)
    assert (first.verdict, first.result) == (Verdict.ACK, "requested")
    assert (again.verdict, again.result) == (Verdict.ACK, "repeated")
    [req] = sent
    assert req.source.kind == "git" and req.source.commit == END and req.source.ref == "main"
    assert req.request_id == f"pagure-{MESSAGE_ID}-rule0"


def test_a_push_no_rule_wants_is_acked() -> None:
    sent: list[p.BuildRequested] = []
    other = pagure_receive(repo=pagure_project(fullname="someone/else"))
    outcome = consumer(sent).handle(PAGURE_TOPIC, HEADERS, encoded(other), MESSAGE_ID)
    assert (outcome.verdict, outcome.result, sent) == (Verdict.ACK, "no_build", [])


def test_a_tag_is_acked_with_nothing_to_build() -> None:
    tag = encoded(pagure_receive(branch="refs/tags/v1"))
    outcome = consumer([]).handle(PAGURE_TOPIC, HEADERS, tag, MESSAGE_ID)
    assert (outcome.verdict, outcome.result) == (Verdict.ACK, "no_build")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not JSON"),
        (encoded(pagure_receive(branch="--upload-pack=x")), "branch name"),
        (encoded(pagure_receive(end_commit="HEAD")), "end_commit"),
        (b"x" * 2_000_000, "over max_body_bytes"),
    ],
)
def test_a_malformed_message_is_dead_lettered_with_the_reason(body: bytes, reason: str) -> None:
    sent: list[p.BuildRequested] = []
    outcome = consumer(sent).handle(PAGURE_TOPIC, HEADERS, body, MESSAGE_ID)
    assert (outcome.verdict, outcome.result) == (Verdict.DEAD_LETTER, "invalid")
    assert reason in outcome.reason and sent == []


def test_a_bus_that_does_not_take_the_request_sends_the_message_back_and_forgets_it() -> None:
    sent: list[p.BuildRequested] = []
    body = encoded(pagure_receive())
    bus = consumer(sent, fail=True)
    outcome = bus.handle(PAGURE_TOPIC, HEADERS, body, MESSAGE_ID)
    assert (outcome.verdict, outcome.result) == (Verdict.REQUEUE, "bus_unavailable")
    assert "broker down" in outcome.reason
    bus.publish = sent.append  # the bus is back: the redelivery gets through
    assert bus.handle(PAGURE_TOPIC, HEADERS, body, MESSAGE_ID).result == "requested"
    assert len(sent) == 1


def test_every_result_is_counted_under_a_known_label() -> None:
    registry = CollectorRegistry()
    bus = consumer([], registry=registry)
    bus.handle(PAGURE_TOPIC, HEADERS, encoded(pagure_receive()), MESSAGE_ID)
    bus.handle(PAGURE_TOPIC, HEADERS, b"[]", MESSAGE_ID)
    for result in RESULTS:
        value = registry.get_sample_value(
            "imgline_forge_messages_total", {"format": "pagure", "result": result}
        )
        assert value == {"requested": 1.0, "invalid": 1.0}.get(result, None)


def test_the_forge_bus_is_off_unless_configured_and_checked_when_it_is() -> None:
    assert TriggerConfig().forge_bus is None
    config = TriggerConfig.model_validate(
        {
            "forge_bus": {
                "format": "pagure",
                "exchange": "amq.topic",
                "queue": "imgline.trigger.pagure",
                "routing_keys": ["io.pagure.prod.pagure.git.receive"],
            }
        }
    )
    assert config.forge_bus is not None and config.forge_bus.amqp_url is None
    base = {"format": "pagure", "exchange": "x", "queue": "q", "routing_keys": ["a.#"]}
    for wrong in (
        {"format": "svn"},
        {"routing_keys": []},
        {"routing_keys": ["a b"]},
        {"routing_keys": ["a.b\n"]},
        {"queue": "-q"},
        {"amqp_url": "http://broker"},
        {"amqp_url": "amqps://broker"},  # no CA to verify it with
        {"tls_cert": "/etc/cert.pem"},  # no key, and no own URL
        {"unknown": 1},
    ):
        with pytest.raises(ValidationError):
            ForgeBusConfig.model_validate(base | wrong)


class FakeChannel:
    """Records how deliveries are settled (the broker test settles them on RabbitMQ)."""

    def __init__(self) -> None:
        self.settled: list[tuple[str, int, bool]] = []

    def basic_ack(self, tag: int) -> None:
        self.settled.append(("ack", tag, False))

    def basic_reject(self, tag: int, requeue: bool) -> None:
        self.settled.append(("reject", tag, requeue))

    def basic_nack(self, tag: int, requeue: bool) -> None:
        self.settled.append(("nack", tag, requeue))


def deliver(
    handle: Any, config: dict[str, Any] | None = None, stopping: bool = False
) -> list[tuple[str, int, bool]]:
    bus = ForgeBusConfig.model_validate(
        {"format": "pagure", "exchange": "forge", "queue": "q", "routing_keys": ["#"]}
        | (config or {})
    )
    settings = BusSettings(service="trigger", amqp_url="amqp://localhost/imgline")
    consumer = ForgeBusConsumer(bus, settings, handle, retry_seconds=0)
    if stopping:
        consumer.stop()
    channel = FakeChannel()
    method = Basic.Deliver(delivery_tag=7, routing_key=PAGURE_TOPIC, exchange="forge")
    props = BasicProperties(message_id=MESSAGE_ID, headers=HEADERS)
    consumer._on_message(None, channel, method, props, b"{}")  # type: ignore[arg-type]
    return channel.settled


def test_the_consumer_settles_each_verdict() -> None:
    def outcome(verdict: Verdict) -> Any:
        return lambda *_: Outcome(verdict, "x", "why")

    assert deliver(outcome(Verdict.ACK)) == [("ack", 7, False)]
    assert deliver(outcome(Verdict.REQUEUE)) == [("reject", 7, True)]
    # no dead-letter exchange configured: rejected without requeue (and logged with its body)
    assert deliver(outcome(Verdict.DEAD_LETTER)) == [("reject", 7, False)]
    # arrived while stopping: handed back untouched
    assert deliver(outcome(Verdict.ACK), stopping=True) == [("nack", 7, True)]


def test_a_decision_that_crashes_dead_letters_the_message_and_the_consumer_lives_on() -> None:
    def crash(*_: object) -> Outcome:
        raise RuntimeError("a parser bug")

    assert deliver(crash) == [("reject", 7, False)]


def test_the_forge_queue_is_bound_to_each_key_and_dead_letters_where_configured() -> None:
    bus = ForgeBusConfig(
        format="distgit",
        exchange="amq.topic",
        queue="imgline.trigger.distgit",
        routing_keys=("org.fedoraproject.prod.git.receive", "org.fedoraproject.stg.git.receive"),
        dead_letter_exchange="forge.dlx",
    )
    topo = forge_topology(bus)
    [queue] = topo.queues
    assert queue.arguments["x-dead-letter-exchange"] == "forge.dlx"
    assert [b.routing_key for b in topo.bindings] == list(bus.routing_keys)
    assert topo.expects == ("amq.topic", "forge.dlx") and topo.exchanges == ()
    settings = BusSettings(service="trigger", amqp_url="amqp://pipeline/imgline")
    assert forge_settings(bus, settings) == (settings, "amqp://pipeline/imgline")
    own = bus.model_copy(update={"amqp_url": "amqp://reader@forge-broker/forge"})
    assert forge_settings(own, settings)[1] == "amqp://reader@forge-broker/forge"
