"""The real thing: imgline-builder as its own process, a private broker, mmdebstrap, dracut,
mke2fs and mksquashfs building examples/node.ks from a git repository into image.built.

Package downloads are cached under .cache/apt/ between runs (first run: a few minutes).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from bushelpers import service_process
from nodeimage import BUILD_USER

from imgline.core import liveimg
from imgline.core.artifacts import LocalArtifactStore
from imgline.core.gitutil import commit_files
from imgline.schemas import payloads as p
from imgline.schemas.messages import BuildRequestedV1, ImageBuiltV1

pytestmark = pytest.mark.image

REPO = Path(__file__).resolve().parents[2]
APT_CACHE = REPO / ".cache" / "apt" / "bookworm-amd64"


def test_node_ks_builds_through_the_broker(amqp_url: str, tmp_path: Path, build_tmp: Path) -> None:
    # a "vendor repository" holding the example kickstart, as a git push would leave it
    repo = tmp_path / "vendor"
    node_ks = (REPO / "examples" / "node.ks").read_text(encoding="utf-8")
    commit = commit_files(repo, {"examples/node.ks": node_ks}, "node image")

    store_dir = tmp_path / "store"
    config = {
        "store_dir": str(store_dir),
        "work_dir": str(build_tmp / "work"),  # the build user's namespace reaches it
        "cache_dir": str(APT_CACHE),
        "root_cache_dir": str(REPO / ".cache" / "roots"),
        "build_user": BUILD_USER,  # the service runs as root here: unshare mode needs a user
        "git_schemes": ["file"],
    }
    req = p.BuildRequested(
        request_id="e2e-1",
        source=p.GitSource(url=f"file://{repo}", ref="main", kickstart_path="examples/node.ks"),
        name="node",
        stream="stable",
    )
    with service_process(
        "builder",
        amqp_url,
        tmp_path,
        consumes=("build.requested",),
        emits=("image.built", "build.failed"),
        consumer_config=config,
    ) as svc:
        svc.publish(BuildRequestedV1.from_payload(req))
        event = svc.wait_event(1500)
    assert "artifact" in event, f"build failed: {event}"

    built = ImageBuiltV1(body=event, topic="imgline.image.built").payload
    # the branch was resolved to its commit, which is part of the build's identity
    pinned = req.model_copy(update={"source": req.source.model_copy(update={"commit": commit})})
    assert built.build_id == p.BuildRequested.model_construct_id(pinned.model_dump(mode="json"))
    assert built.request_id == req.request_id
    assert built.source_commit == commit
    assert built.version.startswith(time.strftime("%Y%m%d", time.gmtime()))
    check_image(built, LocalArtifactStore(store_dir), tmp_path)


def check_image(built: p.ImageBuilt, store: LocalArtifactStore, tmp_path: Path) -> None:
    """What node.ks asked for is really in the image."""
    assert store.verify(built.artifact.sha256)
    rootfs = liveimg.extract_rootfs(store.path_for(built.artifact.sha256), tmp_path / "x")
    liveimg.fsck(rootfs)
    meta = json.loads(liveimg.read_file(rootfs, "/usr/lib/imgline/image.json"))
    assert (meta["name"], meta["version"], meta["build_id"]) == (
        "node",
        built.version,
        built.build_id,
    )
    kver = meta["kernel_version"]
    initrd = liveimg.read_file(rootfs, meta["initrd"])
    assert len(initrd) > 5_000_000, "initramfs too small to hold dracut's live modules"
    assert len(liveimg.read_file(rootfs, meta["kernel"])) > 1_000_000
    modules = liveimg.read_file(rootfs, f"/usr/lib/modules/{kver}/modules.dep")
    assert modules
    passwd = liveimg.read_file(rootfs, "/etc/passwd").decode()
    assert "\nnode:" in "\n" + passwd
    shadow = liveimg.read_file(rootfs, "/etc/shadow").decode()
    assert any(line.startswith("root:!") for line in shadow.splitlines())
    assert liveimg.read_file(rootfs, "/etc/hostname") == b"node\n"
    assert liveimg.read_file(rootfs, "/etc/timezone") == b"Etc/UTC\n"
    wants = "/etc/systemd/system/multi-user.target.wants/node-payload.service"
    assert (
        liveimg.stat_path(rootfs, wants).link_target == "/etc/systemd/system/node-payload.service"
    )
    unit = liveimg.read_file(rootfs, "/etc/systemd/system/node-payload.service")
    assert b"ExecStart=/usr/local/bin/node-payload" in unit
    assert liveimg.read_file(rootfs, "/usr/share/factory/etc/hostname") == b"node\n"
    log = store.read_record("logs", f"{built.build_id}.log")
    assert log is not None and b"mmdebstrap" in log
    assert any(APT_CACHE.glob("*.deb")), "package downloads were not cached"
