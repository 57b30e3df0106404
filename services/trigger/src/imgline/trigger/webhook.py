"""One webhook request, decided: verify, read, match, request each build once.

Pure but for ``publish``; the HTTP server (``adapters/http.py``) only carries bytes to
:meth:`Webhook.handle` and its answer back. A request that fails the signature check is
answered 401 and nothing of it is read or sent on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from imgline.schemas import payloads as p
from imgline.trigger.dispatch import dispatch
from imgline.trigger.domain import forges
from imgline.trigger.domain.forges import Forge
from imgline.trigger.domain.rules import Rules, Seen
from imgline.trigger.errors import PayloadError, SignatureError

log = logging.getLogger(__name__)


#: What became of a webhook request (the ``result`` label): bounded, like the forges.
RESULTS = ("requested", "repeated", "no_build", "refused", "invalid", "bus_unavailable")


class WebhookMetrics:
    """``imgline_webhooks_total{forge,result}``: a dashboard sees pushes arrive, forged or
    misconfigured senders (refused), and a bus that did not take requests."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "imgline_webhooks",
            "Webhook requests by forge and what became of them",
            ["forge", "result"],
            registry=registry,
        )

    def count(self, forge: str, result: str) -> None:
        self.requests.labels(forge, result).inc()


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any] = field(default_factory=dict)


class Webhook:
    """Turns signed push events into ``build.requested``, each build once per window."""

    def __init__(
        self,
        rules: Rules,
        secrets: Mapping[Forge, str],
        seen: Seen,
        publish: Callable[[p.BuildRequested], None],
        metrics: WebhookMetrics | None = None,
    ) -> None:
        self.metrics = metrics
        self.rules = rules
        self.secrets = secrets
        self.seen = seen
        self.publish = publish

    def handle(self, headers: Mapping[str, str], body: bytes) -> Answer:
        forge, answer, result = self._decide(headers, body)
        if self.metrics is not None:
            self.metrics.count(forge, result)
        return answer

    def _decide(self, headers: Mapping[str, str], body: bytes) -> tuple[str, Answer, str]:
        """The answer, with the forge (``unknown`` when none) and the result label."""
        forge: str = "unknown"
        try:
            found, event = forges.detect(headers)
            forge = found
            forges.verify(found, headers, body, self.secrets.get(found, ""))
        except SignatureError as exc:
            log.warning("webhook refused: %s", exc)
            return forge, Answer(401, {"error": "signature"}), "refused"  # nothing more to say
        except PayloadError as exc:
            return forge, Answer(400, {"error": str(exc)}), "invalid"
        try:
            push = forges.parse(found, event, headers, body)
        except PayloadError as exc:
            log.warning("webhook from %s: %s", forge, exc)
            return forge, Answer(400, {"error": str(exc)}), "invalid"
        if push is None:
            ignored = {"ignored": f"{forge} {event[:40]} event: nothing to build"}
            return forge, Answer(200, ignored), "no_build"
        done = dispatch(self.rules, push, self.seen, self.publish)
        if done.failure is not None:
            answer = Answer(503, {"error": "the bus did not take the request; retry"})
            return forge, answer, done.result
        answer = Answer(
            202 if done.sent else 200,
            {
                "requested": done.sent,
                "already_requested": done.repeated,
                "rules_matched": done.matched,
            },
        )
        return forge, answer, done.result
