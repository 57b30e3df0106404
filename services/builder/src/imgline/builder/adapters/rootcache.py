"""Package roots kept between builds: tarballs named by their key, least recently used first out.

Installing a kickstart's packages is most of a build; its configuration and ``%post`` scripts
take seconds. So the first is done once per package set (``debian.package_root_key``) and kept
here, and a push that changes only scripts or files starts from the kept root
(docs/architecture.md, "Builder"). An entry is used for ``max_age`` at most, so the mirror's
security updates reach images within that time; the whole cache stays under ``max_bytes``.

An entry is written under a temporary name and renamed, so it is complete or absent. Builds
take a hard link of the entry into their work directory: evicting it then cannot pull it from
under a running build. Entries are made under a lock per key, so two builds of one package set
on this host install it once. A builder killed while making one leaves a temporary file that
:meth:`RootCache.clear_partial` removes at the next start.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from imgline.builder.errors import BackendError
from imgline.builder.settings import BuilderConfig
from imgline.core import runner
from imgline.core.bus.stage import exclusive
from imgline.core.fsutil import write_atomic

log = logging.getLogger(__name__)

_KEY = re.compile(r"^[0-9a-f]{64}$")
_PARTIAL = re.compile(r"^\.partial-(\d+)-[0-9a-f]{64}\.tar$")
LOCKS = ".locks"
#: How long a build waits for another one making the same package root.
LOCK_WAIT_SECONDS = 3 * 3600.0


@dataclass(frozen=True)
class Hit:
    """A fresh entry was linked to the destination; it was made this long ago, and what its
    making said that a build from it must say again (packages left out)."""

    age_seconds: float
    notes: tuple[str, ...] = ()


class RootCache:
    """Kept package roots under ``directory``; see the module docstring."""

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int,
        max_age_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_age_seconds = max_age_seconds
        self.clock = clock

    def entry(self, key: str) -> Path:
        if not _KEY.match(key):
            raise BackendError(f"package root key {key!r} is not a sha256")
        return self.directory / f"{key}.tar"

    def _notes(self, key: str) -> Path:
        return self.directory / f"{key}.notes"

    @contextmanager
    def locked(self, key: str) -> Iterator[None]:
        """Only one build on this host looks up and makes the entry ``key`` at a time."""
        self.entry(key)  # validates the key before it names a lock file
        self.directory.mkdir(parents=True, exist_ok=True)
        with exclusive(self.directory / LOCKS, key, wait_seconds=LOCK_WAIT_SECONDS):
            yield

    def take(self, key: str, dest: Path) -> Hit | None:
        """Link a fresh entry ``key`` to ``dest`` and mark it used; None when there is none
        (an entry past its age is removed)."""
        path = self.entry(key)
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        now = self.clock()
        age = now - st.st_mtime  # mtime: when it was made; atime: when it was last used
        if age > self.max_age_seconds or age < 0:
            log.info("package root %s is %.0f s old: making it again", key[:16], age)
            path.unlink(missing_ok=True)
            self._notes(key).unlink(missing_ok=True)
            return None
        _link_or_copy(path, dest)
        os.utime(path, (now, st.st_mtime))
        try:
            notes = tuple(self._notes(key).read_text(encoding="utf-8").splitlines())
        except FileNotFoundError:
            notes = ()
        return Hit(age, notes)

    def put(self, key: str, make: Callable[[Path], list[str] | None], dest: Path) -> Path:
        """Make entry ``key`` with ``make(tmp_path)``, keep it and the notes ``make`` returns
        (evicting the least recently used entries beyond ``max_bytes``) and link it to
        ``dest``. With ``max_bytes`` 0 nothing is kept: ``make`` writes straight to ``dest``."""
        if self.max_bytes <= 0:
            make(dest)
            return dest
        path = self.entry(key)
        self.directory.mkdir(parents=True, exist_ok=True)
        partial = self.directory / f".partial-{os.getpid()}-{key}.tar"
        partial.unlink(missing_ok=True)
        try:
            notes = make(partial) or []
            write_atomic(self._notes(key), "".join(f"{n}\n" for n in notes).encode())
            now = self.clock()
            os.utime(partial, (now, now))
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
        _link_or_copy(path, dest)
        self.evict(keep=key)
        return dest

    def evict(self, *, keep: str | None = None) -> list[Path]:
        """Remove least recently used entries until the cache fits ``max_bytes``."""
        entries = []
        for path in self.directory.glob("*.tar"):
            if _KEY.match(path.stem):
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                entries.append((st.st_atime, st.st_size, path))
        total = sum(size for _, size, _ in entries)
        removed = []
        for _, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            if path.stem == keep:
                continue
            path.unlink(missing_ok=True)
            self._notes(path.stem).unlink(missing_ok=True)
            total -= size
            removed.append(path)
        if removed:
            log.info("package root cache over its size: removed %d entries", len(removed))
        return removed

    def clear_partial(self) -> int:
        """Remove entries a killed builder was making (its process is gone)."""
        if not self.directory.is_dir():
            return 0
        cleared = 0
        for path in self.directory.iterdir():
            found = _PARTIAL.match(path.name)
            if found and not runner.is_running(int(found.group(1))):
                path.unlink(missing_ok=True)
                cleared += 1
        return cleared


def _link_or_copy(src: Path, dest: Path) -> None:
    dest.unlink(missing_ok=True)
    try:
        os.link(src, dest)
    except OSError:  # another file system than the work directory's
        shutil.copyfile(src, dest)


def root_cache(config: BuilderConfig) -> RootCache:
    """The package roots a builder keeps (``root_cache_mib`` 0: none are kept)."""
    return RootCache(
        config.root_cache_dir,
        max_bytes=config.root_cache_mib << 20,
        max_age_seconds=config.root_cache_max_age_hours * 3600,
    )
