"""A builder killed at any point leaves nothing the next start does not remove: the commands
it ran die with it, what they started is killed at the next start, work directories go
(unmounted first) unless another builder works on them, and half-written store files and
package roots go."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from imgline.builder.recovery import recover
from imgline.builder.settings import BuilderConfig
from imgline.core import runner
from imgline.core.artifacts import LocalArtifactStore
from imgline.core.bus.stage import LOCKS, exclusive
from imgline.core.runner import CommandError

pytestmark = pytest.mark.image

BUILD = "ab" * 32
OTHER = "cd" * 32


def wait_gone(pid: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not runner.is_running(pid):
            return True
        time.sleep(0.05)
    return False


def test_a_timeout_kills_everything_the_command_started(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    with pytest.raises(CommandError, match="timed out"):
        runner.run(["sh", "-c", f"sleep 300 & echo $! > {pidfile}; wait"], timeout=1)
    assert wait_gone(int(pidfile.read_text()))


def test_a_killed_service_leaves_nothing_running_after_the_next_start(tmp_path: Path) -> None:
    children, pidfile = tmp_path / "children", tmp_path / "pids"
    service = subprocess.Popen(  # a stand-in for the builder, in the middle of a command
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                from pathlib import Path
                from imgline.core import runner
                runner.track_children(Path({str(children)!r}))
                runner.run(["sh", "-c", "sleep 300 & echo $$ $! > {pidfile}; wait"])
                """
            ),
        ]
    )
    try:
        deadline = time.monotonic() + 20
        while not (pidfile.is_file() and len(pidfile.read_text().split()) == 2):
            assert time.monotonic() < deadline, "the command never started"
            time.sleep(0.05)
        shell, sleeper = map(int, pidfile.read_text().split())
        assert len(list(children.iterdir())) == 1  # recorded while it runs
        service.send_signal(signal.SIGKILL)
        service.wait(10)
        assert wait_gone(shell)  # the command died with the service
        assert runner.is_running(sleeper)  # what it started is still there: an orphan
        assert runner.reap_leftovers(children) == [sleeper]
        assert wait_gone(sleeper)
        assert list(children.iterdir()) == []
    finally:
        service.kill()


def test_recovery_removes_what_a_killed_build_left_but_not_what_is_in_use(
    tmp_path: Path,
) -> None:
    config = BuilderConfig(
        store_dir=tmp_path / "store",
        work_dir=tmp_path / "work",
        cache_dir=tmp_path / "c",
        root_cache_dir=tmp_path / "roots",
    )
    store = LocalArtifactStore(config.store_dir)
    # a package root the killed builder was making (its process is gone)
    dead_pid = subprocess.Popen(["true"])
    dead_pid.wait()
    config.root_cache_dir.mkdir()
    half_root = config.root_cache_dir / f".partial-{dead_pid.pid}-{BUILD}.tar"
    half_root.write_bytes(b"half a tarball")
    left = config.work_dir / BUILD
    (left / "root" / "proc").mkdir(parents=True)
    (left / "root" / "etc").mkdir()
    busy = config.work_dir / OTHER
    busy.mkdir()
    keep = config.work_dir / "not-a-build"
    keep.mkdir()
    (store.root / "tmp").mkdir(parents=True, exist_ok=True)
    stale = store.root / "tmp" / "put-stale"
    stale.write_bytes(b"half an image")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    fresh = store.root / "tmp" / "put-fresh"
    fresh.write_bytes(b"being written")
    # a chroot killed mid-build leaves /proc mounted in the root tree
    subprocess.run(["mount", "-t", "proc", "proc", str(left / "root" / "proc")], check=True)
    try:
        with exclusive(store.root / LOCKS, OTHER):  # another builder on the same store
            done = recover(config, store)
    finally:
        subprocess.run(["umount", "--lazy", str(left / "root" / "proc")], check=False)
        runner.track_children(None)
    assert done.work_dirs == [left] and not left.exists()
    assert busy.is_dir() and keep.is_dir()
    assert done.tmp_files == 1 and not stale.exists() and fresh.exists()
    assert done.partial_roots == 1 and not half_root.exists()
    assert Path("/proc/self/stat").is_file()  # the host's /proc is untouched
