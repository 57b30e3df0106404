"""The rollout controller's decisions (pure): a wave that rolls back too often pauses the
release once enough of it has reported; a healthy wave that has soaked opens the next."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from imgline.core.trust.rollout import Rollout, position, ppm, wave_of
from imgline.publisher.domain.rollout import (
    RolloutConfig,
    Step,
    Tally,
    applied,
    first_wave,
    next_step,
    tally,
    wave_index,
)

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
WAVES = [0.01, 0.1, 0.5, 1.0]
CONFIG = RolloutConfig(waves=WAVES, pause_share=0.2, min_reports=5, soak_seconds=600)


def at(share: float, *, age: float = 3600, paused: bool = False) -> Rollout:
    return Rollout(
        name="node",
        version="2",
        share_ppm=ppm(share),
        paused=paused,
        changed=NOW - timedelta(seconds=age),
    )


@pytest.mark.parametrize(
    "waves", [[0.1, 0.5], [0.5, 0.1, 1.0], [0.0, 1.0], [0.1, 0.1, 1.0], [], [1.5]]
)
def test_waves_must_increase_to_every_host(waves: list[float]) -> None:
    with pytest.raises(ValidationError):
        RolloutConfig(waves=waves)


def test_defaults_stage_nothing_and_pause_on_a_fifth() -> None:
    config = RolloutConfig()
    assert config.waves == [1.0]
    assert first_wave(config, "node", "2", NOW) is None
    assert first_wave(CONFIG, "node", "2", NOW) == Rollout(
        name="node", version="2", share_ppm=10_000, changed=NOW
    )


def test_tally_puts_each_host_in_the_wave_of_its_place() -> None:
    hosts = {f"h{i}": "upgraded" for i in range(400)} | {f"r{i}": "rolled_back" for i in range(50)}
    tallies = tally(hosts, "node", "2", WAVES)  # type: ignore[arg-type]
    assert sum(t.reports for t in tallies) == 450
    for i, t in enumerate(tallies):
        mine = [h for h in hosts if wave_of(position(h, "node", "2"), WAVES) == i]
        assert t.reports == len(mine)
        assert t.rolled_back == sum(1 for h in mine if h.startswith("r"))


@pytest.mark.parametrize(
    ("tallies", "paused"),
    [
        ([Tally(1, 4)], True),  # 80% of exactly min_reports
        ([Tally(0, 4)], False),  # 4 reports < min_reports
        ([Tally(4, 1)], False),  # 20% is not over 20%
        ([Tally(3, 2)], True),  # 40%
        ([Tally(100, 0), Tally(8, 4)], True),  # a later wave counts on its own
    ],
)
def test_pause_needs_enough_reports_over_the_threshold(tallies: list[Tally], paused: bool) -> None:
    step = next_step(CONFIG, at(0.1, age=0), tallies, NOW)
    assert (step is not None and step.action == "pause") == paused


def test_the_pause_says_which_wave_and_how_many() -> None:
    step = next_step(CONFIG, at(0.01, age=0), [Tally(1, 9)], NOW)
    assert step == Step(
        "pause",
        0.01,
        "9 of 10 reporting hosts of wave 1 (up to 1% of hosts) rolled back (90%, over the 20% "
        "allowed)",
    )
    paused = applied(step, at(0.01), "node", "2", NOW)
    assert (paused.paused, paused.share, paused.changed) == (True, 0.01, NOW)
    assert paused.reason == step.reason


def test_a_release_open_to_all_is_paused_too() -> None:
    step = next_step(CONFIG, None, [Tally(0, 0), Tally(0, 0), Tally(0, 0), Tally(2, 8)], NOW)
    assert step is not None and (step.action, step.share) == ("pause", 1.0)
    assert next_step(CONFIG, None, [Tally(50, 0)], NOW) is None  # and never "opened"


def test_reports_of_waves_not_open_yet_do_not_pause() -> None:
    beyond = [Tally(5, 0), Tally(0, 10)]
    assert next_step(CONFIG, at(0.01, age=0), beyond, NOW) is None
    step = next_step(CONFIG, at(0.1, age=0), beyond, NOW)
    assert step is not None and step.action == "pause"


def test_a_paused_release_stays_paused() -> None:
    assert next_step(CONFIG, at(0.1, paused=True), [Tally(100, 0)], NOW) is None


def test_a_healthy_wave_opens_the_next_after_its_soak() -> None:
    healthy = [Tally(5, 0)]
    assert next_step(CONFIG, at(0.01, age=599), healthy, NOW) is None  # still soaking
    step = next_step(CONFIG, at(0.01, age=600), healthy, NOW)
    assert step is not None and (step.action, step.share) == ("open", 0.1)
    opened = applied(step, at(0.01), "node", "2", NOW)
    assert (opened.share, opened.paused, opened.changed) == (0.1, False, NOW)


def test_a_wave_is_judged_by_its_own_reports() -> None:
    assert next_step(CONFIG, at(0.1), [Tally(50, 0), Tally(4, 0)], NOW) is None
    step = next_step(CONFIG, at(0.1), [Tally(0, 0), Tally(5, 0)], NOW)
    assert step is not None and step.share == 0.5


def test_the_last_wave_opens_nothing() -> None:
    assert next_step(CONFIG, at(1.0), [Tally(50, 0)] * 4, NOW) is None


def test_a_share_set_by_hand_belongs_to_the_wave_above() -> None:
    assert wave_index(0.05, WAVES) == 1
    assert wave_index(0.1, WAVES) == 1
    assert wave_index(0.7, WAVES) == 3
    step = next_step(CONFIG, at(0.05), [Tally(0, 0), Tally(10, 0)], NOW)
    assert step is not None and step.share == 0.5
