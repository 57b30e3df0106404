"""Fault drill: an artefact whose bytes change in the store, with the real tester and publisher
processes chained as in the pipeline (each answer of the tester is what the publisher gets).

Bytes change on disk (a bad sector, an operator's mistake, an intruder on the store host):
after ``image.built`` and before the tester reads them, or after ``image.tested`` and before
the publisher signs them. Either way the changed bytes must never reach the repository, and
the reason must be said in an event; an operator who restores the bytes gets the release
published, once. Small real liveimgs (tests/sampleimages.py) with the boot check disabled by
the test plan, so each test run takes well under a second.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from bushelpers import ServiceProcess, service_process
from fedora_messaging import message as fm_message
from sampleimages import Images
from tufrepo import client, publisher_config

from imgline.core.artifacts import LocalArtifactStore
from imgline.core.trust.errors import TrustError
from imgline.core.trust.keys import KeyDir
from imgline.core.trust.repository import TufRepository
from imgline.publisher import http
from imgline.schemas import payloads as p
from imgline.schemas.messages import (
    ImageBuiltV1,
    ImagePublishedV1,
    ImageRejectedV1,
    ImageTestedV1,
)

pytestmark = pytest.mark.image

PLAN = """
[defaults]
packages = ["systemd", "python3 >= 3.11"]
services = ["ssh"]
[defaults.boot]
enabled = false
"""


def built(ref: p.ImageRef) -> fm_message.Message:
    return ImageBuiltV1.from_payload(
        p.ImageBuilt(
            **ref.model_dump(),
            request_id="drill",
            kickstart_sha256="ab" * 32,
            backend="mmdebstrap",
            duration_seconds=1.0,
        )
    )


def stored_images(
    where: Path, store: LocalArtifactStore, versions: tuple[str, ...]
) -> list[p.ImageRef]:
    """Real liveimgs of ``versions`` in ``store``, as the builder leaves them."""
    images = Images(where)
    refs = []
    for version in versions:
        ref = images.build(version=version).model_copy(update={"version": version})
        art = store.put_file(Path(ref.artifact.uri.removeprefix("file://")))
        artifact = ref.artifact.model_copy(update={"uri": art.uri})
        refs.append(ref.model_copy(update={"artifact": artifact}))
    return refs


def nothing_pending(svc: ServiceProcess) -> bool:
    """No event left untaken and no dead letter."""
    watch = svc.channel.queue_declare(svc.watch, passive=True).method.message_count
    dead = svc.channel.queue_declare(svc.dlq, passive=True).method.message_count
    return (watch, dead) == (0, 0)


def flip_a_byte(path: Path) -> bytes:
    """Change one byte in the middle of ``path`` in place (same size); the original bytes."""
    original = path.read_bytes()
    path.chmod(0o644)  # objects are read-only: whoever changes them has to mean it
    with path.open("r+b") as f:
        f.seek(len(original) // 2)
        f.write(bytes([original[len(original) // 2] ^ 0xFF]))
    return original


def test_changed_bytes_are_failed_or_rejected_and_never_signed(
    amqp_url: str, tmp_path: Path
) -> None:
    """Expected: (1) bytes changed after image.built: the tester's ``image.tested`` fails
    integrity.sha256, and the publisher, given that answer, sends ``image.rejected`` naming the
    check; (2) bytes changed after a passing ``image.tested``: the publisher sends
    ``image.rejected`` saying the image is not the one tested; neither reaches the
    repository, which a host still verifies (its stream has no release); (3) the bytes
    restored, the same passing ``image.tested`` is published exactly once, and a host
    downloads exactly the tested bytes.
    """
    store = LocalArtifactStore(tmp_path / "store")
    refs = stored_images(tmp_path / "images", store, ("20261206.1", "20261206.2"))
    plan = tmp_path / "plan.toml"
    plan.write_text(PLAN)
    repo = TufRepository.init(
        tmp_path / "repo", KeyDir(tmp_path / "keys"), KeyDir(tmp_path / "root-keys")
    )
    pinned = repo.root_bytes()
    with (
        http.running(repo.root_dir) as server,
        service_process(
            "tester",
            amqp_url,
            tmp_path,
            consumes=("image.built",),
            emits=("image.tested",),
            consumer_config={
                "store_dir": str(store.root),
                "work_dir": str(tmp_path / "tester-work"),
                "plan_file": str(plan),
            },
        ) as tester,
        service_process(
            "publisher",
            amqp_url,
            tmp_path,
            consumes=("image.tested",),
            emits=(ImagePublishedV1.binding(), "image.rejected"),
            consumer_config=publisher_config(
                repo, store.root, tmp_path / "publisher-work", server.url
            ),
        ) as publisher,
    ):

        def to_publisher(answer: dict[str, Any]) -> dict[str, Any]:
            publisher.publish(
                ImageTestedV1(body=answer, topic=f"imgline.{ImageTestedV1.topic_suffix}")
            )
            return publisher.wait_event(60)

        # (1) changed between image.built and the tester
        flip_a_byte(store.path_for(refs[0].artifact.sha256))
        tester.publish(built(refs[0]))
        failed_answer = tester.wait_event(120)
        failed = ImageTestedV1(body=failed_answer, topic="x").payload
        rejected_untested = ImageRejectedV1(body=to_publisher(failed_answer), topic="x").payload

        # (2) changed between a passing image.tested and the publisher
        tester.publish(built(refs[1]))
        passed_answer = tester.wait_event(120)
        passed = ImageTestedV1(body=passed_answer, topic="x").payload
        original = flip_a_byte(store.path_for(refs[1].artifact.sha256))
        rejected_changed = ImageRejectedV1(body=to_publisher(passed_answer), topic="x").payload
        with pytest.raises(TrustError) as nothing_listed:  # verified, and no release in it
            client(server.url, tmp_path / "host", pinned).releases("stable")
        nothing_placed = not (repo.targets_dir / "stable").exists()

        # (3) the operator restores the bytes and sends the verdict again
        path = store.path_for(refs[1].artifact.sha256)
        path.write_bytes(original)
        path.chmod(0o444)
        published = ImagePublishedV1(body=to_publisher(passed_answer), topic="x").payload
        for svc in (tester, publisher):
            assert nothing_pending(svc), "an event or a dead letter too many"

        host = client(server.url, tmp_path / "host2", pinned)
        latest = host.latest("stable", "node")
        assert latest is not None
        downloaded = host.download(latest.image, tmp_path / "downloaded.img").read_bytes()

    assert not failed.passed
    integrity = {r.name: r for r in failed.results if r.name.startswith("integrity.")}
    assert integrity["integrity.sha256"].status == "failed", failed.results
    assert rejected_untested.build_id == failed.build_id
    assert "integrity.sha256" in rejected_untested.failed_checks
    assert "integrity.sha256" in rejected_untested.reason

    assert passed.passed, passed.results
    assert rejected_changed.reason.startswith("the image is not the one tested: ")
    assert nothing_listed.value.reason == "not_found"
    assert nothing_placed  # no file of either release was linked or copied into targets/
    assert published.version == "20261206.2"
    assert published.role_version == 1  # signed once: nothing before it was
    assert downloaded == original
    assert published.image_sha256 == refs[1].artifact.sha256
    assert os.path.getsize(tmp_path / "downloaded.img") == refs[1].artifact.size
