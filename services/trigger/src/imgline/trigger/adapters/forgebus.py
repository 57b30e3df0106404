"""The AMQP side of forge push messages: one queue on the forge's broker, read on one thread.

Why not the pipeline's ``Consumer``: it reads the pipeline's own queue on the pipeline's
exchange, decodes every body into a registered imgline message class, and dead-letters and
retries through the pipeline's exchanges. Forge messages are none of that: another schema
(or none), often another broker and user, and an exchange the forge owns. So this is the
smallest consumer that keeps the pipeline's rules: ack only once the decision is made and its
requests are confirmed, a message that cannot be used goes to a dead-letter exchange with the
reason (the pipeline's header names), a failure to publish sends it back to the queue, and
SIGTERM stops it between messages (docs/architecture.md, "Trigger").
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.spec import Basic, BasicProperties

from imgline.core.bus import topology
from imgline.core.bus.connection import CONNECTION_ERRORS, connection_parameters
from imgline.core.bus.consumer import AT_HEADER, QUEUE_HEADER, REASON_HEADER
from imgline.core.bus.policy import Verdict, retry_delay
from imgline.core.config import BusSettings
from imgline.core.errors import BrokerError
from imgline.trigger.forgebus import Outcome
from imgline.trigger.settings import ForgeBusConfig

log = logging.getLogger(__name__)

Handle = Callable[[str, Mapping[str, object], bytes, object], Outcome]

CONNECTION_LOST = (*CONNECTION_ERRORS, pika.exceptions.StreamLostError, ConnectionError)
#: The broker dead-letters a message on its own after this many deliveries (a quorum queue's
#: ``x-delivery-limit``): a backstop for a pipeline bus that stays away.
DELIVERY_LIMIT = 50


def forge_settings(config: ForgeBusConfig, settings: BusSettings) -> tuple[BusSettings, str]:
    """The settings and URL to reach the forge's broker: its own URL and TLS files when set,
    else the pipeline's broker."""
    if config.amqp_url is None:
        return settings, settings.amqp_url or ""
    own = settings.model_copy(
        update={
            "tls_ca_cert": config.tls_ca_cert,
            "tls_cert": config.tls_cert,
            "tls_key": config.tls_key,
        }
    )
    return own, config.amqp_url


def forge_topology(config: ForgeBusConfig) -> topology.Topology:
    """The trigger's queue for forge messages, bound to each routing key; the forge's exchange
    (and the dead-letter exchange) must exist: the forge's operator owns them."""
    arguments: dict[str, object] = {"x-queue-type": "quorum", "x-delivery-limit": DELIVERY_LIMIT}
    if config.dead_letter_exchange:
        arguments["x-dead-letter-exchange"] = config.dead_letter_exchange
    queue = topology.Queue(config.queue, arguments)
    expects: tuple[str, ...] = (config.exchange,)
    if config.dead_letter_exchange:
        expects += (config.dead_letter_exchange,)
    return topology.Topology(
        exchanges=(),
        queues=(queue,),
        bindings=tuple(
            topology.Binding(config.exchange, queue.name, k) for k in config.routing_keys
        ),
        expects=expects,
    )


class ForgeBusConsumer:
    """Consumes ``config.queue`` until ``stop()``, reconnecting with back-off."""

    def __init__(
        self,
        config: ForgeBusConfig,
        settings: BusSettings,
        handle: Handle,
        retry_seconds: float = 1.0,
    ) -> None:
        self.config = config
        self.settings, self.url = forge_settings(config, settings)
        # made now, so unreadable TLS files are a ConfigError at start, not a dead thread
        self.parameters = connection_parameters(self.url, self.settings)
        self.handle = handle
        self.retry_seconds = retry_seconds
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._side: BlockingChannel | None = None

    @property
    def ready(self) -> threading.Event:
        """Set while attached to the queue (tests wait on it)."""
        return self._ready

    def stop(self) -> None:
        """Stop after the message in hand; safe from any thread."""
        self._stop.set()

    def run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self._session()
                backoff = 0.5
            except (*CONNECTION_LOST, BrokerError) as exc:
                # A broker away, a queue or exchange missing, a permission lacking: the
                # webhook keeps serving, and this retries until the operator fixed it.
                log.error(
                    "forge bus %s: %s; trying again in %.0fs", self.config.queue, exc, backoff
                )
                self._stop.wait(backoff)
                backoff = min(self.settings.reconnect_max_seconds, backoff * 2)
            finally:
                self._ready.clear()
        log.info("forge bus consumer of %s stopped", self.config.queue)

    def _session(self) -> None:
        conn = pika.BlockingConnection(self.parameters)
        try:
            channel = conn.channel()
            if self.config.declare:
                topology.declare(channel, forge_topology(self.config))
            else:
                channel.queue_declare(self.config.queue, passive=True)
            channel.basic_qos(prefetch_count=self.config.prefetch)
            tag = channel.basic_consume(
                self.config.queue,
                lambda ch, method, props, body: self._on_message(conn, ch, method, props, body),
                auto_ack=False,
            )
            log.info(
                "consuming %s push messages from %s (exchange %s, keys %s)",
                self.config.format,
                self.config.queue,
                self.config.exchange,
                ", ".join(self.config.routing_keys),
            )
            self._ready.set()
            while not self._stop.is_set():
                conn.process_data_events(time_limit=0.2)
            channel.basic_cancel(tag)  # unacked prefetched messages go back to the queue
        finally:
            self._side = None
            if conn.is_open:
                try:
                    conn.close()
                except CONNECTION_LOST:
                    pass

    def _on_message(
        self,
        conn: BlockingConnection,
        channel: BlockingChannel,
        method: Basic.Deliver,
        props: BasicProperties,
        body: bytes,
    ) -> None:
        """Decide one delivery and settle it; never raises (that would end the session and
        hand the same message back, again and again)."""
        tag = method.delivery_tag or 0
        topic = method.routing_key or ""
        if self._stop.is_set():
            channel.basic_nack(tag, requeue=True)  # arrived while stopping: for the next run
            return
        headers = props.headers if isinstance(props.headers, dict) else {}
        try:
            outcome = self.handle(topic, headers, body, props.message_id)
        except Exception as exc:
            log.exception("forge message %s could not be decided", props.message_id)
            outcome = Outcome(Verdict.DEAD_LETTER, "invalid", f"{type(exc).__name__}: {exc}")
        if outcome.verdict is Verdict.ACK:
            channel.basic_ack(tag)
        elif outcome.verdict is Verdict.REQUEUE:
            log.warning("forge message %s back to the queue: %s", props.message_id, outcome.reason)
            self._stop.wait(retry_delay(self.retry_seconds, 2, cap_seconds=10.0))
            channel.basic_reject(tag, requeue=True)
        else:
            self._dead_letter(
                conn, channel, tag=tag, topic=topic, props=props, body=body, reason=outcome.reason
            )

    def _dead_letter(
        self,
        conn: BlockingConnection,
        channel: BlockingChannel,
        *,
        tag: int,
        topic: str,
        props: BasicProperties,
        body: bytes,
        reason: str,
    ) -> None:
        """A copy with the reason to the dead-letter exchange, then ack; without one (or if it
        refuses), reject: the queue's own dead-lettering keeps it if it has one, and the log
        has the reason and the body."""
        dlx = self.config.dead_letter_exchange
        if dlx:
            headers = dict(props.headers) if isinstance(props.headers, dict) else {}
            headers.update(
                {
                    REASON_HEADER: reason[:4000],
                    QUEUE_HEADER: self.config.queue,
                    AT_HEADER: datetime.now(tz=UTC).isoformat(),
                }
            )
            copy = BasicProperties(
                content_type=props.content_type,
                content_encoding=props.content_encoding,
                delivery_mode=2,
                headers=headers,
                message_id=props.message_id,
            )
            try:
                if self._side is None or not self._side.is_open:
                    self._side = conn.channel()
                    self._side.confirm_delivery()
                self._side.basic_publish(dlx, topic, body, copy, mandatory=True)
            except (
                pika.exceptions.NackError,
                pika.exceptions.UnroutableError,
                pika.exceptions.ChannelClosedByBroker,
            ) as exc:
                log.error("dead-letter exchange %s did not take the message: %r", dlx, exc)
            else:
                channel.basic_ack(tag)
                log.error("forge message %s dead-lettered to %s: %s", props.message_id, dlx, reason)
                return
        channel.basic_reject(tag, requeue=False)
        # no copy kept on the bus (unless the queue dead-letters on its own): keep it here
        log.error(
            "forge message %s on %s rejected: %s; its body: %r",
            props.message_id,
            topic,
            reason,
            body[:4000],
        )
