"""Every test belongs to exactly one tier, so `pytest -m <tier>` selects cleanly."""

from __future__ import annotations

import pytest

TIERS = {"unit", "broker", "image", "vm"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tiers = {m.name for m in item.iter_markers()} & TIERS
        if len(tiers) != 1:
            raise pytest.UsageError(
                f"{item.nodeid} must carry exactly one tier marker of {sorted(TIERS)}, "
                f"has {sorted(tiers) or 'none'}"
            )
