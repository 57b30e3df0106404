"""Unshare-mode builds after mmdebstrap: a tree the build user's namespace owns becomes an image
with the image's own owners, a hostile tree cannot lead writes out of itself, and what a build
left is removed from inside the namespace, by the handler and by the next start's recovery.

The trees are made in the real namespace (``BuildUser.inside``) with a shell, which is quicker
than mmdebstrap; test_rebuild_from_kept_root.py builds node.ks the whole way.
"""

from __future__ import annotations

import errno
import io
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from nodeimage import APT_CACHE, BUILD_USER, NODE_KS, ROOT_CACHE, build

from imgline.builder.adapters.mmdebstrap import AREA, MmdebstrapBackend
from imgline.builder.errors import BackendUnavailableError
from imgline.builder.recovery import recover
from imgline.builder.settings import BuilderConfig
from imgline.core import liveimg, nsimage, userns
from imgline.core.artifacts import LocalArtifactStore
from imgline.core.liveimg import LiveImgError
from imgline.core.runner import run
from imgline.core.userns import BuildUser
from imgline.schemas import payloads as p
from imgline.schemas.messages import BuildFailedV1

pytestmark = pytest.mark.image

#: A small root in the namespace: root-owned /etc with a file under two names, a user's home,
#: a setuid file, a symlink, and a / of mode 0555 (Fedora's).
_TREE = """set -eu
t=$1
mkdir -p "$t/etc" "$t/home/node" "$t/usr/bin" "$t/boot"
echo node > "$t/etc/hostname"
echo 'node:x:1000:1000::/home/node:/bin/bash' > "$t/etc/passwd"
ln "$t/etc/hostname" "$t/etc/hostname.twin"
ln -s ../usr/share/zoneinfo/UTC "$t/etc/localtime"
echo secret > "$t/etc/shadow"
chmod 0640 "$t/etc/shadow"
chown 0:42 "$t/etc/shadow"
echo hi > "$t/home/node/.profile"
chown -R 1000:1000 "$t/home/node"
printf '#!/bin/sh\\n' > "$t/usr/bin/su"
chmod 4755 "$t/usr/bin/su"
chmod 0555 "$t"
"""


@pytest.fixture(scope="module")
def user() -> BuildUser:
    return BuildUser.lookup(BUILD_USER)


def namespace_tree(user: BuildUser, area: Path, *, twin: bool = True) -> Path:
    """``area/root``, made by the namespace's root as mmdebstrap would leave it."""
    user.hand_over(area, namespace_bits=7)
    script = _TREE if twin else _TREE.replace('ln "$t/etc/hostname" "$t/etc/hostname.twin"\n', "")
    run(user.inside(["sh", "-c", script, "sh", str(area / "root")]))
    return area / "root"


@pytest.mark.parametrize("twin", [True, False], ids=["etc-copied", "etc-bind-mounted"])
def test_a_namespace_tree_becomes_an_image_with_its_own_owners(
    user: BuildUser, build_tmp: Path, twin: bool
) -> None:
    area = build_tmp / AREA
    area.mkdir(mode=0o700)
    root = namespace_tree(user, area, twin=twin)
    assert root.stat().st_uid == user.subuid  # the host sees subordinate ids
    out = build_tmp / "node.squashfs.img"
    meta = {"name": "node", "version": "1"}
    said = io.StringIO()
    nsimage.assemble(root, out, user=user, size_mib=None, meta=meta, headroom_mib=8, log_file=said)
    # /etc with a file under two names is copied (a bind mount would link both trees)
    copied = any(line.startswith("imgline: copying /etc") for line in said.getvalue().splitlines())
    assert copied == twin
    rootfs = liveimg.extract_rootfs(out, build_tmp / "x")
    liveimg.fsck(rootfs)
    expect = {
        "/": (0o555, 0, 0),
        "/etc/shadow": (0o640, 0, 42),
        "/usr/bin/su": (0o4755, 0, 0),
        "/home/node": (0o755, 1000, 1000),
        "/home/node/.profile": (0o644, 1000, 1000),
        "/usr/share/factory/etc/shadow": (0o640, 0, 42),
        "/usr/lib/imgline/image.json": (0o644, 0, 0),
    }
    for path, wanted in expect.items():
        info = liveimg.stat_path(rootfs, path)
        assert (info.mode, info.uid, info.gid) == wanted, path
    assert json.loads(liveimg.read_file(rootfs, "/usr/lib/imgline/image.json")) == meta
    factory = liveimg.read_file(rootfs, "/usr/share/factory/etc/hostname")
    assert factory == b"node\n"
    assert liveimg.stat_path(rootfs, "/usr/share/factory/etc/localtime").kind == "symlink"
    assert not (area / "liveimg").exists()  # the ext4's directory is gone
    # nothing stays mounted from the factory view: it lived in the namespace's mount table
    assert str(root) not in Path("/proc/self/mountinfo").read_text()
    user.empty(area)
    assert list(area.iterdir()) == []


def test_a_tree_that_links_out_of_itself_is_refused(user: BuildUser, build_tmp: Path) -> None:
    area = build_tmp / AREA
    area.mkdir(mode=0o700)
    root = namespace_tree(user, area)
    # a %post made /usr/share a link to the host's /usr/share
    run(
        user.inside(
            ["sh", "-c", 'mkdir -p "$1/usr" && ln -s /usr/share "$1/usr/share"', "sh", str(root)]
        )
    )
    with pytest.raises(LiveImgError, match="is a symlink in the root tree"):
        nsimage.assemble(root, build_tmp / "o.img", user=user, size_mib=64, meta={})
    assert not Path("/usr/share/factory/etc/hostname").exists()
    user.empty(area)


def test_root_needs_a_build_user_and_a_user_needs_subordinate_ids(tmp_path: Path) -> None:
    backend = MmdebstrapBackend("bookworm", tmp_path / "c", None, 60)  # unshare, no user
    with pytest.raises(BackendUnavailableError, match="set build_user"):
        backend.check_available()
    # a user without subordinate ids (nobody has none on Debian and Fedora)
    backend = MmdebstrapBackend("bookworm", tmp_path / "c", None, 60, user="nobody")
    with pytest.raises(BackendUnavailableError, match="subordinate ids in /etc/subuid"):
        backend.check_available()


def test_a_work_dir_the_namespace_cannot_reach_is_said_so(user: BuildUser, tmp_path: Path) -> None:
    # pytest's tmp_path is under a directory only root may enter
    backend = MmdebstrapBackend("bookworm", tmp_path / "c", None, 60, user=BUILD_USER)
    backend.check_available()
    work = tmp_path / "work"
    work.mkdir(mode=0o700)
    with pytest.raises(BackendUnavailableError, match="must be searchable by others"):
        backend._area(work)  # the step a build takes first


def test_recovery_empties_what_a_killed_unshare_build_left(
    user: BuildUser, build_tmp: Path
) -> None:
    config = BuilderConfig(
        store_dir=build_tmp / "store",
        work_dir=build_tmp / "work",
        cache_dir=build_tmp / "c",
        root_cache_dir=build_tmp / "roots",
        build_user=BUILD_USER,
    )
    left = config.work_dir / ("ef" * 32)
    left.mkdir(parents=True, mode=0o700)
    user.let_in(left)
    area = left / AREA
    area.mkdir(mode=0o700)
    namespace_tree(user, area)
    # what the build user could not remove without its namespace: a 0555 root with files
    probe = subprocess.run(
        user.command(["rm", "-rf", str(area / "root" / "etc")]), capture_output=True, check=False
    )
    assert probe.returncode != 0
    done = recover(config, LocalArtifactStore(config.store_dir))
    assert done.work_dirs == [left] and not left.exists()
    assert os.listdir(config.work_dir) == [".children"]


def test_a_failing_post_in_unshare_mode_fails_the_build_and_leaves_nothing(
    build_tmp: Path,
) -> None:
    config = BuilderConfig(
        store_dir=build_tmp / "store",
        work_dir=build_tmp / "work",
        cache_dir=APT_CACHE,
        root_cache_dir=ROOT_CACHE,
        build_user=BUILD_USER,
    )
    kickstart = NODE_KS.read_text(encoding="utf-8") + "\n%post --erroronfail\nexit 3\n%end\n"
    req = p.BuildRequested(
        request_id="failing-post", source=p.InlineSource(kickstart=kickstart), name="node"
    )
    [sent] = build(config, req)
    assert isinstance(sent, BuildFailedV1), sent.body
    assert sent.payload.stage == "build"
    assert "failed with status 3" in sent.payload.error
    assert sent.payload.kickstart_line == kickstart.count("\n") - 2
    assert os.listdir(config.work_dir) == []  # the namespace's tree went with the work dir


def test_the_build_user_is_let_through_private_directories_above(
    user: BuildUser, build_tmp: Path
) -> None:
    private = build_tmp / "home"  # like a 0700 home holding the checkout
    private.mkdir(mode=0o700)
    target = private / "checkout" / ".cache"
    target.mkdir(parents=True)
    (private / "secret").write_text("no")
    probe = ["test", "-x", str(target)]
    assert subprocess.run(user.command(probe), check=False).returncode != 0
    user.reach(target)
    assert subprocess.run(user.command(probe), check=False).returncode == 0
    assert subprocess.run(user.inside(probe), check=False).returncode == 0
    # search only: nothing in the private directory can be listed or read
    listing = subprocess.run(user.command(["ls", str(private)]), capture_output=True, check=False)
    assert listing.returncode != 0
    assert stat.S_IMODE(private.stat().st_mode) & 0o007 == 0  # others still get nothing


def test_a_work_dir_without_acls_is_said_so(
    user: BuildUser, build_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = MmdebstrapBackend("bookworm", build_tmp / "c", None, 60, user=BUILD_USER)
    backend.check_available()

    def no_acls(*args: object) -> None:
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    monkeypatch.setattr(userns.os, "setxattr", no_acls)
    work = build_tmp / "work"
    work.mkdir()
    with pytest.raises(BackendUnavailableError, match="a file system with POSIX ACLs"):
        backend._area(work)
