"""The publisher's handler against fakes of the repository and the tester's verdicts: what it
emits for every kind of image.tested, honest or not (in the spirit of fedora-messaging's
``mock_sends``)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from fedora_messaging import message as fm_message
from prometheus_client import CollectorRegistry

from imgline.core.bus.stage import StageHandler
from imgline.core.errors import TransientError
from imgline.core.trust import layout
from imgline.publisher.adapters.repo import Published
from imgline.publisher.errors import IntegrityError, ReleaseError, RepositoryError, RetiredError
from imgline.publisher.handlers import PublishMetrics, PublishStage
from imgline.publisher.settings import PublisherConfig
from imgline.schemas import payloads as p
from imgline.schemas.messages import ImagePublishedV1, ImageRejectedV1, ImageTestedV1

pytestmark = pytest.mark.unit

SHA = hashlib.sha256(b"image").hexdigest()


def image_tested(
    *, passed: bool = True, uri: str = "file:///store/x", build: str = "b1"
) -> p.ImageTested:
    ref = p.ImageRef(
        build_id=hashlib.sha256(build.encode()).hexdigest(),
        name="node",
        version="20261202.1",
        stream="stable",
        artifact=p.Artifact(uri=uri, sha256=SHA, size=5),
        source_commit="1" * 40,
    )
    results = [
        p.TestResult(name="integrity.sha256", status="passed", duration_seconds=0.1),
        p.TestResult(name="content.image_json", status="passed", duration_seconds=0.1),
        p.TestResult(
            name="boot.live",
            status="passed" if passed else "failed",
            duration_seconds=60,
            detail="" if passed else "no marker",
        ),
    ]
    return p.ImageTested(build_id=ref.build_id, image=ref, passed=passed, results=results)


class FakeReleases:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.published: list[tuple[str, Path]] = []

    def publish(self, t: p.ImageTested, image_file: Path) -> Published:
        if self.error is not None:
            raise self.error
        self.published.append((t.build_id, image_file))
        manifest = layout.Manifest.model_construct(
            name=t.image.name, version=t.image.version, stream=t.image.stream
        )
        return Published(manifest, "a" * 64, "stream-stable", ["k" * 64], 3, 4, 5, new=True)

    def announce(self, build_id: str, done: Published) -> p.ImagePublished:
        m = done.manifest
        return p.ImagePublished(
            build_id=build_id,
            name=m.name,
            version=m.version,
            stream=m.stream,
            manifest_url="http://repo.example/targets/m.json",
            manifest_sha256=done.manifest_sha256,
            image_url="http://repo.example/targets/i.img",
            image_sha256=SHA,
            image_size=5,
            key_id="k" * 16,
            role_version=done.role_version,
        )


class FakeVerdicts:
    def __init__(self, stored: p.ImageTested | None, image: Path | None) -> None:
        self.stored = stored
        self.stored_image = image

    def verdict(self, build_id: str, sha256: str) -> p.ImageTested | None:
        s = self.stored
        if s is not None and (s.build_id, s.image.artifact.sha256) == (build_id, sha256):
            return s
        return None

    def image(self, sha256: str) -> Path | None:
        return self.stored_image if sha256 == SHA else None


def run(
    tmp: Path,
    claimed: p.ImageTested,
    stored: p.ImageTested | None,
    releases: FakeReleases | None = None,
    image: Path | None = Path("/store/objects/x"),
) -> tuple[list[fm_message.Message], FakeReleases]:
    releases = releases or FakeReleases()
    sent: list[fm_message.Message] = []
    stage = PublishStage(
        PublisherConfig(work_dir=tmp / "work", store_dir=tmp / "store"),
        releases,
        FakeVerdicts(stored, image),
        topic_prefix="imgline",
        metrics=PublishMetrics(CollectorRegistry()),
    )
    handler = StageHandler(
        stage, work_dir=tmp / "work", lock_dir=tmp / "locks", publish=sent.append
    )
    handler(ImageTestedV1.from_payload(claimed))
    return sent, releases


def only(sent: list[fm_message.Message], cls: type[Any]) -> Any:
    assert [type(m) for m in sent] == [cls], sent
    return sent[0].payload


def test_a_passed_and_stored_verdict_is_published_from_the_store(tmp_path: Path) -> None:
    t = image_tested()
    sent, releases = run(tmp_path, t, t)
    event = only(sent, ImagePublishedV1)
    assert (event.build_id, event.version) == (t.build_id, "20261202.1")
    assert sent[0].topic == "imgline.image.published.stable"
    assert releases.published == [(t.build_id, Path("/store/objects/x"))]


def test_a_pass_nobody_stored_is_rejected(tmp_path: Path) -> None:
    sent, releases = run(tmp_path, image_tested(), None)
    assert "the tester stored no verdict" in only(sent, ImageRejectedV1).reason
    assert releases.published == []


def test_the_stored_verdict_wins_over_the_message(tmp_path: Path) -> None:
    claimed = image_tested(passed=True)
    sent, releases = run(tmp_path, claimed, image_tested(passed=False))
    rejected = only(sent, ImageRejectedV1)
    assert rejected.failed_checks == ["boot.live"]
    assert "no marker" in rejected.reason
    assert releases.published == []


def test_a_pass_without_the_identity_check_is_rejected(tmp_path: Path) -> None:
    """Only the tester's content.image_json shows the bytes are the build the message names:
    without it passed, the name, version and stream are not signed."""
    t = image_tested()
    unchecked = t.model_copy(
        update={"results": [r for r in t.results if r.name != "content.image_json"]}
    )
    sent, releases = run(tmp_path, unchecked, unchecked)
    assert "no passed content.image_json" in only(sent, ImageRejectedV1).reason
    assert releases.published == []


def test_a_claimed_failure_is_rejected_even_without_a_stored_verdict(tmp_path: Path) -> None:
    sent, _ = run(tmp_path, image_tested(passed=False), None)
    assert only(sent, ImageRejectedV1).failed_checks == ["boot.live"]


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (IntegrityError("the image is not the one tested: truncated"), "not the one tested"),
        (ReleaseError("node-20261202.1 was published from build x: never reused"), "never reused"),
    ],
)
def test_release_errors_are_rejections_not_retries(
    tmp_path: Path, error: Exception, reason: str
) -> None:
    t = image_tested()
    sent, _ = run(tmp_path, t, t, FakeReleases(error))
    assert reason in only(sent, ImageRejectedV1).reason


def test_a_damaged_repository_is_retried_and_nothing_is_announced(tmp_path: Path) -> None:
    t = image_tested()
    with pytest.raises(TransientError, match="does not verify"):
        run(tmp_path, t, t, FakeReleases(RepositoryError("the repository does not verify")))


def test_a_retired_release_announces_nothing(tmp_path: Path) -> None:
    t = image_tested()
    sent, _ = run(tmp_path, t, t, FakeReleases(RetiredError("left its stream")))
    assert sent == []


def test_an_image_outside_the_store_is_never_fetched(tmp_path: Path) -> None:
    t = image_tested(uri="file:///etc/shadow")
    sent, releases = run(tmp_path, t, t, image=None)
    assert "outside the artifact store" in only(sent, ImageRejectedV1).reason
    assert releases.published == []
