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

from imgline.core.errors import ImglineError
from imgline.schemas import payloads as p
from imgline.trigger.domain import forges
from imgline.trigger.domain.forges import Forge
from imgline.trigger.domain.rules import Rules, Seen, requests
from imgline.trigger.errors import PayloadError, SignatureError

log = logging.getLogger(__name__)


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
    ) -> None:
        self.rules = rules
        self.secrets = secrets
        self.seen = seen
        self.publish = publish

    def handle(self, headers: Mapping[str, str], body: bytes) -> Answer:
        try:
            forge, event = forges.detect(headers)
            forges.verify(forge, headers, body, self.secrets.get(forge, ""))
        except SignatureError as exc:
            log.warning("webhook refused: %s", exc)
            return Answer(401, {"error": "signature"})  # says nothing more to a prober
        except PayloadError as exc:
            return Answer(400, {"error": str(exc)})
        try:
            push = forges.parse(forge, event, headers, body)
        except PayloadError as exc:
            log.warning("webhook from %s: %s", forge, exc)
            return Answer(400, {"error": str(exc)})
        if push is None:
            return Answer(200, {"ignored": f"{forge} {event[:40]} event: nothing to build"})
        wanted = requests(self.rules, push)
        sent, repeated = [], []
        for req in wanted:
            if not self.seen.first(req.build_id):
                repeated.append(req.build_id)
                continue
            try:
                self.publish(req)
            except ImglineError as exc:
                self.seen.forget(req.build_id)  # the forge's retry must get through
                log.error("build.requested for %s not sent: %s", req.name, exc)
                return Answer(503, {"error": "the bus did not take the request; retry"})
            sent.append(req.build_id)
            log.info(
                "build_id=%s requested: %s %s@%s (%s push %s)",
                req.build_id,
                req.name,
                push.repository,
                push.commit[:12],
                forge,
                push.delivery or "-",
            )
        return Answer(
            202 if sent else 200,
            {"requested": sent, "already_requested": repeated, "rules_matched": len(wanted)},
        )
