"""The bus harness against a real RabbitMQ node: delivery, retries, dead-letters, shutdown."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pika
import pytest
from bushelpers import queue_depth, request, running, take_all, wait_for

from imgline.core.bus import BusMetrics, Consumer, Publisher, topology
from imgline.core.bus.consumer import ATTEMPTS_HEADER, QUEUE_HEADER, REASON_HEADER
from imgline.core.config import BusSettings
from imgline.core.errors import PermanentError, TransientError, UnroutableError
from imgline.schemas.messages import BuildRequestedV1

pytestmark = pytest.mark.broker

APP = Path(__file__).with_name("consumer_app.py")
Settings = Callable[..., BusSettings]


def publish(s: BusSettings, url: str, *request_ids: str) -> None:
    with Publisher(s, url) as pub:
        for rid in request_ids:
            pub.publish(BuildRequestedV1.from_payload(request(rid), prefix=s.topic_prefix))


def value(metrics: BusMetrics, name: str, **labels: str) -> float:
    got = metrics.registry.get_sample_value(name, labels)
    return 0.0 if got is None else got


def test_publish_then_consume_delivers_typed_payloads(amqp_url: str, settings: Settings) -> None:
    s = settings()
    got: list[BuildRequestedV1] = []
    consumer = Consumer(s, amqp_url)
    consumer.on(BuildRequestedV1, got.append)
    with running(consumer):
        publish(s, amqp_url, "r1", "r2", "r3")
        wait_for(lambda: len(got) == 3, what="3 messages")
    assert [m.payload.request_id for m in got] == ["r1", "r2", "r3"]
    assert got[0].payload == request("r1").model_copy(
        update={"emitted_at": got[0].payload.emitted_at}
    )
    labels = {"service": "svc", "topic": "imgline.build.requested"}
    assert value(consumer.metrics, "imgline_messages_consumed_total", **labels) == 3
    assert value(consumer.metrics, "imgline_handler_seconds_count", **labels) == 3
    assert queue_depth(amqp_url, s.queue_name) == 0


def test_a_publisher_idle_past_its_heartbeat_publishes_without_a_failed_attempt(
    amqp_url: str, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A service publishes minutes apart: its blocking connection sends no heartbeats in
    between and the broker drops it. The next publish goes out on a fresh connection at once,
    without a failed attempt, a warning and a back-off first."""
    s = settings(heartbeat_seconds=1)
    with pika.BlockingConnection(pika.URLParameters(amqp_url)) as conn:
        ch = conn.channel()
        topology.declare(ch, topology.service_topology(s, ("build.requested",)))
    with Publisher(s, amqp_url) as pub:
        pub.publish(BuildRequestedV1.from_payload(request("before"), prefix=s.topic_prefix))
        time.sleep(4)  # several heartbeat intervals: the broker has closed the connection
        with caplog.at_level(logging.WARNING, logger="imgline.core.bus.publisher"):
            pub.publish(BuildRequestedV1.from_payload(request("after"), prefix=s.topic_prefix))
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    assert queue_depth(amqp_url, s.queue_name) == 2


def test_poison_message_is_dead_lettered_after_the_limit_while_serving_others(
    amqp_url: str, settings: Settings
) -> None:
    s = settings(delivery_limit=3)
    calls: Counter[str] = Counter()

    def handle(msg: BuildRequestedV1) -> None:
        rid = msg.payload.request_id
        calls[rid] += 1
        if rid == "poison":
            raise RuntimeError("cannot parse the kickstart of doom")

    consumer = Consumer(s, amqp_url)
    consumer.on(BuildRequestedV1, handle)
    with running(consumer):
        publish(s, amqp_url, "poison", "good-1", "good-2")
        wait_for(lambda: queue_depth(amqp_url, s.dead_letter_queue) == 1, what="dead letter")
        wait_for(lambda: calls["good-2"] == 1, what="good messages")
    assert calls == Counter({"poison": 3, "good-1": 1, "good-2": 1})
    [(headers, body)] = take_all(amqp_url, s.dead_letter_queue)
    assert json.loads(body)["request_id"] == "poison"
    assert "gave up after 3 attempts (limit 3)" in headers[REASON_HEADER]
    assert "RuntimeError: cannot parse the kickstart of doom" in headers[REASON_HEADER]
    assert headers[QUEUE_HEADER] == s.queue_name
    assert headers[ATTEMPTS_HEADER] == 3
    labels = {"service": "svc", "topic": "imgline.build.requested"}
    assert value(consumer.metrics, "imgline_messages_failed_total", kind="crashed", **labels) == 3
    assert (
        value(consumer.metrics, "imgline_messages_dead_lettered_total", outcome="crashed", **labels)
        == 1
    )


def test_invalid_message_is_dead_lettered_naming_the_field(
    amqp_url: str, settings: Settings
) -> None:
    s = settings()
    got: list[str] = []
    consumer = Consumer(s, amqp_url)
    consumer.on(BuildRequestedV1, lambda m: got.append(m.payload.request_id))
    with running(consumer):
        bad = BuildRequestedV1.from_payload(request("bad"))
        bad.body["stream"] = "Not Valid"  # after the fact: the publisher did not validate
        with Publisher(s, amqp_url) as pub:
            pub.publish_raw(s.exchange, bad.topic, bad._encoded_body, bad._properties)
            garbage = BuildRequestedV1.from_payload(request("x"))
            pub.publish_raw(s.exchange, garbage.topic, b"{not json", garbage._properties)
            # properties fedora-messaging does not turn into a ValidationError: each of these
            # used to raise out of the delivery callback and end the consumer
            for change in ({"content_encoding": "x-bogus"}, {"fedora_messaging_schema": [1]}):
                odd = BuildRequestedV1.from_payload(request("odd"))
                props = odd._properties
                if "content_encoding" in change:
                    props.content_encoding = change["content_encoding"]
                else:
                    props.headers = {**(props.headers or {}), **change}
                pub.publish_raw(s.exchange, odd.topic, odd._encoded_body, props)
        publish(s, amqp_url, "after")
        wait_for(lambda: got == ["after"], what="the good message after the bad ones")
        wait_for(lambda: queue_depth(amqp_url, s.dead_letter_queue) == 4, what="4 dead letters")
    reasons = sorted(h[REASON_HEADER] for h, _ in take_all(amqp_url, s.dead_letter_queue))
    assert consumer.connects == 1  # served all along, never restarted
    assert any("LookupError: unknown encoding: x-bogus" in r for r in reasons), reasons
    assert any("undecodable delivery: TypeError" in r for r in reasons), reasons
    assert any(
        r.startswith("invalid message: build.requested is invalid: stream:") for r in reasons
    )
    assert any(
        r.startswith("invalid message: body is not a JSON document: Expecting") for r in reasons
    ), reasons


def test_every_event_reaches_the_audit_queue_and_an_unroutable_one_is_an_error(
    amqp_url: str, settings: Settings
) -> None:
    """Events are published ``mandatory``: one that no queue is bound for is returned and
    raises, instead of being confirmed and dropped; a handler that emits one is retried."""
    s = settings(delivery_limit=2, retry_delay_seconds=0)
    calls: Counter[str] = Counter()
    nowhere = f"{s.exchange}.nowhere"

    def handle(msg: BuildRequestedV1) -> None:
        calls[msg.payload.request_id] += 1
        if msg.payload.request_id == "emits-to-nowhere":
            # an exchange with no queue bound: the event has nowhere to go
            consumer.publisher.publish(BuildRequestedV1.from_payload(request("lost")), nowhere)

    consumer = Consumer(s, amqp_url)
    consumer.on(BuildRequestedV1, handle)
    with running(consumer):
        with Publisher(s, amqp_url) as pub:
            pub.publish(BuildRequestedV1.from_payload(request("seen"), prefix=s.topic_prefix))
            conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
            conn.channel().exchange_declare(nowhere, exchange_type="topic", durable=True)
            conn.close()
            with pytest.raises(UnroutableError, match=r"no queue is bound for imgline\.build"):
                pub.publish(BuildRequestedV1.from_payload(request("x")), nowhere)
            pub.publish(
                BuildRequestedV1.from_payload(request("emits-to-nowhere"), prefix=s.topic_prefix)
            )
        wait_for(lambda: queue_depth(amqp_url, s.dead_letter_queue) == 1, what="dead letter")
    assert calls == Counter({"seen": 1, "emits-to-nowhere": 2})  # retried: transient
    [(headers, _body)] = take_all(amqp_url, s.dead_letter_queue)
    assert "no queue is bound for imgline.build.requested" in headers[REASON_HEADER]
    audit = [json.loads(body)["request_id"] for _h, body in take_all(amqp_url, s.events_queue_name)]
    assert audit == ["seen", "emits-to-nowhere"]


def test_permanent_error_dead_letters_at_once_and_transient_retries(
    amqp_url: str, settings: Settings
) -> None:
    s = settings(delivery_limit=5)
    calls: Counter[str] = Counter()

    def handle(msg: BuildRequestedV1) -> None:
        rid = msg.payload.request_id
        calls[rid] += 1
        if rid == "perm":
            raise PermanentError("kickstart line 3: unknown command 'partt'")
        if rid == "flaky" and calls[rid] < 3:
            raise TransientError("mirror timed out")

    consumer = Consumer(s, amqp_url)
    consumer.on(BuildRequestedV1, handle)
    with running(consumer):
        publish(s, amqp_url, "perm", "flaky")
        wait_for(lambda: calls["flaky"] == 3, what="flaky to succeed")
        wait_for(lambda: queue_depth(amqp_url, s.dead_letter_queue) == 1, what="dead letter")
    assert calls == Counter({"perm": 1, "flaky": 3})
    [(headers, _)] = take_all(amqp_url, s.dead_letter_queue)
    assert headers[REASON_HEADER] == "permanent failure: kickstart line 3: unknown command 'partt'"
    assert headers[ATTEMPTS_HEADER] == 1


def start_app(url: str, s: BusSettings, out: Path, slow: float) -> subprocess.Popen[bytes]:
    env = dict(os.environ, URL=url, SETTINGS=s.model_dump_json(), OUT=str(out), SLOW=str(slow))
    return subprocess.Popen([sys.executable, str(APP)], env=env)


def lines(out: Path) -> list[str]:
    return out.read_text().splitlines() if out.exists() else []


def test_consumer_killed_mid_message_loses_nothing(
    amqp_url: str, settings: Settings, tmp_path: Path
) -> None:
    s = settings()
    out = tmp_path / "out.txt"
    first = start_app(amqp_url, s, out, slow=60)
    try:
        wait_for(lambda: _declared(amqp_url, s), what="queue")
        publish(s, amqp_url, "precious")
        wait_for(lambda: any(x.startswith("started precious") for x in lines(out)), what="start")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    got: list[tuple[str, int]] = []
    consumer = Consumer(s, amqp_url)
    consumer.on(BuildRequestedV1, lambda m: got.append((m.payload.request_id, 0)))
    with running(consumer):
        wait_for(lambda: len(got) == 1, what="redelivery to the second consumer")
    assert got == [("precious", 0)]
    assert not any(x.startswith("done") for x in lines(out))


def _declared(url: str, s: BusSettings) -> bool:
    """Declare the service's topology from here, so publishing cannot race the app's start."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        topology.declare(conn.channel(), topology.shared_topology(s))
        topology.declare(conn.channel(), topology.service_topology(s, ("build.requested",)))
    finally:
        conn.close()
    return True


def test_sigterm_finishes_the_message_in_hand(
    amqp_url: str, settings: Settings, tmp_path: Path
) -> None:
    s = settings()
    out = tmp_path / "out.txt"
    app = start_app(amqp_url, s, out, slow=3)
    try:
        wait_for(lambda: _declared(amqp_url, s), what="queue")
        publish(s, amqp_url, "in-hand", "waiting")
        wait_for(lambda: any(x.startswith("started in-hand") for x in lines(out)), what="start")
        app.send_signal(signal.SIGTERM)
        assert app.wait(30) == 0
    finally:
        app.kill()
    assert [x.split()[:2] for x in lines(out)] == [["started", "in-hand"], ["done", "in-hand"]]
    # the finished one was acked; the one not yet started stays queued for the next consumer
    wait_for(lambda: queue_depth(amqp_url, s.queue_name) == 1, what="1 message left")


def test_sigterm_past_the_grace_period_leaves_the_message_queued(
    amqp_url: str, settings: Settings, tmp_path: Path
) -> None:
    s = settings(shutdown_grace_seconds=1)
    out = tmp_path / "out.txt"
    app = start_app(amqp_url, s, out, slow=120)
    try:
        wait_for(lambda: _declared(amqp_url, s), what="queue")
        publish(s, amqp_url, "long")
        wait_for(lambda: any(x.startswith("started long") for x in lines(out)), what="start")
        t0 = time.monotonic()
        app.send_signal(signal.SIGTERM)
        assert app.wait(30) == 0
        assert time.monotonic() - t0 < 15
    finally:
        app.kill()
    wait_for(lambda: queue_depth(amqp_url, s.queue_name) == 1, what="message back in the queue")


def test_long_handler_keeps_the_connection_alive(amqp_url: str, settings: Settings) -> None:
    # heartbeat 1s: the broker drops a connection silent for ~2s; the handler works for 7s.
    s = settings(heartbeat_seconds=1)
    calls: list[str] = []

    def handle(msg: BuildRequestedV1) -> None:
        time.sleep(7)
        calls.append(msg.payload.request_id)

    consumer = Consumer(s, amqp_url)
    consumer.on(BuildRequestedV1, handle)
    with running(consumer):
        publish(s, amqp_url, "slow-build")
        wait_for(
            lambda: (
                value(
                    consumer.metrics,
                    "imgline_messages_consumed_total",
                    service="svc",
                    topic="imgline.build.requested",
                )
                == 1
            ),
            30,
        )
        time.sleep(1)
    assert calls == ["slow-build"]
    assert consumer.connects == 1
    assert queue_depth(amqp_url, s.queue_name) == 0


def test_metrics_are_served_over_http(amqp_url: str, settings: Settings) -> None:
    s = settings()
    consumer = Consumer(s, amqp_url)
    consumer.on(BuildRequestedV1, lambda m: None)
    port = consumer.metrics.serve(0)
    with running(consumer):
        assert value(consumer.metrics, "imgline_consumer_connected", service="svc") == 1
        publish(s, amqp_url, "m")
        wait_for(
            lambda: (
                value(
                    consumer.metrics,
                    "imgline_messages_consumed_total",
                    service="svc",
                    topic="imgline.build.requested",
                )
                == 1
            )
        )
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    assert (
        'imgline_messages_consumed_total{service="svc",topic="imgline.build.requested"} 1.0' in text
    )
    assert "imgline_handler_seconds_bucket" in text
    delay = 'imgline_message_delay_seconds_count{service="svc",topic="imgline.build.requested"}'
    assert f"{delay} 1.0" in text
    # stopped: no longer attached, and it said so
    assert 'imgline_consumer_connected{service="svc"} 0.0' in text
    assert 'imgline_broker_connects_total{service="svc"} 1.0' in text


def test_broker_restart_reconnects_and_loses_nothing_acknowledged(settings: Settings) -> None:
    from imgline.core.broker import PrivateBroker  # noqa: PLC0415

    s = settings(reconnect_max_seconds=1)
    seen: Counter[str] = Counter()
    gate = threading.Event()

    def handle(msg: BuildRequestedV1) -> None:
        gate.wait(60)
        seen[msg.payload.request_id] += 1

    with PrivateBroker() as broker:
        conn = pika.BlockingConnection(pika.URLParameters(broker.url))
        topology.declare(conn.channel(), topology.shared_topology(s))  # as the fixture does
        conn.close()
        consumer = Consumer(s, broker.url)
        consumer.on(BuildRequestedV1, handle)
        with running(consumer):
            before = [f"before-{i}" for i in range(10)]
            publish(s, broker.url, *before)
            gate.set()
            wait_for(lambda: sum(seen.values()) >= 3, what="some messages handled")
            gate.clear()  # hold the rest in the queue across the restart
            time.sleep(0.3)
            broker.restart()
            gate.set()
            after = [f"after-{i}" for i in range(5)]
            publish(s, broker.url, *after)
            wait_for(lambda: set(seen) == set(before + after), 60, "every message handled")
            wait_for(lambda: consumer.connects >= 2, what="a reconnect")
        assert queue_depth(broker.url, s.queue_name) == 0
    # at-least-once: a message in hand during the restart may run twice, none is lost
    assert all(n in (1, 2) for n in seen.values()), seen
