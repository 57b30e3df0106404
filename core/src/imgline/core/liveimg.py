"""The liveimg format: ``squashfs.img`` containing ``LiveOS/rootfs.img``, an ext4 of the root.

This is what anaconda's ``liveimg`` kickstart command and dracut's dmsquash-live understand
(docs/architecture.md, Artifacts). The ext4 is made by ``mke2fs -d`` straight from the root
tree, which needs neither a loop mount nor device-mapper, so assembly works in an unprivileged
container as well as on a builder host; the squashfs only compresses that one (sparse) file.

Command lines are built by pure functions so tests can pin them; running them goes through
:func:`imgline.core.runner.run`, which logs and checks every command. The read-back helpers use
``unsquashfs`` and ``debugfs`` so a tester can inspect an image without root or mounts.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Protocol

from pydantic import BaseModel, ConfigDict

from imgline.core.errors import PermanentError
from imgline.core.fsutil import mounts_below
from imgline.core.runner import CommandError, require, run

log = logging.getLogger(__name__)

MIB = 1 << 20
IMAGE_JSON = Path("usr/lib/imgline/image.json")
FACTORY_ETC = Path("usr/share/factory/etc")
ROOTFS_IN_SQUASHFS = "LiveOS/rootfs.img"
DEFAULT_LABEL = "imgline-root"
COMPRESSIONS = ("zstd", "xz", "gzip", "lz4", "lzo")

# Pinned instead of left to /etc/mke2fs.conf: Debian's "small" type (< 512 MiB) would pick
# 1 KiB blocks and a different inode ratio, so the same kickstart would give a different
# filesystem on another builder, and check_fits could not predict what fits.
BLOCK_SIZE = 4096
INODE_SIZE = 256
BYTES_PER_INODE = 16384
FIRST_INODE = 11  # inodes 1-10 are reserved by ext4, 11 is lost+found
MAX_LABEL = 16

# Size estimate for check_fits (see there): measured against mke2fs 1.47.0.
DATA_MARGIN = 0.05  # directories, extent blocks, xattr blocks
SLACK_PER_INODE = BLOCK_SIZE // 2  # on average half of every file's last block is unused
FIXED_OVERHEAD = 4 * MIB  # superblock, lost+found, first group's bitmaps
METADATA_FRACTION = 0.003  # group bitmaps, descriptors, backup superblocks, resize reserve

_FILE_NOT_FOUND = "File not found by ext2_lookup"
_DEBUGFS_ENV = {"DEBUGFS_PAGER": "__none__"}


class LiveImgError(PermanentError):
    """The root tree cannot be turned into a liveimg, or an image cannot be read back: the
    message says which (a --size too small, a missing /etc, a path not in the image) and what
    to change."""


class InodeInfo(BaseModel):
    """What ``debugfs stat`` says about one path inside an ext4 image."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str  # "regular", "directory", "symlink", "FIFO", ... as debugfs names them
    mode: int  # permission bits including setuid/setgid/sticky, without the type
    uid: int
    gid: int
    size: int
    link_target: str | None = None


class TreeStats(BaseModel):
    """Apparent size of a root tree's regular files and how many inodes it will need."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    size_bytes: int
    inodes: int


# --- preparing the tree ---------------------------------------------------------------------


def image_json_text(meta: dict[str, Any]) -> str:
    """``image.json`` as written into every image."""
    try:
        return json.dumps(meta, sort_keys=True, indent=2) + "\n"
    except (TypeError, ValueError) as exc:
        raise LiveImgError(f"image metadata cannot be written as JSON: {exc}") from exc


def check_tree(root: Path) -> None:
    """The tree has what imgline writes into: a real /etc, and no symlink on the way to
    ``image.json`` or the factory copy (a foreign root's absolute link such as
    ``usr/lib -> /usr/lib`` would lead writes out of the tree, into the builder host)."""
    if not root.is_dir():
        raise LiveImgError(f"root tree {root} is not a directory")
    etc = root / "etc"
    if etc.is_symlink() or not etc.is_dir():
        raise LiveImgError(
            f"{etc} is missing or not a directory: an image needs /etc "
            "(it is copied to /usr/share/factory/etc for the updater)"
        )
    _inside(root, IMAGE_JSON)
    _inside(root, FACTORY_ETC)


def prepare_tree(root: Path, meta: dict[str, Any], *, copy_etc: bool = True) -> None:
    """Add what imgline itself needs in every image, right before it is frozen.

    ``image.json`` lets a booted host say which image it runs; the factory copy of ``/etc`` is
    the "base" of the updater's three-way /etc merge, so it must be an exact copy (modes,
    ownership, links, xattrs). Re-running replaces both, so the call is idempotent.
    ``copy_etc`` False leaves the factory directory empty, for :func:`factory_view` to fill.
    """
    check_tree(root)
    etc = root / "etc"
    text = image_json_text(meta)
    image_json = _inside(root, IMAGE_JSON)
    _make_dirs(root, IMAGE_JSON.parent)
    tmp = image_json.with_name(f".{image_json.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(0o644)
    os.replace(tmp, image_json)

    factory = _inside(root, FACTORY_ETC)
    _make_dirs(root, FACTORY_ETC.parent)
    for point in mounts_below(factory):  # a view a killed assembly left: never delete through it
        _unmount(point)
    if factory.is_symlink() or factory.is_file():
        factory.unlink()
    elif factory.exists():
        shutil.rmtree(factory)
    if copy_etc:
        _copy_tree(etc, factory)
    else:
        factory.mkdir()


def _shared_inodes(etc: Path) -> bool:
    """Whether a file under ``etc`` has more than one name: mke2fs keeps hard links by inode,
    so a bind-mounted view would give /etc and its factory copy shared inodes."""
    return any(
        st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode) and not stat.S_ISLNK(st.st_mode)
        for st in _walk(etc)
    )


def _unmount(path: Path) -> None:
    try:
        run(["umount", str(path)])
    except CommandError:
        run(["umount", "--lazy", str(path)])


@contextmanager
def factory_view(root: Path, log_file: IO[str] | None = None) -> Iterator[bool]:
    """Fill ``/usr/share/factory/etc`` for mke2fs: a bind mount of ``/etc`` when possible
    (True), else a copy (False).

    mke2fs -d copies what it reads, so a bind mount gives the image the same exact copy as
    :func:`_copy_tree`, without creating a file per /etc entry in the tree first (about 1 ms
    each on some build hosts' file systems). Files with several names in /etc keep the copy:
    mke2fs would link them across both trees. Bind mounts need root; a crash leaves the mount,
    which :func:`prepare_tree` and ``fsutil.remove_tree`` unmount before deleting anything.
    """
    etc = root / "etc"
    factory = _inside(root, FACTORY_ETC)
    bound = False
    if os.geteuid() == 0 and not _shared_inodes(etc):
        try:
            run(["mount", "--bind", str(etc), str(factory)], log_file)
            bound = True
        except CommandError as exc:  # no mount here (a container without the capability)
            log.info("copying /etc for the factory copy: bind mount failed: %s", exc)
    if not bound:
        shutil.rmtree(factory)
        _copy_tree(etc, factory)
    try:
        yield bound
    finally:
        if bound:
            _unmount(factory)


def _inside(root: Path, rel: Path) -> Path:
    """``root/rel``, refusing when a component is a symlink.

    The tree is a foreign root: an absolute symlink such as ``usr/lib -> /usr/lib`` would make
    us write into the builder host itself.
    """
    path = root
    for part in rel.parts:
        path = path / part
        if path.is_symlink():
            raise LiveImgError(
                f"{path} is a symlink in the root tree: imgline writes {rel} and will not "
                "follow links out of the tree; make it a real directory"
            )
    return path


def _make_dirs(root: Path, rel: Path) -> None:
    path = root
    for part in rel.parts:
        path = path / part
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            raise LiveImgError(f"{path} must be a directory in the root tree")
        if not path.exists():
            path.mkdir()
            path.chmod(0o755)  # not whatever the builder's umask says


def _copy_xattrs(src: Path, dst: Path) -> None:
    """Copy extended attributes (ACLs, file capabilities, SELinux labels) where allowed.

    A host that does not support or permit one attribute must not fail the whole image; the
    same errors are tolerated as by ``shutil.copystat``.
    """
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.ENODATA, errno.EINVAL):
            return
        raise
    for name in names:
        try:
            value = os.getxattr(src, name, follow_symlinks=False)
            os.setxattr(dst, name, value, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.ENODATA, errno.EINVAL):
                raise
            log.debug("xattr %s of %s not copied: %s", name, src, exc.strerror)


def _copy_meta(src: Path, dst: Path, st: os.stat_result) -> None:
    """Owner, then mode, then xattrs, then times: chown clears setuid bits and file
    capabilities, and every change but utime bumps the times."""
    try:
        os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    except PermissionError:
        if os.geteuid() == 0:
            raise
        # Unprivileged (tests, dry runs): the files are ours, ownership cannot be kept.
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    _copy_xattrs(src, dst)
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _copy_node(src: Path, dst: Path, st: os.stat_result) -> None:
    """Recreate one non-directory entry with its metadata."""
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), dst)
    elif stat.S_ISREG(st.st_mode):
        shutil.copyfile(src, dst, follow_symlinks=False)
    else:  # FIFO, character or block device
        os.mknod(dst, st.st_mode, st.st_rdev)
    _copy_meta(src, dst, st)


def _copy_tree(src: Path, dst: Path) -> None:
    """Copy a directory like ``cp -a``: symlinks as links, hardlinks kept, devices and FIFOs
    recreated, everything's owner/mode/xattrs/times preserved. Sockets are skipped (they are
    meaningless outside a running system).

    In phases: create the directories, copy the other entries, add hardlinks, then set the
    directories' metadata children-first, so that no later write bumps a parent's mtime or
    runs into a directory already made read-only. (Copying on threads was tried: no gain, the
    time goes to the kernel creating inodes.)
    """
    dirs: list[tuple[Path, Path, os.stat_result]] = []
    nodes: list[tuple[Path, Path, os.stat_result]] = []
    hardlinks: list[tuple[Path, Path]] = []
    first_link: dict[tuple[int, int], Path] = {}
    stack = [(src, dst, src.stat())]
    while stack:
        s, d, st = stack.pop()
        dirs.append((s, d, st))
        d.mkdir()
        with os.scandir(s) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            es, ed, est = Path(entry.path), d / entry.name, entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(est.st_mode):
                stack.append((es, ed, est))
            elif stat.S_ISSOCK(est.st_mode):
                log.debug("skipping socket %s", es)
            elif est.st_nlink > 1 and not stat.S_ISLNK(est.st_mode):
                key = (est.st_dev, est.st_ino)
                if key in first_link:
                    hardlinks.append((first_link[key], ed))
                else:
                    first_link[key] = ed
                    nodes.append((es, ed, est))
            else:
                nodes.append((es, ed, est))
    for node in nodes:
        _copy_node(*node)
    for existing, new in hardlinks:
        os.link(existing, new)
    for s, d, st in reversed(dirs):  # pre-order reversed: every child before its parent
        _copy_meta(s, d, st)


# --- sizing ---------------------------------------------------------------------------------


def _walk(root: Path) -> Iterator[os.stat_result]:
    """lstat of ``root`` and everything below it, without following symlinks."""
    yield root.lstat()
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                yield entry.stat(follow_symlinks=False)
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))


def tree_stats(root: Path) -> TreeStats:
    """Apparent bytes of regular files and the number of inodes, hardlinks counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for st in _walk(root):
        key = (st.st_dev, st.st_ino)
        if key in seen:
            continue
        seen.add(key)
        if stat.S_ISREG(st.st_mode):
            total += st.st_size
    return TreeStats(size_bytes=total, inodes=len(seen))


def tree_size_bytes(root: Path) -> int:
    """Apparent size of the regular files under ``root`` (symlinks not followed, hardlinks
    counted once): what the ext4 has to hold, before filesystem overhead."""
    return tree_stats(root).size_bytes


def _journal_bytes(size_bytes: int) -> int:
    """The journal mke2fs creates by default (ext2fs_default_journal_size, e2fsprogs 1.47)."""
    blocks = size_bytes // BLOCK_SIZE
    table = (
        (2048, 0),
        (32768, 1024),
        (256 * 1024, 4096),
        (512 * 1024, 8192),
        (4096 * 1024, 16384),
        (8192 * 1024, 32768),
        (16384 * 1024, 65536),
        (32768 * 1024, 131072),
    )
    for limit, journal_blocks in table:
        if blocks < limit:
            return journal_blocks * BLOCK_SIZE
    return 262144 * BLOCK_SIZE


def usable_bytes(size_mib: int) -> int:
    """Estimated room for file data in an ext4 of ``size_mib`` made by :func:`ext4_command`.

    Inode tables (a fixed 1/64 of the device at 16 KiB per 256-byte inode), the journal and
    group metadata are taken off. Root-reserved blocks are not: ``mke2fs -d`` fills them.
    """
    size = size_mib * MIB
    inode_tables = size // BYTES_PER_INODE * INODE_SIZE
    metadata = FIXED_OVERHEAD + int(size * METADATA_FRACTION)
    return size - inode_tables - _journal_bytes(size) - metadata


def inode_capacity(size_mib: int) -> int:
    """Inodes available for files in an ext4 of ``size_mib`` made by :func:`ext4_command`."""
    return size_mib * MIB // BYTES_PER_INODE - FIRST_INODE


def needed_bytes(tree_bytes: int, inode_count: int) -> int:
    """Estimated room a tree takes in ext4: data, half a block of slack per inode, 5 %."""
    return math.ceil((tree_bytes + inode_count * SLACK_PER_INODE) * (1 + DATA_MARGIN))


def min_size_mib(tree_bytes: int, inode_count: int) -> int:
    """Smallest ``part / --size`` that :func:`check_fits` accepts for this tree."""
    need = needed_bytes(tree_bytes, inode_count)
    size = max(1, need // MIB, math.ceil((inode_count + FIRST_INODE) * BYTES_PER_INODE / MIB))
    # Linear on purpose: usable_bytes() dips where the journal size steps up, so it is not
    # monotonic and a bisection could stop in a dip. The gap is a few percent of the size.
    while usable_bytes(size) < need or inode_capacity(size) < inode_count:
        size += 1
    return size


def check_fits(tree_bytes: int, inode_count: int, size_mib: int) -> None:
    """Refuse early, with the size to ask for, when the tree will not fit in ``size_mib``.

    Without this mke2fs fails after minutes with "Could not allocate block", which does not
    say by how much. The estimate errs on the large side by a few percent.
    """
    if size_mib <= 0:
        raise LiveImgError(f"part / --size must be a positive number of MiB, not {size_mib}")
    need = needed_bytes(tree_bytes, inode_count)
    if usable_bytes(size_mib) < need:
        raise LiveImgError(
            f"the root tree needs about {min_size_mib(tree_bytes, inode_count)} MiB but "
            f"part / --size is {size_mib} MiB: raise --size"
        )
    if inode_capacity(size_mib) < inode_count:
        raise LiveImgError(
            f"the root tree has {inode_count} files and directories but an ext4 of {size_mib} "
            f"MiB holds only {max(inode_capacity(size_mib), 0)}: the root tree needs about "
            f"{min_size_mib(tree_bytes, inode_count)} MiB, raise --size"
        )


# --- commands -------------------------------------------------------------------------------


def ext4_command(
    root: Path,
    image: Path,
    *,
    label: str = DEFAULT_LABEL,
    size_mib: int,
    extra_options: Sequence[str] = (),
) -> list[str]:
    """argv of the mke2fs run that turns ``root`` into an ext4 image of ``size_mib`` MiB.

    ``extra_options`` go before the device (e.g. ``-U <uuid> -E hash_seed=<uuid>`` for a fixed
    UUID). Block size, inode size and ratio are pinned (see ``BLOCK_SIZE``).
    """
    if not label or len(label.encode()) > MAX_LABEL:
        raise LiveImgError(f"ext4 label {label!r} must be 1-{MAX_LABEL} bytes")
    if size_mib <= 0:
        raise LiveImgError(f"ext4 size must be a positive number of MiB, not {size_mib}")
    return [
        "mke2fs",
        "-t",
        "ext4",
        "-F",
        "-q",
        "-L",
        label,
        "-b",
        str(BLOCK_SIZE),
        "-I",
        str(INODE_SIZE),
        "-i",
        str(BYTES_PER_INODE),
        "-d",
        str(root),
        *extra_options,
        str(image),
        f"{size_mib}M",
    ]


#: Levels a compressor accepts (``-Xcompression-level``), and imgline's default for it.
#: zstd 6 rather than mksquashfs's 15: on a 2 GiB node image 4 s instead of 42 s on 2 cores,
#: for a squashfs 6 % larger (180 against 170 MB).
LEVELS: dict[str, tuple[range, int | None]] = {
    "zstd": (range(1, 23), 6),
    "gzip": (range(1, 10), None),
}


def squashfs_command(
    stage_dir: Path, out: Path, compression: str, level: int | None = None
) -> list[str]:
    """argv of the mksquashfs run that packs ``stage_dir`` (holding LiveOS/) into ``out``.
    ``level`` None is imgline's default for the compressor (``LEVELS``)."""
    if compression not in COMPRESSIONS:
        raise LiveImgError(
            f"squashfs compression {compression!r} is not supported: use one of "
            f"{', '.join(COMPRESSIONS)}"
        )
    levels, default = LEVELS.get(compression, (range(0), None))
    if level is not None and level not in levels:
        raise LiveImgError(
            f"squashfs compression {compression} has no level {level}"
            + (f": use {levels.start}-{levels.stop - 1}" if levels else ": leave the level out")
        )
    chosen = default if level is None else level
    return [
        "mksquashfs",
        str(stage_dir),
        str(out),
        "-noappend",
        "-comp",
        compression,
        *(["-Xcompression-level", str(chosen)] if chosen is not None else []),
        "-all-root",  # LiveOS/rootfs.img is root's, whoever the builder runs as
        "-no-progress",
    ]


def root_fixup_requests(
    root: Path, image_ids: Callable[[int, int], tuple[int, int]] | None = None
) -> list[str]:
    """debugfs requests giving the image's / the owner and mode of the tree's root.

    mke2fs 1.47 ``-d`` copies every inode's metadata except the root directory's, which it
    leaves at 0755 root:root (Fedora's / is 0555). ``image_ids`` turns the host's owner into
    the image's when a user namespace owns the tree.
    """
    st = root.stat()
    mode = stat.S_IMODE(st.st_mode)
    uid, gid = image_ids(st.st_uid, st.st_gid) if image_ids else (st.st_uid, st.st_gid)
    if (mode, uid, gid) == (0o755, 0, 0):
        return []
    return [
        f"set_inode_field / mode 0{stat.S_IFDIR | mode:o}",
        f"set_inode_field / uid {uid}",
        f"set_inode_field / gid {gid}",
    ]


class Namespace(Protocol):
    """How to run the ext4 steps in the user namespace that owns a tree (``nsimage``)."""

    def image_ids(self, uid: int, gid: int) -> tuple[int, int]:
        """The image's owner of a file the namespace owns on the host as ``uid:gid``."""
        ...

    def mke2fs(self, argv: list[str]) -> list[str]:
        """``argv`` of mke2fs, run in the namespace with the factory view of /etc in place."""
        ...

    def inside(self, argv: Sequence[str | Path]) -> list[str]:
        """``argv`` run in the namespace."""
        ...


def make_ext4(
    root: Path,
    image: Path,
    size_mib: int,
    label: str = DEFAULT_LABEL,
    log_file: IO[str] | None = None,
    *,
    extra_options: Sequence[str] = (),
    namespace: Namespace | None = None,
) -> Path:
    """Create ``image`` as a sparse ext4 of ``size_mib`` MiB holding the tree at ``root``.

    ``namespace`` runs mke2fs and the fix of /'s owner in the user namespace that owns the tree
    (mke2fs then creates ``image`` itself, in a directory that namespace may write)."""
    argv = ext4_command(root, image, label=label, size_mib=size_mib, extra_options=extra_options)
    require("mke2fs", "install e2fsprogs")
    if namespace is None:
        with image.open("wb") as f:  # sparse: only what mke2fs writes takes disk space
            f.truncate(size_mib * MIB)
    try:
        run(namespace.mke2fs(argv) if namespace else argv, log_file)
    except CommandError as exc:
        image.unlink(missing_ok=True)
        if "Could not allocate" in exc.tail:
            raise LiveImgError(
                f"the root tree does not fit in part / --size {size_mib} MiB "
                f"(mke2fs ran out of space or inodes): raise --size\n{exc.tail}"
            ) from exc
        raise
    fixups = root_fixup_requests(root, namespace.image_ids if namespace else None)
    if fixups:
        out = _debugfs(
            image, fixups, log_file, write=True, wrap=namespace.inside if namespace else None
        )
        problems = [c.strip() for c in _request_outputs(out) if c.strip()]
        if problems:
            image.unlink(missing_ok=True)
            raise LiveImgError(
                f"could not give / in {image} the owner and mode of {root}: {problems}"
            )
    return image


def make_squashfs(
    ext4_image: Path,
    out: Path,
    compression: str = "zstd",
    log_file: IO[str] | None = None,
    level: int | None = None,
) -> Path:
    """Pack ``ext4_image`` as ``LiveOS/rootfs.img`` into the squashfs ``out``.

    The stage is a hardlink next to the image (no copy of GBs); ``out`` appears atomically,
    so a crash never leaves a truncated squashfs under the final name.
    """
    stage = Path(tempfile.mkdtemp(prefix="squashfs-stage-", dir=ext4_image.parent))
    tmp_out = out.with_name(f".{out.name}.tmp")
    try:
        argv = squashfs_command(stage, tmp_out, compression, level)
        require("mksquashfs", "install squashfs-tools")
        stage.chmod(0o755)  # the squashfs root gets this mode, not mkdtemp's 0700
        (stage / "LiveOS").mkdir(mode=0o755)
        rootfs = stage / ROOTFS_IN_SQUASHFS
        try:
            os.link(ext4_image, rootfs)
        except OSError:  # a filesystem without hardlinks: borrow the file, return it below
            os.rename(ext4_image, rootfs)
        try:
            run(argv, log_file)
        finally:
            if not ext4_image.exists():
                os.rename(rootfs, ext4_image)
        os.replace(tmp_out, out)
    finally:
        tmp_out.unlink(missing_ok=True)
        shutil.rmtree(stage, ignore_errors=True)
    return out


def assemble(
    root: Path,
    out: Path,
    *,
    size_mib: int | None,
    meta: dict[str, Any],
    compression: str = "zstd",
    workdir: Path,
    log_file: IO[str] | None = None,
    headroom_mib: int = 0,
    compression_level: int | None = None,
) -> Path:
    """Turn the root tree into the liveimg ``out``: prepare, size-check, ext4, squashfs.

    ``size_mib`` None sizes the ext4 to the tree plus ``headroom_mib`` (a kickstart without
    ``part / --size``). The intermediate ext4 (sparse, up to its size) lives in a private
    directory under ``workdir`` and is removed afterwards, whatever happens.
    """
    # fail on a bad option before any work
    squashfs_command(Path("stage"), out, compression, compression_level)
    prepare_tree(root, meta, copy_etc=False)
    # the factory copy is /etc once more: counted from /etc, since a bind-mounted view shares
    # its inodes (tree_stats counts an inode once)
    tree, etc = tree_stats(root), tree_stats(root / "etc")
    stats = TreeStats(size_bytes=tree.size_bytes + etc.size_bytes, inodes=tree.inodes + etc.inodes)
    if size_mib is None:
        size_mib = min_size_mib(stats.size_bytes, stats.inodes) + headroom_mib
    check_fits(stats.size_bytes, stats.inodes, size_mib)
    log.info(
        "assembling %s from %s: %d MiB of files, %d inodes, part / %d MiB, %s",
        out,
        root,
        stats.size_bytes // MIB,
        stats.inodes,
        size_mib,
        compression,
    )
    private = Path(tempfile.mkdtemp(prefix="liveimg-", dir=workdir))
    try:
        with factory_view(root, log_file):
            image = make_ext4(root, private / "rootfs.img", size_mib, log_file=log_file)
        make_squashfs(image, out, compression, log_file, compression_level)
    finally:
        shutil.rmtree(private, ignore_errors=True)
    return out


# --- reading back ---------------------------------------------------------------------------


def extract_rootfs(squashfs: Path, dest: Path, log_file: IO[str] | None = None) -> Path:
    """Extract ``LiveOS/rootfs.img`` from a liveimg into directory ``dest``; return its path.

    No root and no mount needed; the extracted file stays sparse.
    """
    require("unsquashfs", "install squashfs-tools")
    if not squashfs.is_file():
        raise LiveImgError(f"{squashfs} does not exist or is not a file")
    argv = ["unsquashfs", "-no-progress", "-f", "-d", str(dest), str(squashfs), ROOTFS_IN_SQUASHFS]
    try:
        run(argv, log_file)
    except CommandError as exc:
        raise LiveImgError(f"cannot read {squashfs} as a squashfs:\n{exc.tail}") from exc
    rootfs = dest / ROOTFS_IN_SQUASHFS
    if not rootfs.is_file():
        raise LiveImgError(f"{squashfs} has no {ROOTFS_IN_SQUASHFS}: it is not a liveimg")
    return rootfs


def _debugfs(
    image: Path,
    requests: Sequence[str],
    log_file: IO[str] | None,
    *,
    write: bool = False,
    wrap: Callable[[list[str]], list[str]] | None = None,
) -> str:
    """Run debugfs requests in one process and return its output.

    debugfs reports most failures on stderr with exit status 0, so callers must inspect the
    text; errors are after the echoed ``debugfs: <request>`` line of each request.
    """
    require("debugfs", "install e2fsprogs")
    argv = ["debugfs", *(["-w"] if write else []), "-f", "-", str(image)]
    return run(
        wrap(argv) if wrap else argv,
        log_file,
        env={**os.environ, **_DEBUGFS_ENV},
        input_text="".join(f"{r}\n" for r in requests),
    )


def _quote(inner_path: str) -> str:
    """An image path as a debugfs argument (absolute, double-quoted)."""
    if '"' in inner_path or "\n" in inner_path or "\0" in inner_path:
        raise LiveImgError(f"path {inner_path!r} cannot be passed to debugfs (quote or newline)")
    return '"/' + inner_path.lstrip("/") + '"'


def _request_outputs(output: str) -> list[str]:
    """debugfs ``-f -`` output split into one chunk per request (banner dropped)."""
    return re.split(r"^debugfs: .*$\n?", output, flags=re.MULTILINE)[1:]


def _parse_stat(inner_path: str, image: Path, text: str) -> InodeInfo:
    if _FILE_NOT_FOUND in text:
        raise LiveImgError(f"{inner_path} is not in {image}")
    kind = re.search(r"Type: (\S+(?: special)?)\s+Mode:\s+(\d+)", text)
    owner = re.search(r"User:\s+(\d+)\s+Group:\s+(\d+).*Size: (\d+)", text)
    if kind is None or owner is None:
        raise LiveImgError(f"debugfs could not stat {inner_path} in {image}:\n{text.strip()}")
    target = re.search(r'Fast link dest: "(.*)"', text)
    return InodeInfo(
        kind=kind.group(1),
        mode=int(kind.group(2), 8),
        uid=int(owner.group(1)),
        gid=int(owner.group(2)),
        size=int(owner.group(3)),
        link_target=target.group(1) if target else None,
    )


def _stat_and_dump(
    ext4_image: Path, inner_path: str, dest: Path, log_file: IO[str] | None
) -> tuple[InodeInfo, str]:
    """``stat`` then ``dump`` of one path in a single debugfs run: the inode and dump's output.

    debugfs prints "File not found by ext2_lookup" and other failures on stderr but exits 0,
    so the text is what tells success from failure.
    """
    quoted = _quote(inner_path)
    out = _debugfs(ext4_image, [f"stat {quoted}", f'dump {quoted} "{dest}"'], log_file)
    chunks = _request_outputs(out)
    if len(chunks) != 2:
        raise LiveImgError(f"unexpected debugfs output for {inner_path} in {ext4_image}:\n{out}")
    return _parse_stat(inner_path, ext4_image, chunks[0]), chunks[1].strip()


def stat_path(ext4_image: Path, inner_path: str, log_file: IO[str] | None = None) -> InodeInfo:
    """Type, mode, owner, size (and symlink target) of ``inner_path`` inside an ext4 image."""
    with tempfile.TemporaryDirectory(prefix="imgline-debugfs-") as tmp:
        dump = Path(tmp) / "content"
        info, _ = _stat_and_dump(ext4_image, inner_path, dump, log_file)
        if info.kind == "symlink" and info.link_target is None and dump.exists():
            # A long ("slow") symlink keeps its target in a data block, which dump reads.
            info = info.model_copy(update={"link_target": dump.read_text(errors="replace")})
    return info


def read_file(ext4_image: Path, inner_path: str, log_file: IO[str] | None = None) -> bytes:
    """Content of the regular file ``inner_path`` inside an ext4 image, without mounting it.

    Uses ``debugfs dump`` into a temp file rather than ``cat`` to stdout: the runner merges
    stderr into stdout and decodes text, which would corrupt binary content.
    """
    with tempfile.TemporaryDirectory(prefix="imgline-debugfs-") as tmp:
        dump = Path(tmp) / "content"
        info, problem = _stat_and_dump(ext4_image, inner_path, dump, log_file)
        if info.kind != "regular":
            target = f" (-> {info.link_target}): read its target" if info.link_target else ""
            raise LiveImgError(
                f"{inner_path} in {ext4_image} is a {info.kind}, not a regular file{target}"
            )
        if problem or not dump.is_file():
            raise LiveImgError(f"debugfs could not read {inner_path} from {ext4_image}: {problem}")
        data = dump.read_bytes()
    if len(data) != info.size:
        raise LiveImgError(
            f"read {len(data)} bytes of {inner_path} from {ext4_image}, expected {info.size}"
        )
    return data


def stat_paths(
    ext4_image: Path, inner_paths: Sequence[str], log_file: IO[str] | None = None
) -> dict[str, InodeInfo | None]:
    """``stat`` of many paths in one debugfs run; ``None`` for a path that is not there.

    A tester checks dozens of paths per image; one process for all of them keeps that cheap.
    A long symlink's target is not read here (``link_target`` is then ``None``).
    """
    if not inner_paths:
        return {}
    out = _debugfs(ext4_image, [f"stat {_quote(p)}" for p in inner_paths], log_file)
    chunks = _request_outputs(out)
    if len(chunks) != len(inner_paths):
        raise LiveImgError(f"unexpected debugfs output for {ext4_image}:\n{out[-2000:]}")
    found: dict[str, InodeInfo | None] = {}
    for path, text in zip(inner_paths, chunks, strict=True):
        found[path] = None if _FILE_NOT_FOUND in text else _parse_stat(path, ext4_image, text)
    return found


class DirEntry(BaseModel):
    """One name in a directory of an ext4 image (``debugfs ls -p``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    mode: int  # full st_mode, type bits included
    size: int | None  # None for directories

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)


_LS_LINE = re.compile(r"^/(\d+)/([0-7]+)/(\d+)/(\d+)/(.*)/(\d*)/$")


def list_dirs(
    ext4_image: Path, inner_dirs: Sequence[str], log_file: IO[str] | None = None
) -> dict[str, list[DirEntry] | None]:
    """Entries of many directories in one debugfs run (``.`` and ``..`` left out); ``None`` for
    a directory that is not there or is not a directory."""
    if not inner_dirs:
        return {}
    out = _debugfs(ext4_image, [f"ls -p {_quote(d)}" for d in inner_dirs], log_file)
    chunks = _request_outputs(out)
    if len(chunks) != len(inner_dirs):
        raise LiveImgError(f"unexpected debugfs output for {ext4_image}:\n{out[-2000:]}")
    listed: dict[str, list[DirEntry] | None] = {}
    for path, text in zip(inner_dirs, chunks, strict=True):
        entries: list[DirEntry] = []
        for line in text.splitlines():
            m = _LS_LINE.match(line)
            if m and m.group(5) not in (".", ".."):
                size = m.group(6)
                entries.append(
                    DirEntry(
                        name=m.group(5), mode=int(m.group(2), 8), size=int(size) if size else None
                    )
                )
        problem = _FILE_NOT_FOUND in text or "is not a directory" in text
        listed[path] = None if problem else entries
    return listed


def dump_dir(ext4_image: Path, inner_dir: str, dest: Path, log_file: IO[str] | None = None) -> Path:
    """Copy directory ``inner_dir`` out of an ext4 image into ``dest`` (``debugfs rdump``);
    returns the copy. Used for databases that only a host tool can read (rpm)."""
    copy = dest / Path(inner_dir).name
    if copy.exists():
        raise LiveImgError(f"{copy} exists already: dump {inner_dir} into an empty directory")
    dest.mkdir(parents=True, exist_ok=True)
    out = _debugfs(ext4_image, [f'rdump {_quote(inner_dir)} "{dest}"'], log_file)
    problem = "".join(_request_outputs(out)).strip()
    if not copy.is_dir():
        raise LiveImgError(f"debugfs could not copy {inner_dir} out of {ext4_image}: {problem}")
    return copy


def fsck(ext4_image: Path, log_file: IO[str] | None = None) -> None:
    """Check an ext4 image read-only (``e2fsck -fn``); raise with e2fsck's findings if unclean."""
    require("e2fsck", "install e2fsprogs")
    try:
        run(["e2fsck", "-fn", str(ext4_image)], log_file)
    except CommandError as exc:
        raise LiveImgError(
            f"{ext4_image} is not a clean ext4 (e2fsck exit {exc.returncode}):\n{exc.tail}"
        ) from exc
