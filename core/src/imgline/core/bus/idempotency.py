"""A durable record of work already done, keyed by build_id (or any content-addressed key).

Delivery is at-least-once, so a message can arrive again after its work succeeded (the ack was
lost in a crash or a broker restart). The harness consults this record before calling a handler.
"""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def by_build_id(msg: Any) -> str | None:
    """Idempotency key for ``Consumer.on(..., key=by_build_id)``: topic and build_id.

    A service consuming several topics about one build does each once; a message without a
    build_id (host reports) has no key and is always handled.
    """
    build_id = msg.body.get("build_id") if isinstance(msg.body, dict) else None
    return f"{msg.topic}:{build_id}" if build_id else None


class DoneStore:
    """Keys of finished work in a SQLite file (``:memory:`` for tests); safe across threads."""

    def __init__(self, path: Path | str) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS done (key TEXT PRIMARY KEY, topic TEXT, at TEXT NOT NULL)"
        )

    def __contains__(self, key: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM done WHERE key = ?", (key,)).fetchone()
        return row is not None

    def add(self, key: str, topic: str = "") -> None:
        """Record ``key`` as done (durably: the row is synced before this returns)."""
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO done (key, topic, at) VALUES (?, ?, ?)",
                (key, topic, datetime.now(tz=UTC).isoformat()),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()
