"""Version naming: <YYYYMMDD>.<n> per UTC day, sortable."""

from __future__ import annotations

from datetime import date

import pytest

from imgline.builder.domain.version import next_version, release_name

pytestmark = pytest.mark.unit

DAY = date(2026, 11, 23)


@pytest.mark.parametrize(
    ("existing", "expected"),
    [
        ([], "20261123.1"),
        (["20261123.1"], "20261123.2"),
        (["20261123.1", "20261123.7", "20261123.3"], "20261123.8"),
        (["20261122.9"], "20261123.1"),  # a new day starts at 1
        (["20261123.x", "pinned-1.0", "20261123"], "20261123.1"),  # pinned/odd ones ignored
        (["20261123.10", "20261123.9"], "20261123.11"),  # numeric, not text order
    ],
)
def test_next_version(existing: list[str], expected: str) -> None:
    assert next_version(DAY, existing) == expected


def test_release_name() -> None:
    assert release_name("node", "20261123.2") == "node-20261123.2"
