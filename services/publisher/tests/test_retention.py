"""Retention: newest N per image name, and only unlisted directories go."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from imgline.core.repository import IndexEntry
from imgline.publisher.domain.retention import keep_newest, unreferenced

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def entry(name: str, n: int) -> IndexEntry:
    return IndexEntry(
        name=name,
        version=f"2026110{n}.1",
        build_id=f"{n:064x}",
        manifest=f"images/{name}/2026110{n}.1/manifest.json",
        manifest_sha256="a" * 64,
        image_sha256="b" * 64,
        image_size=n,
        published=T0 + timedelta(days=n),
    )


def test_keeps_the_newest_per_name_in_index_order() -> None:
    releases = [entry("node", 3), entry("app", 2), entry("node", 2), entry("node", 1)]
    kept, dropped = keep_newest(releases, 2)
    assert [(e.name, e.image_size) for e in kept] == [("node", 3), ("app", 2), ("node", 2)]
    assert [(e.name, e.image_size) for e in dropped] == [("node", 1)]


def test_keep_one() -> None:
    kept, dropped = keep_newest([entry("node", n) for n in range(4, 0, -1)], 1)
    assert [e.image_size for e in kept] == [4]
    assert len(dropped) == 3


def test_unreferenced_directories() -> None:
    on_disk = [("node", "1"), ("node", "2"), ("app", "1")]
    assert unreferenced(on_disk, [("node", "2"), ("app", "1")]) == [("node", "1")]
    assert unreferenced(on_disk, on_disk) == []
