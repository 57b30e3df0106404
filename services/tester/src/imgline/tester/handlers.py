"""``image.built`` → checks, cheapest first → JUnit report → ``image.tested``.

An image that fails its checks is a normal outcome (``image.tested`` with ``passed: false``);
only trouble that may pass (the artefact could not be downloaded) is retried.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from fedora_messaging import message as fm_message
from prometheus_client import CollectorRegistry, Counter, Histogram

from imgline.core import verdicts
from imgline.core.artifacts import LocalArtifactStore
from imgline.core.fetch import local_path
from imgline.core.fsutil import remove_tree
from imgline.schemas import payloads as p
from imgline.schemas.messages import ImageBuiltV1, ImageTestedV1
from imgline.tester.adapters.boot import boot_check
from imgline.tester.adapters.image import run_sanity
from imgline.tester.domain.junit import to_junit_xml
from imgline.tester.domain.plan import TestPlanFile, resolve
from imgline.tester.domain.results import CheckResult, skipped, verdict
from imgline.tester.settings import TesterConfig

log = logging.getLogger(__name__)

REPORTS = "reports"  # records: <key>.xml, <key>.log, <key>.<attachment>; key: verdicts.key
DETAIL_LIMIT = 4000


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


class TestHandler:
    """Tests one image at a time (the queue's prefetch is 1: boots are heavy)."""

    __test__ = False

    def __init__(
        self,
        config: TesterConfig,
        store: LocalArtifactStore,
        plan: TestPlanFile,
        *,
        publish: Callable[[fm_message.Message], None],
        topic_prefix: str,
        metrics: TestMetrics,
    ) -> None:
        self.config = config
        self.store = store
        self.plan = plan
        self.publish = publish
        self.prefix = topic_prefix
        self.metrics = metrics

    def __call__(self, msg: ImageBuiltV1) -> None:
        built: p.ImageBuilt = msg.payload
        tested = verdicts.read(self.store, built.build_id, built.artifact.sha256)
        if tested is not None:
            log.info("build_id=%s already tested: publishing image.tested again", built.build_id)
            self.publish(ImageTestedV1.from_payload(tested, self.prefix))
            return
        workdir = self.config.work_dir / built.build_id
        remove_tree(workdir)
        workdir.mkdir(parents=True, mode=0o700)
        try:
            tested = self._test(built, workdir)
        finally:
            if not self.config.keep_workdir:
                remove_tree(workdir)
        verdicts.write(self.store, tested)
        self.publish(ImageTestedV1.from_payload(tested, self.prefix))
        self.metrics.images.labels("passed" if tested.passed else "failed").inc()
        log.info(
            "build_id=%s %s-%s %s: %s",
            built.build_id,
            built.name,
            built.version,
            "passed" if tested.passed else "FAILED",
            ", ".join(f"{r.name}={r.status}" for r in tested.results),
        )

    def _test(self, built: p.ImageBuilt, workdir: Path) -> p.ImageTested:
        expectations = resolve(self.plan, built.name, built.stream)
        log_path = workdir / "test.log"
        with log_path.open("w", encoding="utf-8") as test_log:
            test_log.write(f"# imgline tests of {built.name}-{built.version} ({built.build_id})\n")
            image = local_path(
                built.artifact.uri,
                workdir,
                self.config.artifact_sources(),
                size=built.artifact.size,
                deadline_seconds=self.config.download_deadline_seconds,
            )
            boot_dir = workdir / "boot"
            results, meta = run_sanity(
                image, built.ref(), expectations, workdir, test_log, boot_dir=boot_dir
            )
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
                    test_log,
                    expected=built.ref(),
                    units=expectations.services,
                    boot_dir=boot_dir,
                    accel=self.config.accel,
                )
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
