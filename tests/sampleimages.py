"""Small but real liveimgs for the tester's tests: a standard tree, optionally changed."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from imgline.core import liveimg
from imgline.core.artifacts import LocalArtifactStore
from imgline.schemas import payloads as p

BUILD_ID = "cd" * 32
STATUS = """\
Package: systemd
Status: install ok installed
Version: 252.39-1~deb12u2

Package: openssh-server
Status: install ok installed
Version: 1:9.2p1-2+deb12u10

Package: python3
Status: install ok installed
Version: 3.11.2-1+b1
"""
PAYLOAD = random.Random(7).randbytes(512 * 1024)  # noqa: S311 - incompressible test data


def make_tree(root: Path) -> None:
    (root / "etc" / "ssh").mkdir(parents=True)
    (root / "etc" / "hostname").write_text("node\n")
    (root / "usr" / "lib").mkdir(parents=True)
    (root / "usr" / "lib" / "os-release").write_text("ID=debian\n")
    (root / "var" / "lib" / "dpkg").mkdir(parents=True)
    (root / "var" / "lib" / "dpkg" / "status").write_text(STATUS)
    units = root / "usr" / "lib" / "systemd" / "system"
    units.mkdir(parents=True)
    (units / "ssh.service").write_text("[Service]\nExecStart=/usr/sbin/sshd -D\n")
    wants = root / "etc" / "systemd" / "system" / "multi-user.target.wants"
    wants.mkdir(parents=True)
    (wants / "ssh.service").symlink_to("/usr/lib/systemd/system/ssh.service")
    (root / "usr" / "lib" / "payload.bin").write_bytes(PAYLOAD)  # data that does not compress
    (root / "boot").mkdir()
    (root / "boot" / "vmlinuz-6.1.0-test").write_bytes(b"k" * 4096)
    (root / "boot" / "initrd.img-6.1.0-test").write_bytes(b"i" * 4096)


Tweak = Callable[[Path], None]


class Images:
    """Builds liveimgs from the standard tree, optionally changed, into one store."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.store = LocalArtifactStore(base / "store")
        self.count = 0

    def build(self, tweak: Tweak | None = None, version: str = "20261123.1") -> p.ImageRef:
        self.count += 1
        root = self.base / f"root{self.count}"
        make_tree(root)
        if tweak:
            tweak(root)
        meta = {
            "name": "node",
            "version": version,
            "stream": "stable",
            "build_id": BUILD_ID,
            "kernel": "/boot/vmlinuz-6.1.0-test",
            "initrd": "/boot/initrd.img-6.1.0-test",
        }
        out = self.base / f"image{self.count}.squashfs"
        liveimg.assemble(root, out, size_mib=24, meta=meta, workdir=self.base)
        stored = self.store.put_file(out, move=True)
        return ref(stored.sha256, stored.size, f"file://{stored.path}")


def ref(sha256: str, size: int, uri: str, version: str = "20261123.1") -> p.ImageRef:
    return p.ImageRef(
        build_id=BUILD_ID,
        name="node",
        version=version,
        stream="stable",
        artifact=p.Artifact(uri=uri, sha256=sha256, size=size),
    )
