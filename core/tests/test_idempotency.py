"""The record of finished work survives a reopen (a process restart)."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgline.core.bus.idempotency import DoneStore

pytestmark = pytest.mark.unit


def test_keys_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "state" / "done.sqlite"
    store = DoneStore(path)
    assert "a" * 64 not in store
    store.add("a" * 64, "imgline.build.requested")
    store.add("a" * 64, "imgline.build.requested")  # twice is fine
    store.close()
    again = DoneStore(path)
    assert "a" * 64 in again
    assert "b" * 64 not in again
