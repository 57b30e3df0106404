"""imgline-publisher as its own process on a private broker: a passed image.tested becomes a
release in the TUF repository, served over HTTP and announced as image.published; a failed or
swapped one becomes image.rejected and leaves the repository untouched. The verdicts are the
tester's, in the artifact store: a message that claims more than they say is not believed."""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

import pytest
from bushelpers import service_process
from tufrepo import client, publisher_config

from imgline.core import verdicts
from imgline.core.artifacts import LocalArtifactStore
from imgline.core.trust import layout
from imgline.core.trust.repository import TufRepository
from imgline.schemas import payloads as p
from imgline.schemas.messages import ImagePublishedV1, ImageRejectedV1, ImageTestedV1

pytestmark = pytest.mark.broker


def image_tested(
    store: LocalArtifactStore, version: str, *, passed: bool, record: bool = True
) -> p.ImageTested:
    """An image in the store and, as the tester would leave it, its verdict."""
    art = store.put_bytes(os.urandom(2 << 20))
    ref = p.ImageRef(
        build_id=hashlib.sha256(version.encode()).hexdigest(),
        name="node",
        version=version,
        stream="stable",
        artifact=p.Artifact(uri=art.uri, sha256=art.sha256, size=art.size),
        source_commit="1" * 40,
    )
    results = [
        p.TestResult(name="integrity.sha256", status="passed", duration_seconds=0.1),
        p.TestResult(name="content.image_json", status="passed", duration_seconds=0.1),
        p.TestResult(
            name="boot.live",
            status="passed" if passed else "failed",
            duration_seconds=60,
            detail="" if passed else "no 'IMGLINE-PAYLOAD-READY' on the console within 600s",
        ),
    ]
    tested = p.ImageTested(build_id=ref.build_id, image=ref, passed=passed, results=results)
    if record:
        verdicts.write(store, tested)
    return tested


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - loopback test server
        data: bytes = resp.read()
    return data


def test_passed_image_is_published_and_failed_one_rejected(
    amqp_url: str, tmp_path: Path, repo: TufRepository, served: str
) -> None:
    pinned_root = repo.root_bytes()
    store = LocalArtifactStore(tmp_path / "store")
    config = publisher_config(repo, store.root, tmp_path / "work", served)
    good = image_tested(store, "20261123.1", passed=True)
    bad = image_tested(store, "20261123.2", passed=False)
    swapped = image_tested(store, "20261123.3", passed=True)
    stored = store.path_for(swapped.image.artifact.sha256)
    stored.chmod(0o644)
    stored.write_bytes(b"not what was tested")
    # forged: a passing verdict nobody stored, and one that claims a pass the tester refused
    unverified = image_tested(store, "20261123.4", passed=True, record=False)
    overclaimed = image_tested(store, "20261123.5", passed=False)
    claims = [r.model_copy(update={"status": "passed", "detail": ""}) for r in overclaimed.results]
    overclaimed = overclaimed.model_copy(update={"passed": True, "results": claims})
    with service_process(
        "publisher",
        amqp_url,
        tmp_path,
        consumes=("image.tested",),
        # only the stream-suffixed key reaches this binding: the event says its stream
        emits=(ImagePublishedV1.binding("stable"), "image.rejected"),
        consumer_config=config,
    ) as svc:
        svc.publish(ImageTestedV1.from_payload(bad))
        rejected = ImageRejectedV1(body=svc.wait_event(60), topic="x").payload
        svc.publish(ImageTestedV1.from_payload(swapped))
        refused = ImageRejectedV1(body=svc.wait_event(60), topic="x").payload
        svc.publish(ImageTestedV1.from_payload(unverified))
        not_tested = ImageRejectedV1(body=svc.wait_event(60), topic="x").payload
        svc.publish(ImageTestedV1.from_payload(overclaimed))
        believed = ImageRejectedV1(body=svc.wait_event(60), topic="x").payload
        svc.publish(ImageTestedV1.from_payload(good))
        published = ImagePublishedV1(body=svc.wait_event(60), topic="x").payload
        svc.publish(ImageTestedV1.from_payload(good))  # a redelivery: the same release again
        again = ImagePublishedV1(body=svc.wait_event(60), topic="x").payload

    assert rejected.build_id == bad.build_id
    assert rejected.failed_checks == ["boot.live"]
    assert "boot.live: no 'IMGLINE-PAYLOAD-READY'" in rejected.reason
    assert refused.build_id == swapped.build_id
    assert refused.reason.startswith("the image is not the one tested: ")
    assert "truncated" in refused.reason
    assert not_tested.build_id == unverified.build_id
    assert "the tester stored no verdict" in not_tested.reason
    assert believed.build_id == overclaimed.build_id  # the stored verdict, not the message
    assert believed.failed_checks == ["boot.live"]
    for version in ("20261123.2", "20261123.3", "20261123.4", "20261123.5"):
        assert not (repo.targets_dir / "stable" / "node" / version).exists()

    assert published.image_sha256 == good.image.artifact.sha256
    # the redelivery announced the same release and signed nothing new
    assert again.model_dump(exclude={"emitted_at"}) == published.model_dump(exclude={"emitted_at"})
    check_event(published, repo, served)
    check_as_a_host(published, good, served, pinned_root, tmp_path)


def check_event(published: p.ImagePublished, repo: TufRepository, served: str) -> None:
    """The event names the release as the signed repository does."""
    state = repo.load()
    role = state.targets["stream-stable"]
    assert (published.name, published.version, published.stream) == ("node", "20261123.1", "stable")
    assert published.repository_url == served
    d = "stable/node/20261123.1"
    assert published.targets is not None
    assert published.targets == p.PublishedTargets(
        image=f"{d}/node-20261123.1.squashfs.img",
        manifest=f"{d}/manifest.json",
        install_ks=f"{d}/install.ks",
    )
    assert published.role == "stream-stable"
    assert published.role_version == role.signed.version
    assert published.snapshot_version == state.snapshot.signed.version
    assert published.timestamp_version == state.timestamp.signed.version
    delegations = state.top.delegations
    assert delegations is not None and delegations.roles is not None
    assert published.key_id == ",".join(k[:16] for k in delegations.roles["stream-stable"].keyids)
    listed = {*published.targets.model_dump().values(), layout.releases_target("stable")}
    assert set(role.signed.targets) == listed


def check_as_a_host(
    published: p.ImagePublished,
    good: p.ImageTested,
    served: str,
    pinned_root: bytes,
    tmp_path: Path,
) -> None:
    """What a host does: verify everything through TUF from the pinned root, over HTTP."""
    host = client(served, tmp_path / "host", pinned_root)
    releases = host.releases("stable").releases
    assert [(r.version, r.build_id) for r in releases] == [("20261123.1", good.build_id)]
    latest = host.latest("stable", "node")
    assert latest is not None
    assert (latest.version, latest.build_id) == ("20261123.1", good.build_id)
    assert latest.tests.passed and published.targets is not None
    assert latest.image == published.targets.image
    image = host.download(latest.image, tmp_path / "downloaded.img")
    assert sha256_of(image) == published.image_sha256 == latest.image_sha256
    ks = host.download(latest.install_ks, tmp_path / "install.ks").read_text()
    assert f"liveimg --url={published.image_url} --checksum={published.image_sha256}" in ks
    # the URLs in the event are hints, but they do lead to the signed bytes
    assert hashlib.sha256(fetch(published.manifest_url)).hexdigest() == published.manifest_sha256
    assert published.manifest_url.startswith(served + "targets/")
