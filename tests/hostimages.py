"""Releases of the node image for the updater's VM tests and the demo's host.

A host upgrade needs several releases of one image that differ in known ways. Building each
with mmdebstrap would cost minutes, so v1, v2 and v3 are made from the one cached node image
(tests/nodeimage.py) with the real tools: the inner ext4 is loop-mounted, changed, checked with
e2fsck and packed again with mksquashfs, and ``image.json`` gets the release's version and
build id. The factory copy of /etc is changed with /etc, as the builder would have made it.

- ``etc`` files put under /etc/imgline-test/ (and the factory copy): the /etc merge cases;
- ``broken``: the payload exits at once, so its unit fails and the host's health check fails.

Results are cached under ``.cache/vm/releases/`` keyed by the base image and the recipe.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from imgline.schemas import payloads as p

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "vm" / "releases"
RECIPE = "3"  # bump when derive() changes what it writes

BROKEN_PAYLOAD = "#!/bin/sh\necho 'node-payload: broken on purpose (a bad release)' >&2\nexit 3\n"


@dataclass(frozen=True)
class Recipe:
    version: str
    etc: dict[str, str] = field(default_factory=dict)
    broken: bool = False

    def key(self, base_sha256: str) -> str:
        doc = json.dumps([RECIPE, base_sha256, self.version, self.etc, self.broken], sort_keys=True)
        return hashlib.sha256(doc.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class HostRelease:
    name: str
    version: str
    build_id: str
    image: Path
    sha256: str
    size: int

    def tested(self, stream: str = "stable") -> p.ImageTested:
        ref = p.ImageRef(
            build_id=self.build_id,
            name=self.name,
            version=self.version,
            stream=stream,
            artifact=p.Artifact(uri=self.image.as_uri(), sha256=self.sha256, size=self.size),
        )
        result = p.TestResult(name="boot.live", status="passed", duration_seconds=1.0)
        return p.ImageTested(
            build_id=self.build_id, image=ref, passed=True, results=[result], report_url=None
        )


def next_versions(version: str, count: int) -> list[str]:
    """``count`` automatic versions after ``version`` (``20261201.1`` → ``20261201.2``, ...)."""
    m = re.fullmatch(r"(\d{8})\.(\d+)", version)
    if not m:
        raise ValueError(f"the node image has a pinned version {version!r}: cannot count on")
    return [f"{m.group(1)}.{int(m.group(2)) + i}" for i in range(1, count + 1)]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _run(*argv: str | Path) -> None:
    subprocess.run([str(a) for a in argv], check=True, capture_output=True)


def derive(base: Path, base_sha256: str, recipe: Recipe) -> HostRelease:
    """The node image ``base`` turned into release ``recipe.version`` (cached)."""
    entry = CACHE / recipe.key(base_sha256)
    record = entry / "release.json"
    if not record.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".derive-", dir=CACHE))
        try:
            _derive(base, recipe, tmp)
            if entry.exists():
                shutil.rmtree(entry)
            tmp.rename(entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    data = json.loads(record.read_text())
    return HostRelease(**{**data, "image": entry / "image.squashfs.img"})


def _derive(base: Path, recipe: Recipe, where: Path) -> None:
    stage, mnt = where / "stage", where / "mnt"
    _run("unsquashfs", "-q", "-no-progress", "-d", stage, base)
    rootfs = stage / "LiveOS" / "rootfs.img"
    mnt.mkdir()
    _run("mount", "-o", "loop", "--", rootfs, mnt)
    try:
        meta_path = mnt / "usr/lib/imgline/image.json"
        meta = json.loads(meta_path.read_text())
        build_id = hashlib.sha256(
            f"{meta['build_id']}/{recipe.key('')}/{recipe.version}".encode()
        ).hexdigest()
        meta.update(version=recipe.version, build_id=build_id)
        meta_path.write_text(json.dumps(meta, sort_keys=True, indent=2) + "\n")
        for etc in (mnt / "etc", mnt / "usr/share/factory/etc"):
            for rel, text in recipe.etc.items():
                path = etc / "imgline-test" / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
        if recipe.broken:
            (mnt / "usr/local/bin/node-payload").write_text(BROKEN_PAYLOAD)
    finally:
        _run("umount", mnt)
    _run("e2fsck", "-f", "-p", rootfs)
    out = where / "image.squashfs.img"
    _run(
        "mksquashfs",
        stage,
        out,
        "-noappend",
        "-comp",
        "zstd",
        "-Xcompression-level",
        "3",
        "-no-progress",
        "-quiet",
    )
    shutil.rmtree(stage)
    release = {
        "name": meta["name"],
        "version": recipe.version,
        "build_id": build_id,
        "sha256": _sha256(out),
        "size": out.stat().st_size,
    }
    (where / "release.json").write_text(json.dumps(release))


#: What the /etc merge tests look at: v1 ships these, the admin edits two, v2 changes two.
ETC_V1 = {"admin.conf": "vendor 1\n", "vendor.conf": "vendor 1\n", "both.conf": "vendor 1\n"}
ETC_V2 = {"admin.conf": "vendor 1\n", "vendor.conf": "vendor 2\n", "both.conf": "vendor 2\n"}
ADMIN_EDITS = {"admin.conf": "admin\n", "both.conf": "admin\n"}


def host_releases(base: Path, base_sha256: str, base_version: str) -> list[HostRelease]:
    """v1 (good), v2 (good, vendor /etc changes), v3 (payload broken): the upgrade story."""
    v1, v2, v3 = next_versions(base_version, 3)
    return [
        derive(base, base_sha256, Recipe(v1, etc=ETC_V1)),
        derive(base, base_sha256, Recipe(v2, etc=ETC_V2)),
        derive(base, base_sha256, Recipe(v3, etc=ETC_V2, broken=True)),
    ]
