"""A Pagure push message on a forge's exchange becomes exactly one pinned ``build.requested``:
the trigger service as its own process, consuming a queue it binds on a private broker. The same
message delivered again asks for nothing more, a malformed one is dead-lettered with the reason,
and SIGTERM stops the service cleanly."""

from __future__ import annotations

import time
import urllib.request
import uuid
from pathlib import Path

import pika
import pika.exceptions
import pytest
from bushelpers import service_process, take_all, wait_for
from forgemessages import END, PAGURE_TOPIC, encoded, pagure_receive
from pika.adapters.blocking_connection import BlockingChannel

from imgline.core.broker import free_port
from imgline.core.bus.consumer import QUEUE_HEADER, REASON_HEADER

pytestmark = pytest.mark.broker

TOPIC = PAGURE_TOPIC


def properties(message_id: str) -> pika.BasicProperties:
    """The properties fedora-messaging publishes with."""
    return pika.BasicProperties(
        content_type="application/json",
        content_encoding="utf-8",
        delivery_mode=2,
        message_id=message_id,
        headers={
            "fedora_messaging_schema": "pagure.git.receive",
            "fedora_messaging_severity": 20,
            "fedora_messaging_user_jsmith": True,
            "sent-at": "2026-12-06T06:00:00+00:00",
        },
    )


def publish(channel: BlockingChannel, exchange: str, body: bytes, message_id: str) -> None:
    """Publish as the forge does, waiting until the trigger has bound its queue (a message
    with no queue bound yet would be dropped by the broker)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            channel.basic_publish(exchange, TOPIC, body, properties(message_id), mandatory=True)
            return
        except pika.exceptions.UnroutableError:
            assert time.monotonic() < deadline, "the trigger never bound its forge queue"
            time.sleep(0.2)


def metric(port: int, result: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as answer:
        text = answer.read().decode()
    line = f'imgline_forge_messages_total{{format="pagure",result="{result}"}} '
    found = [ln for ln in text.splitlines() if ln.startswith(line)]
    return float(found[0].removeprefix(line)) if found else 0.0


def test_a_pagure_push_message_requests_one_pinned_build(amqp_url: str, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    forge, dlx, dead, queue = f"forge{tag}", f"forge{tag}.dlx", f"forge{tag}.dead", f"trig{tag}"
    admin = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = admin.channel()
    ch.confirm_delivery()
    # what the forge's operator owns: the exchange pushes arrive on, and a dead-letter pair
    ch.exchange_declare(forge, exchange_type="topic", durable=True)
    ch.exchange_declare(dlx, exchange_type="topic", durable=True)
    ch.queue_declare(dead, durable=True)
    ch.queue_bind(dead, dlx, "#")

    rules = tmp_path / "rules.toml"
    rules.write_text(
        """
[[rule]]
repository = "fedora-iot/node-os"
forge = "pagure"
url = "https://pagure.io/fedora-iot/node-os.git"
branches = ["main"]
paths = ["kickstarts/**"]
name = "node"
stream = "stable"
kickstart_path = "kickstarts/node.ks"
"""
    )
    metrics_port = free_port()
    config = {
        "listen_port": str(free_port()),
        "rules_file": str(rules),
        "forge_bus.format": "pagure",
        "forge_bus.exchange": forge,
        "forge_bus.queue": queue,
        "forge_bus.routing_keys": [TOPIC],
        "forge_bus.dead_letter_exchange": dlx,
    }
    try:
        with service_process(
            "trigger",
            amqp_url,
            tmp_path,
            consumes=(),
            emits=("build.requested",),
            consumer_config=config,  # type: ignore[arg-type]
            settings={"metrics_port": metrics_port},
        ) as svc:
            body = encoded(pagure_receive())
            publish(ch, forge, body, "msg-1")

            # the push names no files: the rule's paths count as touched, the commit is pinned
            event = svc.wait_event(30)
            assert event["name"] == "node" and event["stream"] == "stable"
            assert event["source"] == {
                "kind": "git",
                "url": "https://pagure.io/fedora-iot/node-os.git",
                "ref": "main",
                "commit": END,
                "kickstart_path": "kickstarts/node.ks",
            }
            assert event["requested_by"] == "pagure push to fedora-iot/node-os main"

            # the same message delivered again: taken, and nothing more requested
            publish(ch, forge, body, "msg-1")
            wait_for(lambda: metric(metrics_port, "repeated") == 1.0, what="the redelivery")

            # a malformed push: dead-lettered byte for byte, with the reason
            hostile = encoded(pagure_receive(branch="--upload-pack=touch /tmp/x"))
            publish(ch, forge, hostile, "msg-2")
            wait_for(lambda: metric(metrics_port, "invalid") == 1.0, what="the refusal")
            [(headers, dead_body)] = take_all(amqp_url, dead)
            assert dead_body == hostile
            assert "branch name" in headers[REASON_HEADER]
            assert headers[QUEUE_HEADER] == queue
            assert headers["fedora_messaging_schema"] == "pagure.git.receive"

            time.sleep(2)  # what would have been published by now
            method, _, _ = svc.channel.basic_get(svc.watch, auto_ack=True)
            assert method is None, "more than one build.requested"
            assert metric(metrics_port, "requested") == 1.0
            frame = ch.queue_declare(queue, passive=True)
            assert frame.method.message_count == 0, "a forge message was left in the queue"
        assert svc.proc.returncode == 0, "the trigger did not stop cleanly on SIGTERM"
    finally:
        for name in (queue, dead):
            ch.queue_delete(name)
        ch.exchange_delete(forge)
        ch.exchange_delete(dlx)
        admin.close()
