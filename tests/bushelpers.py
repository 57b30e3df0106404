"""Helpers for the tests that use a broker (imported by test modules; conftest has fixtures)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pika

from imgline.core.bus import Consumer, topology
from imgline.core.config import BusSettings, load_settings
from imgline.schemas import payloads as p


def request(request_id: str, name: str = "node") -> p.BuildRequested:
    return p.BuildRequested(
        request_id=request_id,
        source=p.InlineSource(kickstart=f"# {request_id}\nlang en_US.UTF-8\n"),
        name=name,
    )


@contextmanager
def running(consumer: Consumer) -> Iterator[threading.Thread]:
    """Run ``consumer`` on a thread for the block; stop it and wait for it afterwards."""
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    assert consumer.ready.wait(30), "consumer did not attach to its queue"
    try:
        yield thread
    finally:
        consumer.stop()
        thread.join(30)
        assert not thread.is_alive(), "consumer did not stop"


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


def queue_depth(url: str, queue: str) -> int:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        frame = conn.channel().queue_declare(queue, passive=True)
        return int(frame.method.message_count)
    finally:
        conn.close()


def take_all(url: str, queue: str) -> list[tuple[dict[str, Any], bytes]]:
    """Remove and return (headers, body) of every message in ``queue``."""
    out = []
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        while True:
            method, props, body = ch.basic_get(queue, auto_ack=True)
            if method is None:
                return out
            out.append((dict(props.headers or {}), body))
    finally:
        conn.close()


class ServiceProcess:
    """One imgline service run as its own process (``python -m imgline.<service>``) on an
    exchange of its own, with a queue that collects the events it emits."""

    def __init__(
        self, conn: pika.BlockingConnection, exchange: str, watch: str, dlq: str, proc: Any
    ) -> None:
        self.conn, self.exchange, self.watch, self.dlq, self.proc = (
            conn,
            exchange,
            watch,
            dlq,
            proc,
        )
        self.channel = conn.channel()
        self.channel.confirm_delivery()

    def publish(self, msg: Any) -> None:
        self.channel.basic_publish(self.exchange, msg.topic, msg._encoded_body, msg._properties)

    def wait_event(self, timeout: float) -> dict[str, Any]:
        """The next event, failing at once if the service dies or dead-letters the input."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            method, _props, body = self.channel.basic_get(self.watch, auto_ack=True)
            if method is not None:
                event: dict[str, Any] = json.loads(body)
                return event
            assert self.proc.poll() is None, "the service process died"
            dead, props, _ = self.channel.basic_get(self.dlq, auto_ack=True)
            assert dead is None, f"the input was dead-lettered: {props.headers}"
            self.conn.sleep(2)
        raise AssertionError(f"no event within {timeout:.0f}s")


def toml_value(value: Any) -> str:
    """A TOML value: JSON's form for strings, numbers and lists, an inline table for a dict."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


@contextmanager
def service_process(
    service: str,
    amqp_url: str,
    tmp: Path,
    *,
    consumes: tuple[str, ...],
    emits: tuple[str, ...],
    consumer_config: dict[str, Any],
    settings: dict[str, Any] | None = None,
) -> Iterator[ServiceProcess]:
    """Start ``imgline-<service>`` with a config written to ``tmp`` (``settings``: top-level
    keys such as ``metrics_port``); stop it with SIGTERM."""
    # unique per call: a test that fails half-way must not leave work for the next one's service
    exchange = f"{service}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    config = tmp / f"{service}.toml"
    table = "".join(f"{k} = {toml_value(v)}\n" for k, v in consumer_config.items())
    top = "".join(f"{k} = {json.dumps(v)}\n" for k, v in (settings or {}).items())
    config.write_text(
        f'service = "{service}"\nexchange = "{exchange}"\n{top}'
        f'dead_letter_exchange = "{exchange}.dlx"\ndead_letter_queue = "{exchange}.dead-letter"\n'
        f"[consumer_config]\n{table}"
    )
    bus = load_settings(BusSettings, config, {})
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = conn.channel()
    topology.declare(ch, topology.shared_topology(bus))
    watch = ch.queue_declare("", exclusive=True).method.queue
    for topic in emits:
        ch.queue_bind(watch, exchange, bus.routing_key(topic))
    # declare the service's queue first: a message published before it exists is lost
    topology.declare(ch, topology.service_topology(bus, consumes))
    proc = subprocess.Popen(
        [sys.executable, "-m", f"imgline.{service}", "--config", str(config)],
        env=dict(os.environ, IMGLINE_AMQP_URL=amqp_url),
    )
    try:
        yield ServiceProcess(conn, exchange, watch, bus.dead_letter_queue, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        conn.close()


def post(url: str, body: bytes, headers: dict[str, str]) -> int:
    """POST to a service on loopback; the HTTP status, errors included."""
    req = urllib.request.Request(url, data=body, method="POST", headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=10) as answer:  # noqa: S310 - loopback
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code
