"""Where the fleet stands, from each host's latest report and each stream's latest release:
pure, shared by the ledger's metrics and ``imgline status``."""

from __future__ import annotations

from dataclasses import dataclass, field

from imgline.core.ledger.events import Event, host_runs

UNKNOWN = "unknown"


@dataclass
class StreamFleet:
    """The hosts of one image on one stream. ``outdated`` counts hosts not on ``latest`` (all of
    them while nothing is published), ``by_version`` what they run (``unknown`` when a host's
    first upgrade failed before it ever reported a version)."""

    name: str
    stream: str
    latest: str | None = None
    hosts: int = 0
    outdated: int = 0
    by_version: dict[str, int] = field(default_factory=dict)


def fleet(hosts_now: list[Event], releases_now: list[Event]) -> list[StreamFleet]:
    """One ``StreamFleet`` per (image, stream) that has hosts or a release, sorted."""
    out: dict[tuple[str, str], StreamFleet] = {}
    for release in releases_now:
        if release.name and release.stream:
            key = (release.name, release.stream)
            out[key] = StreamFleet(release.name, release.stream, latest=release.version)
    for report in hosts_now:
        if not (report.name and report.stream):
            continue
        key = (report.name, report.stream)
        group = out.setdefault(key, StreamFleet(report.name, report.stream))
        version = host_runs(report) or UNKNOWN
        group.hosts += 1
        group.by_version[version] = group.by_version.get(version, 0) + 1
        if version != group.latest:
            group.outdated += 1
    return [out[k] for k in sorted(out)]
