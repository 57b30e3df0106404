"""The package-root cache: fresh entries reused, old ones remade, size bounded, crashes cleared."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from imgline.builder.adapters.rootcache import RootCache
from imgline.builder.errors import BackendError

pytestmark = pytest.mark.unit

A, B, C = ("a" * 64, "b" * 64, "c" * 64)
MIB = 1 << 20


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def maker(size: int, calls: list[Path]) -> object:
    def make(out: Path) -> None:
        calls.append(out)
        out.write_bytes(b"x" * size)

    return make


def test_an_entry_is_made_once_and_then_reused(tmp_path: Path) -> None:
    clock = Clock()
    cache = RootCache(tmp_path / "c", max_bytes=10 * MIB, max_age_seconds=3600, clock=clock)
    calls: list[Path] = []
    assert cache.take(A, tmp_path / "d1") is None
    cache.put(A, maker(100, calls), tmp_path / "d1")  # type: ignore[arg-type]
    assert (tmp_path / "d1").read_bytes() == b"x" * 100
    assert calls and calls[0].name.startswith(".partial-")  # written aside, then renamed
    clock.now += 600
    hit = cache.take(A, tmp_path / "d2")
    assert hit is not None and hit.age_seconds == 600
    assert os.stat(tmp_path / "d2").st_ino == os.stat(cache.entry(A)).st_ino  # a link, no copy
    assert len(calls) == 1


def test_an_entry_past_its_age_is_made_again(tmp_path: Path) -> None:
    clock = Clock()
    cache = RootCache(tmp_path / "c", max_bytes=10 * MIB, max_age_seconds=3600, clock=clock)
    cache.put(A, maker(10, []), tmp_path / "d")  # type: ignore[arg-type]
    clock.now += 1800
    assert cache.take(A, tmp_path / "d") is not None  # use does not make it younger
    clock.now += 1801
    assert cache.take(A, tmp_path / "d") is None
    assert not cache.entry(A).exists()


def test_the_least_recently_used_entries_go_first(tmp_path: Path) -> None:
    clock = Clock()
    cache = RootCache(tmp_path / "c", max_bytes=2 * MIB + 10, max_age_seconds=1e9, clock=clock)
    cache.put(A, maker(MIB, []), tmp_path / "d")  # type: ignore[arg-type]
    clock.now += 1
    cache.put(B, maker(MIB, []), tmp_path / "d")  # type: ignore[arg-type]
    clock.now += 1
    assert cache.take(A, tmp_path / "d") is not None  # A is now used after B
    clock.now += 1
    cache.put(C, maker(MIB, []), tmp_path / "d")  # type: ignore[arg-type]
    assert sorted(p.stem[0] for p in (tmp_path / "c").glob("*.tar")) == ["a", "c"]
    # an entry larger than the bound is still kept for the build that made it
    big = RootCache(tmp_path / "c", max_bytes=MIB // 2, max_age_seconds=1e9, clock=clock)
    big.put(B, maker(MIB, []), tmp_path / "d")  # type: ignore[arg-type]
    assert [p.stem[0] for p in (tmp_path / "c").glob("*.tar")] == ["b"]


def test_a_build_keeps_its_link_when_the_entry_is_evicted(tmp_path: Path) -> None:
    cache = RootCache(tmp_path / "c", max_bytes=MIB, max_age_seconds=1e9)
    cache.put(A, maker(MIB, []), tmp_path / "mine")  # type: ignore[arg-type]
    cache.put(B, maker(MIB, []), tmp_path / "other")  # type: ignore[arg-type]
    assert not cache.entry(A).exists()
    assert (tmp_path / "mine").stat().st_size == MIB


def test_size_zero_keeps_nothing(tmp_path: Path) -> None:
    cache = RootCache(tmp_path / "c", max_bytes=0, max_age_seconds=1e9)
    calls: list[Path] = []
    cache.put(A, maker(10, calls), tmp_path / "d")  # type: ignore[arg-type]
    assert calls == [tmp_path / "d"] and not cache.entry(A).exists()


def test_a_failed_make_leaves_nothing(tmp_path: Path) -> None:
    cache = RootCache(tmp_path / "c", max_bytes=MIB, max_age_seconds=1e9)

    def broken(out: Path) -> None:
        out.write_bytes(b"half")
        raise BackendError("mirror said no")

    with pytest.raises(BackendError):
        cache.put(A, broken, tmp_path / "d")
    assert list((tmp_path / "c").iterdir()) == []


def test_partial_entries_of_dead_builders_are_cleared(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    directory.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    gone = directory / f".partial-{dead.stdout.strip()}-{A}.tar"
    mine = directory / f".partial-{os.getpid()}-{B}.tar"
    other = directory / f".partial-x-{C}.tar"  # not ours to judge
    for path in (gone, mine, other):
        path.write_bytes(b"half")
    cache = RootCache(directory, max_bytes=MIB, max_age_seconds=1e9)
    assert cache.clear_partial() == 1
    assert not gone.exists() and mine.exists() and other.exists()


@pytest.mark.parametrize("key", ["../" + "a" * 61, "A" * 64, "a" * 63, "", "a" * 64 + "/x"])
def test_keys_are_sha256_hex(tmp_path: Path, key: str) -> None:
    cache = RootCache(tmp_path / "c", max_bytes=MIB, max_age_seconds=1e9)
    with pytest.raises(BackendError, match="is not a sha256"):
        cache.take(key, tmp_path / "d")
    with pytest.raises(BackendError, match="is not a sha256"), cache.locked(key):
        pass
