"""The host's own series, served by ``imgline-updater run`` on ``metrics_port``: what it runs,
when it last looked, what it did, and reports still waiting for the bus. The fleet as a whole
is counted by the ledger from the reports (docs/operations.md, "Metrics")."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class _Pending(Collector):
    def __init__(self, count: Callable[[], int]) -> None:
        self.count = count

    def collect(self) -> Iterator[Metric]:
        pending = GaugeMetricFamily(
            "imgline_host_reports_pending", "Host reports in the outbox, not yet on the bus"
        )
        pending.add_metric([], self.count())
        yield pending


class HostMetrics:
    """Set by the agent after each check; the outbox is counted at scrape time."""

    def __init__(self, registry: CollectorRegistry, pending: Callable[[], int]) -> None:
        self.registry = registry
        self.version = Gauge(
            "imgline_host_version_info",
            "The version this host runs (1 on the current one's series)",
            ["host_id", "name", "stream", "version"],
            registry=registry,
        )
        self.checks = Counter(
            "imgline_host_checks",
            "Checks of the signed repository, by what the policy decided (apply, download, skip)",
            ["action"],
            registry=registry,
        )
        self.last_check = Gauge(
            "imgline_host_last_check_timestamp_seconds",
            "When the host last checked the signed repository",
            registry=registry,
        )
        self.failures = Counter(
            "imgline_host_apply_failures",
            "Releases this host failed to download or apply, by the step that failed",
            ["step"],
            registry=registry,
        )
        registry.register(_Pending(pending))
        self._running: tuple[str, str, str, str] | None = None

    def checked(
        self, action: str, *, host_id: str, name: str, stream: str, running: str | None, at: float
    ) -> None:
        """One check is done: count it and show the version the host runs now."""
        self.checks.labels(action).inc()
        self.last_check.set(at)
        labels = (host_id, name, stream, running or "unknown")
        if labels != self._running:
            if self._running is not None:
                self.version.remove(*self._running)
            self.version.labels(*labels).set(1)
            self._running = labels
