"""Host reports kept on disk until the bus has them.

The health check that decides ``host.upgraded`` or ``host.rolled_back`` runs at boot, before the
network may be up, and an apply may fail while the broker is away; a report sent straight to
the bus would then be lost, and the fleet view would never learn what the host did. So every
report is first written here, one file per report, and ``flush`` sends them in the order they
were written, deleting each only once the broker confirmed it. Delivery is at least once: a
crash between the confirm and the delete sends a report again, with the same message id.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fedora_messaging import message as fm_message
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from imgline.core.fsutil import fsync_dir
from imgline.schemas import messages as m
from imgline.schemas import payloads as p

log = logging.getLogger(__name__)

#: ``<sequence>-<topic>.json``: the zero-padded sequence sorts in the order of ``put``.
_NAME = re.compile(r"^(\d{12})-([a-z._]+)\.json$")
_TMP_PREFIX = ".tmp-"
#: A temporary file this old is what a crashed ``put`` left, not one still being written.
_STALE_TMP_SECONDS = 3600.0

#: The message class of each host report, by its payload model.
_REPORTS: dict[type[p.Payload], type[m.ImglineMessage[Any]]] = {
    cls.payload_model: cls for cls in m.ALL_MESSAGES if issubclass(cls.payload_model, p.HostEvent)
}


class _Entry(BaseModel):
    """One file of the outbox: the report's topic, its message id (stable across resends, so
    a consumer can tell a resend from a new report) and the payload as JSON."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    topic: str = Field(min_length=1)
    message_id: str = Field(min_length=1)
    body: dict[str, Any]


class _Unreadable(Exception):
    """A file in the outbox that can never become a message (it is set aside, not retried)."""


class Outbox:
    """A directory of reports waiting for the bus. Safe to share between processes (the agent
    and the boot-time health check): names are claimed without replacing, and one flush runs
    at a time."""

    def __init__(self, dir: Path) -> None:
        self.dir = dir
        self.bad_dir = dir / "bad"

    def put(self, msg_payload: p.HostEvent) -> Path:
        """Write ``msg_payload`` durably and return its file; it is sent by a later ``flush``."""
        cls = _REPORTS.get(type(msg_payload))
        if cls is None:
            raise TypeError(
                f"{type(msg_payload).__name__} is not a host report: put a HostUpgraded, "
                "HostUpgradeFailed or HostRolledBack"
            )
        entry = _Entry(
            topic=cls.topic_suffix,
            message_id=str(uuid.uuid4()),
            body=json.loads(msg_payload.model_dump_json()),
        )
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f"{_TMP_PREFIX}{entry.message_id}"
        with tmp.open("wb") as fh:
            fh.write(entry.model_dump_json().encode())
            fh.flush()
            os.fsync(fh.fileno())
        try:
            path = self._claim(tmp, entry.topic)
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(self.dir)
        log.info("report %s queued in %s", entry.topic, path)
        return path

    def _claim(self, tmp: Path, topic: str) -> Path:
        """Give ``tmp`` the next sequence number. ``link`` is a rename that never replaces:
        when another process took the number first, it fails and the next one is tried."""
        while True:
            seq = max((s for s, _ in self._listed()), default=0) + 1
            path = self.dir / f"{seq:012d}-{topic}.json"
            try:
                os.link(tmp, path)
            except FileExistsError:
                continue
            return path

    def _listed(self) -> list[tuple[int, Path]]:
        found = []
        for path in self.dir.glob("*.json"):
            match = _NAME.match(path.name)
            found.append((int(match.group(1)) if match else 0, path))
        return sorted(found, key=lambda item: (item[0], item[1].name))

    def pending(self) -> list[Path]:
        """The files waiting to be sent, oldest first."""
        if not self.dir.is_dir():
            return []
        return [path for _, path in self._listed()]

    def flush(self, send: Callable[[fm_message.Message], None], prefix: str) -> int:
        """Send pending reports in order with routing key ``<prefix>.<topic>``; returns how many
        were sent. Each file is deleted only after ``send`` returned; the first failing send
        stops the flush and leaves that report and the later ones for the next flush (the bus
        being away is expected here, so the failure is logged, not raised). A file that can
        never be sent is moved to ``bad/`` so that it does not block the reports behind it."""
        if not self.dir.is_dir():
            return 0
        sent = 0
        with self._flushing() as mine:
            if not mine:
                log.debug("another process is flushing %s; leaving the reports to it", self.dir)
                return 0
            self._remove_stale_tmp()
            for path in self.pending():
                try:
                    msg = self._load(path, prefix)
                except FileNotFoundError:
                    continue
                except _Unreadable as exc:
                    self._set_aside(path, str(exc))
                    continue
                try:
                    send(msg)
                except Exception as exc:
                    left = len(self.pending())
                    log.warning(
                        "could not send report %s (%s); it and %d more stay in %s for the next "
                        "flush",
                        path.name,
                        exc,
                        left - 1,
                        self.dir,
                    )
                    break
                path.unlink(missing_ok=True)
                sent += 1
                log.info("report %s sent (msg_id=%s)", path.name, msg.id)
            if sent:
                fsync_dir(self.dir)
        return sent

    @contextmanager
    def _flushing(self) -> Iterator[bool]:
        """An exclusive, non-blocking lock: two flushers would send each report twice."""
        with (self.dir / ".flush.lock").open("a") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _load(self, path: Path, prefix: str) -> fm_message.Message:
        if _NAME.match(path.name) is None:
            raise _Unreadable("its name is not <sequence>-<topic>.json")
        data = path.read_bytes()
        try:
            entry = _Entry.model_validate_json(data)
        except ValidationError as exc:
            raise _Unreadable(f"not an outbox entry: {exc.errors(include_url=False)[0]}") from exc
        cls = m.BY_TOPIC.get(entry.topic)
        if cls is None or not issubclass(cls.payload_model, p.HostEvent):
            raise _Unreadable(f"{entry.topic!r} is not a host report topic")
        try:
            payload = cls.payload_model.model_validate(entry.body)
        except ValidationError as exc:
            raise _Unreadable(f"invalid {entry.topic}: {m.describe_validation_error(exc)}") from exc
        msg = cls.from_payload(payload, prefix)
        msg.id = entry.message_id
        return msg

    def _set_aside(self, path: Path, reason: str) -> None:
        self.bad_dir.mkdir(exist_ok=True)
        dest = self.bad_dir / path.name
        n = 0
        while dest.exists():
            n += 1
            dest = self.bad_dir / f"{path.name}.{n}"
        os.replace(path, dest)
        log.error(
            "outbox file %s cannot be sent (%s): moved to %s; inspect it, then delete it",
            path.name,
            reason,
            dest,
        )

    def _remove_stale_tmp(self) -> None:
        cutoff = time.time() - _STALE_TMP_SECONDS
        for tmp in self.dir.glob(f"{_TMP_PREFIX}*"):
            try:
                if tmp.stat().st_mtime < cutoff:
                    log.warning("removing %s, left by an interrupted report", tmp)
                    tmp.unlink()
            except FileNotFoundError:
                pass
