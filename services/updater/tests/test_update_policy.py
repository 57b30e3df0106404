"""Whether and when a host takes a release: windows, rollout buckets and the decision table."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from imgline.updater.domain.policy import (
    Candidate,
    HostView,
    Verdict,
    decide,
    in_window,
    parse_window,
    rollout_bucket,
)
from imgline.updater.errors import UpdaterError
from imgline.updater.settings import HostConfig

pytestmark = pytest.mark.unit

# 2026-11-30 is a Monday.
MON = datetime(2026, 11, 30, tzinfo=UTC)


def at(day: int, hour: int, minute: int = 0) -> datetime:
    """``day`` days after Monday 2026-11-30, at hour:minute UTC."""
    return MON + timedelta(days=day, hours=hour, minutes=minute)


# --- windows ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "now", "inside"),
    [
        ("Mon-Fri 02:00-04:00", at(0, 2), True),
        ("Mon-Fri 02:00-04:00", at(0, 3, 59), True),
        ("Mon-Fri 02:00-04:00", at(0, 4), False),  # the end is exclusive
        ("Mon-Fri 02:00-04:00", at(0, 1, 59), False),
        ("Mon-Fri 02:00-04:00", at(4, 3), True),  # Friday
        ("Mon-Fri 02:00-04:00", at(5, 3), False),  # Saturday
        ("Sat,Sun 00:00-24:00", at(5, 0), True),
        ("Sat,Sun 00:00-24:00", at(6, 23, 59), True),
        ("Sat,Sun 00:00-24:00", at(7, 0), False),  # Monday again
        ("sat,SUN 00:00-24:00", at(6, 12), True),  # day names in any case
        ("daily 22:00-02:00", at(2, 23), True),
        ("daily 22:00-02:00", at(2, 1, 30), True),
        ("daily 22:00-02:00", at(2, 2), False),
        ("daily 22:00-02:00", at(2, 21, 59), False),
        # past midnight belongs to the start day: Friday night's window runs into Saturday
        ("Fri 22:00-02:00", at(4, 23), True),
        ("Fri 22:00-02:00", at(5, 1), True),
        ("Fri 22:00-02:00", at(4, 1), False),  # early Friday belongs to Thursday's window
        ("Fri-Mon 10:00-11:00", at(6, 10, 30), True),  # a range may wrap the week
        ("Fri-Mon 10:00-11:00", at(0, 10, 30), True),
        ("Fri-Mon 10:00-11:00", at(1, 10, 30), False),
        ("Mon-Wed,Fri 10:00-11:00", at(3, 10, 30), False),  # Thursday
        ("Mon-Wed,Fri 10:00-11:00", at(4, 10, 30), True),
    ],
)
def test_window_contains(spec: str, now: datetime, inside: bool) -> None:
    assert in_window([parse_window(spec)], now) is inside


def test_window_times_are_utc() -> None:
    window = parse_window("Mon 02:00-04:00")
    cet = timezone(timedelta(hours=1))
    assert in_window([window], datetime(2026, 11, 30, 4, 30, tzinfo=cet))  # 03:30 UTC
    assert not in_window([window], datetime(2026, 11, 30, 5, 30, tzinfo=cet))  # 04:30 UTC
    assert not in_window([window], datetime(2026, 11, 30, 2, 30, tzinfo=cet))  # 01:30 UTC
    # the day is the UTC day too: Tuesday 00:30 at +02:00 is Monday 22:30 UTC
    late = parse_window("Mon 22:00-23:00")
    assert in_window([late], datetime(2026, 12, 1, 0, 30, tzinfo=timezone(timedelta(hours=2))))


def test_no_windows_means_any_time_and_several_windows_combine() -> None:
    assert in_window([], at(3, 13))
    windows = [parse_window("Mon 02:00-03:00"), parse_window("Tue 05:00-06:00")]
    assert in_window(windows, at(1, 5, 30))
    assert not in_window(windows, at(1, 2, 30))


def test_naive_time_is_refused() -> None:
    with pytest.raises(UpdaterError, match="timezone-aware"):
        in_window([], datetime(2026, 11, 30, 2, 0))


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("Mon-Fri", "is not '<days> HH:MM-HH:MM'"),
        ("02:00-04:00", "is not '<days> HH:MM-HH:MM'"),
        ("Mon-Fri 2:00-4:00", "is not '<days> HH:MM-HH:MM'"),
        ("Mon-Fry 02:00-04:00", "'Fry' is not a day"),
        ("Monday 02:00-04:00", "'Monday' is not a day"),
        ("Mon,,Tue 02:00-04:00", "'' is not a day"),
        ("Mon 02:60-04:00", "02:60 is not a time of day"),
        ("Mon 25:00-04:00", "25:00 is not a time of day"),
        ("Mon 24:00-04:00", "24:00 is not a time of day"),  # 24:00 only ends a window
        ("Mon 24:30-04:00", "24:30 is not a time of day"),
        ("Mon 02:00-02:00", "starts and ends at the same time"),
    ],
)
def test_bad_window_names_the_text_and_the_form(spec: str, why: str) -> None:
    with pytest.raises(UpdaterError) as caught:
        parse_window(spec)
    message = str(caught.value)
    assert repr(spec) in message
    assert why in message
    assert "'<days> HH:MM-HH:MM' in UTC" in message
    assert caught.value.step == "config"


@pytest.mark.parametrize(
    ("health", "fragment"),
    [
        ({"units": ["node-payload.service; reboot"]}, "not a systemd unit name"),
        ({"drop_in_dir": "/etc/health checks"}, "not a plain absolute path"),
    ],
)
def test_health_settings_the_check_script_cannot_take_are_refused_at_start(
    health: dict[str, object], fragment: str
) -> None:
    with pytest.raises(ValidationError, match=fragment):
        HostConfig.model_validate({"health": health})


def test_bad_window_is_a_config_error_at_start() -> None:
    with pytest.raises(ValidationError, match="'Fry' is not a day"):
        HostConfig(maintenance_windows=["Mon 02:00-03:00", "Mon-Fry 02:00-04:00"])
    ok = HostConfig(maintenance_windows=["Mon-Fri 02:00-04:00", "daily 22:00-02:00"])
    assert ok.maintenance_windows == ["Mon-Fri 02:00-04:00", "daily 22:00-02:00"]


# --- rollout buckets ----------------------------------------------------------------------------


def test_rollout_bucket_is_stable_across_runs_and_machines() -> None:
    # Pinned values: changing the hash would silently reshuffle every fleet's rollout.
    assert rollout_bucket("web-2", "node", "20261201.3") == 16
    assert rollout_bucket("web-1", "node", "20261201.3") == 44
    assert rollout_bucket("web-1", "node", "20261202.1") == 86  # another release, another place
    assert rollout_bucket("web-1", "edge", "20261201.3") != 44  # the image name counts too


def test_rollout_buckets_spread_hosts_and_reshuffle_per_release() -> None:
    hosts = [f"host-{i}" for i in range(2000)]
    first = [rollout_bucket(h, "node", "20261201.3") for h in hosts]
    assert all(0 <= b <= 99 for b in first)
    early = sum(1 for b in first if b < 10)
    assert 120 < early < 280  # about 10% of 2000
    second = [rollout_bucket(h, "node", "20261202.1") for h in hosts]
    early_both = sum(1 for a, b in zip(first, second, strict=True) if a < 10 and b < 10)
    assert early_both < early / 3  # not the same hosts first every time


# --- decide -------------------------------------------------------------------------------------

RUNNING = "20261201.2"
NEW = Candidate(name="node", version="20261201.3", build_id="b" * 64)
EARLY_HOST = "web-2"  # bucket 16 for NEW
LATE_HOST = "web-1"  # bucket 44 for NEW


def view(
    *,
    running: str | None = RUNNING,
    pending: str | None = None,
    bad: frozenset[str] = frozenset(),
    locked: bool = False,
    now: datetime = MON + timedelta(hours=3),
) -> HostView:
    return HostView(
        running_version=running,
        pending_version=pending,
        bad_versions=bad,
        reboot_locked=locked,
        now=now,
    )


def config(**kwargs: object) -> HostConfig:
    return HostConfig.model_validate(kwargs)


def test_auto_applies_and_reboots() -> None:
    verdict = decide(config(), EARLY_HOST, NEW, view())
    assert verdict == Verdict("apply", "apply 20261201.3 (policy 'auto') and reboot", True)


def test_first_release_on_a_host_without_one_applies() -> None:
    assert decide(config(), EARLY_HOST, NEW, view(running=None)).action == "apply"


@pytest.mark.parametrize("manual", [False, True])
def test_disabled_really_disables_even_by_hand(manual: bool) -> None:
    verdict = decide(config(policy="disabled"), EARLY_HOST, NEW, view(), manual=manual)
    assert verdict.action == "skip"
    assert not verdict.reboot
    assert "20261201.3" in verdict.reason
    assert "disabled" in verdict.reason


def test_no_candidate_skips() -> None:
    verdict = decide(config(), EARLY_HOST, None, view())
    assert verdict.action == "skip"
    assert "no release of node" in verdict.reason


@pytest.mark.parametrize("manual", [False, True])
@pytest.mark.parametrize("running", ["20261201.3", "20261201.4", "20261202.1", "pinned-1"])
def test_never_apply_an_older_or_equal_release(running: str, manual: bool) -> None:
    verdict = decide(config(), EARLY_HOST, NEW, view(running=running), manual=manual)
    assert verdict.action == "skip"
    assert f"not newer than the running {running}" in verdict.reason


def test_the_pending_release_is_not_applied_twice() -> None:
    verdict = decide(config(), EARLY_HOST, NEW, view(pending="20261201.3"), manual=True)
    assert verdict.action == "skip"
    assert "already applied" in verdict.reason


def test_a_rolled_back_release_is_never_applied_again_automatically() -> None:
    bad = frozenset({"20261201.3"})
    verdict = decide(config(), EARLY_HOST, NEW, view(bad=bad))
    assert verdict.action == "skip"
    assert "20261201.3 was rolled back" in verdict.reason
    assert decide(config(), EARLY_HOST, NEW, view(bad=bad), manual=True).action == "apply"


def test_manual_policy_waits_for_an_admin() -> None:
    verdict = decide(config(policy="manual"), EARLY_HOST, NEW, view())
    assert verdict.action == "skip"
    assert "policy 'manual'" in verdict.reason
    by_hand = decide(config(policy="manual"), EARLY_HOST, NEW, view(), manual=True)
    assert by_hand == Verdict("apply", "apply 20261201.3 (requested by hand) and reboot", True)


def test_download_only_downloads_and_never_applies() -> None:
    verdict = decide(config(policy="download-only"), EARLY_HOST, NEW, view())
    assert verdict.action == "download"
    assert not verdict.reboot
    assert "20261201.3" in verdict.reason
    by_hand = decide(config(policy="download-only"), EARLY_HOST, NEW, view(), manual=True)
    assert by_hand.action == "apply"


def test_outside_the_rollout_skips_unless_by_hand() -> None:
    cfg = config(rollout_percent=30)
    assert decide(cfg, EARLY_HOST, NEW, view()).action == "apply"  # bucket 16
    late = decide(cfg, LATE_HOST, NEW, view())  # bucket 44
    assert late.action == "skip"
    assert "bucket 44" in late.reason
    assert "first 30%" in late.reason
    assert decide(cfg, LATE_HOST, NEW, view(), manual=True).action == "apply"
    assert decide(config(rollout_percent=0), EARLY_HOST, NEW, view()).action == "skip"


def test_reboot_only_inside_a_window() -> None:
    cfg = config(maintenance_windows=["Mon-Fri 02:00-04:00"])
    inside = decide(cfg, EARLY_HOST, NEW, view(now=at(0, 3)))
    assert (inside.action, inside.reboot) == ("apply", True)
    outside = decide(cfg, EARLY_HOST, NEW, view(now=at(0, 12)))
    assert (outside.action, outside.reboot) == ("apply", False)
    assert "waits for a maintenance window" in outside.reason
    by_hand = decide(cfg, EARLY_HOST, NEW, view(now=at(0, 12)), manual=True)
    assert (by_hand.action, by_hand.reboot) == ("apply", False)


def test_reboot_lock_holds_the_reboot_even_inside_a_window() -> None:
    cfg = config(maintenance_windows=["Mon-Fri 02:00-04:00"])
    verdict = decide(cfg, EARLY_HOST, NEW, view(now=at(0, 3), locked=True))
    assert (verdict.action, verdict.reboot) == ("apply", False)
    assert "/run/imgline/reboot.lock" in verdict.reason


def test_reboot_off_in_the_config_applies_without_rebooting() -> None:
    verdict = decide(config(reboot=False), EARLY_HOST, NEW, view())
    assert (verdict.action, verdict.reboot) == ("apply", False)
    assert "reboot by hand" in verdict.reason


def test_only_apply_ever_reboots() -> None:
    for policy in ("auto", "download-only", "manual", "disabled"):
        for host in (EARLY_HOST, LATE_HOST):
            verdict = decide(config(policy=policy, rollout_percent=30), host, NEW, view())
            assert verdict.reboot == (verdict.action == "apply")
