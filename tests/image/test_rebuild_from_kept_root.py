"""A push that changes only ``%post`` rebuilds from the package root the builder kept: the real
mmdebstrap backend, twice, and the second image has the new script's work and not the old one's.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest
from nodeimage import APT_CACHE, BUILD_USER, NODE_KS, ROOT_CACHE, build

from imgline.builder.settings import BuilderConfig
from imgline.core import liveimg
from imgline.core.artifacts import LocalArtifactStore
from imgline.core.userns import BuildUser
from imgline.schemas import payloads as p
from imgline.schemas.messages import ImageBuiltV1

pytestmark = pytest.mark.image


def with_marker(text: str, marker: str) -> str:
    """node.ks with a shell %post that writes ``marker``, and the user namespace it ran in."""
    return (
        f"{text}\n%post\necho {marker} > /etc/imgline-marker\n"
        "cat /proc/self/uid_map > /etc/imgline-uid-map\n%end\n"
    )


def test_a_script_only_change_reuses_the_kept_package_root(tmp_path: Path, build_tmp: Path) -> None:
    config = BuilderConfig(
        store_dir=tmp_path / "store",
        work_dir=build_tmp / "work",
        cache_dir=APT_CACHE,
        root_cache_dir=ROOT_CACHE,  # shared with the other test builds of node.ks
        build_user=BUILD_USER,  # unshare mode, as by default
    )
    store = LocalArtifactStore(config.store_dir)
    node = NODE_KS.read_text(encoding="utf-8")
    images = []
    for n, marker in enumerate(("first-push", "second-push")):
        req = p.BuildRequested(
            request_id=f"push-{n}",
            source=p.InlineSource(kickstart=with_marker(node, marker)),
            name="node",
        )
        [msg] = build(config, req)
        assert isinstance(msg, ImageBuiltV1), msg.body
        log = (store.read_record("logs", f"{msg.payload.build_id}.log") or b"").decode()
        images.append((msg.payload, log))

    (first, _), (second, second_log) = images
    # the second build installed nothing: it unpacked the root the first one kept (or found)
    assert re.search(r"# package root [0-9a-f]{16} reused from the cache", second_log)
    assert "--include=" not in second_log
    assert second.version != first.version

    for built, marker in ((first, "first-push"), (second, "second-push")):
        rootfs = liveimg.extract_rootfs(
            store.path_for(built.artifact.sha256), tmp_path / built.version
        )
        liveimg.fsck(rootfs)
        assert liveimg.read_file(rootfs, "/etc/imgline-marker").decode() == f"{marker}\n"
        # %post ran as root of a user namespace whose root is an unprivileged id on the host
        inner, outer, _ = liveimg.read_file(rootfs, "/etc/imgline-uid-map").decode().split()
        assert (inner, outer) == ("0", str(BuildUser.lookup(BUILD_USER).subuid))
        # and the image has its own owners, not the host's subordinate ids
        passwd = liveimg.stat_path(rootfs, "/usr/bin/passwd")
        assert (passwd.uid, passwd.gid, passwd.mode) == (0, 0, 0o4755)
        home = liveimg.stat_path(rootfs, "/home/node")
        assert (home.uid, home.gid) == (1000, 1000)
        assert liveimg.stat_path(rootfs, "/").uid == 0
        meta = json.loads(liveimg.read_file(rootfs, "/usr/lib/imgline/image.json"))
        assert meta["version"] == built.version
        # the initramfs was made after the scripts, for this image, and boots it live
        initrd = gzip.decompress(liveimg.read_file(rootfs, meta["initrd"]))
        assert b"dmsquash-live-root" in initrd
