"""Fault drill: imgline-publisher killed with SIGKILL between writing a release's targets and
signing the snapshot, as a real service process on a private broker.

The kill comes from the publisher's own crash point (``IMGLINE_PUBLISHER_CRASH_AT``), so it
lands at exactly that step. The repository-level version of this crash, without the broker,
is tests/image/test_repository.py (test_sigkill_between_the_targets_and_the_commit).
"""

from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path

import pytest
from bushelpers import ServiceProcess, service_process, wait_for
from tufrepo import client, publisher_config, unaccounted_targets

from imgline.core import verdicts
from imgline.core.artifacts import LocalArtifactStore
from imgline.core.trust import layout
from imgline.core.trust.repository import TufRepository
from imgline.publisher.__main__ import CRASH_ENV
from imgline.publisher.adapters.repo import Repository
from imgline.schemas import payloads as p
from imgline.schemas.messages import ImagePublishedV1, ImageTestedV1

pytestmark = pytest.mark.broker


def passed_image(store: LocalArtifactStore, version: str) -> p.ImageTested:
    """An image in the store and the passing verdict the tester left for it."""
    art = store.put_bytes(os.urandom(2 << 20))
    ref = p.ImageRef(
        build_id=hashlib.sha256(version.encode()).hexdigest(),
        name="node",
        version=version,
        stream="stable",
        artifact=p.Artifact(uri=art.uri, sha256=art.sha256, size=art.size),
        source_commit="2" * 40,
    )
    results = [
        p.TestResult(name="content.image_json", status="passed", duration_seconds=0.1),
        p.TestResult(name="boot.live", status="passed", duration_seconds=60),
    ]
    tested = p.ImageTested(build_id=ref.build_id, image=ref, passed=True, results=results)
    verdicts.write(store, tested)
    return tested


def files(root: Path, top: str) -> dict[str, str]:
    """Every file under ``root/top`` and the sha256 of its bytes."""
    return {
        f.relative_to(root).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in (root / top).rglob("*")
        if f.is_file()
    }


def no_more_events(svc: ServiceProcess) -> list[bytes]:
    """Stop the service (SIGTERM finishes what it has in hand) and return what it still sent."""
    svc.proc.send_signal(signal.SIGTERM)
    assert svc.proc.wait(60) == 0
    out = []
    while True:
        method, _props, body = svc.channel.basic_get(svc.watch, auto_ack=True)
        if method is None:
            return out
        out.append(body)


def test_publisher_killed_between_targets_and_snapshot_publishes_once_on_restart(
    amqp_url: str, tmp_path: Path, repo: TufRepository, served: str
) -> None:
    """Expected: the killed publish signs nothing (the metadata is byte for byte what it was,
    hosts still see only the previous release) and sends nothing; its target files are on
    disk, unlisted. The restarted publisher gets the same image.tested again, publishes the
    release once and sends one image.published; nothing is dead-lettered; a host verifying
    from the pinned root sees both releases and downloads the new image; every target file on
    disk is listed or queued for deletion, and no temporary file is left."""
    pinned_root = repo.root_bytes()
    store = LocalArtifactStore(tmp_path / "store")
    earlier = passed_image(store, "20261205.1")
    Repository(repo.root_dir, repo.keys, served).publish(
        earlier, store.path_for(earlier.image.artifact.sha256)
    )
    tested = passed_image(store, "20261206.1")
    metadata_before = files(repo.root_dir, layout.METADATA_DIR)
    targets_before = files(repo.root_dir, layout.TARGETS_DIR)
    config = publisher_config(repo, store.root, tmp_path / "work", served)
    with service_process(
        "publisher",
        amqp_url,
        tmp_path,
        consumes=("image.tested",),
        emits=(ImagePublishedV1.binding("stable"), "image.rejected"),
        consumer_config=config,
        env={CRASH_ENV: "targets_placed"},
    ) as svc:
        svc.publish(ImageTestedV1.from_payload(tested))
        wait_for(lambda: svc.proc.poll() is not None, 60, "the publisher to hit its crash point")
        assert svc.proc.returncode == -signal.SIGKILL

        # the crash point: the release's files written, nothing signed, nothing announced
        assert files(repo.root_dir, layout.METADATA_DIR) == metadata_before
        written = set(files(repo.root_dir, layout.TARGETS_DIR)) - set(targets_before)
        image_target = layout.hashed_path(
            "stable/node/20261206.1/node-20261206.1.squashfs.img", tested.image.artifact.sha256
        )
        assert f"{layout.TARGETS_DIR}/{image_target}" in written
        assert svc.channel.basic_get(svc.watch, auto_ack=True)[0] is None
        host = client(served, tmp_path / "host-before", pinned_root)
        assert [r.version for r in host.releases("stable").releases] == ["20261205.1"]

        svc.start_again(without=(CRASH_ENV,))
        event = svc.wait_event(60)
        published = ImagePublishedV1(body=event, topic="x").payload
        assert no_more_events(svc) == []  # one image.published, no second one
        assert svc.channel.basic_get(svc.dlq, auto_ack=True)[0] is None

    assert (published.build_id, published.version) == (tested.build_id, "20261206.1")
    assert published.image_sha256 == tested.image.artifact.sha256
    host = client(served, tmp_path / "host", pinned_root)
    releases = host.releases("stable").releases
    assert [(r.version, r.build_id) for r in releases] == [
        ("20261206.1", tested.build_id),
        ("20261205.1", earlier.build_id),
    ]
    latest = host.latest("stable", "node")
    assert latest is not None and latest.version == "20261206.1"
    image = host.download(latest.image, tmp_path / "downloaded.img")
    assert hashlib.sha256(image.read_bytes()).hexdigest() == tested.image.artifact.sha256
    assert unaccounted_targets(repo) == set()
    assert not [f for f in repo.root_dir.rglob(".tmp-*")]
