"""The build user's namespace: subordinate ids, ACLs, command lines and the tree listing.

The real namespace runs in tests/image/test_rebuild_from_kept_root.py and test_userns_steps.py.
"""

from __future__ import annotations

import struct

import pytest

from imgline.core import userns
from imgline.core.nsimage import listing_stats
from imgline.core.userns import BuildUser, UsernsError, acl_xattr, subid_range

pytestmark = pytest.mark.unit

USER = BuildUser("imgline-build", 999, 995, 100000, 200000)


def test_subid_range_by_name_or_uid_first_match() -> None:
    text = "alice:100000:65536\n# x\n\nbuild:200000:65536\n999:300000:65536\nbuild:1:2\n"
    assert subid_range(text, "build", 999) == (200000, 65536)
    assert subid_range(text, "other", 999) == (300000, 65536)
    assert subid_range(text, "nobody", 5) is None
    assert subid_range("build:x:65536\nbuild:-5:10\nbuild:7:0\n", "build", 1) is None


def test_lookup_refuses_root_and_a_user_without_subordinate_ids(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(UsernsError, match="does not exist"):
        BuildUser.lookup("no-such-user-here")
    monkeypatch.setattr(userns.os, "geteuid", lambda: 0)
    with pytest.raises(UsernsError, match="set build_user"):
        BuildUser.lookup(None)  # root itself
    with pytest.raises(UsernsError, match="set build_user"):
        BuildUser.lookup("root")


def _entries(blob: bytes) -> list[tuple[int, int, int]]:
    assert struct.unpack("<I", blob[:4]) == (2,)
    body = blob[4:]
    return [struct.unpack("<HHI", body[i : i + 8]) for i in range(0, len(body), 8)]


def test_acl_keeps_the_mode_and_adds_only_the_named_uids() -> None:
    undefined = 0xFFFFFFFF
    assert _entries(acl_xattr(0o700, {200000: 7, 999: 1})) == [
        (0x01, 7, undefined),  # owner: rwx
        (0x02, 1, 999),  # named users, sorted by id
        (0x02, 7, 200000),
        (0x04, 0, undefined),  # group keeps ---
        (0x10, 7, undefined),  # the mask lets the named entries through
        (0x20, 0, undefined),  # others get nothing
    ]
    with pytest.raises(ValueError, match="0-7"):
        acl_xattr(0o700, {1: 8})


def test_commands_switch_to_the_build_user_only_when_someone_else(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(userns.os, "geteuid", lambda: 0)
    assert USER.command(["mmdebstrap", "--mode=unshare"]) == [
        "setpriv",
        "--reuid=999",
        "--regid=995",
        "--clear-groups",
        "--pdeathsig",
        "KILL",
        "--",
        "mmdebstrap",
        "--mode=unshare",
    ]
    inside = USER.inside(["true"])
    assert inside[:2] == ["setpriv", "--reuid=999"] and inside[-2:] == ["--", "true"]
    assert "unshare" in inside and "--map-users=auto" in inside and "--kill-child" in inside
    monkeypatch.setattr(userns.os, "geteuid", lambda: 999)  # the builder is the build user
    assert USER.inside(["true"])[0] == "unshare"


def test_image_ids_undo_the_namespace_shift() -> None:
    assert USER.image_ids(100000, 200000) == (0, 0)
    assert USER.image_ids(101000, 201000) == (1000, 1000)


def test_listing_counts_links_once_and_finds_shared_etc_files() -> None:
    records = [
        "2049 10 d 4096 18 ",  # the root itself
        "2049 11 d 4096 3 etc",
        "2049 12 f 100 1 etc/hostname",
        "2049 13 f 50 2 etc/a b\nc",  # two names, one of them with a newline in it
        "2049 13 f 50 2 usr/share/other",
        "2049 14 l 9 1 etc/localtime",
        "2049 15 f 1000 1 usr/bin/tool",
        "2049 16 f 7 1 etcetera",  # not /etc
    ]
    tree, etc, shared = listing_stats("\0".join(records) + "\0")
    assert (tree.size_bytes, tree.inodes) == (100 + 50 + 1000 + 7, 7)
    assert (etc.size_bytes, etc.inodes) == (150, 4)
    assert shared
    _, _, shared = listing_stats("2049 12 f 100 1 etc/hostname\0")
    assert not shared


def test_acl_keeps_the_named_entries_already_there() -> None:
    undefined = 0xFFFFFFFF
    existing = acl_xattr(0o750, {500: 5})
    merged = acl_xattr(0o750, {500: 2, 600: 1}, existing)
    assert _entries(merged) == [
        (0x01, 7, undefined),
        (0x02, 7, 500),  # its read and execute stay, write is added
        (0x02, 1, 600),
        (0x04, 5, undefined),
        (0x10, 7, undefined),
        (0x20, 0, undefined),
    ]
    with_group = struct.pack("<I", 2) + b"".join(
        struct.pack("<HHI", *e)
        for e in [
            (1, 7, undefined),
            (4, 0, undefined),
            (8, 5, 42),
            (0x10, 5, undefined),
            (0x20, 0, undefined),
        ]
    )
    assert (0x08, 5, 42) in _entries(acl_xattr(0o700, {1: 1}, with_group))
    assert _entries(acl_xattr(0o700, {}, b"garbage")) == _entries(acl_xattr(0o700, {}))
