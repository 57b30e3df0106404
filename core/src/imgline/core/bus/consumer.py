"""The consumer harness: a service registers ``handle(msg)`` per message class and calls ``run``.

One I/O thread owns the pika connection (heartbeats keep flowing while a handler works for
twenty minutes); handlers run on worker threads. A delivery is acked only after its handler
returned, sent back to its own queue with back-off on a transient failure, and dead-lettered
with the reason when it can never succeed or has used up its attempts.

Attempts are counted twice over, so the delivery limit holds on every RabbitMQ version: a
failed message is sent back through the retry exchange, to this queue only, with the attempts so
far in a header (and then acked); only when that is refused is it rejected back to the queue,
where the broker's ``x-delivery-count`` counts it. On SIGTERM the consumer stops taking work,
lets the message in hand finish within a grace period, and otherwise leaves it to be redelivered.
"""

from __future__ import annotations

import copy
import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import pika
import pika.exceptions
from fedora_messaging import exceptions as fm_exceptions
from fedora_messaging import message as fm_message
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.spec import Basic, BasicProperties

from imgline.core.bus import policy, topology
from imgline.core.bus.connection import CONNECTION_ERRORS, connection_parameters
from imgline.core.bus.metrics import BusMetrics
from imgline.core.bus.publisher import Publisher
from imgline.core.config import BusSettings
from imgline.core.errors import PermanentError, TransientError

log = logging.getLogger(__name__)

M = TypeVar("M", bound=fm_message.Message)

#: Headers added to a message when the harness dead-letters it.
REASON_HEADER = "x-imgline-dead-letter-reason"
QUEUE_HEADER = "x-imgline-queue"
ATTEMPTS_HEADER = "x-imgline-attempts"
AT_HEADER = "x-imgline-dead-lettered-at"
#: The topic of a message sent back through the retry exchange, whose routing key is the queue.
ROUTING_KEY_HEADER = "x-imgline-routing-key"

CONNECTION_LOST = (
    *CONNECTION_ERRORS,  # TLS errors too, e.g. a broker certificate that no longer verifies
    pika.exceptions.StreamLostError,
    ConnectionError,
)


@dataclass
class _Route:
    handler: Callable[[Any], None]


@dataclass
class _Delivery:
    tag: int
    routing_key: str
    properties: BasicProperties
    body: bytes
    attempt: int
    topic: str
    ids: str  # "id=… topic=… build_id=…" for every log line
    future: Future[tuple[policy.Outcome, str]] | None = None
    started: float = 0.0


def decode(
    routing_key: str, props: BasicProperties, body: bytes
) -> tuple[fm_message.Message | None, str]:
    """The typed message, or why the delivery is not one. Never raises: the properties come from
    whoever could publish, and fedora-messaging lets some shapes through as plain exceptions
    (an unknown ``content_encoding`` is a LookupError, a list as the schema header a TypeError).
    """
    try:
        return fm_message.get_message(routing_key, props, body), ""
    except fm_exceptions.ValidationError as exc:
        return None, _validation_text(exc)
    except Exception as exc:
        return None, f"undecodable delivery: {type(exc).__name__}: {exc}"[:2000]


def log_ids(msg: fm_message.Message | None, routing_key: str, props: BasicProperties) -> str:
    """The correlation fields every log line of a delivery carries."""
    ident = f"msg_id={props.message_id} topic={routing_key}"
    if msg is not None:
        body = msg.body if isinstance(msg.body, dict) else {}
        for name in ("build_id", "host_id"):
            if body.get(name):
                ident += f" {name}={body[name]}"
    return ident


class Consumer:
    """Runs handlers for the messages of one service queue. Build, ``on(...)``, then ``run()``."""

    def __init__(
        self,
        settings: BusSettings,
        url: str,
        metrics: BusMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.url = url
        self.metrics = metrics or BusMetrics(settings.service)
        self.publisher = Publisher(settings, url, self.metrics)  # for handlers (worker threads)
        self._routes: dict[type[fm_message.Message], _Route] = {}
        self._topics: dict[str, type[fm_message.Message]] = {}
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._inflight: dict[int, _Delivery] = {}
        self._settled = policy.Settled()  # done while the connection was down
        self.connects = 0  # successful broker sessions: 1 unless the broker went away
        self._conn: BlockingConnection | None = None
        self._side: BlockingChannel | None = None  # confirmed publishes: retries, dead letters

    # --- registration -----------------------------------------------------------------------

    def on(
        self,
        cls: type[M],
        handler: Callable[[M], None],
        topic: str | None = None,
    ) -> None:
        """Call ``handler`` for every valid ``cls`` message. Idempotency is the handler's own
        (``imgline.core.bus.stage``): delivery is at-least-once."""
        suffix = topic or getattr(cls, "topic_suffix", "")
        if not suffix:
            raise ValueError(f"{cls.__name__} has no topic_suffix; pass topic=")
        self._routes[cls] = _Route(handler)
        self._topics[self.settings.routing_key(suffix)] = cls

    def topology(self) -> topology.Topology:
        suffixes = tuple(rk.split(".", 1)[1] if "." in rk else rk for rk in self._topics)
        return topology.service_topology(self.settings, suffixes)

    # --- life cycle -------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop taking messages; safe from signal handlers and other threads."""
        self._stop.set()

    @property
    def ready(self) -> threading.Event:
        """Set once the consumer is attached to its queue (tests and the demo wait on it)."""
        return self._ready

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop the consumer gracefully (call from the main thread)."""

        def _handler(signum: int, _frame: object) -> None:
            log.info(
                "received %s: finishing the message in hand, then stopping",
                signal.Signals(signum).name,
            )
            self.stop()

        signal.signal(signal.SIGTERM, _handler)
        signal.signal(signal.SIGINT, _handler)

    def run(self) -> None:
        """Consume until ``stop()``; reconnects with back-off when the broker goes away."""
        if not self._routes:
            raise ValueError("no handlers registered: call on(...) first")
        backoff = 0.5
        try:
            while not self._stop.is_set():
                try:
                    self._session()
                    backoff = 0.5
                except CONNECTION_LOST as exc:
                    self._ready.clear()
                    log.warning(
                        "lost the broker (%r); %d message(s) in hand will be redelivered; "
                        "reconnecting in %.1fs",
                        exc,
                        len(self._inflight),
                        backoff,
                    )
                    self._drain_after_loss()
                    self._stop.wait(backoff)
                    backoff = min(self.settings.reconnect_max_seconds, backoff * 2)
        finally:
            self._ready.clear()
            self.publisher.close()
            log.info("consumer %s stopped", self.settings.queue_name)

    def _session(self) -> None:
        conn = pika.BlockingConnection(connection_parameters(self.url, self.settings))
        try:
            channel = conn.channel()
            topology.declare(channel, self.topology())
            channel.basic_qos(prefetch_count=self.settings.prefetch)
            tag = channel.basic_consume(
                self.settings.queue_name,
                lambda ch, method, props, body: self._on_delivery(method, props, body),
                auto_ack=False,
            )
            log.info(
                "consuming %s (topics %s, prefetch %d, delivery limit %d)",
                self.settings.queue_name,
                ", ".join(sorted(self._topics)),
                self.settings.prefetch,
                self.settings.delivery_limit,
            )
            self._conn = conn
            self.connects += 1
            self.metrics.connects.labels(self.settings.service).inc()
            self.metrics.connected.labels(self.settings.service).set(1)
            self._ready.set()
            self._loop(conn, channel, tag)
        finally:
            self.metrics.connected.labels(self.settings.service).set(0)
            self._ready.clear()
            self._conn = self._side = None
            if conn.is_open:
                try:
                    conn.close()
                except CONNECTION_LOST:
                    pass

    def _loop(self, conn: BlockingConnection, channel: BlockingChannel, tag: str) -> None:
        cancelled = False
        stop_deadline = 0.0
        while True:
            conn.process_data_events(time_limit=0.2)
            self._finish_done(channel)
            if not self._stop.is_set():
                continue
            if not cancelled:
                channel.basic_cancel(tag)
                cancelled = True
                stop_deadline = time.monotonic() + self.settings.shutdown_grace_seconds
                if self._inflight:
                    log.info(
                        "stopping: waiting up to %.0fs for %d message(s) in hand",
                        self.settings.shutdown_grace_seconds,
                        len(self._inflight),
                    )
            if not self._inflight:
                return
            if time.monotonic() > stop_deadline:
                log.warning(
                    "stopping: %d message(s) still in hand after the grace period; "
                    "leaving them unacked so the broker redelivers them",
                    len(self._inflight),
                )
                self._inflight.clear()
                return

    # --- one delivery -----------------------------------------------------------------------

    def _on_delivery(self, method: Basic.Deliver, props: BasicProperties, body: bytes) -> None:
        """Takes one delivery; never raises, since an exception here would end the I/O loop and
        the process, and the broker would hand the same message to the next instance."""
        tag = method.delivery_tag or 0
        try:
            self._accept(tag, method.exchange or "", method.routing_key or "", props, body)
        except Exception as exc:  # a property no decoder foresaw: dead-letter, keep serving
            log.exception("delivery %d could not be taken", tag)
            rk = method.routing_key or ""
            delivery = self._inflight.get(tag) or _Delivery(
                tag, rk, props, body, 1, rk, f"tag={tag} topic={rk}"
            )
            if delivery.started:
                return  # the handler runs; its own outcome will settle the delivery
            delivery.attempt = max(delivery.attempt, 1)
            reason = f"the delivery could not be read: {type(exc).__name__}: {exc}"[:2000]
            delivery.future = _resolved((policy.Outcome.INVALID, reason))
            self._inflight[tag] = delivery

    def _accept(
        self, tag: int, exchange: str, rk: str, props: BasicProperties, body: bytes
    ) -> None:
        headers = props.headers if isinstance(props.headers, dict) else {}
        retried = exchange == self.settings.retry_exchange_name
        # Only this service's own user may send to its queue through the retry exchange, so
        # only there are its attempts header and the original topic believed.
        attempt = policy.attempt_number(
            headers.get("x-delivery-count"), headers.get(ATTEMPTS_HEADER) if retried else None
        )
        if retried:
            rk = _original_key(headers.get(ROUTING_KEY_HEADER), rk)
        delivery = _Delivery(tag, rk, props, body, attempt, rk, log_ids(None, rk, props))
        self._inflight[tag] = delivery
        if self._stop.is_set():
            # Arrived while cancelling: leave it for another consumer.
            delivery.future = _resolved((policy.Outcome.TRANSIENT, "consumer stopping"))
            delivery.attempt = 0
            return
        msg, reason = decode(rk, props, body)
        if msg is None:
            log.error("%s rejected: %s", delivery.ids, reason)
            delivery.future = _resolved((policy.Outcome.INVALID, reason))
            return
        delivery.ids = log_ids(msg, rk, props)
        if self._settled.take(props.message_id):
            log.info("%s was handled before the broker connection was lost: acked", delivery.ids)
            delivery.future = _resolved((policy.Outcome.DONE, ""))
            return
        route = self._routes.get(type(msg))
        if route is None:
            reason = (
                f"no handler in service {self.settings.service} for {type(msg).__name__} "
                f"on {rk} (schema {str(headers.get('fedora_messaging_schema'))[:200]!r})"
            )
            log.error("%s rejected: %s", delivery.ids, reason)
            delivery.future = _resolved((policy.Outcome.INVALID, reason))
            return
        msg.queue = self.settings.queue_name
        if attempt == 1:  # a retry's wait is the consumer's, not the bus's
            self._observe_delay(msg, rk)
        delivery.started = time.monotonic()
        delivery.future = _in_thread(
            f"{self.settings.service}-handler-{tag}", self._wake, self._handle, route, msg, delivery
        )
        self.metrics.in_flight.labels(self.settings.service).inc()

    def _observe_delay(self, msg: fm_message.Message, topic: str) -> None:
        """Emit to handler start, by the sender's clock: skew between machines shows as a
        shift, and a negative delay counts as none."""
        emitted = getattr(getattr(msg, "payload", None), "emitted_at", None)
        if isinstance(emitted, datetime):
            delay = max(0.0, (datetime.now(tz=UTC) - emitted).total_seconds())
            self.metrics.delay_seconds.labels(self.settings.service, topic).observe(delay)

    def _handle(
        self, route: _Route, msg: fm_message.Message, d: _Delivery
    ) -> tuple[policy.Outcome, str]:
        policy.CURRENT_ATTEMPT.set(policy.Attempt(d.attempt, self.settings.delivery_limit))
        try:
            log.info("%s handling (attempt %d): %s", d.ids, d.attempt, msg.summary)
            with self.metrics.handler_seconds.labels(self.settings.service, d.topic).time():
                route.handler(msg)
        except PermanentError as exc:
            log.error("%s failed permanently: %s", d.ids, exc)
            return policy.Outcome.PERMANENT, str(exc)
        except TransientError as exc:
            log.warning("%s failed (transient, attempt %d): %s", d.ids, d.attempt, exc)
            self._backoff(d.attempt)
            return policy.Outcome.TRANSIENT, str(exc)
        except Exception as exc:
            log.exception("%s handler crashed (attempt %d)", d.ids, d.attempt)
            self._backoff(d.attempt)
            return policy.Outcome.CRASHED, f"{type(exc).__name__}: {exc}"
        return policy.Outcome.DONE, ""

    def _wake(self) -> None:
        """Called by a handler thread when it finishes: wake the I/O loop to ack at once."""
        conn = self._conn
        if conn is None:
            return
        try:
            conn.add_callback_threadsafe(_noop)
        except CONNECTION_LOST:
            pass  # the loop is reconnecting; the outcome is dropped and the message redelivered
        except RuntimeError:
            pass  # connection closed meanwhile

    def _backoff(self, attempt: int) -> None:
        if attempt < self.settings.delivery_limit:
            self._stop.wait(policy.retry_delay(self.settings.retry_delay_seconds, attempt))

    def _finish_done(self, channel: BlockingChannel) -> None:
        for tag, d in list(self._inflight.items()):
            if d.future is None or not d.future.done():
                continue
            del self._inflight[tag]
            if d.started:
                self.metrics.in_flight.labels(self.settings.service).dec()
            try:
                outcome, error = d.future.result()
            except BaseException as exc:  # _handle catches everything; this is the last guard
                outcome, error = policy.Outcome.CRASHED, f"{type(exc).__name__}: {exc}"
            if d.attempt == 0:  # delivered while stopping
                channel.basic_nack(tag, requeue=True)
                continue
            decision = policy.decide(outcome, error, d.attempt, self.settings.delivery_limit)
            self._apply(channel, d, outcome, decision)

    def _side_channel(self) -> BlockingChannel:
        """The confirmed channel for retries and dead letters, reopened if the broker closed
        it (a refused publish closes the channel it came on)."""
        if self._side is None or not self._side.is_open:
            if self._conn is None:
                raise pika.exceptions.ConnectionWrongStateError("not connected")
            self._side = self._conn.channel()
            self._side.confirm_delivery()
        return self._side

    def _send_back(self, d: _Delivery, reason: str) -> bool:
        """Publish a copy of ``d`` to this queue through the retry exchange, carrying its
        attempts and topic; True once the broker confirmed it, False if refused."""
        props = copy.copy(d.properties)
        headers = dict(d.properties.headers or {})
        headers.pop("x-delivery-count", None)  # the copy is a new message to the broker
        headers.update({ATTEMPTS_HEADER: d.attempt, ROUTING_KEY_HEADER: d.routing_key})
        props.headers = headers
        props.delivery_mode = 2
        try:
            self._side_channel().basic_publish(
                self.settings.retry_exchange_name,
                self.settings.queue_name,
                d.body,
                props,
                mandatory=True,
            )
        except (pika.exceptions.NackError, pika.exceptions.UnroutableError) as exc:
            log.error("%s: the retry exchange did not take it (%r)", d.ids, exc)
            return False
        except pika.exceptions.ChannelClosedByBroker as exc:
            log.error(
                "%s: the broker refused the retry exchange %s (%s %s): import the current "
                "definitions ('imgline definitions'); rejecting to the queue instead",
                d.ids,
                self.settings.retry_exchange_name,
                exc.reply_code,
                exc.reply_text,
            )
            return False
        log.warning("%s sent back for another attempt: %s", d.ids, reason)
        return True

    def _apply(
        self,
        channel: BlockingChannel,
        d: _Delivery,
        outcome: policy.Outcome,
        decision: policy.Decision,
    ) -> None:
        service, topic = self.settings.service, d.topic
        if outcome not in (policy.Outcome.DONE, policy.Outcome.INVALID):
            self.metrics.failed.labels(service, topic, outcome.value).inc()
        if decision.verdict is policy.Verdict.ACK:
            channel.basic_ack(d.tag)
            self.metrics.consumed.labels(service, topic).inc()
            log.info("%s done in %.2fs", d.ids, time.monotonic() - d.started)
            return
        if decision.verdict is policy.Verdict.REQUEUE:
            if self._send_back(d, decision.reason):
                channel.basic_ack(d.tag)
                return
            # basic.reject, not basic.nack: from RabbitMQ 4.3 on only a reject says "processing
            # failed" and counts toward x-delivery-count; a nacked message would retry forever.
            # basic.nack stays for messages handed back unprocessed (stopping, no DLX room).
            log.warning("%s requeued: %s", d.ids, decision.reason)
            channel.basic_reject(d.tag, requeue=True)
            return
        headers = dict(d.properties.headers or {})
        headers.update(
            {
                REASON_HEADER: decision.reason[:4000],
                QUEUE_HEADER: self.settings.queue_name,
                ATTEMPTS_HEADER: d.attempt,
                AT_HEADER: datetime.now(tz=UTC).isoformat(),
            }
        )
        props = BasicProperties(
            content_type=d.properties.content_type,
            content_encoding=d.properties.content_encoding,
            delivery_mode=2,
            headers=headers,
            message_id=d.properties.message_id,
        )
        try:
            self._side_channel().basic_publish(
                self.settings.dead_letter_exchange, d.routing_key, d.body, props
            )
        except (pika.exceptions.NackError, pika.exceptions.ChannelClosedByBroker) as exc:
            log.error(
                "%s: the broker refused the dead-letter copy (%r); requeueing instead", d.ids, exc
            )
            channel.basic_nack(d.tag, requeue=True)
            return
        channel.basic_ack(d.tag)
        self.metrics.dead_lettered.labels(service, topic, outcome.value).inc()
        log.error(
            "%s dead-lettered to %s: %s", d.ids, self.settings.dead_letter_queue, decision.reason
        )

    def _drain_after_loss(self) -> None:
        """The acks of messages in hand are gone with the connection: let their work finish
        (its effects stay) and remember the ones that are done, so that their redelivery is
        acked without announcing their result again (the idempotency record would skip the
        work, not the announcement)."""
        for d in list(self._inflight.values()):
            if d.future is not None:
                try:
                    outcome, _error = d.future.result()
                except Exception:
                    log.debug("in-flight handler failed during reconnect", exc_info=True)
                else:
                    if d.started and outcome is policy.Outcome.DONE:
                        self._settled.add(d.properties.message_id)
            if d.started:
                self.metrics.in_flight.labels(self.settings.service).dec()
        self._inflight.clear()


def _noop() -> None:
    return None


def _original_key(value: object, fallback: str) -> str:
    """The topic a retried copy was first published with (the header the consumer set)."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str) and 0 < len(value) <= 255:
        return value
    return fallback


def _in_thread(
    name: str, wake: Callable[[], None], fn: Callable[..., tuple[policy.Outcome, str]], *args: Any
) -> Future[tuple[policy.Outcome, str]]:
    """Run ``fn`` on a daemon thread: a handler still busy after the shutdown grace period must
    not keep the process alive (its message is redelivered elsewhere)."""
    fut: Future[tuple[policy.Outcome, str]] = Future()

    def target() -> None:
        try:
            fut.set_result(fn(*args))
        except BaseException as exc:
            fut.set_exception(exc)
        wake()

    threading.Thread(target=target, name=name, daemon=True).start()
    return fut


def _resolved(value: tuple[policy.Outcome, str]) -> Future[tuple[policy.Outcome, str]]:
    fut: Future[tuple[policy.Outcome, str]] = Future()
    fut.set_result(value)
    return fut


def _validation_text(exc: fm_exceptions.ValidationError) -> str:
    inner = exc.args[0] if exc.args else exc
    if isinstance(inner, ValueError | UnicodeDecodeError) and not hasattr(inner, "message"):
        return f"body is not a JSON document: {inner}"[:2000]
    text = getattr(inner, "message", None) or str(inner)
    return str(text).splitlines()[0][:2000]
