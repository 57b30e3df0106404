"""``image.tested`` → the signed repository → ``image.published`` (or ``image.rejected``).

Only an image that passed every check and whose bytes still match the tested checksum gets in;
everything else is rejected with the reason, and nothing of it reaches the repository. The
message only says which verdict to look at: what is published is decided by the verdict the
tester stored for exactly those bytes (docs/security.md).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from fedora_messaging import message as fm_message
from prometheus_client import CollectorRegistry, Counter, Gauge

from imgline.core import verdicts
from imgline.core.artifacts import LocalArtifactStore
from imgline.core.fetch import local_path
from imgline.publisher.adapters.repo import Repository, published_event
from imgline.publisher.domain import release
from imgline.publisher.errors import IntegrityError, RetiredError
from imgline.publisher.settings import PublisherConfig
from imgline.schemas import payloads as p
from imgline.schemas.messages import ImagePublishedV1, ImageRejectedV1, ImageTestedV1

log = logging.getLogger(__name__)


class PublishMetrics:
    """Dashboard view: releases published and rejected, and each stream role's version."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.published = Counter(
            "imgline_images_published", "Releases published", ["stream"], registry=registry
        )
        self.rejected = Counter(
            "imgline_images_rejected", "Images refused", ["stream", "reason"], registry=registry
        )
        self.role_version = Gauge(
            "imgline_stream_role_version",
            "Version of each stream's signed targets role",
            ["stream"],
            registry=registry,
        )


class PublishHandler:
    def __init__(
        self,
        config: PublisherConfig,
        repository: Repository,
        store: LocalArtifactStore,
        *,
        publish: Callable[[fm_message.Message], None],
        topic_prefix: str,
        metrics: PublishMetrics,
    ) -> None:
        self.config = config
        self.repo = repository
        self.store = store
        self.publish = publish
        self.prefix = topic_prefix
        self.metrics = metrics

    def __call__(self, msg: ImageTestedV1) -> None:
        claimed: p.ImageTested = msg.payload
        tested = verdicts.read(self.store, claimed.build_id, claimed.image.artifact.sha256)
        if tested is None:
            self._reject(
                claimed,
                f"the tester stored no verdict for build {claimed.build_id} with sha256 "
                f"{claimed.image.artifact.sha256}: only images it tested are published",
                "unverified",
            )
            return
        if tested.model_dump(exclude={"emitted_at"}) != claimed.model_dump(exclude={"emitted_at"}):
            log.warning(
                "build_id=%s the message differs from the tester's stored verdict; acting on "
                "the stored one (passed=%s)",
                tested.build_id,
                tested.passed,
            )
        img = tested.image
        if not tested.passed:
            self._reject(tested, release.rejection_reason(tested), "tests")
            return
        workdir = self.config.work_dir / tested.build_id
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            image_file = self._image(img, workdir)
            try:
                done = self.repo.publish(tested, image_file)
            except IntegrityError as exc:  # the artefact changed since it was tested
                self._reject(tested, str(exc), "integrity")
                return
            except RetiredError as exc:  # a very late redelivery: nothing left to announce
                log.warning("build_id=%s %s", tested.build_id, exc)
                return
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        event = published_event(self.repo, tested.build_id, done)
        self.publish(ImagePublishedV1.from_payload(event, self.prefix))
        if done.new:
            self.metrics.published.labels(img.stream).inc()
        self.metrics.role_version.labels(img.stream).set(done.role_version)

    def _image(self, img: p.ImageRef, workdir: Path) -> Path:
        """The tested bytes: from the store by digest, else from the URI within the limits.
        Either way the repository checks the digest again before signing anything."""
        if self.store.exists(img.artifact.sha256):
            return self.store.path_for(img.artifact.sha256)
        return local_path(
            img.artifact.uri,
            workdir,
            self.config.artifact_sources(),
            size=img.artifact.size,
            deadline_seconds=self.config.download_deadline_seconds,
        )

    def _reject(self, tested: p.ImageTested, reason: str, kind: str) -> None:
        log.warning("build_id=%s rejected: %s", tested.build_id, reason)
        event = p.ImageRejected(
            build_id=tested.build_id,
            image=tested.image,
            reason=reason,
            failed_checks=[r.name for r in tested.results if r.status in ("failed", "error")],
        )
        self.publish(ImageRejectedV1.from_payload(event, self.prefix))
        self.metrics.rejected.labels(tested.image.stream, kind).inc()
