"""Fixtures shared by the cross-service tests: a private RabbitMQ node and bus helpers."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from imgline.core import logs
from imgline.core.broker import PrivateBroker
from imgline.core.bus import topology
from imgline.core.config import BusSettings
from imgline.core.userns import BuildUser, UsernsError

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
def settings(amqp_url: str) -> Callable[..., BusSettings]:
    """Settings with names unique to the test, so tests never see each other's messages. The
    shared part of their topology is declared here, by the administrator, as on a deployed
    broker (services only check that it exists)."""
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
        made = BusSettings(**values)
        conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
        try:
            topology.declare(conn.channel(), topology.shared_topology(made))
        finally:
            conn.close()
        return made

    return make


@pytest.fixture
def build_tmp() -> Iterator[Path]:
    """Like ``tmp_path``, but reachable by the build user's namespace (pytest's directories
    are private to root): work directories of unshare-mode builds go here."""
    from nodeimage import scratch  # noqa: PLC0415 - tests/ is on the path only under pytest

    path = scratch()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _build_user_reaches_the_checkout() -> None:
    """Unshare-mode test builds run as the build user, whose namespace reads and writes under
    ``.cache/``: let it through the directories above the checkout (a checkout under /root or a
    0700 home), by ACL for its two ids only. Without root or the user, builds say what fails."""
    from nodeimage import BUILD_USER, CACHE  # noqa: PLC0415 - tests/ is on the path only here

    if os.geteuid() != 0:
        return
    try:
        user = BuildUser.lookup(BUILD_USER)
    except UsernsError:
        return  # make deps creates it; the tests that build say so
    CACHE.mkdir(exist_ok=True)
    user.reach(CACHE)
