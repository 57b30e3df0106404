"""The bus as a deployment has it: the pipeline's vhost, one user per service, topic
permissions, no guest, and TLS that checks both ends. A broker of its own, started like the
demo's (definitions loaded at boot), so the users' rights are exactly those of the committed
definitions with passwords added."""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest
from bushelpers import queue_depth, running, take_all, wait_for

from imgline.core.broker import PrivateBroker
from imgline.core.bus import Consumer, Publisher
from imgline.core.bus.connection import connection_parameters
from imgline.core.bus.consumer import REASON_HEADER
from imgline.core.config import BusSettings
from imgline.core.errors import AccessRefusedError, ConfigError, TransientError
from imgline.core.localca import LocalCA
from imgline.schemas import messages as m

pytestmark = pytest.mark.broker

EXAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "examples"


def message(cls: type[m.ImglineMessage[Any]], key: str | None = None) -> m.ImglineMessage[Any]:
    body = json.loads((EXAMPLES / f"{m.entry_point_name(cls)}.json").read_text())
    return cls(body=body, topic=f"imgline.{key or cls.topic_suffix}")


@pytest.fixture(scope="module")
def broker() -> Iterator[PrivateBroker]:
    with PrivateBroker(tls=True) as node:
        yield node


def bus(user: str, url: str, **extra: Any) -> BusSettings:
    return BusSettings(service=user, amqp_url=url, retry_delay_seconds=0.05, **extra)


def test_there_is_no_guest_and_no_default_vhost(broker: PrivateBroker) -> None:
    port = broker.port
    for url in (
        f"amqp://guest:guest@127.0.0.1:{port}/%2F",
        f"amqp://guest:guest@127.0.0.1:{port}/imgline",
        f"amqp://builder:wrong@127.0.0.1:{port}/imgline",
    ):
        with pytest.raises(pika.exceptions.ProbableAuthenticationError):
            pika.BlockingConnection(pika.URLParameters(url))
    admin = broker.url.replace("/imgline", "/%2F")
    with pytest.raises(pika.exceptions.AMQPConnectionError):  # no such vhost
        pika.BlockingConnection(pika.URLParameters(admin))


@pytest.mark.parametrize(
    ("user", "cls", "key"),
    [
        ("trigger", m.ImageTestedV1, None),  # the forgery that would get an image signed
        ("builder", m.ImageTestedV1, None),
        ("tester", m.ImagePublishedV1, "image.published.stable"),
        ("publisher", m.BuildRequestedV1, None),
        ("updater", m.ImagePublishedV1, "image.published.stable"),
    ],
)
def test_a_service_cannot_publish_a_topic_it_does_not_own(
    broker: PrivateBroker, user: str, cls: type[m.ImglineMessage[Any]], key: str | None
) -> None:
    take_all(broker.url, "imgline.events")
    with (
        Publisher(bus(user, broker.url_for(user)), broker.url_for(user)) as pub,
        pytest.raises(AccessRefusedError, match="may publish only its own topics"),
    ):
        pub.publish(message(cls, key))
    assert take_all(broker.url, "imgline.events") == []  # nothing got through


def test_each_service_publishes_its_own_topics(broker: PrivateBroker) -> None:
    own = [
        ("trigger", message(m.BuildRequestedV1)),
        ("builder", message(m.ImageBuiltV1)),
        ("builder", message(m.BuildFailedV1)),
        ("tester", message(m.ImageTestedV1)),
        ("publisher", message(m.ImagePublishedV1, "image.published.stable")),
        ("publisher", message(m.ImageRejectedV1)),
        ("updater", message(m.HostUpgradedV1)),
    ]
    take_all(broker.url, "imgline.events")
    for user, msg in own:
        with Publisher(bus(user, broker.url_for(user)), broker.url_for(user)) as pub:
            pub.publish(msg)
    assert len(take_all(broker.url, "imgline.events")) == len(own)
    for queue in ("imgline.builder", "imgline.tester", "imgline.publisher"):
        take_all(broker.url, queue)  # leave the pipeline queues empty for the next test


def test_a_service_reads_only_its_own_queue(broker: PrivateBroker) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(broker.url_for("tester")))
    try:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            conn.channel().basic_get("imgline.builder")
        assert refused.value.reply_code == 403
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            conn.channel().basic_get("imgline.events")
        assert refused.value.reply_code == 403
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            conn.channel().queue_delete("imgline.events")
        assert refused.value.reply_code == 403
    finally:
        conn.close()


def test_the_builder_consumes_and_dead_letters_as_itself_over_tls(broker: PrivateBroker) -> None:
    """The whole consumer path with only the builder's rights, over amqps with its client
    certificate: declare and bind its queue, take a request, send a failed try back through the
    retry exchange, dead-letter a broken one."""
    assert broker.ca is not None
    cert = broker.client_certs["builder"]
    url = broker.tls_url_for("builder")
    settings = bus(
        "builder", url, tls_ca_cert=broker.ca.cert_path, tls_cert=cert.cert, tls_key=cert.key
    )
    got: list[str] = []
    tries: list[str] = []
    seen = threading.Event()

    def handle(msg: m.BuildRequestedV1) -> None:
        tries.append(msg.topic)
        if len(tries) == 1:
            raise TransientError("the mirror is down")
        got.append(msg.payload.request_id)
        seen.set()

    consumer = Consumer(settings, url)
    consumer.on(m.BuildRequestedV1, handle)
    with running(consumer):
        trigger = broker.url_for("trigger")
        with Publisher(bus("trigger", trigger), trigger) as pub:
            pub.publish(message(m.BuildRequestedV1))
            broken = message(m.BuildRequestedV1)
            pub.publish_raw("imgline", broken.topic, b"{not json", broken._properties)
        assert seen.wait(30)
        wait_for(
            lambda: queue_depth(broker.url, "imgline.dead-letter") == 1,
            what="the broken request dead-lettered",
        )
    assert got == [json.loads(message(m.BuildRequestedV1)._encoded_body)["request_id"]]
    assert tries == ["imgline.build.requested"] * 2  # the retried copy keeps its topic
    [(headers, body)] = take_all(broker.url, "imgline.dead-letter")
    assert body == b"{not json"
    assert headers[REASON_HEADER]


def test_the_retry_exchange_reaches_only_the_senders_own_queue(broker: PrivateBroker) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(broker.url_for("tester")))
    try:
        channel = conn.channel()
        channel.confirm_delivery()
        body = message(m.BuildRequestedV1)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            channel.basic_publish(
                "imgline.retry", "imgline.builder", body._encoded_body, body._properties
            )
        assert refused.value.reply_code == 403
    finally:
        conn.close()
    assert queue_depth(broker.url, "imgline.builder") == 0


def test_tls_needs_the_client_certificate_and_the_brokers_ca(
    broker: PrivateBroker, tmp_path: Path
) -> None:
    assert broker.ca is not None
    url = broker.tls_url_for("tester")
    no_cert = bus("tester", url, tls_ca_cert=broker.ca.cert_path)
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(connection_parameters(url, no_cert))
    other_ca = LocalCA(tmp_path / "other")
    mine = other_ca.issue("tester", server=False)
    wrong_ca = bus(
        "tester", url, tls_ca_cert=other_ca.cert_path, tls_cert=mine.cert, tls_key=mine.key
    )
    with pytest.raises(ssl.SSLCertVerificationError):  # the client refuses the broker
        pika.BlockingConnection(connection_parameters(url, wrong_ca))
    # a certificate the broker's CA did not sign is refused by the broker
    cert = broker.client_certs["tester"]
    forged = bus(
        "tester", url, tls_ca_cert=broker.ca.cert_path, tls_cert=mine.cert, tls_key=mine.key
    )
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(connection_parameters(url, forged))
    good = bus("tester", url, tls_ca_cert=broker.ca.cert_path, tls_cert=cert.cert, tls_key=cert.key)
    pika.BlockingConnection(connection_parameters(url, good)).close()
    with pytest.raises(ConfigError, match="not a readable CA"):
        connection_parameters(url, bus("tester", url, tls_ca_cert=tmp_path / "missing.pem"))
