"""Helpers for the broker-tier tests (imported by the test modules; conftest holds fixtures)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pika

from imgline.core.bus import Consumer
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
