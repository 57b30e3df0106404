"""The ledger's series, as Prometheus reads them, from a recorded pipeline story."""

from __future__ import annotations

from pathlib import Path

import pytest
from ledgerstory import built, published, requested, rolled_back, upgraded, verdict
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from imgline.core.ledger.events import of_payload
from imgline.core.ledger.store import Ledger
from imgline.ledger.metrics import LedgerCollector

pytestmark = pytest.mark.unit


def scrape(ledger: Ledger, now: float) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(LedgerCollector(ledger, 86400, clock=lambda: now))
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_fleet_upgrades_and_unfinished_builds_are_series(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite3")
    r = requested()
    b = built(r, "2", 100)
    for n, step in enumerate(
        [
            r,
            b,
            verdict(b, 150),
            published(b, 160),
            upgraded("host-a", b, "1", 300),
            rolled_back("host-b", b, "1", 400),
            requested(name="appliance", t=500),
        ]
    ):
        ledger.record(of_payload(str(n), step))
    now = requested().emitted_at.timestamp() + 800
    got = scrape(ledger, now)
    node = (("name", "node"), ("stream", "main"))
    assert got[("imgline_fleet_hosts", node)] == 2
    assert got[("imgline_fleet_hosts_outdated", node)] == 1
    assert (
        got[("imgline_fleet_hosts_by_version", (*node[:1], ("stream", "main"), ("version", "1")))]
        == 1
    )
    assert got[("imgline_host_upgrades_total", (("result", "succeeded"), ("stream", "main")))] == 1
    assert (
        got[("imgline_host_upgrades_total", (("result", "rolled_back"), ("stream", "main")))] == 1
    )
    assert got[("imgline_ledger_events_total", (("topic", "build.requested"),))] == 2
    assert got[("imgline_builds_unfinished", ())] == 1
    assert got[("imgline_build_oldest_unfinished_seconds", ())] == 300
    assert (
        got[("imgline_release_published_timestamp_seconds", node)] == b.emitted_at.timestamp() + 60
    )


def test_an_empty_ledger_still_answers(tmp_path: Path) -> None:
    got = scrape(Ledger(tmp_path / "l.sqlite3"), 0)
    assert got[("imgline_builds_unfinished", ())] == 0
    assert got[("imgline_build_oldest_unfinished_seconds", ())] == 0
