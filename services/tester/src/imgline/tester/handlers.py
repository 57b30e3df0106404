"""``image.built`` → checks, cheapest first → JUnit report → ``image.tested``.

An image that fails its checks is a normal outcome (``image.tested`` with ``passed: false``).
So is a message whose artefact cannot be read (outside the store, missing): a failed
``image.tested`` naming the error. Only trouble that may pass (a download that timed out) is
retried. The verdict is stored under the build and the bytes tested (``imgline.core.verdicts``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import IO

from fedora_messaging import message as fm_message
from prometheus_client import CollectorRegistry, Counter, Histogram

from imgline.core import verdicts
from imgline.core.artifacts import LocalArtifactStore
from imgline.core.errors import PermanentError
from imgline.schemas import payloads as p
from imgline.schemas.messages import ImageTestedV1
from imgline.tester.adapters.boot import boot_check
from imgline.tester.adapters.image import run_sanity
from imgline.tester.domain.junit import to_junit_xml
from imgline.tester.domain.plan import Expectations, TestPlanFile, resolve
from imgline.tester.domain.results import CheckResult, skipped, verdict
from imgline.tester.ports import Checks
from imgline.tester.settings import TesterConfig

log = logging.getLogger(__name__)

REPORTS = "reports"  # records: <key>.xml, <key>.log, <key>.<attachment>; key: verdicts.key
DETAIL_LIMIT = 4000
#: The result a permanent error (an artefact that cannot be read) is reported as.
TESTER_ERROR = "tester.error"


class TestMetrics:
    """Dashboard view of testing: verdicts, and how long each check takes."""

    __test__ = False  # not a pytest class

    def __init__(self, registry: CollectorRegistry) -> None:
        self.images = Counter(
            "imgline_images_tested", "Images tested, by verdict", ["verdict"], registry=registry
        )
        self.checks = Counter(
            "imgline_checks", "Check results", ["check", "status"], registry=registry
        )
        self.check_seconds = Histogram(
            "imgline_check_seconds",
            "Duration of each check",
            ["check"],
            buckets=(0.1, 0.5, 1, 5, 15, 60, 180, 600),
            registry=registry,
        )


class ImageChecks:
    """The real ``Checks``: integrity and content with the image tools, then the live boot."""

    def __init__(self, config: TesterConfig) -> None:
        self.config = config

    def run(
        self,
        image: Path,
        built: p.ImageBuilt,
        expectations: Expectations,
        workdir: Path,
        log: IO[str],
    ) -> list[CheckResult]:
        boot_dir, ref = workdir / "boot", built.ref()
        results, meta = run_sanity(image, ref, expectations, workdir, log, boot_dir=boot_dir)
        boot = expectations.boot
        if not boot.enabled:
            results.append(skipped("boot.live", "boot check disabled by the test plan"))
        elif any(r.name.startswith("integrity.") and not r.ok for r in results):
            results.append(skipped("boot.live", "image integrity failed: nothing to boot"))
        else:
            results += boot_check(
                image,
                meta or {},
                boot,
                workdir,
                log,
                expected=ref,
                units=expectations.services,
                boot_dir=boot_dir,
                accel=self.config.accel,
            )
        return results


class TestStage:
    """One ``image.built`` → checks → a stored verdict, reports and ``image.tested``. Tests one
    image at a time (the queue's prefetch is 1: boots are heavy)."""

    __test__ = False  # not a pytest class

    def __init__(
        self,
        config: TesterConfig,
        store: LocalArtifactStore,
        plan: TestPlanFile,
        checks: Checks,
        *,
        topic_prefix: str,
        metrics: TestMetrics,
    ) -> None:
        self.config = config
        self.store = store
        self.plan = plan
        self.checks = checks
        self.prefix = topic_prefix
        self.metrics = metrics

    def resolve(self, payload: p.ImageBuilt) -> p.ImageBuilt:
        return payload  # an image.built names its bytes completely

    def key(self, payload: p.ImageBuilt) -> str:
        return verdicts.key(payload.build_id, payload.artifact.sha256)

    def replay(self, payload: p.ImageBuilt) -> fm_message.Message | None:
        tested = verdicts.read(self.store, payload.build_id, payload.artifact.sha256)
        return None if tested is None else ImageTestedV1.from_payload(tested, self.prefix)

    def run(self, payload: p.ImageBuilt, workdir: Path) -> fm_message.Message:
        built = payload
        tested = self._test(built, workdir)
        verdicts.write(self.store, tested)
        self.metrics.images.labels("passed" if tested.passed else "failed").inc()
        log.info(
            "build_id=%s %s-%s %s: %s",
            built.build_id,
            built.name,
            built.version,
            "passed" if tested.passed else "FAILED",
            ", ".join(f"{r.name}={r.status}" for r in tested.results),
        )
        return ImageTestedV1.from_payload(tested, self.prefix)

    def failed(
        self, payload: p.ImageBuilt, error: PermanentError, workdir: Path
    ) -> fm_message.Message:
        """A failed ``image.tested`` naming the error. Not stored as the verdict: it is about
        this message (an artefact that cannot be read), not about the image's bytes."""
        self.metrics.images.labels("error").inc()
        tested = p.ImageTested(
            build_id=payload.build_id,
            image=payload.ref(),
            passed=False,
            results=[
                p.TestResult(
                    name=TESTER_ERROR,
                    status="error",
                    duration_seconds=0.0,
                    detail=str(error)[:DETAIL_LIMIT],
                )
            ],
        )
        return ImageTestedV1.from_payload(tested, self.prefix)

    def _test(self, built: p.ImageBuilt, workdir: Path) -> p.ImageTested:
        expectations = resolve(self.plan, built.name, built.stream)
        log_path = workdir / "test.log"
        with log_path.open("w", encoding="utf-8") as test_log:
            test_log.write(f"# imgline tests of {built.name}-{built.version} ({built.build_id})\n")
            image = self.config.fetch(built.artifact, workdir)
            results = self.checks.run(image, built, expectations, workdir, test_log)
        for r in results:
            self.metrics.checks.labels(r.name, r.status).inc()
            self.metrics.check_seconds.labels(r.name).observe(r.duration_seconds)
        report_url = self._store_report(built, results, log_path)
        return p.ImageTested(
            build_id=built.build_id,
            image=built.ref(),
            passed=verdict(results),
            results=[
                p.TestResult(
                    name=r.name,
                    status=r.status,
                    duration_seconds=round(r.duration_seconds, 3),
                    detail=r.detail[:DETAIL_LIMIT],
                )
                for r in results
            ],
            report_url=report_url,
        )

    def _store_report(self, built: p.ImageBuilt, results: list[CheckResult], log_path: Path) -> str:
        """JUnit XML, the test log and every attachment, stored beside the artefact."""
        key = verdicts.key(built.build_id, built.artifact.sha256)
        for r in results:
            for att in r.attachments:
                if att.is_file():
                    self.store.write_record(REPORTS, f"{key}.{att.name}", att.read_bytes())
        self.store.write_record(REPORTS, f"{key}.log", log_path.read_bytes())
        xml = to_junit_xml(
            f"imgline.{built.name}",
            results,
            {
                "build_id": built.build_id,
                "image": f"{built.name}-{built.version}",
                "stream": built.stream,
                "sha256": built.artifact.sha256,
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        )
        self.store.write_record(REPORTS, f"{key}.xml", xml.encode())
        return self.store.record_uri(REPORTS, f"{key}.xml")
