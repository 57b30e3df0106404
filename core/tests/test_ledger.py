"""The ledger: events recorded once, a build traced from request to hosts, the fleet counted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ledgerstory import built, published, requested, rolled_back, upgraded, verdict

from imgline.core.errors import ConfigError
from imgline.core.ledger.events import Event, host_runs, of_payload
from imgline.core.ledger.fleet import UNKNOWN, fleet
from imgline.core.ledger.store import Ledger
from imgline.core.ledger.trace import span, trace
from imgline.schemas import payloads as p

pytestmark = pytest.mark.unit


def story(ledger: Ledger) -> tuple[p.ImageBuilt, p.ImageBuilt]:
    """Version 1 reaches two hosts; version 2 upgrades one and is rolled back on the other."""
    r1 = requested(t=0)
    b1 = built(r1, "1", 110)
    r2 = requested(t=1000)
    r2 = r2.model_copy(update={"version": "2"})
    r2 = p.BuildRequested.model_validate({**r2.model_dump(mode="json"), "build_id": ""})
    b2 = built(r2, "2", 1100)
    steps: list[p.Payload] = [
        r1,
        b1,
        verdict(b1, 180),
        published(b1, 182),
        upgraded("host-a", b1, None, 300),
        upgraded("host-b", b1, "0", 310),
        r2,
        b2,
        verdict(b2, 1180),
        published(b2, 1181),
        upgraded("host-a", b2, "1", 1300),
        rolled_back("host-b", b2, "1", 1400),
    ]
    for n, step in enumerate(steps):
        assert ledger.record(of_payload(f"msg-{n}", step))
    return b1, b2


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "ledger.sqlite3")


def test_a_redelivered_event_is_recorded_once(ledger: Ledger) -> None:
    event = of_payload("m-1", requested())
    assert ledger.record(event) is True
    assert ledger.record(event) is False
    assert ledger.counts() == {("build.requested", "main"): 1}


def test_nested_and_host_events_are_indexed_by_image_and_version() -> None:
    b = built(requested(), "7", 10)
    t = of_payload("t", verdict(b, 20))
    assert (t.topic, t.name, t.stream, t.version, t.build_id) == (
        "image.tested",
        "node",
        "main",
        "7",
        b.build_id,
    )
    h = of_payload("h", rolled_back("host-b", b, "6", 30))
    assert (h.topic, h.host_id, h.version, h.build_id) == ("host.rolled_back", "host-b", "7", None)
    assert host_runs(h) == "6"  # a rolled-back host runs the version it had
    assert host_runs(of_payload("u", upgraded("host-a", b, "6", 30))) == "7"


def test_a_published_build_is_traced_to_the_hosts_that_run_it(ledger: Ledger) -> None:
    b1, b2 = story(ledger)
    t = trace(b2.build_id, ledger.build(b2.build_id), ledger.host_reports("node", "2"))
    assert t.state == "published"
    assert [s.stage for s in t.stages] == ["requested", "built", "tested", "published"]
    assert [round(s.seconds) for s in t.stages] == [0, 100, 80, 1]
    assert {(h.host_id, h.result, h.from_version) for h in t.hosts} == {
        ("host-a", "upgraded", "1"),
        ("host-b", "rolled back", "1"),
    }
    text = "\n".join(t.lines())
    assert f"build {b2.build_id[:12]}  node 2 on main: published" in text
    assert "passed: 3 checks, 0 failed, 1 skipped" in text
    assert "at health: unit payload.service is failed" in text
    assert "1 rolled back, 1 upgraded" in text
    doc = json.loads(json.dumps(t.as_json()))
    assert doc["hosts"][0]["host_id"] == "host-a" and doc["stages"][1]["seconds"] == 100.0
    # version 1: both hosts reported it, but each host's last report about it counts
    t1 = trace(b1.build_id, ledger.build(b1.build_id), ledger.host_reports("node", "1"))
    assert {h.host_id for h in t1.hosts} == {"host-a", "host-b"}


def test_states_follow_the_latest_event_and_a_repeat_request_does_not_reopen(
    ledger: Ledger,
) -> None:
    r = requested()
    b = built(r, "1", 100)
    events = [of_payload("1", r)]
    assert trace(r.build_id, events, []).state == "building"
    events.append(of_payload("2", b))
    assert trace(r.build_id, events, []).state == "testing"
    events.append(of_payload("3", verdict(b, 150, passed=False)))
    t = trace(r.build_id, events, [])
    assert t.state == "publishing"
    assert "FAILED boot: 3 checks, 1 failed" in t.lines()[-1]
    failed = p.BuildFailed(
        request_id=r.request_id,
        build_id=r.build_id,
        name="node",
        stage="parse",
        error="bad",
        kickstart_line=12,
    )
    t = trace(r.build_id, [*events, of_payload("4", failed), of_payload("5", r)], [])
    assert t.state == "failed"
    assert "at parse (kickstart line 12): bad" in "\n".join(t.lines())


def test_build_ids_are_found_by_prefix_and_a_hostile_prefix_is_refused(ledger: Ledger) -> None:
    _b1, b2 = story(ledger)
    assert ledger.build_ids(b2.build_id[:8]) == [b2.build_id]
    for bad in ("", "%", "' OR 1=1 --", "AB12", "x" * 65):
        with pytest.raises(ConfigError, match="not a build id"):
            ledger.build_ids(bad)
    assert ledger.recent_builds(1) == [b2.build_id]


def test_the_fleet_counts_versions_and_hosts_behind_the_latest_release(ledger: Ledger) -> None:
    story(ledger)
    [group] = fleet(ledger.hosts_now(), ledger.releases_now())
    assert (group.name, group.stream, group.latest) == ("node", "main", "2")
    assert group.hosts == 2
    assert group.by_version == {"2": 1, "1": 1}
    assert group.outdated == 1


def test_a_host_without_a_known_version_counts_as_outdated() -> None:
    b = built(requested(), "3", 1)
    failed = p.HostUpgradeFailed(
        host_id="new-host",
        name="node",
        stream="main",
        to_version="3",
        duration_seconds=1,
        step="download",
        error="timeout",
    )
    groups = fleet([of_payload("f", failed)], [of_payload("p", published(b, 2))])
    assert groups[0].by_version == {UNKNOWN: 1} and groups[0].outdated == 1


def test_unfinished_builds_are_those_no_event_has_ended(ledger: Ledger) -> None:
    story(ledger)
    waiting = requested(name="appliance", t=5000)
    ledger.record(of_payload("w", waiting))
    old = requested(name="ancient", t=-10_000_000)
    ledger.record(of_payload("o", old))
    since = requested().emitted_at.timestamp() - 86400
    assert ledger.unfinished(since) == [(waiting.build_id, waiting.emitted_at.timestamp())]


def test_the_cli_never_creates_a_ledger(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no ledger at"):
        Ledger(tmp_path / "typo.sqlite3", readonly=True)
    assert not (tmp_path / "typo.sqlite3").exists()


def test_a_reader_sees_what_the_writer_recorded(ledger: Ledger) -> None:
    story(ledger)
    reader = Ledger(ledger.path, readonly=True)
    assert len(reader.recent_builds(10)) == 2
    with pytest.raises(Exception, match="readonly"):
        reader.record(Event("x", "build.requested", 0, None, None, None, None, None, None, {}))


@pytest.mark.parametrize(
    ("seconds", "text"), [(3.21, "3.2s"), (114, "1m54s"), (7500, "2h05m"), (59.96, "60.0s")]
)
def test_spans_read_at_a_glance(seconds: float, text: str) -> None:
    assert span(seconds) == text


def test_a_branch_request_and_the_build_of_its_pinned_commit_are_one_story(
    ledger: Ledger,
) -> None:
    """The builder resolves a branch to its commit, which changes the build id; image.built
    names the request, and that ties the two together everywhere."""
    pinned = requested()
    source = pinned.source.model_copy(update={"commit": None})
    branch = p.BuildRequested.model_validate(
        {**pinned.model_dump(mode="json"), "source": source.model_dump(), "build_id": ""}
    )
    assert branch.build_id != pinned.build_id and branch.request_id == pinned.request_id
    b = built(pinned, "5", 100)
    ledger.record(of_payload("r", branch))
    since = branch.emitted_at.timestamp() - 1
    assert [bid for bid, _ in ledger.unfinished(since)] == [branch.build_id]
    ledger.record(of_payload("b", b))
    ledger.record(of_payload("t", verdict(b, 150)))
    assert [bid for bid, _ in ledger.unfinished(since)] == [branch.build_id]
    ledger.record(of_payload("p", published(b, 160)))
    assert ledger.unfinished(since) == []
    for start in (branch.build_id, pinned.build_id):
        t = trace(start, ledger.build(start), [])
        assert [s.stage for s in t.stages] == ["requested", "built", "tested", "published"]
        assert (t.state, t.build_id) == ("published", pinned.build_id)
    assert ledger.recent_builds(5) == [branch.build_id]


def test_a_failed_build_ends_its_request(ledger: Ledger) -> None:
    r = requested()
    ledger.record(of_payload("r", r))
    failed = p.BuildFailed(
        request_id=r.request_id, build_id="ee" * 32, name="node", stage="fetch", error="gone"
    )
    ledger.record(of_payload("f", failed))
    assert ledger.unfinished(r.emitted_at.timestamp() - 1) == []


def test_a_report_that_arrives_late_does_not_hide_a_newer_one(ledger: Ledger) -> None:
    """The bus does not keep order between a host's outbox flushes."""
    b = built(requested(), "3", 10)
    ledger.record(of_payload("new", upgraded("host-a", b, "2", 500)))
    ledger.record(of_payload("old", rolled_back("host-a", b, "2", 400)))
    [now] = ledger.hosts_now()
    assert (now.id, now.topic) == ("new", "host.upgraded")
    assert ledger.counts() == {("host.upgraded", "main"): 1, ("host.rolled_back", "main"): 1}
