"""When each role's signed metadata expires, read from the repository at each scrape: hosts
refuse expired metadata, so this is the series an alert must watch (docs/operations.md)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from imgline.core.errors import ImglineError
from imgline.core.trust.repository import State

log = logging.getLogger(__name__)


class RepositoryCollector(Collector):
    """``imgline_repository_metadata_expires_timestamp_seconds{role}`` for every role (top-level
    and stream roles), and whether the repository could be read and verified at all."""

    def __init__(self, load: Callable[[], State]) -> None:
        self.load = load

    def collect(self) -> Iterator[Metric]:
        expires = GaugeMetricFamily(
            "imgline_repository_metadata_expires_timestamp_seconds",
            "When each role's current signed metadata expires",
            labels=["role"],
        )
        version = GaugeMetricFamily(
            "imgline_repository_metadata_version",
            "Version of each role's current signed metadata",
            labels=["role"],
        )
        readable = GaugeMetricFamily(
            "imgline_repository_readable",
            "1 when the repository's metadata loads and verifies, 0 when it does not",
        )
        try:
            state = self.load()
        except (ImglineError, OSError, ValueError) as exc:
            log.warning("metrics: cannot read the repository: %s", exc)
            readable.add_metric([], 0)
            yield readable
            return
        readable.add_metric([], 1)
        roles = {
            "root": state.root.signed,
            "timestamp": state.timestamp.signed,
            "snapshot": state.snapshot.signed,
        }
        roles.update((name, md.signed) for name, md in state.targets.items())
        for name, signed in sorted(roles.items()):
            expires.add_metric([name], signed.expires.timestamp())
            version.add_metric([name], signed.version)
        yield from (readable, expires, version)
