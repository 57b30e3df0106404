"""The real thing: imgline-builder as its own process, a private broker, mmdebstrap, dracut,
mke2fs and mksquashfs building examples/node.ks from a git repository into image.built.

Package downloads are cached under .cache/apt/ between runs (first run: a few minutes).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pika
import pytest

from imgline.core import liveimg
from imgline.core.artifacts import LocalArtifactStore
from imgline.core.config import BusSettings
from imgline.core.gitutil import commit_files
from imgline.schemas import payloads as p
from imgline.schemas.messages import BuildRequestedV1, ImageBuiltV1

pytestmark = pytest.mark.image

REPO = Path(__file__).resolve().parents[2]
APT_CACHE = REPO / ".cache" / "apt" / "bookworm-amd64"


def test_node_ks_builds_through_the_broker(amqp_url: str, tmp_path: Path) -> None:
    # a "vendor repository" holding the example kickstart, as a git push would leave it
    repo = tmp_path / "vendor"
    node_ks = (REPO / "examples" / "node.ks").read_text(encoding="utf-8")
    commit = commit_files(repo, {"examples/node.ks": node_ks}, "node image")

    store_dir = tmp_path / "store"
    exchange = f"e2e{os.getpid()}"
    config = tmp_path / "builder.toml"
    config.write_text(
        f'service = "builder"\nexchange = "{exchange}"\n'
        f'dead_letter_exchange = "{exchange}.dlx"\ndead_letter_queue = "{exchange}.dead-letter"\n'
        "[consumer_config]\n"
        f'store_dir = "{store_dir}"\nwork_dir = "{tmp_path / "work"}"\n'
        f'cache_dir = "{APT_CACHE}"\n'
    )
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = conn.channel()
    ch.exchange_declare(exchange, "topic", durable=True)
    watch = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(watch, exchange, "imgline.image.built")
    ch.queue_bind(watch, exchange, "imgline.build.failed")

    # declare the builder's topology first: a message published before its queue exists is lost
    from imgline.core.bus import topology  # noqa: PLC0415
    from imgline.core.config import load_settings  # noqa: PLC0415

    settings = load_settings(BusSettings, config, {})
    topology.declare(ch, topology.service_topology(settings, ("build.requested",)))

    builder = subprocess.Popen(
        [sys.executable, "-m", "imgline.builder", "--config", str(config)],
        env=dict(os.environ, IMGLINE_AMQP_URL=amqp_url),
    )
    try:
        req = p.BuildRequested(
            request_id="e2e-1",
            source=p.GitSource(url=f"file://{repo}", ref="main", kickstart_path="examples/node.ks"),
            name="node",
            stream="stable",
        )
        msg = BuildRequestedV1.from_payload(req)
        ch.confirm_delivery()
        ch.basic_publish(exchange, msg.topic, msg._encoded_body, msg._properties)
        deadline = time.monotonic() + 1500
        body = None
        while time.monotonic() < deadline and body is None:
            method, _props, body = ch.basic_get(watch, auto_ack=True)
            if method is None:
                body = None
                conn.sleep(2)
                assert builder.poll() is None, "the builder process died"
        assert body is not None, "no image.built within the time limit"
        event = json.loads(body)
        assert "artifact" in event, f"build failed: {event}"
    finally:
        builder.send_signal(signal.SIGTERM)
        builder.wait(60)
        conn.close()

    built = ImageBuiltV1(body=event, topic="imgline.image.built").payload
    assert built.build_id == req.build_id
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
