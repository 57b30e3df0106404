"""The tester's sanity checks on real liveimgs: a good one, and each way one can be broken.

The images are small but real (mke2fs -d, mksquashfs); the damage is done the way it happens
in life: a partial copy, a flipped bit, a package left out, a file system written over.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from sampleimages import BUILD_ID, Images, make_tree, ref

from imgline.core import liveimg
from imgline.core.artifacts import LocalArtifactStore
from imgline.schemas import payloads as p
from imgline.tester.adapters.image import run_sanity
from imgline.tester.domain.plan import Expectations, load_plan, resolve
from imgline.tester.domain.results import CheckResult

pytestmark = pytest.mark.image

PLAN = """
[defaults]
packages = ["systemd", "python3 >= 3.11"]
required_files = ["/usr/lib/imgline/image.json", "/usr/lib/os-release"]
forbidden_files = ["/etc/ssh/ssh_host_*_key"]
services = ["ssh"]
"""


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Images:
    return Images(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def good(images: Images) -> p.ImageRef:
    return images.build()


def expectations(extra: str = "") -> Expectations:
    return resolve(load_plan(PLAN + extra), "node", "stable")


def sanity(
    image: Path, expected: p.ImageRef, tmp_path: Path, exp: Expectations | None = None, **kw: bool
) -> dict[str, CheckResult]:
    with (tmp_path / "test.log").open("w") as log:
        results, _ = run_sanity(image, expected, exp or expectations(), tmp_path, log, **kw)
    return {r.name: r for r in results}


def path_of(r: p.ImageRef) -> Path:
    return Path(r.artifact.uri.removeprefix("file://"))


def statuses(results: dict[str, CheckResult]) -> dict[str, str]:
    return {name: r.status for name, r in results.items()}


@pytest.mark.parametrize("mount", [True, False], ids=["mounted", "extracted"])
def test_good_image_passes_every_check(good: p.ImageRef, tmp_path: Path, mount: bool) -> None:
    with (tmp_path / "test.log").open("w") as log:
        results, meta = run_sanity(path_of(good), good, expectations(), tmp_path, log, mount=mount)
    assert [(r.name, r.status) for r in results] == [
        ("integrity.size", "passed"),
        ("integrity.squashfs", "passed"),
        ("integrity.sha256", "passed"),
        ("integrity.ext4", "passed"),
        ("content.image_json", "passed"),
        ("content.packages", "passed"),
        ("content.files", "passed"),
        ("content.services", "passed"),
    ]
    assert meta is not None and meta["initrd"] == "/boot/initrd.img-6.1.0-test"
    packages = results[5].detail
    assert "systemd 252.39-1~deb12u2" in packages and "python3 3.11.2-1+b1" in packages
    assert str(tmp_path) not in Path("/proc/self/mounts").read_text(), "left mounted"


def test_wrong_checksum_fails_and_stops(good: p.ImageRef, tmp_path: Path) -> None:
    claimed = ref("0" * 64, good.artifact.size, good.artifact.uri)
    r = sanity(path_of(good), claimed, tmp_path)
    assert r["integrity.sha256"].status == "failed"
    assert f"sha256 is {good.artifact.sha256}, image.built says {'0' * 64}" in (
        r["integrity.sha256"].detail
    )
    assert r["integrity.squashfs"].status == "passed"  # the file is sound; it is not *this* one
    assert {r[n].status for n in ("integrity.ext4", "content.packages")} == {"skipped"}


def test_bit_flip_is_caught_by_the_checksum(good: p.ImageRef, tmp_path: Path) -> None:
    flipped = tmp_path / "flipped.squashfs"
    shutil.copyfile(path_of(good), flipped)
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0x10
    flipped.write_bytes(bytes(data))
    r = sanity(flipped, good, tmp_path)
    assert statuses(r)["integrity.size"] == "passed"
    assert r["integrity.sha256"].status == "failed"
    assert "the file changed after it was built" in r["integrity.sha256"].detail


def test_truncated_copy_fails_on_size(good: p.ImageRef, tmp_path: Path) -> None:
    cut = tmp_path / "cut.squashfs"
    cut.write_bytes(path_of(good).read_bytes()[: good.artifact.size // 2])
    r = sanity(cut, good, tmp_path)
    missing = good.artifact.size - good.artifact.size // 2
    assert r["integrity.size"].status == "failed"
    assert r["integrity.size"].detail.endswith(f"(truncated by {missing} bytes)")
    assert set(statuses(r).values()) == {"failed", "skipped"}


def test_truncated_at_the_source_fails_on_the_superblock(good: p.ImageRef, tmp_path: Path) -> None:
    """The builder itself wrote a short file: size and checksum match the message, but the
    squashfs says it should be longer."""
    cut = tmp_path / "cut.squashfs"
    cut.write_bytes(path_of(good).read_bytes()[:-8192])
    store = LocalArtifactStore(tmp_path / "store")
    stored = store.put_file(cut)
    r = sanity(stored.path, ref(stored.sha256, stored.size, f"file://{stored.path}"), tmp_path)
    assert r["integrity.size"].status == r["integrity.sha256"].status == "passed"
    assert r["integrity.squashfs"].status == "failed"
    assert "superblock says" in r["integrity.squashfs"].detail
    assert "truncated" in r["integrity.squashfs"].detail
    assert r["integrity.ext4"].status == "skipped"


def test_not_a_squashfs(tmp_path: Path) -> None:
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"\0" * 65536)
    store = LocalArtifactStore(tmp_path / "store")
    s = store.put_file(junk)
    r = sanity(s.path, ref(s.sha256, s.size, f"file://{s.path}"), tmp_path)
    assert r["integrity.squashfs"].status == "failed"
    assert r["integrity.squashfs"].detail.startswith("no valid squashfs superblock")


def test_missing_package_fails_content_but_not_the_rest(good: p.ImageRef, tmp_path: Path) -> None:
    exp = expectations('[images.node]\npackages = ["lvm2", "python3 >= 3.12", "systemd"]\n')
    r = sanity(path_of(good), good, tmp_path, exp)
    assert r["content.packages"].status == "failed"
    assert r["content.packages"].detail == (
        "python3 3.11.2-1+b1 is older than the required 3.12; lvm2 is not installed"
    )
    assert statuses(r)["content.files"] == statuses(r)["content.services"] == "passed"


def test_content_problems_are_all_reported(images: Images, tmp_path: Path) -> None:
    def damage(root: Path) -> None:
        (root / "etc" / "ssh" / "ssh_host_ed25519_key").write_text("secret")
        (root / "usr" / "lib" / "os-release").unlink()
        (root / "etc/systemd/system/multi-user.target.wants/ssh.service").unlink()

    bad = images.build(damage, version="20261123.2")
    claimed = bad.model_copy(update={"version": "20261123.3"})
    r = sanity(path_of(bad), claimed, tmp_path)
    assert r["content.image_json"].status == "failed"
    assert (
        "version is '20261123.2', the message says '20261123.3'" in r["content.image_json"].detail
    )
    assert r["content.files"].detail == (
        "missing: /usr/lib/os-release; forbidden but present: /etc/ssh/ssh_host_ed25519_key"
    )
    assert r["content.services"].detail == (
        "ssh.service is not enabled (no link in any *.wants directory)"
    )


def test_masked_service_is_not_enabled(images: Images, tmp_path: Path) -> None:
    def mask(root: Path) -> None:
        (root / "etc" / "systemd" / "system" / "ssh.service").symlink_to("/dev/null")

    bad = images.build(mask)
    r = sanity(path_of(bad), bad, tmp_path)
    assert r["content.services"].detail == "ssh.service is masked"


def test_corrupt_ext4_fails_with_fsck_findings(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_tree(root)
    liveimg.prepare_tree(
        root, {"name": "node", "version": "20261123.1", "build_id": BUILD_ID, "stream": "stable"}
    )
    ext4 = liveimg.make_ext4(root, tmp_path / "rootfs.img", 24)
    # clear the inode of the dpkg database: its directory entry now points at nothing
    subprocess.run(
        ["debugfs", "-w", "-R", "clri /var/lib/dpkg/status", str(ext4)],
        check=True,
        capture_output=True,
    )
    out = liveimg.make_squashfs(ext4, tmp_path / "image.squashfs", "zstd")
    s = LocalArtifactStore(tmp_path / "store").put_file(out)
    r = sanity(s.path, ref(s.sha256, s.size, f"file://{s.path}"), tmp_path)
    assert statuses(r)["integrity.sha256"] == "passed"
    assert r["integrity.ext4"].status == "failed"
    assert r["integrity.ext4"].detail.startswith("e2fsck -fn found problems: ")
    assert "status" in r["integrity.ext4"].detail or "Entry" in r["integrity.ext4"].detail
    assert statuses(r)["content.packages"] == "skipped"


def test_image_json_check_can_be_turned_off(good: p.ImageRef, tmp_path: Path) -> None:
    claimed = good.model_copy(update={"version": "99"})
    exp = expectations("[images.node]\nimage_json = false\n")
    r = sanity(path_of(good), claimed, tmp_path, exp)
    assert r["content.image_json"].status == "skipped"
    assert statuses(r)["content.packages"] == "passed"


SPEC = """Name: {name}
Version: {version}
Release: {release}
Summary: imgline test package
License: MIT
BuildArch: noarch
%description
A package that only exists in a test rpm database.
%files
"""


def make_rpmdb(db: Path, work: Path, packages: list[tuple[str, str, str]]) -> None:
    """A real rpm database (sqlite, as Fedora 36+ and EL 9 have) holding empty packages."""
    db.mkdir(parents=True)
    subprocess.run(["rpm", "--dbpath", str(db), "--initdb"], check=True)
    for name, version, release in packages:
        spec = work / f"{name}.spec"
        spec.write_text(SPEC.format(name=name, version=version, release=release))
        top = work / "rpmbuild"
        subprocess.run(
            ["rpmbuild", "--quiet", "--define", f"_topdir {top}", "-bb", str(spec)], check=True
        )
        rpm = next((top / "RPMS" / "noarch").glob(f"{name}-{version}-*.rpm"))
        subprocess.run(
            ["rpm", "--dbpath", str(db), "-i", "--justdb", "--nodeps", "--noscripts", str(rpm)],
            check=True,
            capture_output=True,
        )


def test_rpm_database_of_a_fedora_like_image(images: Images, tmp_path: Path) -> None:
    def fedora(root: Path) -> None:
        shutil.rmtree(root / "var" / "lib" / "dpkg")
        make_rpmdb(
            root / "usr" / "lib" / "sysimage" / "rpm",
            tmp_path,
            [("kernel-core", "6.11.4", "201.fc40"), ("python3", "3.12.7", "1.fc40")],
        )

    image = images.build(fedora)
    exp = resolve(
        load_plan('[defaults]\npackages = ["kernel-core >= 6.10", "python3 >= 3.13", "systemd"]'),
        "node",
        "stable",
    )
    r = sanity(path_of(image), image, tmp_path, exp)
    assert r["content.packages"].status == "failed"
    assert r["content.packages"].detail == (
        "python3 0:3.12.7-1.fc40 is older than the required 3.13; systemd is not installed"
    )
    ok = resolve(load_plan('[defaults]\npackages = ["kernel-core >= 6.10"]'), "node", "stable")
    (tmp_path / "again").mkdir()
    r = sanity(path_of(image), image, tmp_path / "again", ok)
    assert r["content.packages"].status == "passed"
    assert r["content.packages"].detail.startswith("2 packages (rpm)")


def test_image_without_a_package_database(images: Images, tmp_path: Path) -> None:
    image = images.build(lambda root: shutil.rmtree(root / "var" / "lib" / "dpkg"))
    r = sanity(path_of(image), image, tmp_path)
    assert r["content.packages"].detail.startswith("no package database")
