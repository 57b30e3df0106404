"""Fixtures shared by the cross-service tests: a private RabbitMQ node and bus helpers."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from imgline.core import logs
from imgline.core.broker import PrivateBroker
from imgline.core.config import BusSettings

logs.configure("INFO")


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    """``$IMGLINE_AMQP_URL``, else one private node for the whole session."""
    given = os.environ.get("IMGLINE_AMQP_URL")
    if given:
        yield given
        return
    with PrivateBroker() as broker:
        yield broker.url


@pytest.fixture
def settings() -> Callable[..., BusSettings]:
    """Settings with names unique to the test, so tests never see each other's messages."""
    tag = uuid.uuid4().hex[:8]

    def make(**overrides: Any) -> BusSettings:
        values: dict[str, Any] = {
            "service": "svc",
            "exchange": f"t{tag}",
            "dead_letter_exchange": f"t{tag}.dlx",
            "dead_letter_queue": f"t{tag}.dead-letter",
            "retry_delay_seconds": 0.05,
            "shutdown_grace_seconds": 10,
            "reconnect_max_seconds": 2,
        }
        values.update(overrides)
        return BusSettings(**values)

    return make
