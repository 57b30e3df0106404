"""Image version ordering: automatic versions by (date, n), pinned ones after them by text."""

from __future__ import annotations

import pytest

from imgline.core.versions import is_newer, version_key

pytestmark = pytest.mark.unit


def test_automatic_versions_sort_by_date_then_build_number() -> None:
    versions = ["20261123.10", "20261122.3", "20261123.9", "20261123.1"]
    assert sorted(versions, key=version_key) == [
        "20261122.3",
        "20261123.1",
        "20261123.9",
        "20261123.10",
    ]


def test_pinned_versions_sort_after_automatic_ones_by_text() -> None:
    versions = ["pinned-b", "20991231.99", "1.0-custom", "20261123.2", "99999999.1"]
    assert sorted(versions, key=version_key) == [
        "20261123.2",
        "20991231.99",
        "99999999.1",
        "1.0-custom",
        "pinned-b",
    ]


@pytest.mark.parametrize("odd", ["20261123", "2026112.1", "20261123.x", "20261123.1.2", ""])
def test_near_misses_are_pinned(odd: str) -> None:
    assert version_key(odd) > version_key("99999999.999")


@pytest.mark.parametrize(
    ("candidate", "running", "newer"),
    [
        ("20261201.3", None, True),
        ("20261201.3", "20261201.2", True),
        ("20261201.10", "20261201.9", True),
        ("20261202.1", "20261201.9", True),
        ("20261201.3", "20261201.3", False),
        ("20261201.2", "20261201.3", False),
        ("20261130.9", "20261201.1", False),
        ("pinned-1", "20261201.3", True),
        ("20261201.3", "pinned-1", False),
        ("pinned-2", "pinned-1", True),
        ("pinned-1", "pinned-1", False),
    ],
)
def test_is_newer(candidate: str, running: str | None, newer: bool) -> None:
    assert is_newer(candidate, running) is newer
