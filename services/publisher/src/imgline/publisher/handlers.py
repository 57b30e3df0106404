"""``image.tested`` → the signed repository → ``image.published`` (or ``image.rejected``).

Only an image that passed every check and whose bytes still match the tested checksum gets in;
everything else is rejected with the reason, and nothing of it reaches the repository. The
message only says which verdict to look at: what is published is decided by the verdict the
tester stored for exactly those bytes (docs/security.md).
"""

from __future__ import annotations

import logging
from pathlib import Path

from fedora_messaging import message as fm_message
from prometheus_client import CollectorRegistry, Counter, Gauge

from imgline.core import verdicts
from imgline.core.artifacts import LocalArtifactStore
from imgline.core.errors import PermanentError
from imgline.publisher.domain import release
from imgline.publisher.errors import IntegrityError, RetiredError
from imgline.publisher.ports import Releases, Verdicts
from imgline.publisher.settings import PublisherConfig
from imgline.schemas import payloads as p
from imgline.schemas.messages import ImagePublishedV1, ImageRejectedV1

log = logging.getLogger(__name__)

#: The tester's check that the image's own image.json names the build the message names: the
#: publisher signs a name, version and stream only when this check passed.
IDENTITY_CHECK = "content.image_json"


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


class StoreVerdicts:
    """``Verdicts`` from the artifact store the tester writes to."""

    def __init__(self, store: LocalArtifactStore) -> None:
        self.store = store

    def verdict(self, build_id: str, sha256: str) -> p.ImageTested | None:
        return verdicts.read(self.store, build_id, sha256)

    def image(self, sha256: str) -> Path | None:
        return self.store.path_for(sha256) if self.store.exists(sha256) else None


class PublishStage:
    """One ``image.tested`` → a release and ``image.published``, or ``image.rejected``.

    The repository's own state makes publishing idempotent (a redelivery finds the release
    and announces it again), so there is nothing to replay from a record."""

    def __init__(
        self,
        config: PublisherConfig,
        releases: Releases,
        tested_by: Verdicts,
        *,
        topic_prefix: str,
        metrics: PublishMetrics,
    ) -> None:
        self.config = config
        self.releases = releases
        self.tested_by = tested_by
        self.prefix = topic_prefix
        self.metrics = metrics

    def resolve(self, payload: p.ImageTested) -> p.ImageTested:
        return payload  # the verdict it names is read from the store in run()

    def key(self, payload: p.ImageTested) -> str:
        return verdicts.key(payload.build_id, payload.image.artifact.sha256)

    def replay(self, payload: p.ImageTested) -> fm_message.Message | None:
        return None

    def run(self, payload: p.ImageTested, workdir: Path) -> fm_message.Message | None:
        tested = self._verdict(payload)
        if not tested.passed:
            return self._reject(tested, release.rejection_reason(tested), "tests")
        if not any(r.name == IDENTITY_CHECK and r.status == "passed" for r in tested.results):
            return self._reject(
                tested,
                f"the verdict has no passed {IDENTITY_CHECK}: nothing showed that the image is "
                "the build it claims to be (name, version, stream, build id); enable the check "
                "in the test plan",
                "identity",
            )
        img = tested.image
        image_file = self._image(img, workdir)
        try:
            done = self.releases.publish(tested, image_file)
        except IntegrityError as exc:  # the artefact changed since it was tested
            return self._reject(tested, str(exc), "integrity")
        except RetiredError as exc:  # a very late redelivery: nothing left to announce
            log.warning("build_id=%s %s", tested.build_id, exc)
            return None
        event = self.releases.announce(tested.build_id, done)
        if done.new:
            self.metrics.published.labels(img.stream).inc()
        self.metrics.role_version.labels(img.stream).set(done.role_version)
        return ImagePublishedV1.from_payload(event, self.prefix)

    def failed(
        self, payload: p.ImageTested, error: PermanentError, workdir: Path
    ) -> fm_message.Message:
        return self._reject(payload, str(error), "error")

    def _verdict(self, claimed: p.ImageTested) -> p.ImageTested:
        """The tester's stored verdict for these bytes; the message only names it. A failure
        may be taken at its word (rejecting is always safe); a pass needs the stored verdict."""
        art = claimed.image.artifact
        stored = self.tested_by.verdict(claimed.build_id, art.sha256)
        if stored is None:
            if not claimed.passed:
                return claimed
            raise PermanentError(
                f"the tester stored no verdict for build {claimed.build_id} with sha256 "
                f"{art.sha256}: only images it tested are published"
            )
        if stored.model_dump(exclude={"emitted_at"}) != claimed.model_dump(exclude={"emitted_at"}):
            log.warning(
                "build_id=%s the message differs from the tester's stored verdict; acting on "
                "the stored one (passed=%s)",
                stored.build_id,
                stored.passed,
            )
        return stored

    def _image(self, img: p.ImageRef, workdir: Path) -> Path:
        """The tested bytes: from the store by digest, else from the URI within the limits.
        Either way the repository checks the digest again before signing anything."""
        stored = self.tested_by.image(img.artifact.sha256)
        if stored is not None:
            return stored
        return self.config.fetch(img.artifact, workdir)

    def _reject(self, tested: p.ImageTested, reason: str, kind: str) -> fm_message.Message:
        log.warning("build_id=%s rejected: %s", tested.build_id, reason)
        event = p.ImageRejected(
            build_id=tested.build_id,
            image=tested.image,
            reason=reason[:8000],
            failed_checks=[r.name for r in tested.results if r.status in ("failed", "error")],
        )
        self.metrics.rejected.labels(tested.image.stream, kind).inc()
        return ImageRejectedV1.from_payload(event, self.prefix)
