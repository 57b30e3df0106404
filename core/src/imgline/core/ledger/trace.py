"""A build's way through the pipeline, worked out from its events: pure, so the CLI's text and
JSON views and the tests share one reading of the ledger."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from imgline.core.ledger.events import Event

#: What each event makes of a build, by topic (``image.tested`` depends on its verdict).
_STAGE = {
    "build.requested": "requested",
    "build.failed": "failed",
    "image.built": "built",
    "image.tested": "tested",
    "image.rejected": "rejected",
    "image.published": "published",
}
_HOST_RESULT = {
    "host.upgraded": "upgraded",
    "host.upgrade.failed": "failed",
    "host.rolled_back": "rolled back",
}
#: Where a build stands after its latest event: what it waits for next.
_STATE_AFTER = {
    "requested": "building",
    "built": "testing",
    "tested": "publishing",
    "failed": "failed",
    "rejected": "rejected",
    "published": "published",
}
#: States nothing follows (the CLI's ``--follow`` stops there).
FINAL = frozenset({"failed", "rejected", "published"})


def when(at: float) -> str:
    return datetime.fromtimestamp(at, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def span(seconds: float) -> str:
    """``1m54s``, ``3.2s``, ``2h05m``: as long as a person reads at a glance."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _mib(size: object) -> str:
    return f"{size / 2**20:.0f} MiB" if isinstance(size, int) else "? MiB"


def _requested(b: dict[str, Any]) -> str:
    source = b.get("source") or {}
    where = (
        f"{source.get('url')} {source.get('commit') or source.get('ref')}:"
        f"{source.get('kickstart_path')}"
        if source.get("kind") == "git"
        else "inline kickstart"
    )
    return f"by {b.get('requested_by') or 'unknown'}, {b.get('backend')}, {where}"


def _failed(b: dict[str, Any]) -> str:
    line = f" (kickstart line {b['kickstart_line']})" if b.get("kickstart_line") else ""
    return f"at {b.get('stage')}{line}: {b.get('error')}"


def _built(b: dict[str, Any]) -> str:
    art = b.get("artifact") or {}
    took = b.get("duration_seconds")
    took_text = span(float(took)) if isinstance(took, int | float) else "?"
    return f"{b.get('backend')} in {took_text}, {_mib(art.get('size'))}, {art.get('uri')}"


def _tested(b: dict[str, Any]) -> str:
    results = b.get("results") or []
    bad = [r.get("name") for r in results if r.get("status") in ("failed", "error")]
    skipped = sum(1 for r in results if r.get("status") == "skipped")
    verdict = "passed" if b.get("passed") else f"FAILED {', '.join(map(str, bad))}"
    return f"{verdict}: {len(results)} checks, {len(bad)} failed, {skipped} skipped"


def _published(b: dict[str, Any]) -> str:
    role = f"role {b.get('role')} v{b.get('role_version')}" if b.get("role") else ""
    return f"{role} {b.get('repository_url') or b.get('manifest_url')}".strip()


_DETAIL: dict[str, Callable[[dict[str, Any]], str]] = {
    "build.requested": _requested,
    "build.failed": _failed,
    "image.built": _built,
    "image.tested": _tested,
    "image.rejected": lambda b: str(b.get("reason")),
    "image.published": _published,
}


def detail(event: Event) -> str:
    """One line on what ``event`` says beyond its stage."""
    describe = _DETAIL.get(event.topic)
    return describe(event.body) if describe else ""


@dataclass
class Stage:
    stage: str
    at: float
    seconds: float  # since the stage before (0 for the request)
    detail: str

    def line(self) -> str:
        """One line of the text views (``imgline status``, ``--follow``)."""
        gap = f"+{span(self.seconds)}" if self.stage != "requested" else ""
        return f"  {self.stage:<10} {when(self.at)}  {gap:<8} {self.detail}"

    def as_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "at": datetime.fromtimestamp(self.at, tz=UTC).isoformat(),
            "seconds": round(self.seconds, 3),
            "detail": self.detail,
        }


@dataclass
class HostReport:
    host_id: str
    result: str
    at: float
    from_version: str | None
    detail: str

    def as_json(self) -> dict[str, Any]:
        return {
            "host_id": self.host_id,
            "result": self.result,
            "at": datetime.fromtimestamp(self.at, tz=UTC).isoformat(),
            "from_version": self.from_version,
            "detail": self.detail,
        }


@dataclass
class BuildTrace:
    build_id: str
    name: str | None = None
    stream: str | None = None
    version: str | None = None
    state: str = "unknown"
    stages: list[Stage] = field(default_factory=list)
    hosts: list[HostReport] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "build_id": self.build_id,
            "name": self.name,
            "stream": self.stream,
            "version": self.version,
            "state": self.state,
            "stages": [s.as_json() for s in self.stages],
            "hosts": [h.as_json() for h in self.hosts],
        }

    def headline(self) -> str:
        what = " ".join(x for x in (self.name, self.version) if x) or "?"
        on = f" on {self.stream}" if self.stream else ""
        return f"build {self.build_id[:12]}  {what}{on}: {self.state}"

    def lines(self) -> list[str]:
        """The text view: a headline, a line per stage, then the hosts."""
        out = [self.headline()]
        out += [s.line() for s in self.stages]
        if self.hosts:
            tally: dict[str, int] = {}
            for h in self.hosts:
                tally[h.result] = tally.get(h.result, 0) + 1
            out.append("  hosts: " + ", ".join(f"{n} {r}" for r, n in sorted(tally.items())))
            for h in self.hosts:
                was = f"from {h.from_version}" if h.from_version else "first version"
                extra = f"; {h.detail}" if h.detail else ""
                out.append(f"    {h.host_id:<20} {h.result:<12} {when(h.at)}  {was}{extra}")
        elif self.state == "published":
            out.append("  hosts: none has reported this version yet")
        return out


def stage_of(event: Event) -> Stage:
    return Stage(_STAGE.get(event.topic, event.topic), event.at, 0.0, detail(event))


def trace(build_id: str, events: list[Event], reports: list[Event]) -> BuildTrace:
    """The trace of ``build_id`` from its events (oldest first) and the hosts' last reports
    about the version it made. A repeated request of a build that already ended is shown as a
    stage but does not reopen it."""
    out = BuildTrace(build_id)
    previous: float | None = None
    for event in events:
        stage = stage_of(event)
        stage.seconds = 0.0 if previous is None else max(0.0, event.at - previous)
        previous = event.at
        out.stages.append(stage)
        if event.topic != "build.requested" and event.build_id:
            out.build_id = event.build_id  # the build the request was pinned to
        out.name = out.name or event.name
        out.stream = out.stream or event.stream
        out.version = event.version or out.version
        if out.state in FINAL and stage.stage == "requested":
            continue
        out.state = _STATE_AFTER.get(stage.stage, out.state)
    out.hosts = host_reports(reports)
    return out


def host_reports(reports: list[Event]) -> list[HostReport]:
    """Each host's last report on a version, as a trace shows it."""
    out = []
    for report in reports:
        body = report.body
        previous_version = body.get("from_version")
        out.append(
            HostReport(
                host_id=report.host_id or "?",
                result=_HOST_RESULT.get(report.topic, report.topic),
                at=report.at,
                from_version=previous_version if isinstance(previous_version, str) else None,
                detail=(
                    f"at {body.get('step')}: {body.get('error')}"
                    if report.topic != "host.upgraded"
                    else ""
                ),
            )
        )
    return out
