"""Who may do what on the bus: the permissions each service's user gets, checked as RabbitMQ
would check them (its patterns are regular expressions matched with search semantics)."""

from __future__ import annotations

import re

import pytest

from imgline.core.bus import access
from imgline.core.config import BusSettings

pytestmark = pytest.mark.unit

S = BusSettings(service="any")


def _allows(pattern: str, name: str) -> bool:
    return re.search(pattern, name) is not None


def _topic(user: str, exchange: str, what: str) -> str:
    [entry] = [
        t
        for t in access.topic_permissions(access.ROLE_BY_USER[user], S)
        if t["exchange"] == exchange
    ]
    return entry[what]


@pytest.mark.parametrize(
    ("user", "key", "allowed"),
    [
        ("trigger", "imgline.build.requested", True),
        ("trigger", "imgline.image.tested", False),
        ("builder", "imgline.image.built", True),
        ("builder", "imgline.build.failed", True),
        ("builder", "imgline.image.tested", False),
        ("builder", "imgline.image.built.extra", False),
        ("builder", "xxximgline.image.built", False),
        ("tester", "imgline.image.tested", True),
        ("tester", "imgline.image.published.stable", False),
        ("publisher", "imgline.image.published.stable", True),
        ("publisher", "imgline.image.rejected", True),
        ("publisher", "imgline.image.published", False),
        ("publisher", "imgline.image.tested", False),
        ("updater", "imgline.host.upgraded", True),
        ("updater", "imgline.host.upgrade.failed", True),
        ("updater", "imgline.host.rolled_back", True),
        ("updater", "imgline.image.published.stable", False),
        ("updater", "imgline.build.requested", False),
    ],
)
def test_each_user_publishes_only_its_own_topics(user: str, key: str, allowed: bool) -> None:
    assert _allows(_topic(user, "imgline", "write"), key) is allowed


def test_users_bind_only_what_they_consume_and_dead_letter_only_that() -> None:
    assert _allows(_topic("builder", "imgline", "read"), "imgline.build.requested")
    assert not _allows(_topic("builder", "imgline", "read"), "imgline.#")
    assert _allows(_topic("updater", "imgline", "read"), "imgline.image.published.stable")
    assert _allows(_topic("updater", "imgline", "read"), "imgline.image.published.#")
    assert not _allows(_topic("updater", "imgline", "read"), "imgline.host.upgraded")
    # dead letters keep the consumed message's key: a builder cannot plant an image.tested
    assert _allows(_topic("builder", "imgline.dlx", "write"), "imgline.build.requested")
    assert not _allows(_topic("builder", "imgline.dlx", "write"), "imgline.image.tested")
    assert not _allows(_topic("trigger", "imgline.dlx", "write"), "imgline.build.requested")


def test_no_user_may_configure_the_shared_topology_or_read_another_queue() -> None:
    shared = ["imgline", "imgline.dlx", "imgline.events", "imgline.dead-letter"]
    for role in access.ROLES:
        perms = access.permissions(role, S)
        assert not any(_allows(perms["configure"], name) for name in shared), role.user
        for other in ("builder", "tester", "publisher"):
            queue = f"imgline.{other}"
            assert _allows(perms["read"], queue) is (other == role.user), (role.user, queue)
    updater = access.permissions(access.ROLE_BY_USER["updater"], S)
    assert _allows(updater["configure"], "imgline.updater.4f0c2a")
    assert not _allows(updater["configure"], "imgline.updater")
    assert not _allows(updater["configure"], "imgline.builder")


def test_names_come_from_the_settings_and_are_escaped() -> None:
    s = BusSettings(service="any", exchange="acme.bus", topic_prefix="acme")
    perms = access.permissions(access.ROLE_BY_USER["builder"], s)
    assert _allows(perms["configure"], "acme.bus.builder")
    assert not _allows(perms["configure"], "acmeXbus.builder")  # the dot is not a wildcard
    [main, _dlx, retry] = access.topic_permissions(access.ROLE_BY_USER["builder"], s)
    assert main["exchange"] == "acme.bus"
    assert _allows(main["write"], "acme.image.built")
    assert retry["exchange"] == "acme.bus.retry"
    assert _allows(retry["write"], "acme.bus.builder")


@pytest.mark.parametrize(
    ("user", "queue", "allowed"),
    [
        ("builder", "imgline.builder", True),
        ("builder", "imgline.tester", False),
        ("builder", "imgline.builder.x", False),
        ("tester", "imgline.tester", True),
        ("publisher", "imgline.publisher", True),
        ("publisher", "imgline.builder", False),
        ("updater", "imgline.updater.4f0c2a", True),
        ("updater", "imgline.publisher", False),
        ("trigger", "imgline.builder", False),
        ("trigger", "imgline.trigger", False),
    ],
)
def test_a_service_sends_retries_to_and_binds_only_its_own_queue(
    user: str, queue: str, allowed: bool
) -> None:
    # on the retry exchange the routing key is the queue: a tester cannot push a message into
    # the builder's queue that way
    for what in ("write", "read"):
        assert _allows(_topic(user, "imgline.retry", what), queue) is allowed, what
    perms = access.permissions(access.ROLE_BY_USER[user], S)
    assert _allows(perms["write"], "imgline.retry") is (user != "trigger")


def test_password_hash_is_rabbitmqs_salted_sha256() -> None:
    # the hashing RabbitMQ documents: base64(salt + sha256(salt + utf8 password))
    assert access.password_hash("test12", bytes.fromhex("908DC60A")) == (
        "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR"
    )
