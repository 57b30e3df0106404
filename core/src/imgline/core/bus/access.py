"""Who may do what on the bus: one RabbitMQ user per service, as data.

A message is only as trustworthy as the user who could have sent it. So each service logs in
as its own user, in the pipeline's own vhost, and RabbitMQ's topic permissions let it publish
only the topics it owns: a stolen tester password cannot announce a published image, and a
forged ``image.tested`` can only come from the tester's account. The same data renders the
users and permissions of ``deploy/rabbitmq/definitions.json`` and of the private broker that
the demo and the tests start (docs/security.md, "The bus").

Topics are written as binding keys after the prefix; a last word ``#`` stands for one or more
words (``image.published.#`` is every stream's release).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from imgline.core.config import BusSettings
from imgline.schemas.messages import ALL_MESSAGES

#: The vhost every imgline service lives in; ``guest`` and ``/`` play no part.
VHOST = "imgline"
#: The private broker's administrator: topology, inspection, dead-letter replays.
ADMIN = "imgline-admin"


@dataclass(frozen=True)
class Role:
    """A service's user: the topics it consumes (its queue's bindings) and those it publishes.

    ``per_host`` roles (the host updaters) each declare a queue of their own at run time,
    ``<exchange>.<user>.<host id>``, instead of sharing ``<exchange>.<user>``.
    """

    user: str
    consumes: tuple[str, ...] = ()
    publishes: tuple[str, ...] = ()
    per_host: bool = False


ROLES: tuple[Role, ...] = (
    Role("trigger", publishes=("build.requested",)),
    Role("builder", consumes=("build.requested",), publishes=("build.failed", "image.built")),
    Role("tester", consumes=("image.built",), publishes=("image.tested",)),
    # the publisher's rollout controller pauses a release its hosts roll back (docs/security.md)
    Role(
        "publisher",
        consumes=("image.tested", "host.upgraded", "host.rolled_back"),
        publishes=("image.published.#", "image.rejected"),
    ),
    Role(
        "updater",
        consumes=("image.published.#",),
        publishes=("host.upgraded", "host.upgrade.failed", "host.rolled_back"),
        per_host=True,
    ),
    # the ledger records every event (imgline status, fleet metrics) and publishes nothing
    Role("ledger", consumes=tuple(m.binding() for m in ALL_MESSAGES)),
)
ROLE_BY_USER: dict[str, Role] = {r.user: r for r in ROLES}

_NEVER = "^$"


def _word(word: str) -> str:
    if word == "*":
        return r"[^.]+"
    return re.escape(word)


def topic_regex(prefix: str, topics: tuple[str, ...]) -> str:
    """The routing keys ``<prefix>.<topic>`` for ``topics``, anchored; matches nothing if empty.

    A binding key such as ``imgline.image.published.#`` matches too, since RabbitMQ checks the
    keys a queue is bound with against the same kind of pattern."""
    if not topics:
        return _NEVER
    alternatives = []
    for topic in sorted(topics):
        words = topic.split(".")
        tail = ""
        if words[-1] == "#":
            words, tail = words[:-1], r"\..+"
        alternatives.append(r"\.".join(_word(w) for w in words) + tail)
    return f"^{re.escape(prefix)}\\.({'|'.join(alternatives)})$"


def _anchored(*bodies: str) -> str:
    return "^(" + "|".join(bodies) + ")$"


def _queue_body(role: Role, settings: BusSettings) -> str:
    """The queue(s) ``role`` consumes from: its own, or one per host for per-host roles."""
    base = re.escape(f"{settings.exchange}.{role.user}")
    return f"{base}\\.[A-Za-z0-9._-]+" if role.per_host else base


def permissions(role: Role, settings: BusSettings) -> dict[str, str]:
    """configure/write/read for ``role``: declare and bind only its own queue, publish to the
    pipeline exchange (and, for what it consumes, to the dead-letter and retry exchanges), read
    only its own queue. Nothing may configure the exchanges or the shared queues."""
    ex = re.escape(settings.exchange)
    if not role.consumes:
        return {"configure": _NEVER, "write": _anchored(ex), "read": _NEVER}
    own = _queue_body(role, settings)
    retry = re.escape(settings.retry_exchange_name)
    return {
        "configure": _anchored(own),
        "write": _anchored(own, ex, re.escape(settings.dead_letter_exchange), retry),
        "read": _anchored(own, ex, retry),
    }


def topic_permissions(role: Role, settings: BusSettings) -> list[dict[str, str]]:
    """Topic permissions on every exchange (an exchange with none would allow every key).

    On the pipeline exchange it writes what it publishes and binds only what it consumes. On the
    dead-letter exchange it writes only the keys of messages it consumed (dead-letters keep the
    original key), so its dead letters cannot pose as anyone else's. On the retry exchange the
    key is a queue's name, and it may send to and bind only its own queue(s)."""
    prefix = settings.topic_prefix
    consumed = topic_regex(prefix, role.consumes)
    own = _anchored(_queue_body(role, settings)) if role.consumes else _NEVER
    return [
        {
            "exchange": settings.exchange,
            "write": topic_regex(prefix, role.publishes),
            "read": consumed,
        },
        {"exchange": settings.dead_letter_exchange, "write": consumed, "read": _NEVER},
        {"exchange": settings.retry_exchange_name, "write": own, "read": own},
    ]


def password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256``: base64(salt + sha256(salt + password))."""
    salt = os.urandom(4) if salt is None else salt
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def account_definitions(
    settings: BusSettings,
    passwords: Mapping[str, str] | None = None,
    *,
    admin: bool = False,
    vhost: str = VHOST,
) -> dict[str, Any]:
    """``vhosts``, ``users``, ``permissions`` and ``topic_permissions`` in RabbitMQ's format.

    A user without a password in ``passwords`` gets an empty hash: it cannot log in until an
    operator sets one (``rabbitmqctl change_password``), so the committed definitions carry no
    secret. ``admin`` adds the administrator user with every permission."""
    passwords = passwords or {}
    users: list[dict[str, Any]] = []
    perms: list[dict[str, Any]] = []
    topics: list[dict[str, Any]] = []
    names: list[tuple[str, Role | None]] = [(r.user, r) for r in ROLES]
    if admin:
        names.insert(0, (ADMIN, None))
    for user, role in names:
        pw = passwords.get(user)
        users.append(
            {
                "name": user,
                "password_hash": password_hash(pw) if pw else "",
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": ["administrator"] if role is None else [],
            }
        )
        if role is None:
            perms.append(
                {"user": user, "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"}
            )
            continue
        perms.append({"user": user, "vhost": vhost, **permissions(role, settings)})
        topics += [{"user": user, "vhost": vhost, **t} for t in topic_permissions(role, settings)]
    return {
        "vhosts": [{"name": vhost}],
        "users": users,
        "permissions": perms,
        "topic_permissions": topics,
    }
