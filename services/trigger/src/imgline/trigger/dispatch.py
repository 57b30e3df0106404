"""A push, asked for: the build requests its rules give, each sent once per repeat window.

Shared by the webhook and the bus consumer, so a push is handled alike whichever way it came
(and, with one ``Seen``, requested once when it comes both ways).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from imgline.core.errors import ImglineError
from imgline.schemas import payloads as p
from imgline.trigger.domain.forges import Push
from imgline.trigger.domain.rules import Rules, Seen, requests

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dispatched:
    """What became of a push: build_ids sent and already sent, the rules that matched, and
    ``failure`` when the bus did not take a request (the rest were not tried)."""

    sent: list[str] = field(default_factory=list)
    repeated: list[str] = field(default_factory=list)
    matched: int = 0
    failure: str | None = None

    @property
    def result(self) -> str:
        """The metrics label: requested, repeated, no_build or bus_unavailable."""
        if self.failure is not None:
            return "bus_unavailable"
        return "requested" if self.sent else "repeated" if self.repeated else "no_build"


def dispatch(
    rules: Rules, push: Push, seen: Seen, publish: Callable[[p.BuildRequested], None]
) -> Dispatched:
    """Publish each request ``push`` gives that was not sent lately; on a bus failure, forget
    the failed one (the sender's retry must get through) and stop."""
    wanted = requests(rules, push)
    sent: list[str] = []
    repeated: list[str] = []
    for req in wanted:
        if not seen.first(req.build_id):
            repeated.append(req.build_id)
            continue
        try:
            publish(req)
        except ImglineError as exc:
            seen.forget(req.build_id)
            log.error("build.requested for %s not sent: %s", req.name, exc)
            return Dispatched(sent, repeated, len(wanted), str(exc))
        sent.append(req.build_id)
        log.info(
            "build_id=%s requested: %s %s@%s (%s push %s)",
            req.build_id,
            req.name,
            push.repository,
            push.commit[:12],
            push.forge,
            push.delivery or "-",
        )
    return Dispatched(sent, repeated, len(wanted))
