"""File-system helpers with the safety a build host needs."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from imgline.core.errors import TransientError

log = logging.getLogger(__name__)


#: What a write returns when the file system (or the user's quota on it) is full: nothing wrong
#: with the input, and freeing space fixes it, so callers raise their transient error.
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def out_of_space(exc: BaseException) -> bool:
    """Whether ``exc`` is a write refused for want of space."""
    return isinstance(exc, OSError) and exc.errno in NO_SPACE


def mounts_below(path: Path) -> list[Path]:
    """Mount points at or under ``path`` (deepest first), from /proc/self/mountinfo."""
    root = path.resolve()
    found = []
    try:
        text = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        point = Path(fields[4].encode().decode("unicode_escape"))
        if point == root or point.is_relative_to(root):
            found.append(point)
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def remove_tree(path: Path) -> None:
    """``rm -rf`` that first unmounts anything mounted inside (a build chroot killed mid-way
    leaves /proc or /dev mounted there; deleting through them would damage the host)."""
    if not path.exists():
        return
    for point in mounts_below(path):
        log.warning("unmounting %s left behind under %s", point, path)
        subprocess.run(["umount", "--lazy", str(point)], check=False)  # noqa: S603, S607
    left = mounts_below(path)
    if left:
        raise TransientError(
            f"refusing to delete {path}: still mounted: {', '.join(map(str, left))}"
        )
    shutil.rmtree(path)


def ensure_dir(path: Path, mode: int = 0o755) -> Path:
    """Create ``path`` (and parents) if missing; return it."""
    path.mkdir(parents=True, exist_ok=True, mode=mode)
    os.chmod(path, mode)
    return path


def fsync_dir(path: Path) -> None:
    """Make a new name in ``path`` durable (after a rename, link or create): without it the
    name can vanish after a crash even though the file's data was synced."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: Temporary files of ``write_atomic`` start with this, so a cleanup can find what a crash left.
TMP_PREFIX = ".tmp-"


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644, parents: bool = False) -> None:
    """Replace ``path`` with ``data`` so that a crash or a power cut leaves the old file or the
    new one whole, never a mix, and the new name is durable once this returns.

    The temporary file is unique (several threads or processes may write beside each other)
    and removed again on failure. ``parents`` creates missing directories; without it a missing
    directory is an ``OSError``, which callers whose directory must exist report as such.
    """
    if parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = write_temp(path.parent, data, mode=mode, prefix=f"{TMP_PREFIX}{path.name}-")
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def write_temp(directory: Path, data: bytes, *, mode: int, prefix: str) -> Path:
    """A new, uniquely named, fsynced file in ``directory`` holding ``data``, ready to be
    renamed or linked into place; nothing is left behind when writing fails."""
    fd, name = tempfile.mkstemp(dir=directory, prefix=prefix)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fchmod(out.fileno(), mode)
            os.fsync(out.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp
