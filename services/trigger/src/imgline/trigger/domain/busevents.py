"""Push messages that forges publish on a message bus, read into a ``Push``.

Pure: topic, headers and body in, a ``Push`` (or None: nothing to build) out, or a
``PayloadError`` saying what is wrong. Three shapes are read (docs/architecture.md, "Trigger"):

``pagure``
    Pagure's ``pagure.git.receive`` (pagure_messages ``GitReceiveV1``; on the bus as
    ``io.pagure.prod.pagure.git.receive``, and ``org.fedoraproject.prod.pagure.git.receive`` for
    Fedora's dist-git): one message per pushed branch, with ``repo.fullname``, ``branch``
    (``main`` or ``refs/heads/main``) and the pushed range ``start_commit`` .. ``end_commit``.
    It names no files, so a push counts as touching every path.
``distgit``
    The per-commit ``git.receive`` of Fedora's dist-git hook (``org.fedoraproject.prod.git
    .receive``): ``{"commit": {"namespace", "repo", "branch", "rev", "stats": {"files": {...}}}}``,
    one message per new commit, oldest first. Each commit names its changed files.
``github``, ``gitlab``, ``gitea``, ``forgejo``
    A forge's webhook body, forwarded onto the bus by a relay the site runs; the event name
    and delivery id are read from the message headers of the same names when the relay kept
    them (a push is assumed otherwise).

Nothing of the message reaches a command line: the branch and repository must pass the
``Push`` model's checks, the commit must be a full hex sha, and the repository is only matched
against the rules, which name the URL to clone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

from imgline.trigger.domain import forges
from imgline.trigger.domain.forges import Push, json_object, make_push
from imgline.trigger.errors import PayloadError

BusFormat = Literal["pagure", "distgit", "github", "gitlab", "gitea", "forgejo"]
BUS_FORMATS: tuple[BusFormat, ...] = ("pagure", "distgit", "github", "gitlab", "gitea", "forgejo")

#: What a message id may be to become part of a request id; others are left out.
_MESSAGE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
#: A full commit id (sha1 or sha256): what a build is pinned to.
_SHA = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")
#: More changed files than this in one commit: counted as touching every path.
MAX_PATHS = 10_000


def delivery_id(message_id: object) -> str | None:
    """The message id when it is a plain token (fedora-messaging sends a UUID), else None."""
    if isinstance(message_id, str) and _MESSAGE_ID.fullmatch(message_id):
        return message_id
    return None


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise PayloadError(f"the message has no {what} (a non-empty string)")
    return value


def _sha(value: object, what: str) -> str:
    text = _text(value, what)
    if not _SHA.fullmatch(text):
        raise PayloadError(f"{what} {text[:80]!r} is not a full commit id")
    return text


def _is_receive(topic: str) -> bool:
    """``git.receive`` under any prefix (``org.fedoraproject.prod.pagure.``, ...)."""
    return topic == "git.receive" or topic.endswith(".git.receive")


def parse_pagure(topic: str, body: bytes, message_id: object) -> Push | None:
    """The push a ``pagure.git.receive`` message describes; None for another Pagure topic or
    a ref that is not a branch (Pagure sends tags through the same hook)."""
    if not _is_receive(topic):
        return None
    data = json_object(body, "pagure.git.receive message")
    repo = data.get("repo")
    if not isinstance(repo, dict):
        raise PayloadError("the pagure.git.receive message has no repo object")
    name = _text(repo.get("fullname"), "repo.fullname")
    ref = _text(data.get("branch"), "branch")
    if ref.startswith("refs/"):
        if not ref.startswith("refs/heads/"):
            return None  # refs/tags/…, refs/notes/…: no branch, nothing to build
        ref = ref.removeprefix("refs/heads/")
    commit = _sha(data.get("end_commit"), "end_commit")
    return make_push(
        forge="pagure",
        repository=name,
        branch=ref,
        commit=commit,
        changed_paths=frozenset(),
        paths_complete=False,
        delivery=delivery_id(message_id),
    )


def _stat_paths(stats: object) -> tuple[frozenset[str], bool]:
    """The files of a dist-git commit's ``stats``; incomplete when they are missing."""
    files = stats.get("files") if isinstance(stats, dict) else None
    if not isinstance(files, dict) or len(files) > MAX_PATHS:
        return frozenset(), False
    if not all(isinstance(path, str) and path for path in files):
        raise PayloadError("commit.stats.files is not a map of paths")
    return frozenset(files), True


def parse_distgit(topic: str, body: bytes, message_id: object) -> Push | None:
    """The commit a dist-git ``git.receive`` message announces, as a push of that commit."""
    if not _is_receive(topic):
        return None
    data = json_object(body, "git.receive message")
    commit = data.get("commit")
    if not isinstance(commit, dict):
        raise PayloadError("the git.receive message has no commit object")
    repo = _text(commit.get("repo"), "commit.repo")
    namespace = commit.get("namespace")
    if namespace is not None:
        repo = f"{_text(namespace, 'commit.namespace')}/{repo}"
    paths, complete = _stat_paths(commit.get("stats"))
    return make_push(
        forge="pagure",
        repository=repo,
        branch=_text(commit.get("branch"), "commit.branch"),
        commit=_sha(commit.get("rev"), "commit.rev"),
        changed_paths=paths,
        paths_complete=complete,
        delivery=delivery_id(message_id),
    )


def _headers(headers: Mapping[str, object]) -> dict[str, str]:
    """The string-valued headers (AMQP headers may hold numbers, tables, bytes)."""
    out: dict[str, str] = {}
    for key, raw in headers.items():
        value = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        if isinstance(key, str) and isinstance(value, str):
            out[key] = value[:256]
    return out


def parse_forwarded(
    forge: forges.Forge, headers: Mapping[str, object], body: bytes, message_id: object
) -> Push | None:
    """A forge's webhook body relayed onto the bus: read exactly as the webhook reads it. Its
    delivery id is kept only when it is a plain token, else the message id stands in."""
    given = _headers(headers)
    push = forges.parse(forge, forges.forwarded_event(forge, given), given, body)
    if push is not None and delivery_id(push.delivery) is None:
        push = push.model_copy(update={"delivery": delivery_id(message_id)})
    return push


def parse(
    fmt: BusFormat, topic: str, headers: Mapping[str, object], body: bytes, message_id: object
) -> Push | None:
    """The push a message of format ``fmt`` describes; None when it needs no build."""
    if fmt == "pagure":
        return parse_pagure(topic, body, message_id)
    if fmt == "distgit":
        return parse_distgit(topic, body, message_id)
    return parse_forwarded(fmt, headers, body, message_id)
