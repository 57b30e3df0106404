"""The signed rollout table and each host's place in a release's rollout (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from imgline.core.trust import rollout
from imgline.core.trust.errors import TrustError

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def entry(version: str, share: float = 0.1, **kw: object) -> rollout.Rollout:
    return rollout.Rollout.model_validate(
        {"name": "node", "version": version, "share_ppm": rollout.ppm(share), "changed": NOW, **kw}
    )


def test_a_hosts_place_is_its_bucket_refined() -> None:
    # pinned: the updater's rollout_bucket pins the same hash, so fleets never reshuffle
    assert rollout.bucket("web-2", "node", "20261201.3") == 16
    place = rollout.position("web-2", "node", "20261201.3")
    assert 0.16 <= place < 0.17
    hosts = [f"host-{i}" for i in range(3000)]
    for h in hosts:
        p = rollout.position(h, "node", "1")
        assert 0.0 <= p < 1.0
        assert int(p * 100) == rollout.bucket(h, "node", "1")
    early = sum(1 for h in hosts if rollout.position(h, "node", "1") < 0.005)
    assert 5 < early < 30  # half a percentile of 3000 is about 15: the fraction counts


@pytest.mark.parametrize(("place", "wave"), [(0.0, 0), (0.0099, 0), (0.01, 1), (0.3, 2), (0.99, 3)])
def test_wave_of_a_place(place: float, wave: int) -> None:
    assert rollout.wave_of(place, [0.01, 0.1, 0.5, 1.0]) == wave


def test_wave_of_a_place_no_wave_covers() -> None:
    assert rollout.wave_of(0.7, [0.01, 0.1, 0.5]) == 3


def test_admits_below_the_share_unless_paused() -> None:
    assert entry("1", 0.5).admits(0.49)
    assert not entry("1", 0.5).admits(0.5)
    assert not entry("1", 1.0, paused=True, reason="bad").admits(0.0)


def test_table_round_trips_through_the_custom_field_and_keeps_other_keys() -> None:
    table = rollout.RolloutTable().put(entry("1")).put(entry("2", 0.5))
    custom = rollout.custom_with({"other": 1}, table)
    assert custom["other"] == 1
    assert rollout.table_of(custom) == table
    assert table.put(entry("1", paused=True)).of("node", "1") == entry("1", paused=True)
    assert table.only([("node", "2")]).rollouts == [entry("2", 0.5)]
    assert table.paused("node", "1") is False
    assert table.of("node", "3") is None


def test_an_empty_table_leaves_no_field() -> None:
    assert rollout.custom_with({"x": 1, rollout.CUSTOM_KEY: {}}, rollout.RolloutTable()) == {"x": 1}
    assert rollout.table_of(None) == rollout.RolloutTable()
    assert rollout.table_of({}) == rollout.RolloutTable()


@pytest.mark.parametrize(
    "raw",
    [
        {
            "rollouts": [
                {"name": "node", "version": "1", "share_ppm": 2_000_000, "changed": "2026-12-01"}
            ]
        },
        {"rollouts": [{"name": "../x", "version": "1", "share_ppm": 0.5, "changed": "2026-12-01"}]},
        {"format": "imgline-rollout/9", "rollouts": []},
        {"rollouts": "all"},
    ],
)
def test_a_malformed_signed_table_is_refused_not_guessed(raw: object) -> None:
    with pytest.raises(TrustError, match=r"rollout table signed for releases\.json is malformed"):
        rollout.table_of({rollout.CUSTOM_KEY: raw})
