"""The three-way /etc merge that carries an admin's configuration into a new layer.

Three trees, as in rpm-ostree and imgbased: ``base`` is the old image's pristine /etc (its
``/usr/share/factory/etc``), ``admin`` is the running layer's /etc, ``vendor`` is the new
image's /etc. The new layer's /etc starts as vendor's; the merge then replays what the admin
changed relative to base. Where admin and vendor both changed a path differently the admin's
version wins (the host must keep working as configured) and the vendor's is saved beside it as
``<path>.imgnew`` for the admin to review.

``plan`` is pure and decides everything; ``apply_plan`` only carries it out, refusing to go
through a symlink, since a link in /etc pointing at ``/`` must not let the merge write there.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from imgline.updater.errors import UpdaterError

STEP = "merge_etc"
NEW_SUFFIX = ".imgnew"


@dataclass(frozen=True)
class Node:
    """One entry of a tree; equal nodes mean "unchanged" (content, kind, mode and owner)."""

    kind: Literal["file", "link", "dir"]
    digest: str  # sha256 of the content or of the link target; "" for directories
    mode: int  # permission bits, setuid/setgid/sticky included
    uid: int
    gid: int


@dataclass(frozen=True)
class MergePlan:
    """What to do to the target (vendor's /etc), each list in its own order of execution:
    ``conflicts`` are renamed to ``<path>.imgnew`` first, then ``remove`` goes, then the
    admin's ``copy_admin`` entries are copied in (a conflict the admin kept is in both)."""

    copy_admin: tuple[str, ...]
    remove: tuple[str, ...]
    conflicts: tuple[str, ...]


def _error(action: str, exc: OSError) -> UpdaterError:
    return UpdaterError(
        f"/etc merge: cannot {action}: {exc.strerror or exc}; the new layer is not booted "
        "yet: fix the cause and run the apply again",
        step=STEP,
    )


# --- scanning -----------------------------------------------------------------------------------


def _digest_file(path: str) -> str:
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as src:
        while chunk := src.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _node(path: str, st: os.stat_result) -> Node | None:
    mode, uid, gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
    if stat.S_ISDIR(st.st_mode):
        return Node("dir", "", mode, uid, gid)
    if stat.S_ISLNK(st.st_mode):
        target = os.fsencode(os.readlink(path))
        return Node("link", hashlib.sha256(target).hexdigest(), mode, uid, gid)
    if stat.S_ISREG(st.st_mode):
        return Node("file", _digest_file(path), mode, uid, gid)
    return None  # sockets, fifos and devices are run-time objects, not configuration


def scan(root: Path) -> dict[str, Node]:
    """Every file, symlink and directory under ``root`` by relative POSIX path (``root`` itself
    excluded), from lstat: a symlink is recorded as a link, never followed."""
    found: dict[str, Node] = {}
    try:
        if not stat.S_ISDIR(os.lstat(root).st_mode):
            raise UpdaterError(
                f"/etc merge: {root} is not a directory (or is a symlink); the merge needs the "
                "real /etc of each layer",
                step=STEP,
            )
    except OSError as exc:
        raise _error(f"read {root}", exc) from exc
    pending = [(str(root), "")]
    while pending:
        directory, prefix = pending.pop()
        try:
            with os.scandir(directory) as it:
                entries = list(it)
        except OSError as exc:
            raise _error(f"read the directory {directory}", exc) from exc
        for entry in entries:
            try:
                node = _node(entry.path, entry.stat(follow_symlinks=False))
            except OSError as exc:
                raise _error(f"read {entry.path}", exc) from exc
            if node is None:
                continue
            rel = prefix + entry.name
            found[rel] = node
            if node.kind == "dir":
                pending.append((entry.path, rel + "/"))
    return found


# --- planning -----------------------------------------------------------------------------------


def _under(path: str, parent: str) -> bool:
    return path.startswith(parent + "/")


def _ancestors(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def plan(
    base: Mapping[str, Node], admin: Mapping[str, Node], vendor: Mapping[str, Node]
) -> MergePlan:
    """Decide the merge, path by path (see the module docstring for the three trees).

    - untouched by the admin (admin == base): vendor's wins, deletions included: nothing to do;
    - admin == vendor: nothing to do;
    - admin changed or added it and vendor did not touch it (or dropped it): admin's copied;
    - both changed it differently: conflict, admin's kept, vendor's saved as ``.imgnew``;
      for two directories that differ only in mode or owner the admin's simply win;
    - admin deleted it and vendor did not touch it: removed; vendor changed it: conflict,
      removed, vendor's saved as ``.imgnew``.
    """
    copy: set[str] = set()
    remove: set[str] = set()
    conflicts: set[str] = set()
    for path in base.keys() | admin.keys():
        b, a, v = base.get(path), admin.get(path), vendor.get(path)
        if a in (b, v):
            continue
        if a is None:
            (remove if v == b else conflicts).add(path)
        elif v is None or v == b or (a.kind == "dir" and v.kind == "dir"):
            copy.add(path)
        else:
            copy.add(path)
            conflicts.add(path)
    _settle_vendor_dirs(admin, vendor, copy, remove, conflicts)
    _make_parents(vendor, copy, conflicts)
    return MergePlan(tuple(sorted(copy)), tuple(sorted(remove)), tuple(sorted(conflicts)))


def _settle_vendor_dirs(
    admin: Mapping[str, Node],
    vendor: Mapping[str, Node],
    copy: set[str],
    remove: set[str],
    conflicts: set[str],
) -> None:
    """A vendor directory the admin deleted or replaced can only go if everything in it goes;
    if the new image put anything else in it, the whole directory is saved as ``.imgnew``.
    Either way nothing under a directory that is renamed away is touched on its own."""
    leaving = sorted(
        path
        for path, node in vendor.items()
        if node.kind == "dir"
        and (path in remove or path in conflicts or (path in copy and admin[path].kind != "dir"))
    )
    renamed: list[str] = []
    for path in leaving:
        if any(_under(path, r) for r in renamed):
            continue  # moves away with its parent
        inside = [p for p in vendor if _under(p, path)]
        if path in conflicts or not all(p in remove for p in inside):
            remove.discard(path)
            conflicts.add(path)
            renamed.append(path)
            for p in inside:
                remove.discard(p)
                conflicts.discard(p)


def _make_parents(vendor: Mapping[str, Node], copy: set[str], conflicts: set[str]) -> None:
    """What the admin keeps needs its parent directories: one the new image dropped is made with
    the admin's mode and owner; a file or link the new image put in its place is a conflict."""
    for path in sorted(copy):
        for parent in _ancestors(path):
            node = vendor.get(parent)
            if node is None:
                copy.add(parent)
            elif node.kind != "dir":
                copy.add(parent)
                conflicts.add(parent)


# --- applying -----------------------------------------------------------------------------------


def _check(rel: str) -> None:
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise UpdaterError(
            f"/etc merge: refusing the path {rel!r}: plans hold relative paths without '..'; "
            "this is a bug in the updater: report it",
            step=STEP,
        )


def _inside(root: Path, rel: str) -> Path:
    """``root/rel`` after making sure no existing parent on the way is a symlink."""
    _check(rel)
    current = root
    for name in rel.split("/")[:-1]:
        current = current / name
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            break
        except OSError as exc:
            raise _error(f"inspect {current}", exc) from exc
        if not stat.S_ISDIR(st.st_mode):
            raise UpdaterError(
                f"/etc merge: refusing to go through {current}, which is not a directory (a "
                "symlink could lead out of /etc); the new layer is not booted yet: make it a "
                "directory in the running /etc or remove it, then run the apply again",
                step=STEP,
            )
    return root / rel


def _as_root() -> bool:
    return os.geteuid() == 0


def _set_owner_mode(path: Path, st: os.stat_result) -> None:
    if _as_root():
        os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)
    os.chmod(path, stat.S_IMODE(st.st_mode))  # after chown, which clears setuid/setgid


def _copy_file(src: Path, dst: Path, st: os.stat_result) -> None:
    fd_in = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd_in, "rb") as inp:
        fd_out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd_out, "wb") as out:
            shutil.copyfileobj(inp, out, 1 << 20)
            if _as_root():
                os.fchown(out.fileno(), st.st_uid, st.st_gid)
            os.fchmod(out.fileno(), stat.S_IMODE(st.st_mode))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _clear(dst: Path, rel: str, *, keep_dir: bool) -> None:
    """Make room at ``dst``; an existing directory stays when a directory goes there."""
    try:
        st = os.lstat(dst)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(dst)
    elif not keep_dir:
        try:
            os.rmdir(dst)
        except OSError as exc:
            raise UpdaterError(
                f"/etc merge: the admin replaced the directory {rel} but the new image still "
                f"has files in it ({exc.strerror}); this is a bug in the updater: report it",
                step=STEP,
            ) from exc


def _put(admin_root: Path, target_root: Path, rel: str) -> os.stat_result | None:
    """Copy one admin entry; returns the stat of a directory, whose times are set at the end
    (creating its children would change them again)."""
    src = _inside(admin_root, rel)
    dst = _inside(target_root, rel)
    st = os.lstat(src)
    _clear(dst, rel, keep_dir=stat.S_ISDIR(st.st_mode))
    dst.parent.mkdir(parents=True, exist_ok=True)
    if stat.S_ISDIR(st.st_mode):
        if not dst.is_dir():
            os.mkdir(dst, 0o700)
        _set_owner_mode(dst, st)
        return st
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), dst)
        if _as_root():
            os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
        return None
    if stat.S_ISREG(st.st_mode):
        _copy_file(src, dst, st)
        return None
    raise UpdaterError(
        f"/etc merge: {rel} in the running /etc is no longer a file, link or directory; "
        "remove it there or make it one, then run the apply again",
        step=STEP,
    )


def _deepest_first(paths: Iterable[str]) -> list[str]:
    return sorted(paths, reverse=True)


def apply_plan(plan: MergePlan, admin_root: Path, target_root: Path) -> None:
    """Carry out ``plan`` on ``target_root`` (a fresh copy of vendor's /etc), copying from
    ``admin_root``: contents, mode, owner (when run as root), times, symlinks as symlinks.

    Not idempotent: a conflict renamed once would be renamed again. A run that was cut short
    must start over from a fresh copy of the vendor's /etc.
    """
    for rel in (*plan.copy_admin, *plan.remove, *plan.conflicts):
        _check(rel)
    _save_conflicts(plan.conflicts, target_root)
    _remove(plan.remove, target_root)
    _copy_admin(plan.copy_admin, admin_root, target_root)


def _save_conflicts(paths: Iterable[str], target_root: Path) -> None:
    for rel in _deepest_first(paths):
        path = _inside(target_root, rel)
        if os.path.lexists(path):
            try:
                os.rename(path, _inside(target_root, rel + NEW_SUFFIX))
            except OSError as exc:
                raise _error(f"save the new image's {rel} as {rel}{NEW_SUFFIX}", exc) from exc


def _remove(paths: Iterable[str], target_root: Path) -> None:
    for rel in _deepest_first(paths):
        path = _inside(target_root, rel)
        try:
            if stat.S_ISDIR(os.lstat(path).st_mode):
                os.rmdir(path)
            else:
                os.unlink(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise _error(f"remove {rel}", exc) from exc


def _copy_admin(paths: Iterable[str], admin_root: Path, target_root: Path) -> None:
    dirs: list[tuple[str, os.stat_result]] = []
    for rel in sorted(paths):  # parents first
        try:
            st = _put(admin_root, target_root, rel)
        except OSError as exc:
            raise _error(f"copy the admin's {rel}", exc) from exc
        if st is not None:
            dirs.append((rel, st))
    for rel, st in reversed(dirs):
        try:
            os.utime(target_root / rel, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
        except OSError as exc:
            raise _error(f"set the times of {rel}", exc) from exc
