"""A liveimg from a root tree that a build user's namespace owns (unshare-mode builds).

The tree's files belong on the host to the build user's subordinate ids, so the steps that
write into it or record its owners run inside that namespace (``BuildUser.inside``), with the
host's own tools: writing ``image.json``, the factory copy of /etc (a bind mount in the
namespace's own mount table, gone when mke2fs ends), mke2fs and the fix of /'s owner. The same
as :func:`imgline.core.liveimg.assemble` otherwise; docs/architecture.md, "Builder".
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from imgline.core import liveimg
from imgline.core.liveimg import (
    FACTORY_ETC,
    IMAGE_JSON,
    TreeStats,
)
from imgline.core.runner import run
from imgline.core.userns import BuildUser

log = logging.getLogger(__name__)

#: Writes image.json (from stdin) and an empty factory directory; the paths are imgline's
#: constants, the tree comes as $1 (checked for symlinks on the way by ``check_tree``).
_PREPARE = f"""set -eu
umask 022
root=$1
mkdir -p -- "$root/{IMAGE_JSON.parent}"
cat > "$root/{IMAGE_JSON.parent}/.{IMAGE_JSON.name}.tmp"
mv -f -- "$root/{IMAGE_JSON.parent}/.{IMAGE_JSON.name}.tmp" "$root/{IMAGE_JSON}"
rm -rf --one-file-system -- "$root/{FACTORY_ETC}"
mkdir -p -- "$root/{FACTORY_ETC}"
"""

#: Shows /etc at the factory copy's place while the command after the arguments runs: a bind
#: mount, or a copy when /etc has files with several names (mke2fs would link the two trees)
#: or the namespace may not mount.
_VIEW = """set -eu
etc=$1 factory=$2 copy=$3
shift 3
if [ "$copy" = 1 ] || ! mount --bind -- "$etc" "$factory"; then
  echo "imgline: copying /etc for the factory copy" >&2
  cp -a -- "$etc/." "$factory/"
fi
exec "$@"
"""

#: One record per inode of the tree: device, inode, type, size, links, path (NUL-terminated).
_LISTING = "%D %i %y %s %n %P\\0"


class _TreeNamespace:
    """``liveimg.Namespace`` for a tree ``user``'s namespace owns."""

    def __init__(self, user: BuildUser, root: Path, copy_etc: bool) -> None:
        self.user = user
        self.root = root
        self.copy_etc = copy_etc
        self.image_ids = user.image_ids

    def mke2fs(self, argv: list[str]) -> list[str]:
        etc, factory = self.root / "etc", self.root / FACTORY_ETC
        return self.user.inside(
            ["sh", "-c", _VIEW, "sh", str(etc), str(factory), str(int(self.copy_etc)), *argv]
        )

    def inside(self, argv: Sequence[str | Path]) -> list[str]:
        return self.user.inside(argv)


def listing_stats(listing: str) -> tuple[TreeStats, TreeStats, bool]:
    """Bytes and inodes of the whole tree and of its /etc (hard links counted once), and
    whether a file in /etc has several names, from ``find -printf _LISTING``."""
    seen: set[tuple[str, str]] = set()
    etc_seen: set[tuple[str, str]] = set()
    total = etc_total = 0
    shared = False
    for record in listing.split("\0"):
        fields = record.split(" ", 5)
        if len(fields) != 6:
            continue
        dev, ino, kind, size, links, path = fields
        key = (dev, ino)
        in_etc = path == "etc" or path.startswith("etc/")
        if in_etc:
            if kind == "f" and int(links) > 1:
                shared = True
            if key not in etc_seen:
                etc_seen.add(key)
                etc_total += int(size) if kind == "f" else 0
        if key not in seen:
            seen.add(key)
            total += int(size) if kind == "f" else 0
    return (
        TreeStats(size_bytes=total, inodes=len(seen)),
        TreeStats(size_bytes=etc_total, inodes=len(etc_seen)),
        shared,
    )


def assemble(
    root: Path,
    out: Path,
    *,
    user: BuildUser,
    size_mib: int | None,
    meta: dict[str, Any],
    compression: str = "zstd",
    log_file: IO[str] | None = None,
    headroom_mib: int = 0,
    compression_level: int | None = None,
) -> Path:
    """Turn ``root`` (owned by ``user``'s namespace) into the liveimg ``out``. The ext4 is
    made beside the tree, in a directory handed to ``user`` and removed afterwards."""
    liveimg.squashfs_command(Path("stage"), out, compression, compression_level)  # bad options
    liveimg.check_tree(root)
    text = liveimg.image_json_text(meta)
    run(user.inside(["sh", "-c", _PREPARE, "sh", str(root)]), log_file, input_text=text)
    listing = run(user.inside(["find", str(root), "-xdev", "-printf", _LISTING]))
    tree, etc, shared = listing_stats(listing)
    # the factory copy is /etc once more
    stats = TreeStats(size_bytes=tree.size_bytes + etc.size_bytes, inodes=tree.inodes + etc.inodes)
    if size_mib is None:
        size_mib = liveimg.min_size_mib(stats.size_bytes, stats.inodes) + headroom_mib
    liveimg.check_fits(stats.size_bytes, stats.inodes, size_mib)
    log.info(
        "assembling %s from %s in %s's namespace: %d MiB of files, %d inodes, part / %d MiB",
        out,
        root,
        user.name,
        stats.size_bytes // liveimg.MIB,
        stats.inodes,
        size_mib,
    )
    private = root.parent / "liveimg"
    shutil.rmtree(private, ignore_errors=True)
    private.mkdir(mode=0o700)
    user.hand_over(private, namespace_bits=7)
    try:
        namespace = _TreeNamespace(user, root, shared)
        image = liveimg.make_ext4(
            root, private / "rootfs.img", size_mib, log_file=log_file, namespace=namespace
        )
        liveimg.make_squashfs(image, out, compression, log_file, compression_level)
    finally:
        shutil.rmtree(private, ignore_errors=True)
    return out
