"""``write_atomic``: the one way imgline replaces a file that must survive a crash whole (the
repository's metadata, a host's state.json and grubenv, boot entries)."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from imgline.core.fsutil import TMP_PREFIX, out_of_space, write_atomic

pytestmark = pytest.mark.unit


def test_replaces_the_file_with_the_given_mode_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    path.write_bytes(b"old")
    path.chmod(0o600)
    write_atomic(path, b"new", mode=0o755)
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
    assert os.listdir(tmp_path) == ["grubenv"]


def test_missing_directory_is_an_error_unless_parents_are_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "state.json"
    with pytest.raises(FileNotFoundError):
        write_atomic(path, b"{}")
    write_atomic(path, b"{}", parents=True)
    assert path.read_bytes() == b"{}"


def test_a_failed_replace_keeps_the_old_state_and_cleans_up(tmp_path: Path) -> None:
    in_the_way = tmp_path / "entries"
    (in_the_way / "x").mkdir(parents=True)
    with pytest.raises(OSError):
        write_atomic(in_the_way, b"data")  # rename cannot put a file over a full directory
    assert sorted(os.listdir(tmp_path)) == ["entries"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TMP_PREFIX)]


def test_concurrent_writers_never_share_a_temp_file(tmp_path: Path) -> None:
    """Readers see one writer's whole content, never a mix (the repository's threads)."""
    path = tmp_path / "timestamp.json"
    payloads = [bytes([65 + i]) * 65536 for i in range(8)]

    def write(data: bytes) -> None:
        for _ in range(20):
            write_atomic(path, data)

    threads = [threading.Thread(target=write, args=(d,)) for d in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert path.read_bytes() in payloads
    assert os.listdir(tmp_path) == ["timestamp.json"]


def test_a_full_file_system_is_told_apart_from_other_write_errors(tmp_path: Path) -> None:
    """``/dev/full`` answers every write with the ENOSPC a full disk gives."""
    with pytest.raises(OSError) as full, open("/dev/full", "wb", buffering=0) as dev:
        dev.write(b"x")
    assert out_of_space(full.value)
    with pytest.raises(OSError) as missing:
        write_atomic(tmp_path / "no" / "such" / "dir", b"x")
    assert not out_of_space(missing.value)
    assert not out_of_space(ValueError("no space"))
