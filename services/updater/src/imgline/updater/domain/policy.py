"""Whether and when this host takes a release: a pure function of the config and what the host
reports, so every rule is a table row in a test and the agent only gathers facts and obeys.

Applying (staging a new layer) is harmless and may happen at any time; rebooting into it is what
interrupts the payload, so only the reboot waits for a maintenance window and the reboot lock.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from imgline.core.trust import rollout
from imgline.core.trust.layout import Release, ReleaseIndex
from imgline.core.versions import is_newer
from imgline.updater.errors import UpdaterError

if TYPE_CHECKING:
    # settings.py validates maintenance windows with parse_window: a runtime import would cycle.
    from imgline.updater.settings import HostConfig

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_SPEC = re.compile(r"^\s*(\S+)\s+(\d{2}):(\d{2})-(\d{2}):(\d{2})\s*$")
_FORM = (
    "write it as '<days> HH:MM-HH:MM' in UTC, days being 'daily', a day ('Mon'), a range "
    "('Mon-Fri') or a comma list ('Sat,Sun'), e.g. 'Mon-Fri 02:00-04:00' or 'daily 22:00-02:00'"
)


@dataclass(frozen=True)
class Window:
    """A weekly maintenance window in UTC; ``end <= start`` means it runs past midnight, and
    then the hours after midnight belong to the day it started on."""

    spec: str
    days: frozenset[int]  # 0 = Monday, as datetime.weekday()
    start: int  # minutes after midnight
    end: int  # minutes after midnight, 1440 for "24:00"

    def contains(self, now: datetime) -> bool:
        minute = now.hour * 60 + now.minute
        day = now.weekday()
        if self.start < self.end:
            return day in self.days and self.start <= minute < self.end
        yesterday = (day - 1) % 7
        return (day in self.days and minute >= self.start) or (
            yesterday in self.days and minute < self.end
        )


def _bad(text: str, why: str) -> UpdaterError:
    return UpdaterError(f"maintenance window {text!r} is not valid: {why}; {_FORM}", step="config")


def _day(text: str, word: str) -> int:
    try:
        return _DAYS.index(word.lower())
    except ValueError:
        raise _bad(text, f"{word!r} is not a day (Mon, Tue, Wed, Thu, Fri, Sat, Sun)") from None


def _parse_days(text: str, days: str) -> frozenset[int]:
    if days.lower() == "daily":
        return frozenset(range(7))
    found: set[int] = set()
    for part in days.split(","):
        first, dash, last = part.partition("-")
        if not dash:
            found.add(_day(text, first))
            continue
        a, b = _day(text, first), _day(text, last)
        found.update((a + i) % 7 for i in range((b - a) % 7 + 1))  # 'Fri-Mon' wraps the week
    return frozenset(found)


def _minutes(text: str, hours: str, minutes: str, *, end: bool) -> int:
    h, m = int(hours), int(minutes)
    if m > 59 or h > 24 or (h == 24 and (m != 0 or not end)):
        raise _bad(text, f"{hours}:{minutes} is not a time of day (00:00 to 24:00, 24:00 as end)")
    return h * 60 + m


def parse_window(text: str) -> Window:
    """Parse one ``maintenance_windows`` entry; a typo must fail at start, not silently never
    (or always) allow a reboot."""
    m = _SPEC.match(text)
    if not m:
        raise _bad(text, "it is not '<days> HH:MM-HH:MM'")
    start = _minutes(text, m.group(2), m.group(3), end=False)
    end = _minutes(text, m.group(4), m.group(5), end=True)
    if start == end:
        raise _bad(text, "it starts and ends at the same time, so it is empty")
    return Window(spec=text.strip(), days=_parse_days(text, m.group(1)), start=start, end=end)


def in_window(windows: Sequence[Window], now: datetime) -> bool:
    """Whether ``now`` falls in any window; no windows at all means any time is fine."""
    if now.tzinfo is None:
        raise UpdaterError(
            "in_window needs a timezone-aware time: windows are in UTC, and a naive time would be"
            " read as local time; pass datetime.now(tz=UTC)",
            step="policy",
        )
    if not windows:
        return True
    utc = now.astimezone(UTC)
    return any(w.contains(utc) for w in windows)


def rollout_bucket(host_id: str, name: str, version: str) -> int:
    """This host's place (0..99) in the staged rollout of one release.

    A hash, so every run and every machine agrees without coordination; keyed by the release
    too, so the same hosts are not always the first to get (and suffer) a new release. It is
    the percentile of ``rollout.position``, the place the signed waves are compared with.
    """
    return rollout.bucket(host_id, name, version)


def choose(
    index: ReleaseIndex, table: rollout.RolloutTable, name: str, *, manual: bool = False
) -> Release | None:
    """The release of ``name`` to consider: the newest one that is not paused.

    A paused release is skipped as if withdrawn, so a host that missed the release before it
    still gets that one. When every release is paused the newest is returned anyway, and
    ``decide`` says why it is not taken. By hand (``manual``) it is the newest release, paused
    or not: an admin's apply overrides a pause.
    """
    mine = [r for r in index.releases if r.name == name]
    open_ = [r for r in mine if manual or not table.paused(r.name, r.version)]
    pick = open_ or mine
    return pick[0] if pick else None


@dataclass(frozen=True)
class Candidate:
    """The newest release the repository offers for this host's stream."""

    name: str
    version: str
    build_id: str
    rollout: rollout.Rollout | None = None  # as signed; None: open to every host


@dataclass(frozen=True)
class HostView:
    """What the agent found on the host, gathered before deciding."""

    running_version: str | None
    pending_version: str | None  # applied, waiting for (or in) its trial boot
    bad_versions: frozenset[str]  # rolled back here before
    reboot_locked: bool
    now: datetime


@dataclass(frozen=True)
class Verdict:
    """What to do with the candidate, and whether to reboot into it right away."""

    action: Literal["apply", "download", "skip"]
    reason: str
    reboot: bool


def _skip(reason: str) -> Verdict:
    return Verdict(action="skip", reason=reason, reboot=False)


def _nothing_to_take(config: HostConfig, candidate: Candidate | None) -> str:
    if config.policy == "disabled":
        what = candidate.version if candidate else "any release"
        return f"{what} is not taken: policy 'disabled' turns updates off, even by hand"
    return f"no release of {config.name} is offered on stream {config.stream!r}"


def decide(
    config: HostConfig,
    host_id: str,
    candidate: Candidate | None,
    view: HostView,
    *,
    manual: bool = False,
) -> Verdict:
    """Apply, download or skip ``candidate``; ``manual`` is an admin asking for it by hand, which
    overrides the policy, the rollout (signed waves and pauses included) and an earlier
    rollback, but never ``disabled`` and never moves the host backwards.

    A host already running (or with a pending boot of) a release that is paused later is not
    moved: nothing here ever picks an older release, and its own health check is what rolls
    it back. The pause stops the release from spreading; it does not chase it."""
    if config.policy == "disabled" or candidate is None:
        return _skip(_nothing_to_take(config, candidate))
    version = candidate.version
    refusals: tuple[tuple[bool, str], ...] = (
        (
            not is_newer(version, view.running_version),
            f"{version} is not newer than the running {view.running_version}; "
            "an older release is never applied",
        ),
        (
            version == view.pending_version,
            f"{version} is already applied and waiting for its boot",
        ),
        (
            version in view.bad_versions and not manual,
            f"{version} was rolled back on this host before; only a manual apply takes it again",
        ),
        (
            config.policy == "manual" and not manual,
            f"{version} is available; policy 'manual' waits for an admin to apply it",
        ),
    )
    for refused, reason in refusals:
        if refused:
            return _skip(reason)
    staged = _staged(host_id, candidate)
    if staged is not None and not manual:
        return _skip(staged)
    if config.policy == "download-only" and not manual:
        return Verdict(
            action="download",
            reason=f"{version} is downloaded only (policy 'download-only'); apply it by hand",
            reboot=False,
        )
    bucket = rollout_bucket(host_id, candidate.name, version)
    if bucket >= config.rollout_percent and not manual:
        return _skip(
            f"{version} is not rolled out to this host yet "
            f"(its bucket {bucket} is outside the first {config.rollout_percent}%)"
        )
    return _apply(config, version, view, manual=manual)


def _staged(host_id: str, candidate: Candidate) -> str | None:
    """Why the signed rollout keeps ``candidate`` from this host, or None. Checked before
    ``download-only`` too: a paused or not-yet-open release is not even downloaded."""
    staged = candidate.rollout
    if staged is None:
        return None
    if staged.paused:
        why = staged.reason or "no reason given"
        return f"{candidate.version} is paused by the publisher's rollout ({why})"
    place = rollout.position(host_id, candidate.name, candidate.version)
    if not staged.admits(place):
        return (
            f"{candidate.version} is open to {staged.share:.1%} of hosts so far; this host's "
            f"place in its rollout is {place:.2%}"
        )
    return None


def _apply(config: HostConfig, version: str, view: HostView, *, manual: bool) -> Verdict:
    why = "requested by hand" if manual else f"policy {config.policy!r}"
    windows = [parse_window(text) for text in config.maintenance_windows]
    if not config.reboot:
        later = "reboot is off in the config; reboot by hand to boot it"
    elif view.reboot_locked:
        later = f"the reboot waits until {config.reboot_lock} is removed"
    elif not in_window(windows, view.now):
        later = "the reboot waits for a maintenance window"
    else:
        return Verdict(action="apply", reason=f"apply {version} ({why}) and reboot", reboot=True)
    return Verdict(action="apply", reason=f"apply {version} ({why}); {later}", reboot=False)
