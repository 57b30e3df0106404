"""Build steps in a user namespace: kickstart scripts run as root there, never as the host's.

A build user is an unprivileged account with a range of subordinate ids (``/etc/subuid`` and
``/etc/subgid``). mmdebstrap's unshare mode maps the namespace's root to the first of them, so
a root tree made that way is owned on the host by that range (image uid N is host uid
``subuid + N``), and every later step that must see the image's own owners (writing
``image.json``, the factory copy of /etc, mke2fs) runs inside such a namespace too
(util-linux ``unshare --map-users=auto``, the same map, a hundredth of the start-up time of
``mmdebstrap --unshare-helper``). The builder's own Python never writes into the tree, so the
same steps work whether the builder runs as root (it switches to the build user with
``setpriv``) or as the build user itself. See docs/security.md, "The builder".
"""

from __future__ import annotations

import logging
import os
import pwd
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from imgline.core.errors import ConfigError
from imgline.core.runner import CommandError, run

log = logging.getLogger(__name__)

SUBUID = Path("/etc/subuid")
SUBGID = Path("/etc/subgid")
#: A namespace must map at least the ids a Debian root uses (nobody is 65534).
MIN_SUBIDS = 65536

# linux/posix_acl_xattr.h
_ACL_VERSION = 2
_USER_OBJ, _USER, _GROUP_OBJ, _GROUP, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_UNDEFINED_ID = 0xFFFFFFFF
ACL_XATTR = "system.posix_acl_access"


class UsernsError(ConfigError):
    """The build user or its subordinate ids are missing or wrong: the operator fixes the
    host (``useradd``, ``usermod --add-subuids``) or the builder's ``build_user``."""


def subid_range(text: str, name: str, uid: int) -> tuple[int, int] | None:
    """First ``start, count`` of ``name`` (or its numeric id) in a subuid/subgid file's text,
    as newuidmap reads it; None when the user has none."""
    for line in text.splitlines():
        fields = line.strip().split(":")
        if len(fields) != 3 or fields[0] not in (name, str(uid)):
            continue
        try:
            start, count = int(fields[1]), int(fields[2])
        except ValueError:
            continue
        if start >= 0 and count > 0:
            return start, count
    return None


def acl_xattr(mode: int, grants: dict[int, int], existing: bytes | None = None) -> bytes:
    """The ``system.posix_acl_access`` value that keeps ``mode`` for owner, group and others
    (and the named entries of an ``existing`` ACL) and gives each uid in ``grants`` its
    permission bits (4 read, 2 write, 1 search/execute), added to what it had.

    Only the uids named get in; nobody else gains anything, unlike a chmod for "others"."""
    if any(not 0 <= bits <= 7 for bits in grants.values()):
        raise ValueError(f"ACL permissions are 0-7: {grants}")
    users: dict[int, int] = {}
    groups: dict[int, int] = {}
    for tag, perm, ident in _acl_entries(existing or b""):
        if tag == _USER:
            users[ident] = perm
        elif tag == _GROUP:
            groups[ident] = perm
    for uid, bits in grants.items():
        users[uid] = users.get(uid, 0) | bits
    group = (mode >> 3) & 7
    mask = group
    for bits in (*users.values(), *groups.values()):
        mask |= bits
    entries = [(_USER_OBJ, (mode >> 6) & 7, _UNDEFINED_ID)]
    entries += [(_USER, bits, uid) for uid, bits in sorted(users.items())]
    entries.append((_GROUP_OBJ, group, _UNDEFINED_ID))
    entries += [(_GROUP, bits, gid) for gid, bits in sorted(groups.items())]
    entries += [(_MASK, mask, _UNDEFINED_ID), (_OTHER, mode & 7, _UNDEFINED_ID)]
    return struct.pack("<I", _ACL_VERSION) + b"".join(
        struct.pack("<HHI", tag, perm, ident) for tag, perm, ident in entries
    )


def _acl_entries(blob: bytes) -> list[tuple[int, int, int]]:
    if len(blob) < 4 or struct.unpack("<I", blob[:4])[0] != _ACL_VERSION or len(blob) % 8 != 4:
        return []
    return [struct.unpack("<HHI", blob[i : i + 8]) for i in range(4, len(blob), 8)]


def _grant(path: Path, grants: dict[int, int]) -> None:
    """Add ``grants`` to the access ACL of ``path``, keeping its mode and other entries."""
    try:
        existing: bytes | None = os.getxattr(path, ACL_XATTR)
    except OSError:
        existing = None
    mode = os.stat(path).st_mode & 0o777
    os.setxattr(path, ACL_XATTR, acl_xattr(mode, grants, existing))


@dataclass(frozen=True)
class BuildUser:
    """The account build steps run as, and the ids its namespace maps."""

    name: str
    uid: int
    gid: int
    subuid: int
    subgid: int

    @classmethod
    def lookup(cls, name: str | None) -> BuildUser:
        """``name`` (None: the user this process runs as), checked for what unshare mode
        needs; raises ``UsernsError`` saying what to fix."""
        try:
            entry = pwd.getpwnam(name) if name is not None else pwd.getpwuid(os.geteuid())
        except KeyError:
            raise UsernsError(
                f"build user {name!r} does not exist: create it (useradd --system {name}) "
                "with subordinate ids (usermod --add-subuids/--add-subgids), or set "
                'build_mode = "root"'
            ) from None
        if entry.pw_uid == 0:
            raise UsernsError(
                "unshare-mode builds need an unprivileged build user, and this builder runs as "
                'root: set build_user (e.g. "imgline-build"), or build_mode = "root" to build '
                "as the host's root"
            )
        if os.geteuid() not in (0, entry.pw_uid):
            raise UsernsError(
                f"this builder runs as uid {os.geteuid()} and cannot switch to build user "
                f"{entry.pw_name!r}: run it as root or as {entry.pw_name}"
            )
        ranges = []
        for path in (SUBUID, SUBGID):
            try:
                text = path.read_text(encoding="utf-8")
            except OSError:
                text = ""
            found = subid_range(text, entry.pw_name, entry.pw_uid)
            if found is None or found[1] < MIN_SUBIDS:
                raise UsernsError(
                    f"build user {entry.pw_name!r} needs {MIN_SUBIDS} subordinate ids in "
                    f"{path}: usermod --add-subuids 100000-165535 --add-subgids "
                    f"100000-165535 {entry.pw_name}"
                )
            ranges.append(found[0])
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, ranges[0], ranges[1])

    def command(self, argv: Sequence[str | Path]) -> list[str]:
        """``argv`` run as the build user: through setpriv when this process is someone else
        (root); the parent-death signal is set again, since a change of uid clears it."""
        args = [str(a) for a in argv]
        if os.geteuid() == self.uid:
            return args
        return [
            "setpriv",
            f"--reuid={self.uid}",
            f"--regid={self.gid}",
            "--clear-groups",
            "--pdeathsig",
            "KILL",
            "--",
            *args,
        ]

    def inside(self, argv: Sequence[str | Path]) -> list[str]:
        """``argv`` run as root of the build user's namespace, the map mmdebstrap's unshare mode
        makes (0 is the first subordinate id, 65536 ids), with its own mount and PID
        namespaces: a mount made there and any process left there end with the command."""
        return self.command(
            [
                "unshare",
                "--map-users=auto",
                "--map-groups=auto",
                "--setuid=0",
                "--setgid=0",
                "--mount",
                "--pid",
                "--fork",
                "--kill-child",
                "--",
                *argv,
            ]
        )

    def image_ids(self, uid: int, gid: int) -> tuple[int, int]:
        """The image's owner of a file the namespace owns on the host as ``uid:gid``."""
        return uid - self.subuid, gid - self.subgid

    def hand_over(self, path: Path, *, namespace_bits: int) -> None:
        """Make ``path`` (a directory or file this process made) the build user's, and give
        the namespace's root ``namespace_bits`` on it, by ACL: nobody else gets anything."""
        if os.geteuid() != self.uid:
            os.chown(path, self.uid, self.gid)
        _grant(path, {self.subuid: namespace_bits})

    def let_in(self, path: Path) -> None:
        """Let the build user and the namespace's root through the directory ``path`` (search
        only: no listing, no reading) so they reach what was handed over below it."""
        grants = {self.subuid: 1}
        if os.geteuid() != self.uid:
            grants[self.uid] = 1
        _grant(path, grants)

    def reach(self, path: Path) -> None:
        """Let the build user and its namespace's root through every directory from / down to
        ``path`` that others may not search (a checkout under a 0700 home, say): search only,
        by ACL, for those two ids. Raises ``UsernsError`` where this process may not."""
        path = path.resolve()
        for directory in (*reversed(path.parents), path):
            if os.stat(directory).st_mode & 0o001:
                continue
            try:
                _grant(directory, {self.uid: 1, self.subuid: 1})
            except OSError as exc:
                raise UsernsError(
                    f"build user {self.name!r} cannot pass through {directory} and this process "
                    f"may not let it ({exc.strerror}): chmod o+x {directory}, or move the "
                    "builder's directories"
                ) from exc

    def empty(self, path: Path, log_file: IO[str] | None = None) -> None:
        """Delete everything below the directory ``path`` from inside the namespace, which owns
        what a build made there (the builder itself may not be allowed to); ``path`` stays."""
        if path.is_dir():
            run(self.inside(["find", str(path), "-xdev", "-mindepth", "1", "-delete"]), log_file)

    def release(self, path: Path, log_file: IO[str] | None = None) -> None:
        """:meth:`empty`, after a build: a failure is logged, not raised, so the build's
        outcome stands; the builder's next start tries again."""
        try:
            self.empty(path, log_file)
        except (CommandError, OSError) as exc:
            log.warning("could not empty %s as %s: %s", path, self.name, exc)
            if log_file is not None:
                log_file.write(f"# warning: could not empty {path} as {self.name}: {exc}\n")
