"""The one shape of every pipeline handler: replay a stored result, else do the work once, in a
scratch directory, under a lock per work key, and always end in an event.

Delivery is at-least-once, and several instances of a service may share a store. So before
working, a stage looks for the result it stored last time and, if there is one, announces it
again (``replay``): this is imgline's one idempotency mechanism. The work runs under an
exclusive lock per key (a build, a verdict), so two instances never do the same work at once;
the second one is told to retry and then finds the first one's result.

The error model (docs/architecture.md, "Errors and idempotency"): a ``PermanentError`` is an
outcome, not a crash. The stage turns it into its failure event (``build.failed``, a failed
``image.tested``, ``image.rejected``) and the message is acknowledged. A ``TransientError``
propagates, so the consumer retries the message, until the last try its delivery limit allows:
there the error is final too (``RetriesExhaustedError``) and ends in the failure event. Only
messages that cannot be decoded, or that fail before the work starts (the store unreadable on
every try), are dead-lettered.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from fedora_messaging import message as fm_message

from imgline.core.bus.policy import CURRENT_ATTEMPT
from imgline.core.errors import PermanentError, RetriesExhaustedError, TransientError
from imgline.core.fsutil import remove_tree

log = logging.getLogger(__name__)

P = TypeVar("P")
PayloadT = TypeVar("PayloadT")

Publish = Callable[[fm_message.Message], None]

#: Where stages that share an artifact store keep their locks (``<store>/.locks``): a dot
#: name, so it can never be a record namespace.
LOCKS = ".locks"


class Stage(Protocol[P]):
    """What differs between the services: what the request really names, where to look for a
    stored result, the work, and the event a permanent failure ends in."""

    def resolve(self, payload: P) -> P:
        """The payload with what it leaves open settled (the builder resolves a branch to its
        commit, which is part of the build's identity); most stages return it as it is."""
        ...

    def key(self, payload: P) -> str:
        """Names the work: its lock and its scratch directory (a safe file name)."""
        ...

    def replay(self, payload: P) -> fm_message.Message | None:
        """The event for a result stored by an earlier delivery, or None."""
        ...

    def run(self, payload: P, workdir: Path) -> fm_message.Message | None:
        """Do the work in ``workdir`` (empty, private); store the result; return its event
        (None only when there is truly nothing to announce, e.g. a long-retired release)."""
        ...

    def failed(self, payload: P, error: PermanentError, workdir: Path) -> fm_message.Message:
        """The failure event for ``error`` (``workdir`` still holds what ``run`` left; it does
        not exist when ``resolve`` failed)."""
        ...


@contextmanager
def exclusive(lock_dir: Path, key: str, *, wait_seconds: float = 0.0) -> Iterator[None]:
    """Hold ``<lock_dir>/<key>.lock`` for the block, or raise ``TransientError`` when another
    process still holds it after ``wait_seconds`` (0: at once). The kernel drops the lock when
    its holder dies, so a crash never leaves it taken."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    path = lock_dir / f"{key}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + wait_seconds
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError as exc:
                if time.monotonic() >= deadline:
                    raise TransientError(
                        f"{key} is being worked on by another instance or command (lock "
                        f"{path}); try again once it is done"
                    ) from exc
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        yield
    finally:
        os.close(fd)


class StageHandler(Generic[PayloadT]):
    """A consumer handler (``Consumer.on(cls, handler)``) that runs ``stage`` for a message."""

    def __init__(
        self,
        stage: Stage[PayloadT],
        *,
        work_dir: Path,
        lock_dir: Path,
        publish: Publish,
        keep_workdir: bool = False,
    ) -> None:
        self.stage = stage
        self.work_dir = work_dir
        self.lock_dir = lock_dir
        self.publish = publish
        self.keep_workdir = keep_workdir

    def __call__(self, msg: Any) -> None:
        event = self.handle(msg.payload)
        if event is not None:
            self.publish(event)

    def handle(self, payload: PayloadT) -> fm_message.Message | None:
        """The event that answers ``payload``: a stored result, new work's, or a failure."""
        try:
            payload = self.stage.resolve(payload)
        except (PermanentError, TransientError) as exc:
            return self._failure(payload, exc, self.work_dir / "unresolved")
        event = self.stage.replay(payload)
        if event is not None:
            log.info("%s: result stored by an earlier delivery, announced again", event.topic)
            return event
        key = self.stage.key(payload)
        with exclusive(self.lock_dir, key):
            # another instance may have finished while this delivery waited
            return self.stage.replay(payload) or self._work(payload, key)

    def _work(self, payload: PayloadT, key: str) -> fm_message.Message | None:
        workdir = self.work_dir / key
        remove_tree(workdir)  # what a crashed earlier attempt left
        workdir.mkdir(parents=True, mode=0o700)
        try:
            try:
                return self.stage.run(payload, workdir)
            except (PermanentError, TransientError) as exc:
                return self._failure(payload, exc, workdir)
        finally:
            if not self.keep_workdir:
                remove_tree(workdir)

    def _failure(
        self, payload: PayloadT, exc: PermanentError | TransientError, workdir: Path
    ) -> fm_message.Message:
        """The failure event for a permanent error, or for a transient one on the last try;
        any other transient error is raised again, for the consumer to retry."""
        if isinstance(exc, TransientError):
            attempt = CURRENT_ATTEMPT.get()
            if attempt is None or not attempt.last:
                raise exc
            exc = RetriesExhaustedError(attempt.number, exc)
        log.warning("failed for good: %s", exc)
        return self.stage.failed(payload, exc, workdir)
