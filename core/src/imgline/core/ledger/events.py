"""One recorded event: the fields the ledger indexes, taken from a validated payload."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from imgline.schemas import payloads as p

#: The events that end a build's way through the pipeline.
TERMINAL = frozenset({"build.failed", "image.rejected", "image.published"})
#: Host reports, and the version each leaves the host running.
HOST_TOPICS = ("host.upgraded", "host.upgrade.failed", "host.rolled_back")


@dataclass(frozen=True)
class Event:
    """An event as the ledger stores it. ``topic`` is the payload's topic (``image.published``,
    never ``image.published.<stream>``); ``at`` is its ``emitted_at`` in seconds since the epoch.

    ``request_id`` ties a request to what the builder made of it: a request for a branch has
    one build id, the build of the commit it resolved to another (the builder pins it), and
    ``image.built`` and ``build.failed`` name the request they answer.
    """

    id: str
    topic: str
    at: float
    build_id: str | None
    request_id: str | None
    name: str | None
    stream: str | None
    version: str | None
    host_id: str | None
    body: dict[str, Any]


def of_payload(message_id: str, payload: p.Payload) -> Event:
    """The indexed fields of ``payload``; the body is kept whole for ``imgline status``."""
    build_id = getattr(payload, "build_id", None)
    request_id = getattr(payload, "request_id", None)
    name = getattr(payload, "name", None)
    stream = getattr(payload, "stream", None)
    version = getattr(payload, "version", None)
    host_id = None
    if isinstance(payload, p.ImageTested | p.ImageRejected):
        name, stream, version = payload.image.name, payload.image.stream, payload.image.version
    elif isinstance(payload, p.HostEvent):
        version, host_id = payload.to_version, payload.host_id
    return Event(
        id=message_id,
        topic=payload.topic,
        at=payload.emitted_at.timestamp(),
        build_id=build_id or None,
        request_id=request_id or None,
        name=name,
        stream=stream,
        version=version,
        host_id=host_id,
        body=payload.model_dump(mode="json"),
    )


def host_runs(event: Event) -> str | None:
    """The version a host runs after reporting ``event``: the new one when it upgraded, the one
    it had before when the upgrade failed or was rolled back (``None`` if it never said)."""
    if event.topic == "host.upgraded":
        return event.version
    previous = event.body.get("from_version")
    return previous if isinstance(previous, str) else None
