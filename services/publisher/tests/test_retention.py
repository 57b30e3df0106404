"""Retention: newest N per image name."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from imgline.core.trust.layout import Release
from imgline.publisher.domain.retention import keep_newest

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def entry(name: str, n: int) -> Release:
    d = f"stable/{name}/2026110{n}.1"
    return Release(
        name=name,
        version=f"2026110{n}.1",
        build_id=f"{n:064x}",
        manifest=f"{d}/manifest.json",
        image=f"{d}/{name}.img",
        install_ks=f"{d}/install.ks",
        published=T0 + timedelta(days=n),
    )


def test_keeps_the_newest_per_name_in_index_order() -> None:
    releases = [entry("node", 3), entry("app", 2), entry("node", 2), entry("node", 1)]
    kept, dropped = keep_newest(releases, 2)
    assert [(e.name, int(e.build_id, 16)) for e in kept] == [("node", 3), ("app", 2), ("node", 2)]
    assert [(e.name, int(e.build_id, 16)) for e in dropped] == [("node", 1)]


def test_keep_one() -> None:
    kept, dropped = keep_newest([entry("node", n) for n in range(4, 0, -1)], 1)
    assert [int(e.build_id, 16) for e in kept] == [4]
    assert len(dropped) == 3
