"""The host's series: one version series at a time, checks counted, the outbox counted live."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from imgline.updater.metrics import HostMetrics

pytestmark = pytest.mark.unit


def test_the_version_series_follows_the_running_version() -> None:
    waiting = [3]
    m = HostMetrics(CollectorRegistry(), lambda: waiting[0])
    where = {"host_id": "h", "name": "node", "stream": "main"}
    m.checked("skip", running=None, at=10.0, **where)
    m.checked("apply", running="1", at=20.0, **where)
    m.checked("skip", running="2", at=30.0, **where)
    text = generate_latest(m.registry).decode()
    assert 'version="2"' in text and 'version="1"' not in text and "unknown" not in text
    get = m.registry.get_sample_value
    assert get("imgline_host_checks_total", {"action": "skip"}) == 2
    assert get("imgline_host_last_check_timestamp_seconds") == 30.0
    assert get("imgline_host_reports_pending") == 3
    waiting[0] = 0
    assert get("imgline_host_reports_pending") == 0
