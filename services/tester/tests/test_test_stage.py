"""The tester's handler with fake checks: what it emits and stores for each outcome, in the
spirit of fedora-messaging's ``mock_sends``. The real checks are the image and vm tiers'."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import IO

import pytest
from fedora_messaging import message as fm_message
from prometheus_client import CollectorRegistry

from imgline.core import verdicts
from imgline.core.artifacts import LocalArtifactStore
from imgline.core.bus.stage import StageHandler
from imgline.core.errors import TransientError
from imgline.core.runner import CommandError
from imgline.schemas import payloads as p
from imgline.schemas.messages import ImageBuiltV1, ImageTestedV1
from imgline.tester.domain.plan import Expectations, default_plan
from imgline.tester.domain.results import CheckResult
from imgline.tester.handlers import TestMetrics, TestStage
from imgline.tester.settings import TesterConfig

pytestmark = pytest.mark.unit


class FakeChecks:
    def __init__(self, results: list[CheckResult] | Exception) -> None:
        self.results = results
        self.seen: list[Path] = []

    def run(
        self,
        image: Path,
        built: p.ImageBuilt,
        expectations: Expectations,
        workdir: Path,
        log: IO[str],
    ) -> list[CheckResult]:
        self.seen.append(image)
        log.write("fake checks ran\n")
        if isinstance(self.results, Exception):
            raise self.results
        return self.results


PASSED = [CheckResult(name="integrity.sha256", status="passed", duration_seconds=0.1)]
FAILED = [
    *PASSED,
    CheckResult(name="boot.live", status="failed", duration_seconds=9, detail="no marker"),
]


class Lab:
    def __init__(self, tmp: Path, checks: FakeChecks) -> None:
        self.store = LocalArtifactStore(tmp / "store")
        self.checks = checks
        self.sent: list[fm_message.Message] = []
        config = TesterConfig(store_dir=self.store.root, work_dir=tmp / "work")
        stage = TestStage(
            config,
            self.store,
            default_plan(),
            checks,
            topic_prefix="imgline",
            metrics=TestMetrics(CollectorRegistry()),
        )
        self.handler = StageHandler(
            stage, work_dir=config.work_dir, lock_dir=tmp / "locks", publish=self.sent.append
        )

    def built(self, data: bytes = b"image bytes", uri: str | None = None) -> p.ImageBuilt:
        art = self.store.put_bytes(data)
        return p.ImageBuilt(
            build_id=hashlib.sha256(b"build").hexdigest(),
            request_id="r1",
            name="node",
            version="20261202.1",
            stream="stable",
            artifact=p.Artifact(uri=uri or art.uri, sha256=art.sha256, size=art.size),
            source_commit="1" * 40,
            kickstart_sha256="ab" * 32,
            backend="mmdebstrap",
            duration_seconds=1.0,
        )

    def test(self, built: p.ImageBuilt) -> p.ImageTested:
        self.handler(ImageBuiltV1.from_payload(built))
        assert isinstance(self.sent[-1], ImageTestedV1)
        assert self.sent[-1].topic == "imgline.image.tested"
        tested: p.ImageTested = self.sent[-1].payload
        return tested


def test_a_verdict_is_stored_under_build_and_bytes_and_replayed(tmp_path: Path) -> None:
    lab = Lab(tmp_path, FakeChecks(PASSED))
    built = lab.built()
    first = lab.test(built)
    assert first.passed and first.report_url is not None
    assert lab.checks.seen == [lab.store.path_for(built.artifact.sha256)]
    assert verdicts.read(lab.store, built.build_id, built.artifact.sha256) == first
    key = verdicts.key(built.build_id, built.artifact.sha256)
    assert lab.store.read_record("reports", f"{key}.log") == (
        f"# imgline tests of node-20261202.1 ({built.build_id})\nfake checks ran\n".encode()
    )
    assert lab.test(built) == first  # a redelivery: announced again, not re-run
    assert len(lab.checks.seen) == 1


def test_a_failed_check_is_a_failed_verdict(tmp_path: Path) -> None:
    lab = Lab(tmp_path, FakeChecks(FAILED))
    tested = lab.test(lab.built())
    assert not tested.passed
    assert [(r.name, r.status) for r in tested.results] == [
        ("integrity.sha256", "passed"),
        ("boot.live", "failed"),
    ]


def test_a_permanent_error_is_a_failed_image_tested_that_is_not_stored(tmp_path: Path) -> None:
    lab = Lab(tmp_path, FakeChecks(CommandError("unsquashfs is not installed")))
    built = lab.built()
    tested = lab.test(built)
    assert not tested.passed
    assert [(r.name, r.status, r.detail) for r in tested.results] == [
        ("tester.error", "error", "unsquashfs is not installed")
    ]
    assert verdicts.read(lab.store, built.build_id, built.artifact.sha256) is None


def test_an_artefact_outside_the_store_is_not_read(tmp_path: Path) -> None:
    lab = Lab(tmp_path, FakeChecks(PASSED))
    tested = lab.test(lab.built(uri="file:///etc/passwd"))
    assert "outside the artifact store" in tested.results[0].detail
    assert lab.checks.seen == []


def test_a_transient_error_is_retried_with_nothing_sent(tmp_path: Path) -> None:
    lab = Lab(tmp_path, FakeChecks(TransientError("qemu could not start: try again")))
    with pytest.raises(TransientError):
        lab.handler(ImageBuiltV1.from_payload(lab.built()))
    assert lab.sent == []
