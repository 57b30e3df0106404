"""Publishing with broker confirms: ``publish`` returns only once the broker has the message.

pika connections are not thread-safe, so each ``Publisher`` owns a connection and a lock; the
consumer harness gives its handlers one of their own.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import jsonschema
import pika
import pika.exceptions
from fedora_messaging import message as fm_message
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from imgline.core.bus.connection import (
    ACCESS_REFUSED,
    CONNECTION_ERRORS,
    connection_parameters,
)
from imgline.core.bus.metrics import BusMetrics
from imgline.core.config import BusSettings
from imgline.core.errors import (
    AccessRefusedError,
    BrokerUnavailableError,
    PermanentError,
    UnroutableError,
)

log = logging.getLogger(__name__)


class Publisher:
    """Publishes validated messages to the pipeline exchange and waits for the confirm."""

    def __init__(
        self,
        settings: BusSettings,
        url: str,
        metrics: BusMetrics | None = None,
        attempts: int = 5,
    ) -> None:
        self.settings = settings
        self.url = url
        self.metrics = metrics
        self.attempts = attempts
        self._lock = threading.Lock()
        self._conn: BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._used = 0.0  # time.monotonic() of the last publish

    def _ensure(self) -> BlockingChannel:
        """The open channel, or a new one. A blocking connection sends no heartbeats while
        nothing is published, so after a heartbeat interval of silence the broker may already
        have dropped it: such a connection is replaced before use, not found dead by a publish
        that then has to be retried."""
        idle = time.monotonic() - self._used
        if self._channel is not None and self._channel.is_open:
            if idle < self.settings.heartbeat_seconds:
                return self._channel
            log.debug("publisher connection idle for %.0fs: opening a fresh one", idle)
        self._close()
        self._conn = pika.BlockingConnection(connection_parameters(self.url, self.settings))
        channel = self._conn.channel()
        channel.confirm_delivery()
        self._channel = channel
        return channel

    def publish(self, msg: fm_message.Message, exchange: str | None = None) -> None:
        """Validate ``msg`` and publish it; raises ``BrokerError`` if the broker never confirmed."""
        try:
            msg.validate()
        except jsonschema.exceptions.ValidationError as exc:
            raise PermanentError(
                f"refusing to publish an invalid {msg.topic}: {exc.message}"
            ) from exc
        self.publish_raw(
            exchange if exchange is not None else self.settings.exchange,
            msg.topic,
            msg._encoded_body,
            msg._properties,
        )
        if self.metrics is not None:
            self.metrics.published.labels(self.metrics.service, msg.topic).inc()

    def publish_raw(
        self, exchange: str, routing_key: str, body: bytes, properties: pika.BasicProperties
    ) -> None:
        """Publish bytes as they are (dead-lettering keeps the original body byte for byte).

        ``mandatory``: an event that no queue is bound for comes back and raises
        ``UnroutableError`` at once, instead of being confirmed and dropped."""
        last: Exception | None = None
        with self._lock:
            for attempt in range(1, self.attempts + 1):
                try:
                    channel = self._ensure()
                    channel.basic_publish(exchange, routing_key, body, properties, mandatory=True)
                    self._used = time.monotonic()
                    return
                except pika.exceptions.UnroutableError as exc:
                    raise UnroutableError(
                        f"no queue is bound for {routing_key} on exchange {exchange} at "
                        f"{_safe(self.url)}, so the event was not delivered: start the services "
                        "or import deploy/rabbitmq/definitions.json"
                    ) from exc
                except pika.exceptions.NackError as exc:
                    last = exc
                except pika.exceptions.ChannelClosedByBroker as exc:
                    self._close()
                    if exc.reply_code == ACCESS_REFUSED:
                        raise AccessRefusedError(
                            f"the broker at {_safe(self.url)} refused to take {routing_key} on "
                            f"exchange {exchange} from this user ({exc.reply_text}): each "
                            "service may publish only its own topics (docs/security.md)"
                        ) from exc
                    last = exc
                except CONNECTION_ERRORS as exc:
                    last = exc
                    self._close()
                log.warning(
                    "publish of %s to %s failed (attempt %d of %d): %r",
                    routing_key,
                    exchange,
                    attempt,
                    self.attempts,
                    last,
                )
                time.sleep(min(5.0, 0.25 * 2**attempt))
        raise BrokerUnavailableError(
            f"could not publish {routing_key} to exchange {exchange} at {_safe(self.url)} "
            f"after {self.attempts} attempts: {last!r}"
        )

    def _close(self) -> None:
        conn, self._conn, self._channel = self._conn, None, None
        if conn is not None and conn.is_open:
            try:
                conn.close()
            except Exception:
                log.debug("error closing publisher connection", exc_info=True)

    def close(self) -> None:
        with self._lock:
            self._close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _safe(url: str) -> str:
    """The URL without its password, for error messages."""
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://***@{rest.split('@', 1)[1]}"
