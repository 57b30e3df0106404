"""A push that changes only ``%post`` rebuilds from the package root the builder kept: the real
mmdebstrap backend, twice, and the second image has the new script's work and not the old one's.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest
from nodeimage import APT_CACHE, NODE_KS, ROOT_CACHE, build

from imgline.builder.settings import BuilderConfig
from imgline.core import liveimg
from imgline.core.artifacts import LocalArtifactStore
from imgline.schemas import payloads as p
from imgline.schemas.messages import ImageBuiltV1

pytestmark = pytest.mark.image


def with_marker(text: str, marker: str) -> str:
    """node.ks with a shell %post that writes ``marker`` (and one line that says it)."""
    return f"{text}\n%post\necho {marker} > /etc/imgline-marker\n%end\n"


def test_a_script_only_change_reuses_the_kept_package_root(tmp_path: Path) -> None:
    config = BuilderConfig(
        store_dir=tmp_path / "store",
        work_dir=tmp_path / "work",
        cache_dir=APT_CACHE,
        root_cache_dir=ROOT_CACHE,  # shared with the other test builds of node.ks
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
        meta = json.loads(liveimg.read_file(rootfs, "/usr/lib/imgline/image.json"))
        assert meta["version"] == built.version
        # the initramfs was made after the scripts, for this image, and boots it live
        initrd = gzip.decompress(liveimg.read_file(rootfs, meta["initrd"]))
        assert b"dmsquash-live-root" in initrd
