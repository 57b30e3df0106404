"""The ledger's metrics, worked out from its file at each scrape: they survive restarts of the
ledger (the counters are counts of recorded events) and need no state of their own. The file
keeps the latest report per host and the counts per topic as events arrive, so a scrape does
not grow with the history (bench/ledger.py)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from imgline.core.ledger.fleet import fleet
from imgline.core.ledger.store import Ledger

#: The ``result`` label of a host report, by topic.
HOST_RESULT = {
    "host.upgraded": "succeeded",
    "host.upgrade.failed": "failed",
    "host.rolled_back": "rolled_back",
}


class LedgerCollector(Collector):
    """Fleet and pipeline series for Prometheus (docs/operations.md, "Metrics")."""

    def __init__(
        self, ledger: Ledger, window_seconds: float, clock: Callable[[], float] = time.time
    ) -> None:
        self.ledger = ledger
        self.window = window_seconds
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        counts = self.ledger.counts()
        events = CounterMetricFamily(
            "imgline_ledger_events", "Pipeline events recorded, by topic", labels=["topic"]
        )
        by_topic: dict[str, int] = {}
        for (topic, _stream), n in counts.items():
            by_topic[topic] = by_topic.get(topic, 0) + n
        for topic, n in sorted(by_topic.items()):
            events.add_metric([topic], n)
        yield events

        upgrades = CounterMetricFamily(
            "imgline_host_upgrades",
            "Upgrades hosts reported, by stream and result (succeeded, failed, rolled_back)",
            labels=["stream", "result"],
        )
        for (topic, stream), n in sorted(counts.items()):
            if topic in HOST_RESULT:
                upgrades.add_metric([stream, HOST_RESULT[topic]], n)
        yield upgrades

        yield from self._fleet()
        yield from self._unfinished()

    def _fleet(self) -> Iterator[Metric]:
        hosts = GaugeMetricFamily(
            "imgline_fleet_hosts",
            "Hosts that reported, by image and stream",
            labels=["name", "stream"],
        )
        outdated = GaugeMetricFamily(
            "imgline_fleet_hosts_outdated",
            "Hosts not running their stream's latest release",
            labels=["name", "stream"],
        )
        by_version = GaugeMetricFamily(
            "imgline_fleet_hosts_by_version",
            "Hosts by the version they run (only versions some host runs now)",
            labels=["name", "stream", "version"],
        )
        latest = GaugeMetricFamily(
            "imgline_release_published_timestamp_seconds",
            "When each stream's latest release was published",
            labels=["name", "stream"],
        )
        released = self.ledger.releases_now()
        releases = {(r.name, r.stream): r.at for r in released}
        for group in fleet(self.ledger.hosts_now(), released):
            labels = [group.name, group.stream]
            hosts.add_metric(labels, group.hosts)
            outdated.add_metric(labels, group.outdated)
            for version, n in sorted(group.by_version.items()):
                by_version.add_metric([*labels, version], n)
            if (group.name, group.stream) in releases:
                latest.add_metric(labels, releases[(group.name, group.stream)])
        yield from (hosts, outdated, by_version, latest)

    def _unfinished(self) -> Iterator[Metric]:
        now = self.clock()
        pending = self.ledger.unfinished(now - self.window)
        count = GaugeMetricFamily(
            "imgline_builds_unfinished", "Builds requested that no event has ended yet"
        )
        count.add_metric([], len(pending))
        oldest = GaugeMetricFamily(
            "imgline_build_oldest_unfinished_seconds",
            "Age of the oldest build that is requested and not yet ended (0: none)",
        )
        oldest.add_metric([], max(0.0, now - pending[0][1]) if pending else 0.0)
        yield from (count, oldest)
