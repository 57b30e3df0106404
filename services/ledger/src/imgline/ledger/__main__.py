"""``imgline-ledger``: records the pipeline's events (filled in below)."""

from __future__ import annotations


def main() -> int:
    raise SystemExit("imgline-ledger: not built yet")
