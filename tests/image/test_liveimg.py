"""liveimg level 3: assemble with the real tools, then loop-mount the result and look inside.

Needs root (loop mounts, chown to uid 1000), e2fsprogs and squashfs-tools, and a kernel that
mounts squashfs (zstd, xz) and ext4; no device-mapper.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from imgline.core import liveimg
from imgline.core.fsutil import mounts_below
from imgline.core.liveimg import LiveImgError

pytestmark = pytest.mark.image

META = {"name": "node", "version": "1.2.3", "build_id": "ab" * 32}
BINARY = bytes(range(256)) * 4096 + b"\0tail"  # 1 MiB + 5 bytes, every byte value


def make_tree(root: Path) -> None:
    """A small root: nested dirs, a symlink, a private file owned by uid 1000, an /etc."""
    root.mkdir()
    root.chmod(0o555)  # like Fedora's /; mke2fs -d alone would make it 0755
    (root / "etc" / "ssh").mkdir(parents=True)
    (root / "etc" / "hostname").write_text("node\n")
    (root / "etc" / "ssh" / "sshd_config").write_text("PermitRootLogin no\n")
    (root / "etc" / "shadow").write_text("root:!::0:99999:7:::\n")
    (root / "etc" / "shadow").chmod(0o000)
    (root / "etc" / "localtime").symlink_to("../usr/share/zoneinfo/UTC")
    os.link(root / "etc" / "hostname", root / "etc" / "hostname.hardlink")
    os.mkfifo(root / "etc" / "initctl")
    (root / "usr" / "share" / "zoneinfo").mkdir(parents=True)
    (root / "usr" / "share" / "zoneinfo" / "UTC").write_bytes(b"TZif2\0\0")
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "hello").write_text("#!/bin/sh\necho hello\n")
    (root / "usr" / "bin" / "hello").chmod(0o755)
    (root / "bin").symlink_to("usr/bin")
    data = root / "var" / "lib" / "app" / "data"
    data.mkdir(parents=True)
    (data / "blob.bin").write_bytes(BINARY)
    home = root / "home" / "user"
    home.mkdir(parents=True)
    os.chown(home, 1000, 1000)
    (home / "secret").write_text("token\n")
    (home / "secret").chmod(0o600)
    os.chown(home / "secret", 1000, 1000)


@contextmanager
def loop_mount(image: Path, where: Path) -> Iterator[Path]:
    where.mkdir()
    subprocess.run(["mount", "-o", "loop,ro", str(image), str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def snapshot(root: Path) -> dict[str, tuple[int, int, int, str]]:
    """Every path below ``root`` with its mode, owner and content (or link target)."""
    found: dict[str, tuple[int, int, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                what = "-> " + os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                what = path.read_bytes().hex()
            else:
                what = ""
            found[str(path.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, what)
    return found


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    make_tree(root)
    return root


@pytest.mark.parametrize("compression", ["zstd", "xz"])
def test_assemble_and_look_inside(tree: Path, tmp_path: Path, compression: str) -> None:
    etc_before = snapshot(tree / "etc")
    out = tmp_path / "node.squashfs.img"
    work = tmp_path / "work"
    work.mkdir()
    with (tmp_path / "build.log").open("w") as log_file:
        got = liveimg.assemble(
            tree,
            out,
            size_mib=64,
            meta=META,
            compression=compression,
            workdir=work,
            log_file=log_file,
        )
    assert got == out
    assert out.is_file()
    assert list(work.iterdir()) == []  # the intermediate ext4 is gone
    assert not list(tmp_path.glob(".node.squashfs.img*"))
    log_text = (tmp_path / "build.log").read_text()
    assert "$ mke2fs -t ext4" in log_text
    assert f"-comp {compression} " in log_text

    info = subprocess.run(
        ["unsquashfs", "-s", str(out)], check=True, capture_output=True, text=True
    ).stdout
    assert f"Compression {compression}" in info

    with (
        loop_mount(out, tmp_path / "squash") as squash,
        loop_mount(squash / "LiveOS" / "rootfs.img", tmp_path / "ext4") as rootfs,
    ):
        assert sorted(os.listdir(squash)) == ["LiveOS"]
        assert os.listdir(squash / "LiveOS") == ["rootfs.img"]
        assert (squash / "LiveOS" / "rootfs.img").stat().st_size == 64 << 20

        assert stat.S_IMODE(rootfs.stat().st_mode) == 0o555
        assert (rootfs / "etc" / "hostname").read_text() == "node\n"
        assert (rootfs / "etc" / "ssh" / "sshd_config").read_text() == "PermitRootLogin no\n"
        assert (rootfs / "var" / "lib" / "app" / "data" / "blob.bin").read_bytes() == BINARY
        assert (rootfs / "usr" / "bin" / "hello").stat().st_mode & 0o777 == 0o755
        secret = (rootfs / "home" / "user" / "secret").stat()
        assert (stat.S_IMODE(secret.st_mode), secret.st_uid, secret.st_gid) == (0o600, 1000, 1000)
        assert (rootfs / "home" / "user").stat().st_uid == 1000
        assert os.readlink(rootfs / "bin") == "usr/bin"
        assert (rootfs / "bin" / "hello").read_text().startswith("#!/bin/sh")
        assert os.readlink(rootfs / "etc" / "localtime") == "../usr/share/zoneinfo/UTC"

        image_json = rootfs / "usr" / "lib" / "imgline" / "image.json"
        assert json.loads(image_json.read_text()) == META
        assert image_json.read_text() == json.dumps(META, sort_keys=True, indent=2) + "\n"

        assert snapshot(rootfs / "etc") == etc_before
        factory = rootfs / "usr" / "share" / "factory" / "etc"
        assert snapshot(factory) == etc_before
        # Hardlinks stay hardlinks within each copy, never across them: editing /etc on the
        # host must not change the factory copy.
        assert (factory / "hostname.hardlink").stat().st_ino == (factory / "hostname").stat().st_ino
        assert (factory / "hostname").stat().st_ino != (rootfs / "etc" / "hostname").stat().st_ino

    check_read_back_helpers(out, tmp_path)


def check_read_back_helpers(out: Path, tmp_path: Path) -> None:
    """The same image through the helpers a tester uses: no mount, no root needed."""
    extracted = liveimg.extract_rootfs(out, tmp_path / "extracted")
    assert extracted == tmp_path / "extracted" / "LiveOS" / "rootfs.img"
    assert extracted.stat().st_blocks * 512 < 64 << 20  # still sparse
    liveimg.fsck(extracted)
    assert liveimg.read_file(extracted, "/var/lib/app/data/blob.bin") == BINARY
    assert liveimg.read_file(extracted, "usr/lib/imgline/image.json") == image_json_bytes()
    assert liveimg.read_file(extracted, "usr/share/factory/etc/hostname") == b"node\n"
    secret_info = liveimg.stat_path(extracted, "home/user/secret")
    assert (secret_info.kind, secret_info.mode, secret_info.uid) == ("regular", 0o600, 1000)
    assert liveimg.stat_path(extracted, "bin").link_target == "usr/bin"
    with pytest.raises(LiveImgError, match="/etc/nope is not in"):
        liveimg.read_file(extracted, "/etc/nope")
    with pytest.raises(LiveImgError, match="is a symlink, not a regular file"):
        liveimg.read_file(extracted, "bin")
    with pytest.raises(LiveImgError, match="is a directory"):
        liveimg.read_file(extracted, "etc")
    check_batch_helpers(extracted, tmp_path)


def check_batch_helpers(extracted: Path, tmp_path: Path) -> None:
    """Many paths in one debugfs run, as the tester's content checks use them."""
    found = liveimg.stat_paths(extracted, ["/etc/hostname", "/etc/nope", "/bin"])
    assert found["/etc/nope"] is None
    assert found["/etc/hostname"] is not None and found["/etc/hostname"].size == 5
    assert found["/bin"] is not None and found["/bin"].link_target == "usr/bin"
    listed = liveimg.list_dirs(extracted, ["/etc/ssh", "/home/user", "/nope", "/etc/hostname"])
    assert [e.name for e in listed["/etc/ssh"] or []] == ["sshd_config"]
    secret = (listed["/home/user"] or [])[0]
    assert (secret.name, secret.size, secret.is_dir, secret.mode & 0o7777) == (
        "secret",
        6,
        False,
        0o600,
    )
    assert listed["/nope"] is None and listed["/etc/hostname"] is None
    copy = liveimg.dump_dir(extracted, "/var/lib/app", tmp_path / "dumped")
    assert (copy / "data" / "blob.bin").read_bytes() == BINARY
    with pytest.raises(LiveImgError, match="could not copy /var/nope"):
        liveimg.dump_dir(extracted, "/var/nope", tmp_path / "dumped2")


def image_json_bytes() -> bytes:
    return (json.dumps(META, sort_keys=True, indent=2) + "\n").encode()


def test_the_factory_copy_is_read_through_a_view_of_etc(tree: Path, tmp_path: Path) -> None:
    """Without hard links in /etc, mke2fs reads the factory copy through a bind mount of /etc
    (no file is created per /etc entry); the image still gets a copy with inodes of its own."""
    (tree / "etc" / "hostname.hardlink").unlink()
    etc_before = snapshot(tree / "etc")
    out = tmp_path / "node.squashfs.img"
    with (tmp_path / "build.log").open("w") as log_file:
        liveimg.assemble(tree, out, size_mib=64, meta=META, workdir=tmp_path, log_file=log_file)
    assert "$ mount --bind" in (tmp_path / "build.log").read_text()
    factory_in_tree = tree / "usr" / "share" / "factory" / "etc"
    assert not mounts_below(factory_in_tree) and list(factory_in_tree.iterdir()) == []
    with (
        loop_mount(out, tmp_path / "squash") as squash,
        loop_mount(squash / "LiveOS" / "rootfs.img", tmp_path / "ext4") as rootfs,
    ):
        factory = rootfs / "usr" / "share" / "factory" / "etc"
        assert snapshot(factory) == etc_before == snapshot(rootfs / "etc")
        for name in ("hostname", "ssh/sshd_config", "shadow"):
            assert (factory / name).stat().st_ino != (rootfs / "etc" / name).stat().st_ino


def test_a_view_a_killed_assembly_left_is_unmounted_not_deleted_through(
    tree: Path, tmp_path: Path
) -> None:
    liveimg.prepare_tree(tree, META, copy_etc=False)
    factory = tree / "usr" / "share" / "factory" / "etc"
    subprocess.run(["mount", "--bind", str(tree / "etc"), str(factory)], check=True)
    try:
        liveimg.prepare_tree(tree, META)
    finally:
        if mounts_below(factory):
            subprocess.run(["umount", str(factory)], check=False)
    assert (tree / "etc" / "hostname").read_text() == "node\n"  # /etc itself is untouched
    assert (factory / "hostname").read_text() == "node\n"  # and the copy is a real one
    assert not mounts_below(factory)


def test_reassembly_replaces_factory_etc(tree: Path, tmp_path: Path) -> None:
    liveimg.prepare_tree(tree, META)
    (tree / "etc" / "hostname").write_text("renamed\n")
    (tree / "etc" / "ssh" / "sshd_config").unlink()
    liveimg.prepare_tree(tree, {**META, "version": "1.2.4"})
    factory = tree / "usr" / "share" / "factory" / "etc"
    assert (factory / "hostname").read_text() == "renamed\n"
    assert not (factory / "ssh" / "sshd_config").exists()
    assert json.loads((tree / "usr/lib/imgline/image.json").read_text())["version"] == "1.2.4"


def test_tree_with_escaping_symlink_is_refused(tree: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tree / "usr" / "lib").symlink_to(outside)
    with pytest.raises(LiveImgError, match="will not follow links out of the tree"):
        liveimg.prepare_tree(tree, META)
    assert list(outside.iterdir()) == []


def test_too_small_size_fails_before_mke2fs(tree: Path, tmp_path: Path) -> None:
    (tree / "var" / "big").write_bytes(os.urandom(24 << 20))
    out = tmp_path / "node.squashfs.img"
    with pytest.raises(LiveImgError) as err:
        liveimg.assemble(tree, out, size_mib=16, meta=META, workdir=tmp_path)
    message = str(err.value)
    assert message.startswith("the root tree needs about ")
    assert message.endswith("but part / --size is 16 MiB: raise --size")
    needed = int(message.split("about ")[1].split(" MiB", maxsplit=1)[0])
    assert 24 < needed < 40
    assert not out.exists()
    # And the estimate is honest: that size really works.
    liveimg.assemble(tree, out, size_mib=needed, meta=META, workdir=tmp_path)
    assert out.is_file()


def test_mke2fs_running_out_of_space_is_explained(tree: Path, tmp_path: Path) -> None:
    (tree / "var" / "big").write_bytes(os.urandom(24 << 20))
    image = tmp_path / "rootfs.img"
    with pytest.raises(LiveImgError, match=r"does not fit in part / --size 16 MiB.*raise --size"):
        liveimg.make_ext4(tree, image, 16)
    assert not image.exists()


def test_extract_from_something_else(tmp_path: Path) -> None:
    other = tmp_path / "other"
    (other / "x").mkdir(parents=True)
    sq = tmp_path / "other.squashfs.img"
    subprocess.run(
        ["mksquashfs", str(other), str(sq), "-noappend", "-no-progress", "-quiet"], check=True
    )
    with pytest.raises(LiveImgError, match=r"has no LiveOS/rootfs\.img: it is not a liveimg"):
        liveimg.extract_rootfs(sq, tmp_path / "dest")
    garbage = tmp_path / "garbage.img"
    garbage.write_bytes(b"not a squashfs" * 1000)
    with pytest.raises(LiveImgError, match=r"cannot read .* as a squashfs"):
        liveimg.extract_rootfs(garbage, tmp_path / "dest2")


def test_fsck_reports_damage(tree: Path, tmp_path: Path) -> None:
    image = liveimg.make_ext4(tree, tmp_path / "rootfs.img", 32)
    liveimg.fsck(image)
    with image.open("r+b") as f:  # wipe the first block group's descriptors
        f.seek(4096)
        f.write(b"\xff" * 4096)
    with pytest.raises(LiveImgError, match="is not a clean ext4"):
        liveimg.fsck(image)
