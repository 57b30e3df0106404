"""The ack / requeue / dead-letter decision, table-driven."""

from __future__ import annotations

import pytest

from imgline.core.bus.policy import (
    Outcome,
    Settled,
    Verdict,
    attempt_number,
    decide,
    retry_delay,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("outcome", "attempt", "limit", "verdict", "reason"),
    [
        (Outcome.DONE, 1, 5, Verdict.ACK, ""),
        (Outcome.DONE, 5, 5, Verdict.ACK, ""),
        (Outcome.INVALID, 1, 5, Verdict.DEAD_LETTER, "invalid message: boom"),
        (Outcome.PERMANENT, 1, 5, Verdict.DEAD_LETTER, "permanent failure: boom"),
        (Outcome.TRANSIENT, 1, 5, Verdict.REQUEUE, "attempt 1 of 5 failed: boom"),
        (Outcome.CRASHED, 4, 5, Verdict.REQUEUE, "attempt 4 of 5 failed: boom"),
        (Outcome.CRASHED, 5, 5, Verdict.DEAD_LETTER, "gave up after 5 attempts (limit 5): boom"),
        (Outcome.TRANSIENT, 9, 5, Verdict.DEAD_LETTER, "gave up after 9 attempts (limit 5): boom"),
        (Outcome.TRANSIENT, 1, 1, Verdict.DEAD_LETTER, "gave up after 1 attempts (limit 1): boom"),
    ],
)
def test_decide(outcome: Outcome, attempt: int, limit: int, verdict: Verdict, reason: str) -> None:
    decision = decide(outcome, "boom", attempt, limit)
    assert (decision.verdict, decision.reason) == (verdict, reason)


@pytest.mark.parametrize(
    ("header", "attempt"),
    [(None, 1), (0, 1), (1, 2), (4, 5), (-1, 1), ("3", 1), (True, 1), (2.5, 1)],
)
def test_attempt_number_trusts_only_a_sane_delivery_count(header: object, attempt: int) -> None:
    assert attempt_number(header) == attempt


@pytest.mark.parametrize(
    ("delivery_count", "earlier", "attempt"),
    [
        (None, None, 1),
        (None, 2, 3),  # a broker that no longer counts requeues: our header still does
        (1, 2, 4),  # a copy sent back twice, then redelivered once by the broker
        (0, -5, 1),
        (0, "7", 1),
        (0, False, 1),
        (None, 10**12, 10**12 + 1),
    ],
)
def test_attempt_number_adds_the_consumers_own_count(
    delivery_count: object, earlier: object, attempt: int
) -> None:
    assert attempt_number(delivery_count, earlier) == attempt


@pytest.mark.parametrize(
    ("base", "attempt", "delay"),
    [(0, 3, 0.0), (1.0, 1, 1.0), (1.0, 2, 2.0), (1.0, 4, 8.0), (1.0, 30, 60.0), (0.5, 3, 2.0)],
)
def test_retry_delay_backs_off_exponentially_with_a_cap(
    base: float, attempt: int, delay: float
) -> None:
    assert retry_delay(base, attempt) == delay


def test_a_settled_message_is_recognised_once() -> None:
    settled = Settled()
    settled.add("m1")
    assert not settled.take("m2")
    assert settled.take("m1")
    assert not settled.take("m1")  # a later copy of it is handled as usual


@pytest.mark.parametrize("message_id", [None, "", 7, b"m1"])
def test_a_message_without_a_usable_id_is_never_taken_for_settled(message_id: object) -> None:
    settled = Settled()
    settled.add(message_id)
    assert not settled.take(message_id)


def test_settled_keeps_only_the_newest_ids() -> None:
    settled = Settled(limit=2)
    for message_id in ("a", "b", "c"):
        settled.add(message_id)
    assert [settled.take(m) for m in ("a", "b", "c")] == [False, True, True]
