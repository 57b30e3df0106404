"""The bus consumer's decisions: what each message is settled with, and what is sent on."""

from __future__ import annotations

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
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from imgline.core.bus.policy import Verdict
from imgline.core.errors import BrokerUnavailableError
from imgline.schemas import payloads as p
from imgline.trigger.domain.rules import Seen, load_rules
from imgline.trigger.forgebus import RESULTS, ForgeBus, ForgeBusMetrics
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
        {"queue": "-q"},
        {"amqp_url": "http://broker"},
        {"amqp_url": "amqps://broker"},  # no CA to verify it with
        {"tls_cert": "/etc/cert.pem"},  # no key, and no own URL
        {"unknown": 1},
    ):
        with pytest.raises(ValidationError):
            ForgeBusConfig.model_validate(base | wrong)
