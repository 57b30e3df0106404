"""The broker must not take a build away from a builder that is still working on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgline.builder.settings import BuilderConfig
from imgline.core.broker import CONSUMER_TIMEOUT_MS

pytestmark = pytest.mark.unit

CONF = Path(__file__).resolve().parents[3] / "deploy" / "rabbitmq" / "rabbitmq.conf"


def test_deployed_consumer_timeout_outlasts_a_build_and_matches_the_private_broker() -> None:
    [value] = [
        int(line.split("=")[1])
        for line in CONF.read_text().splitlines()
        if line.startswith("consumer_timeout")
    ]
    assert value == CONSUMER_TIMEOUT_MS
    assert value > BuilderConfig().build_timeout_seconds * 1000
