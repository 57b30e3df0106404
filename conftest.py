"""Every test belongs to exactly one tier, so `pytest -m <tier>` selects cleanly."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TIERS = {"unit", "broker", "image", "vm"}

# Test helpers that more than one tier uses (realistic forge messages, a pipeline's ledger
# events) live beside the tests of the package they describe; make them importable anywhere.
ROOT = Path(__file__).resolve().parent
for helpers in (ROOT / "core" / "tests", ROOT / "services" / "trigger" / "tests"):
    if str(helpers) not in sys.path:
        sys.path.append(str(helpers))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tiers = {m.name for m in item.iter_markers()} & TIERS
        if len(tiers) != 1:
            raise pytest.UsageError(
                f"{item.nodeid} must carry exactly one tier marker of {sorted(TIERS)}, "
                f"has {sorted(tiers) or 'none'}"
            )
