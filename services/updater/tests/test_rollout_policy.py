"""How a host obeys the signed rollout: paused releases are not taken (nor downloaded), a
release is taken only once the open share covers the host's place, and an admin's manual
apply overrides both."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from imgline.core.trust import rollout
from imgline.core.trust.layout import Release, ReleaseIndex
from imgline.core.trust.rollout import ppm
from imgline.updater.domain.policy import Candidate, HostView, choose, decide
from imgline.updater.settings import HostConfig

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)
VERSION = "20261201.3"
EARLY, LATE = "web-2", "web-1"  # places 0.1699 and 0.4453 in VERSION's rollout
VIEW = HostView("20261201.2", None, frozenset(), False, NOW)


def staged(share: float = 1.0, *, paused: bool = False) -> Candidate:
    r = rollout.Rollout(
        name="node",
        version=VERSION,
        share_ppm=ppm(share),
        paused=paused,
        reason="8 of 10 rolled back" if paused else None,
        changed=NOW,
    )
    return Candidate(name="node", version=VERSION, build_id="b" * 64, rollout=r)


def config(**kwargs: object) -> HostConfig:
    return HostConfig.model_validate(kwargs)


def test_the_places_the_other_tests_rely_on() -> None:
    assert 0.16 < rollout.position(EARLY, "node", VERSION) < 0.17
    assert 0.44 < rollout.position(LATE, "node", VERSION) < 0.45


def test_a_paused_release_is_skipped_with_its_reason() -> None:
    verdict = decide(config(), EARLY, staged(paused=True), VIEW)
    assert verdict.action == "skip"
    assert verdict.reason == (
        f"{VERSION} is paused by the publisher's rollout (8 of 10 rolled back)"
    )


def test_a_paused_release_is_not_even_downloaded() -> None:
    verdict = decide(config(policy="download-only"), EARLY, staged(paused=True), VIEW)
    assert verdict.action == "skip"


def test_a_wave_admits_the_hosts_below_its_share_only() -> None:
    assert decide(config(), EARLY, staged(0.3), VIEW).action == "apply"
    late = decide(config(), LATE, staged(0.3), VIEW)
    assert late.action == "skip"
    assert "open to 30.0% of hosts so far" in late.reason
    assert "44.53%" in late.reason
    assert decide(config(), LATE, staged(0.5), VIEW).action == "apply"
    assert decide(config(), EARLY, staged(0.0), VIEW).action == "skip"


def test_an_unstaged_release_is_open_to_every_host() -> None:
    plain = Candidate(name="node", version=VERSION, build_id="b" * 64)
    assert decide(config(), LATE, plain, VIEW).action == "apply"


def test_the_hosts_own_rollout_percent_still_narrows_a_wave() -> None:
    assert decide(config(rollout_percent=10), EARLY, staged(0.5), VIEW).action == "skip"


@pytest.mark.parametrize("candidate", [staged(paused=True), staged(0.01)])
def test_by_hand_overrides_pause_and_wave(candidate: Candidate) -> None:
    assert decide(config(), LATE, candidate, VIEW, manual=True).action == "apply"


def test_a_host_already_on_the_paused_release_is_left_where_it_is() -> None:
    on_it = HostView(VERSION, None, frozenset(), False, NOW)
    verdict = decide(config(), EARLY, staged(paused=True), on_it)
    assert verdict.action == "skip"
    assert "not newer than the running" in verdict.reason


def release(version: str) -> Release:
    d = f"stable/node/{version}"
    return Release(
        name="node",
        version=version,
        build_id="a" * 64,
        manifest=f"{d}/manifest.json",
        image=f"{d}/node-{version}.squashfs.img",
        install_ks=f"{d}/install.ks",
        published=NOW,
    )


def test_choose_skips_a_paused_newest_release_for_the_one_before() -> None:
    index = ReleaseIndex(stream="stable", releases=[release("3"), release("2"), release("1")])
    pause = rollout.Rollout(name="node", version="3", share_ppm=100_000, paused=True, changed=NOW)
    table = rollout.RolloutTable(rollouts=[pause])
    assert choose(index, table, "node") == release("2")
    assert choose(index, rollout.RolloutTable(), "node") == release("3")
    everything = table.put(pause.model_copy(update={"version": "2"})).put(
        pause.model_copy(update={"version": "1"})
    )
    assert choose(index, everything, "node") == release("3")  # decide() then says "paused"
    assert choose(index, table, "edge") is None
    assert choose(index, table, "node", manual=True) == release("3")  # by hand: the newest
