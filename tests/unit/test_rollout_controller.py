"""The rollout controller against the real repository, without the bus: reports are kept per
host and release (a torn line is skipped), a storm in the open wave signs a pause, a healthy
soaked wave signs the next one, and reports of releases the stream does not list change
nothing."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from tufrepo import Clock, make_site, make_tested

from imgline.core.trust.errors import TrustError
from imgline.core.trust.rollout import position
from imgline.publisher.domain.rollout import RolloutConfig, first_wave
from imgline.publisher.rollouts import ReportLog, RolloutController
from imgline.schemas import payloads as p

pytestmark = pytest.mark.unit

V1 = "20261201.1"
CONFIG = RolloutConfig(waves=[0.5, 1.0], pause_share=0.5, min_reports=3, soak_seconds=600)


def event(host: str, version: str = V1, name: str = "node") -> p.HostUpgraded:
    return p.HostUpgraded(
        host_id=host,
        name=name,
        stream="stable",
        to_version=version,
        duration_seconds=1.0,
        layer="x",
    )


def early(count: int) -> list[str]:
    return [h for h in (f"h{i}" for i in range(1000)) if position(h, "node", V1) < 0.5][:count]


def controller(tmp: Path) -> tuple[RolloutController, Clock]:
    site = make_site(tmp)
    repo = site.publisher(first_wave=lambda n, v, t: first_wave(CONFIG, n, v, t))
    tested, image = make_tested(tmp, V1, size=4096)
    repo.publish(tested, image)
    ctl = RolloutController(repo, CONFIG, ReportLog(tmp / "reports"), clock=site.clock)
    return ctl, site.clock


def test_the_log_keeps_each_hosts_latest_outcome_and_skips_a_torn_line(tmp_path: Path) -> None:
    log = ReportLog(tmp_path)
    key = ("stable", "node", V1)
    assert log.record(key, "a", "upgraded")
    assert not log.record(key, "a", "upgraded")
    assert log.record(key, "a", "rolled_back")
    path = tmp_path / "stable" / "node" / f"{V1}.jsonl"
    with path.open("a") as fh:
        fh.write('{"host_id": "b", "outc')
    assert ReportLog(tmp_path).outcomes(key) == {"a": "rolled_back"}
    with pytest.raises(TrustError, match="not a valid image name"):
        log.record(("stable", "../etc", V1), "a", "upgraded")


def test_a_storm_in_the_open_wave_signs_a_pause(tmp_path: Path) -> None:
    ctl, _clock = controller(tmp_path)
    hosts = early(3)
    assert ctl.report(event(hosts[0]), "upgraded") is None
    assert ctl.report(event(hosts[1]), "rolled_back") is None  # 2 reports: too few
    step = ctl.report(event(hosts[2]), "rolled_back")
    assert step is not None and step.action == "pause"
    signed = ctl.repository.rollouts("stable").of("node", V1)
    assert signed is not None and signed.paused and signed.reason == step.reason
    assert ctl.report(event(hosts[2]), "rolled_back") is None  # the same report again


def test_a_healthy_wave_opens_the_next_once_soaked(tmp_path: Path) -> None:
    ctl, clock = controller(tmp_path)
    for host in early(3):
        assert ctl.report(event(host), "upgraded") is None  # not soaked yet
    clock.advance(timedelta(seconds=600))
    steps = ctl.review_all()
    assert [(s.action, s.share) for s in steps] == [("open", 1.0)]
    signed = ctl.repository.rollouts("stable").of("node", V1)
    assert signed is not None and signed.share == 1.0
    assert ctl.review_all() == []  # the last wave is open: nothing more to do


def test_reports_of_unlisted_releases_change_nothing(tmp_path: Path) -> None:
    ctl, _clock = controller(tmp_path)
    for host in early(3):
        assert ctl.report(event(host, version="20261201.9"), "rolled_back") is None
    assert ctl.repository.rollouts("stable").of("node", "20261201.9") is None
