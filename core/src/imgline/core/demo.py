"""``make demo`` for now: a private broker, a sample consumer, and one message round trip.

It publishes a ``build.requested`` for ``examples/node.ks`` (the builder does not exist yet, so
a sample consumer stands in for it), shows the consumer handling it, then sends an invalid
message and shows it landing in the dead-letter queue with the reason.
"""

from __future__ import annotations

import logging
import threading
import time

import pika

from imgline.core.broker import broker_url
from imgline.core.bus import BusMetrics, Consumer, Publisher
from imgline.core.bus.consumer import REASON_HEADER
from imgline.core.config import BusSettings
from imgline.schemas import payloads as p
from imgline.schemas.messages import BuildRequestedV1, ImageBuiltV1

log = logging.getLogger("imgline.demo")


def run() -> int:
    with broker_url() as url:
        settings = BusSettings(service="demo-consumer", retry_delay_seconds=0.1)
        metrics = BusMetrics(settings.service)
        handled = threading.Event()
        seen: list[BuildRequestedV1] = []

        def handle(msg: BuildRequestedV1) -> None:
            req = msg.payload
            log.info(
                "sample consumer got %r: build_id=%s source=%s",
                msg.summary,
                req.build_id,
                req.source.kind,
            )
            seen.append(msg)
            handled.set()

        consumer = Consumer(settings, url, metrics)
        consumer.on(BuildRequestedV1, handle)
        thread = threading.Thread(target=consumer.run, name="consumer", daemon=True)
        thread.start()
        if not consumer.ready.wait(30):
            log.error("consumer did not attach to its queue within 30s")
            return 1
        with Publisher(settings, url, metrics) as pub:
            req = p.BuildRequested(
                request_id="demo-1",
                source=p.GitSource(
                    url="file:///srv/git/node-image.git",
                    ref="main",
                    kickstart_path="examples/node.ks",
                ),
                name="node",
                stream="stable",
                requested_by="make-demo",
            )
            t0 = time.perf_counter()
            pub.publish(BuildRequestedV1.from_payload(req))
            log.info("published build.requested (build_id=%s)", req.build_id)
            if not handled.wait(30):
                log.error("the sample consumer never saw the message")
                return 1
            log.info(
                "round trip publish -> handler took %.1f ms", (time.perf_counter() - t0) * 1000
            )
            # A publisher that ignores the contract: wrong type in a field.
            body = {**req.model_dump(mode="json"), "name": "Not A Valid Name!"}
            bad = BuildRequestedV1(body=body, topic="imgline.build.requested")
            pub.publish_raw(settings.exchange, bad.topic, bad._encoded_body, bad._properties)
            log.info("published an invalid build.requested; it should be dead-lettered")
        reason = _wait_dead_letter(url, settings.dead_letter_queue)
        consumer.stop()
        thread.join(30)
        if reason is None:
            log.error("nothing arrived in %s", settings.dead_letter_queue)
            return 1
        log.info("dead-letter queue %s holds it, reason: %s", settings.dead_letter_queue, reason)
        for line in _metric_lines(metrics):
            log.info("metric %s", line)
        log.info("demo finished: 1 message handled, 1 dead-lettered")
        _ = ImageBuiltV1  # the next hop, built by the builder issue
    return 0


def _wait_dead_letter(url: str, queue: str, timeout: float = 30.0) -> str | None:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            method, props, _body = ch.basic_get(queue, auto_ack=True)
            if method is not None and props is not None:
                return str((props.headers or {}).get(REASON_HEADER))
            time.sleep(0.2)
        return None
    finally:
        conn.close()


def _metric_lines(metrics: BusMetrics) -> list[str]:
    lines = []
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name.endswith(("_total", "_count")) and sample.value:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                lines.append(f"{sample.name}{{{labels}}} {sample.value:g}")
    return lines
