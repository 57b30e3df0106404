"""The shared host checks, run by a real ``sh`` against stand-ins for systemctl, journalctl and
df that answer from files: what a healthy and an unhealthy host print, and how it is read."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from imgline.core.hostcheck import SCRIPT, HostCheckError, arguments, parse

pytestmark = pytest.mark.unit

SYSTEMCTL = r"""#!/bin/sh
# answers from $FAKE: active/<unit> exists when active, failed lists failed units
case $1 in
    is-system-running) cat "$FAKE/state"; [ "$(cat "$FAKE/state")" = running ] ;;
    is-active)
        [ "$2" = --quiet ] && { shift; quiet=1; }
        unit=$3
        if [ -e "$FAKE/active/$unit" ]; then [ -n "${quiet:-}" ] || echo active; exit 0; fi
        [ -n "${quiet:-}" ] || echo failed; exit 3 ;;
    list-units) cat "$FAKE/failed" ;;
    show) for a; do last=$a; done; cat "$FAKE/show/$last" 2>/dev/null ;;
    list-jobs) echo "42 ssh.service start waiting" ;;
esac
"""
JOURNALCTL = r"""#!/bin/sh
for a; do last=$a; done
echo "journal of $last: it said why"
"""
DF = r"""#!/bin/sh
echo "Filesystem 1024-blocks Used Available Capacity Mounted on"
echo "/dev/x 100 $(cat "$FAKE/used") 10 $(cat "$FAKE/used")% /"
"""


def host(
    tmp: Path,
    *,
    state: str = "running",
    active: tuple[str, ...] = (),
    failed: str = "",
    used: int = 40,
) -> dict[str, str]:
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("systemctl", SYSTEMCTL), ("journalctl", JOURNALCTL), ("df", DF)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    fake = tmp / "fake"
    (fake / "active").mkdir(parents=True, exist_ok=True)
    (fake / "show").mkdir(exist_ok=True)
    (fake / "state").write_text(state)
    (fake / "failed").write_text(failed)
    (fake / "used").write_text(str(used))
    for unit in active:
        (fake / "active" / unit).touch()
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "FAKE": str(fake)}


def run(env: dict[str, str], args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-c", SCRIPT, "hostcheck", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_a_healthy_host_passes_every_check(tmp_path: Path) -> None:
    env = host(tmp_path, active=("ssh.service", "node-payload.service"))
    args = arguments(
        units=["ssh.service", "node-payload.service"],
        mounts=["/"],
        settle_seconds=0,
        wait_boot_seconds=0,
        drop_in_dir=None,
    )
    done = run(env, args)
    report = parse(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    assert report.ok and report.complete
    assert [c.name for c in report.checks] == [
        "system",
        "unit:ssh.service",
        "unit:node-payload.service",
        "failed-units",
        "disk:/",
    ]
    assert report.checks[-1].detail == "40% used (limit 90%)"


def test_a_failed_unit_is_named_with_its_journal(tmp_path: Path) -> None:
    env = host(
        tmp_path,
        state="degraded",
        active=("ssh.service",),
        failed="broken.service loaded failed failed Broken on purpose\n",
    )
    done = run(
        env,
        arguments(
            units=["ssh.service", "node-payload.service"],
            settle_seconds=0,
            wait_boot_seconds=0,
            drop_in_dir=None,
        ),
    )
    report = parse(done.stdout)
    assert done.returncode == 1 and report.complete and not report.ok
    checks = {c.name: c for c in report.checks}
    assert checks["system"].detail == "degraded" and not checks["system"].ok
    assert not checks["unit:node-payload.service"].ok
    assert "journal of node-payload.service" in checks["unit:node-payload.service"].detail
    failed = checks["failed-units"]
    assert failed.detail.splitlines()[0] == "broken.service"
    assert "--- broken.service\njournal of broken.service: it said why" in failed.detail


def test_a_boot_that_never_finishes_lists_its_queued_jobs(tmp_path: Path) -> None:
    env = host(tmp_path, state="starting")
    report = parse(
        run(env, arguments(wait_boot_seconds=1, settle_seconds=0, drop_in_dir=None)).stdout
    )
    (system,) = [c for c in report.checks if c.name == "system"]
    assert not system.ok and "ssh.service start waiting" in system.detail


def test_full_disks_and_failing_drop_ins_fail(tmp_path: Path) -> None:
    env = host(tmp_path, used=97)
    drop_ins = tmp_path / "health.d"
    drop_ins.mkdir()
    for name, body in (
        ("10-ok", "echo fine"),
        ("20 bad;name", "echo 'no quorum' >&2; exit 4"),
        ("30-slow", "sleep 5"),
        ("40-not-executable", "exit 1"),
    ):
        script = drop_ins / name
        script.write_text(f"#!/bin/sh\n{body}\n")
        script.chmod(0o644 if "not-executable" in name else 0o755)
    args = arguments(
        mounts=["/"], settle_seconds=0, drop_in_dir=str(drop_ins), script_timeout_seconds=1
    )
    report = parse(run(env, args).stdout)
    checks = {c.name: c for c in report.checks}
    assert not checks["disk:/"].ok and checks["disk:/"].detail == "97% used (limit 90%)"
    assert checks["script:10-ok"].ok and checks["script:10-ok"].detail == "fine"
    assert checks["script:20_bad_name"].detail == "exit 4\nno quorum"
    assert checks["script:30-slow"].detail.startswith("exit 124 (timed out after 1s)")
    assert "script:40-not-executable" not in checks


def test_output_without_its_end_line_is_incomplete() -> None:
    text = "noise\nIMGLINE-CHECK ok unit:a.service active\r\nIMGLINE-CHECK garbage\n"
    report = parse(text)
    assert [c.name for c in report.checks] == ["unit:a.service"]
    assert not report.complete and not report.ok
    assert parse(text + "IMGLINE-CHECK-END 0\n").ok


@pytest.mark.parametrize(
    "kw",
    [
        {"units": ["ssh.service; reboot"]},
        {"units": ["a b.service"]},
        {"mounts": ["relative"]},
        {"mounts": ["/a b"]},
        {"drop_in_dir": "/etc/$(reboot)"},
    ],
)
def test_values_that_are_not_one_plain_word_are_refused(kw: dict[str, list[str]]) -> None:
    with pytest.raises(HostCheckError):
        arguments(**kw)  # type: ignore[arg-type]


ONESHOT = "Type=oneshot\nResult=success\nActiveState=inactive\n"


@pytest.mark.parametrize(
    ("props", "state"),
    [
        (ONESHOT + "ExecMainStartTimestampMonotonic=5\nConditionResult=yes\n", "done"),
        (
            ONESHOT
            + "ExecMainStartTimestampMonotonic=0\nConditionResult=no\n"
            + "ConditionTimestampMonotonic=7\n",
            "skipped",
        ),
        (ONESHOT + "ExecMainStartTimestampMonotonic=0\nConditionTimestampMonotonic=0\n", None),
        ("Type=simple\nResult=success\nActiveState=inactive\n", None),
        (ONESHOT.replace("success", "exit-code") + "ExecMainStartTimestampMonotonic=5\n", None),
    ],
    ids=[
        "ran",
        "condition-said-not-needed",
        "not-started-yet",
        "simple-and-dead",
        "oneshot-failed",
    ],
)
def test_a_oneshot_unit_counts_once_it_ran_or_was_not_needed(
    tmp_path: Path, props: str, state: str | None
) -> None:
    env = host(tmp_path)
    (Path(env["FAKE"]) / "show" / "keys.service").write_text(props)
    report = parse(
        run(env, arguments(units=["keys.service"], settle_seconds=0, drop_in_dir=None)).stdout
    )
    (check,) = [c for c in report.checks if c.name == "unit:keys.service"]
    assert check.ok == (state is not None)
    assert check.detail.splitlines()[0] == (state or "keys.service is failed")


def crash_looping(tmp_path: Path, *, up_seconds: float, restarts: int) -> dict[str, str]:
    """A host 100 s after boot whose payload is "active" right now, its process started
    ``up_seconds`` ago."""
    env = host(tmp_path, active=("node-payload.service",))
    fake = Path(env["FAKE"])
    started_us = int((100 - up_seconds) * 1_000_000)
    (fake / "show" / "node-payload.service").write_text(
        f"Type=simple\nActiveState=active\nExecMainStartTimestampMonotonic={started_us}\n"
        f"NRestarts={restarts}\n"
    )
    (fake / "uptime").write_text("100.00 180.00\n")
    return {**env, "HOSTCHECK_UPTIME": str(fake / "uptime")}


def test_a_service_that_keeps_restarting_fails_though_active_for_a_moment(
    tmp_path: Path,
) -> None:
    """A simple service is "active" from its fork until its process exits: a payload that
    crashes and is restarted over and over looks active at most instants."""
    env = crash_looping(tmp_path, up_seconds=1.5, restarts=7)
    args = arguments(units=["node-payload.service"], settle_seconds=0, drop_in_dir=None)
    report = parse(run(env, args).stdout)
    (check,) = [c for c in report.checks if c.name == "unit:node-payload.service"]
    assert not check.ok and not report.ok
    assert check.detail.splitlines()[0] == (
        "node-payload.service is active, but its process has been up for less than 10s "
        "(restarted 7 times)"
    )


@pytest.mark.parametrize(("up", "stable", "ok"), [(30, 10, True), (5, 10, False), (5, 3, True)])
def test_a_service_counts_once_its_process_has_been_up_long_enough(
    tmp_path: Path, up: float, stable: int, ok: bool
) -> None:
    env = crash_looping(tmp_path, up_seconds=up, restarts=0)
    args = arguments(
        units=["node-payload.service"], settle_seconds=0, stable_seconds=stable, drop_in_dir=None
    )
    report = parse(run(env, args).stdout)
    (check,) = [c for c in report.checks if c.name == "unit:node-payload.service"]
    assert check.ok == ok
    if not ok:
        assert check.detail.splitlines()[0].endswith(f"up for less than {stable}s")
