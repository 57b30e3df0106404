"""imgline-publisher as its own process on a private broker: a passed image.tested becomes a
signed release served over HTTP and image.published; a failed one becomes image.rejected and
leaves the repository untouched."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from bushelpers import service_process

from imgline.core import repository as repo
from imgline.core.signing import SigningKey, generate_key, verify_digest
from imgline.publisher import http
from imgline.schemas import payloads as p
from imgline.schemas.messages import ImagePublishedV1, ImageRejectedV1, ImageTestedV1

pytestmark = pytest.mark.broker


def image_tested(tmp: Path, version: str, *, passed: bool) -> p.ImageTested:
    image = tmp / f"node-{version}.squashfs.img"
    image.write_bytes(os.urandom(2 << 20))
    data = image.read_bytes()
    ref = p.ImageRef(
        build_id=hashlib.sha256(version.encode()).hexdigest(),
        name="node",
        version=version,
        stream="stable",
        artifact=p.Artifact(
            uri=image.as_uri(), sha256=hashlib.sha256(data).hexdigest(), size=len(data)
        ),
        source_commit="1" * 40,
    )
    results = [
        p.TestResult(name="integrity.sha256", status="passed", duration_seconds=0.1),
        p.TestResult(
            name="boot.live",
            status="passed" if passed else "failed",
            duration_seconds=60,
            detail="" if passed else "no 'IMGLINE-PAYLOAD-READY' on the console within 600s",
        ),
    ]
    return p.ImageTested(build_id=ref.build_id, image=ref, passed=passed, results=results)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "repo"
    root.mkdir()
    server = http.make_server(root, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - loopback test server
        data: bytes = resp.read()
    return data


def test_passed_image_is_published_and_failed_one_rejected(
    amqp_url: str, tmp_path: Path, served: tuple[Path, str]
) -> None:
    root, base_url = served
    key: SigningKey = generate_key(tmp_path / "signing.key")
    config = {
        "repo_dir": str(root),
        "work_dir": str(tmp_path / "work"),
        "base_url": base_url,
        "signing_key": str(tmp_path / "signing.key"),
    }
    good = image_tested(tmp_path, "20261123.1", passed=True)
    bad = image_tested(tmp_path, "20261123.2", passed=False)
    swapped = image_tested(tmp_path, "20261123.3", passed=True)
    Path(swapped.image.artifact.uri.removeprefix("file://")).write_bytes(b"not what was tested")
    with service_process(
        "publisher",
        amqp_url,
        tmp_path,
        consumes=("image.tested",),
        emits=("image.published", "image.rejected"),
        consumer_config=config,
    ) as svc:
        svc.publish(ImageTestedV1.from_payload(bad))
        rejected = ImageRejectedV1(body=svc.wait_event(60), topic="x").payload
        svc.publish(ImageTestedV1.from_payload(swapped))
        refused = ImageRejectedV1(body=svc.wait_event(60), topic="x").payload
        svc.publish(ImageTestedV1.from_payload(good))
        published = ImagePublishedV1(body=svc.wait_event(60), topic="x").payload
        svc.publish(ImageTestedV1.from_payload(good))  # a redelivery: the same release again
        again = ImagePublishedV1(body=svc.wait_event(60), topic="x").payload

    assert rejected.build_id == bad.build_id
    assert rejected.failed_checks == ["boot.live"]
    assert "boot.live: no 'IMGLINE-PAYLOAD-READY'" in rejected.reason
    assert refused.reason.startswith("the image is not the one tested: ")
    assert "truncated" in refused.reason
    for version in ("20261123.2", "20261123.3"):
        assert not (root / "images" / "node" / version).exists()

    assert published.key_id == key.key_id
    assert (published.name, published.version, published.stream) == ("node", "20261123.1", "stable")
    assert again.manifest_sha256 == published.manifest_sha256
    # what a host does: fetch over HTTP and verify everything with the pinned key
    trusted = {key.key_id: key.public_key}
    index_url = repo.join_url(base_url, repo.index_path("stable"))
    index = repo.verify_index(fetch(index_url), fetch(index_url + ".sig"), trusted, "stable")
    assert [(e.version, e.build_id) for e in index.releases] == [("20261123.1", good.build_id)]
    assert index.generation == 1  # the redelivery added nothing
    manifest_bytes = fetch(published.manifest_url)
    assert hashlib.sha256(manifest_bytes).hexdigest() == published.manifest_sha256
    manifest = repo.verify_manifest(manifest_bytes, fetch(published.manifest_url + ".sig"), trusted)
    image = tmp_path / "downloaded.img"
    image.write_bytes(fetch(published.image_url))
    verify_digest(image, manifest.image.sha256, manifest.image.size, "image")
    assert published.image_sha256 == good.image.artifact.sha256
    install_ks = fetch(repo.join_url(base_url, repo.install_ks_path("node", "20261123.1"))).decode()
    assert f"liveimg --url={published.image_url} --checksum={published.image_sha256}" in install_ks
    assert json.loads(manifest_bytes)["tests"]["passed"] is True
