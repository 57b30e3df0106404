"""The ledger's SQLite file: one table of events, written by ``imgline-ledger`` only.

WAL mode lets ``imgline status`` and Prometheus scrapes read while the ledger writes. Every
event is keyed by its message id, so a redelivered message is recorded once.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from imgline.core.errors import ConfigError
from imgline.core.ledger.events import HOST_TOPICS, TERMINAL, Event

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    topic TEXT NOT NULL,
    at REAL NOT NULL,
    recorded_at REAL NOT NULL,
    build_id TEXT,
    request_id TEXT,
    name TEXT,
    stream TEXT,
    version TEXT,
    host_id TEXT,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_build ON events (build_id, at);
CREATE INDEX IF NOT EXISTS events_request ON events (request_id);
CREATE INDEX IF NOT EXISTS events_release ON events (name, version, at);
CREATE INDEX IF NOT EXISTS events_host ON events (host_id, at);
CREATE INDEX IF NOT EXISTS events_topic ON events (topic, at);
-- kept up to date by record(), so that a scrape costs as much with a year of history as with
-- a day of it: each host's latest report, and how many events of each topic and stream
CREATE TABLE IF NOT EXISTS host_latest (
    host_id TEXT PRIMARY KEY,
    at REAL NOT NULL,
    event_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS topic_counts (
    topic TEXT NOT NULL,
    stream TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (topic, stream)
);
"""
_COLUMNS = "id, topic, at, build_id, request_id, name, stream, version, host_id, body"
_HOSTS = ", ".join(f"'{t}'" for t in HOST_TOPICS)
_ENDS = ", ".join(f"'{t}'" for t in sorted(TERMINAL))
_HEX = re.compile(r"^[0-9a-f]{1,64}$")


def _event(row: sqlite3.Row) -> Event:
    return Event(
        id=row["id"],
        topic=row["topic"],
        at=row["at"],
        build_id=row["build_id"],
        request_id=row["request_id"],
        name=row["name"],
        stream=row["stream"],
        version=row["version"],
        host_id=row["host_id"],
        body=json.loads(row["body"]),
    )


class Ledger:
    """The event table. ``readonly`` opens an existing file for the CLI and never creates one
    (a mistyped path must not look like an empty pipeline)."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        try:
            if readonly:
                if not path.is_file():
                    raise ConfigError(
                        f"no ledger at {path}: point --ledger (or IMGLINE_LEDGER) at the "
                        "imgline-ledger service's db_path"
                    )
                self._db = sqlite3.connect(
                    f"file:{path}?mode=ro", uri=True, check_same_thread=False, timeout=10
                )
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(path, check_same_thread=False, timeout=10)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open the ledger {path}: {exc}") from exc
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _cursor(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._db

    def record(self, event: Event) -> bool:
        """Store ``event``; False when its message id was recorded before (a redelivery)."""
        with self._cursor() as db, db:
            cur = db.execute(
                "INSERT OR IGNORE INTO events (id, topic, at, recorded_at, build_id, request_id, "
                "name, stream, version, host_id, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    event.id,
                    event.topic,
                    event.at,
                    time.time(),
                    event.build_id,
                    event.request_id,
                    event.name,
                    event.stream,
                    event.version,
                    event.host_id,
                    json.dumps(event.body, sort_keys=True),
                ),
            )
            if cur.rowcount != 1:
                return False
            db.execute(
                "INSERT INTO topic_counts (topic, stream, n) VALUES (?, ?, 1) "
                "ON CONFLICT (topic, stream) DO UPDATE SET n = n + 1",
                (event.topic, event.stream or ""),
            )
            if event.topic in HOST_TOPICS and event.host_id:
                db.execute(
                    "INSERT INTO host_latest (host_id, at, event_id) VALUES (?, ?, ?) "
                    "ON CONFLICT (host_id) DO UPDATE SET at = excluded.at, "
                    "event_id = excluded.event_id WHERE excluded.at >= host_latest.at",
                    (event.host_id, event.at, event.id),
                )
            return True

    def _select(self, where: str, args: tuple[object, ...] = ()) -> list[Event]:
        with self._cursor() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM events WHERE {where}", args).fetchall()  # noqa: S608
        return [_event(r) for r in rows]

    def build_ids(self, prefix: str) -> list[str]:
        """The builds whose id starts with ``prefix`` (hex only), newest request first."""
        if not _HEX.match(prefix):
            raise ConfigError(f"{prefix[:80]!r} is not a build id (hex digits, or a prefix)")
        with self._cursor() as db:
            rows = db.execute(
                "SELECT build_id FROM events WHERE build_id >= ? AND build_id < ? "
                "GROUP BY build_id ORDER BY MIN(at) DESC LIMIT 20",
                (prefix, prefix + "g"),
            ).fetchall()
        return [r["build_id"] for r in rows]

    def build(self, build_id: str) -> list[Event]:
        """Every event of one build, oldest first, with the requests it answered: a request
        for a branch and the build of the commit it resolved to are one story."""
        return self._select(
            "build_id IN (SELECT build_id FROM events WHERE request_id IN ("
            "SELECT request_id FROM events WHERE build_id = ? AND request_id IS NOT NULL) "
            "AND build_id IS NOT NULL UNION SELECT ?) ORDER BY at, recorded_at",
            (build_id, build_id),
        )

    def recent_builds(self, limit: int) -> list[str]:
        """The builds of the ``limit`` latest requests, newest first (each once)."""
        with self._cursor() as db:
            rows = db.execute(
                "SELECT build_id FROM events WHERE topic = 'build.requested' "
                "ORDER BY at DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return list(dict.fromkeys(r["build_id"] for r in rows))

    def first_request_since(self, since: float) -> str | None:
        """The build of the first request recorded at or after ``since`` (wall clock)."""
        with self._cursor() as db:
            row = db.execute(
                "SELECT build_id FROM events WHERE topic = 'build.requested' "
                "AND recorded_at >= ? ORDER BY recorded_at LIMIT 1",
                (since,),
            ).fetchone()
        return None if row is None else str(row["build_id"])

    def host_reports(self, name: str, version: str) -> list[Event]:
        """Each host's last report about ``version`` of ``name``, oldest first."""
        return self._select(
            f"topic IN ({_HOSTS}) AND name = ? AND version = ? AND at = ("  # noqa: S608
            f"SELECT MAX(e.at) FROM events e WHERE e.host_id = events.host_id "
            f"AND e.topic IN ({_HOSTS}) AND e.name = ? AND e.version = ?) ORDER BY at",
            (name, version, name, version),
        )

    def hosts_now(self) -> list[Event]:
        """Each host's latest report of all: what it runs now."""
        return self._select("id IN (SELECT event_id FROM host_latest) ORDER BY host_id")

    def releases_now(self) -> list[Event]:
        """The latest ``image.published`` of each image on each stream."""
        return self._select(
            "topic = 'image.published' AND at = (SELECT MAX(e.at) FROM events e "
            "WHERE e.topic = 'image.published' AND e.name = events.name "
            "AND e.stream = events.stream)"
        )

    def counts(self) -> dict[tuple[str, str], int]:
        """How many events of each (topic, stream) were recorded; stream is '' when unknown."""
        with self._cursor() as db:
            rows = db.execute("SELECT topic, stream, n FROM topic_counts").fetchall()
        return {(r["topic"], r["stream"]): r["n"] for r in rows}

    def unfinished(self, since: float) -> list[tuple[str, float]]:
        """Builds requested after ``since`` that no event has ended yet, with when each was
        first requested, oldest first."""
        # ended: by an event of its own build id, by a build.failed naming the request, or by
        # the end of the build the request was pinned to (image.built names the request)
        with self._cursor() as db:
            rows = db.execute(
                "SELECT r.build_id, MIN(r.at) AS first FROM events r "  # noqa: S608
                "WHERE r.topic = 'build.requested' AND r.at >= ? AND NOT EXISTS ("
                f"SELECT 1 FROM events t WHERE t.topic IN ({_ENDS}) AND ("
                "t.build_id = r.build_id OR t.request_id = r.request_id OR t.build_id IN ("
                "SELECT b.build_id FROM events b WHERE b.topic = 'image.built' "
                "AND b.request_id = r.request_id))) GROUP BY r.build_id ORDER BY first",
                (since,),
            ).fetchall()
        return [(r["build_id"], r["first"]) for r in rows]
