"""What to do with a delivery once its handler has finished: pure, so it is tested by table.

The rule that stops poison-message loops lives here: a message is tried at most
``delivery_limit`` times, and a message that can never succeed is dead-lettered at once.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from contextvars import ContextVar
from dataclasses import dataclass


class Outcome(enum.Enum):
    """How handling one delivery ended."""

    DONE = "done"
    INVALID = "invalid"  # failed schema validation or no handler for it
    PERMANENT = "permanent"  # handler raised PermanentError
    TRANSIENT = "transient"  # handler raised TransientError
    CRASHED = "crashed"  # handler raised something unexpected


class Verdict(enum.Enum):
    ACK = "ack"
    REQUEUE = "requeue"
    DEAD_LETTER = "dead-letter"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str = ""


@dataclass(frozen=True)
class Attempt:
    """Which try of a message a handler is on; on the ``last`` one a transient error is final."""

    number: int
    limit: int

    @property
    def last(self) -> bool:
        return self.number >= self.limit


#: The try in hand, set by the consumer around each handler call (each runs on its own thread).
CURRENT_ATTEMPT: ContextVar[Attempt | None] = ContextVar("imgline_attempt", default=None)


def _count(value: object) -> int:
    """A non-negative count from a header anyone could have set, else 0."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return 0


def attempt_number(delivery_count: object, earlier_attempts: object = None) -> int:
    """1 for a first delivery. ``earlier_attempts`` is the consumer's own count, carried in a
    header by the copies it sends back through the retry exchange; the quorum queue's
    ``x-delivery-count`` counts redeliveries of this copy (a requeue, a consumer that died).
    Both are counted, so the delivery limit holds on every RabbitMQ version, whichever of the
    two a broker keeps."""
    return _count(earlier_attempts) + _count(delivery_count) + 1


def decide(outcome: Outcome, error: str, attempt: int, limit: int) -> Decision:
    """Ack, requeue for another try, or dead-letter with a reason a person can act on."""
    if outcome is Outcome.DONE:
        return Decision(Verdict.ACK)
    if outcome is Outcome.INVALID:
        return Decision(Verdict.DEAD_LETTER, f"invalid message: {error}")
    if outcome is Outcome.PERMANENT:
        return Decision(Verdict.DEAD_LETTER, f"permanent failure: {error}")
    if attempt >= limit:
        return Decision(
            Verdict.DEAD_LETTER, f"gave up after {attempt} attempts (limit {limit}): {error}"
        )
    return Decision(Verdict.REQUEUE, f"attempt {attempt} of {limit} failed: {error}")


def retry_delay(base_seconds: float, attempt: int, cap_seconds: float = 60.0) -> float:
    """Exponential back-off before a failed message goes back to the queue."""
    if base_seconds <= 0:
        return 0.0
    return float(min(cap_seconds, base_seconds * 2 ** max(0, attempt - 1)))


class Settled:
    """Message ids whose handler finished while the broker connection was down.

    Their acks went with the connection, so the broker hands the same message out again.
    Handling it again would be safe (stages replay their stored result) but would announce
    the result a second time. A delivery whose message id is here is acknowledged as done
    instead, once. Bounded: only a broker outage fills it, and the oldest ids go first."""

    def __init__(self, limit: int = 1000) -> None:
        self.limit = limit
        self._ids: OrderedDict[str, None] = OrderedDict()

    def add(self, message_id: object) -> None:
        if not isinstance(message_id, str) or not message_id:
            return  # without an id a redelivery cannot be recognised: it is handled again
        self._ids[message_id] = None
        while len(self._ids) > self.limit:
            self._ids.popitem(last=False)

    def take(self, message_id: object) -> bool:
        """Whether ``message_id`` was settled; it is forgotten either way."""
        if not isinstance(message_id, str):
            return False
        return self._ids.pop(message_id, False) is None
