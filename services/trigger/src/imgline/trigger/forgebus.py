"""One push message from a forge's bus, decided: read, match, request each build once.

Pure but for ``publish``; the AMQP consumer (``adapters/forgebus.py``) only carries a
delivery to :meth:`ForgeBus.handle` and applies the verdict. The verdicts are the pipeline's
own (``imgline.core.bus.policy``): a push that needs nothing or was requested is acked; one the
pipeline's bus did not take goes back to the queue for another try; a message that can never
be used is dead-lettered with the reason, never dropped and never retried.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter

from imgline.core.bus.policy import Verdict
from imgline.schemas import payloads as p
from imgline.trigger.dispatch import dispatch
from imgline.trigger.domain import busevents
from imgline.trigger.domain.busevents import BusFormat
from imgline.trigger.domain.rules import Rules, Seen
from imgline.trigger.errors import PayloadError

log = logging.getLogger(__name__)

#: What became of a bus message (the ``result`` label).
RESULTS = ("requested", "repeated", "no_build", "invalid", "bus_unavailable")


class ForgeBusMetrics:
    """``imgline_forge_messages_total{format,result}``, beside the webhook's counter."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.messages = Counter(
            "imgline_forge_messages",
            "Push messages read from a forge's bus, by format and what became of them",
            ["format", "result"],
            registry=registry,
        )

    def count(self, fmt: str, result: str) -> None:
        self.messages.labels(fmt, result).inc()


@dataclass(frozen=True)
class Outcome:
    """What to do with the delivery, the metrics label, and the reason for a dead letter."""

    verdict: Verdict
    result: str
    reason: str = ""


class ForgeBus:
    """Turns forge push messages of one format into ``build.requested``, each build once."""

    def __init__(
        self,
        fmt: BusFormat,
        rules: Rules,
        seen: Seen,
        publish: Callable[[p.BuildRequested], None],
        *,
        max_body_bytes: int = 1 << 20,
        metrics: ForgeBusMetrics | None = None,
    ) -> None:
        self.fmt = fmt
        self.rules = rules
        self.seen = seen
        self.publish = publish
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    def handle(
        self, topic: str, headers: Mapping[str, object], body: bytes, message_id: object
    ) -> Outcome:
        outcome = self._decide(topic, headers, body, message_id)
        if self.metrics is not None:
            self.metrics.count(self.fmt, outcome.result)
        return outcome

    def _decide(
        self, topic: str, headers: Mapping[str, object], body: bytes, message_id: object
    ) -> Outcome:
        ident = f"msg_id={str(message_id)[:80]} topic={topic[:255]}"
        if len(body) > self.max_body_bytes:
            reason = f"the message is {len(body)} bytes, over max_body_bytes {self.max_body_bytes}"
            return self._invalid(ident, reason)
        try:
            push = busevents.parse(self.fmt, topic, headers, body, message_id)
        except PayloadError as exc:
            return self._invalid(ident, f"{self.fmt} message: {exc}")
        except Exception as exc:  # a shape no check foresaw: dead-letter it, keep consuming
            log.exception("%s: the %s message could not be read", ident, self.fmt)
            return self._invalid(ident, f"unreadable {self.fmt} message: {type(exc).__name__}")
        if push is None:
            log.info("%s: not a push to a branch, nothing to build", ident)
            return Outcome(Verdict.ACK, "no_build")
        done = dispatch(self.rules, push, self.seen, self.publish)
        if done.failure is not None:
            return Outcome(Verdict.REQUEUE, done.result, done.failure)
        log.info(
            "%s: %s %s@%s: %d rule(s) matched, %d requested, %d already requested",
            ident,
            push.repository,
            push.branch,
            push.commit[:12],
            done.matched,
            len(done.sent),
            len(done.repeated),
        )
        return Outcome(Verdict.ACK, done.result)

    def _invalid(self, ident: str, reason: str) -> Outcome:
        log.error("%s rejected: %s", ident, reason)
        return Outcome(Verdict.DEAD_LETTER, "invalid", reason[:2000])
