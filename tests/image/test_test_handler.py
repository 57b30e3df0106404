"""The tester's handler end to end on real images, without the boot (that is the vm tier):
verdicts, the stored JUnit report and log, idempotency, metrics."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from fedora_messaging import message as fm_message
from prometheus_client import CollectorRegistry
from sampleimages import Images

from imgline.core.artifacts import LocalArtifactStore
from imgline.core.bus.stage import StageHandler
from imgline.schemas import payloads as p
from imgline.schemas.messages import ImageBuiltV1, ImageTestedV1
from imgline.tester.domain.plan import load_plan
from imgline.tester.handlers import ImageChecks, TestMetrics, TestStage
from imgline.tester.settings import TesterConfig

pytestmark = pytest.mark.image

PLAN = """
[defaults]
packages = ["systemd", "python3 >= 3.11"]
services = ["ssh"]
[defaults.boot]
enabled = false
[images.node.streams.stable]
packages = ["lvm2"]
"""


class Harness:
    def __init__(self, tmp: Path, plan: str = PLAN) -> None:
        self.sent: list[fm_message.Message] = []
        self.registry = CollectorRegistry()
        self.store = LocalArtifactStore(tmp / "reports")
        config = TesterConfig(store_dir=tmp / "reports", work_dir=tmp / "work")
        stage = TestStage(
            config,
            self.store,
            load_plan(plan),
            ImageChecks(config),
            topic_prefix="imgline",
            metrics=TestMetrics(self.registry),
        )
        self.handler = StageHandler(
            stage, work_dir=config.work_dir, lock_dir=tmp / "locks", publish=self.sent.append
        )

    def stored(self, ref: p.ImageRef) -> p.ImageRef:
        """The image as the builder leaves it: in the store the tester reads from."""
        art = self.store.put_file(Path(ref.artifact.uri.removeprefix("file://")))
        return ref.model_copy(update={"artifact": ref.artifact.model_copy(update={"uri": art.uri})})

    def test(self, ref: p.ImageRef) -> p.ImageTested:
        built = p.ImageBuilt(
            **ref.model_dump(),
            request_id="r1",
            kickstart_sha256="ab" * 32,
            backend="mmdebstrap",
            duration_seconds=1.0,
        )
        self.handler(ImageBuiltV1.from_payload(built))
        assert isinstance(self.sent[-1], ImageTestedV1)
        tested: p.ImageTested = self.sent[-1].payload
        return tested

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Images:
    return Images(tmp_path_factory.mktemp("images"))


def test_failed_image_gets_a_verdict_a_report_and_a_log(images: Images, tmp_path: Path) -> None:
    h = Harness(tmp_path)
    tested = h.test(h.stored(images.build()))
    assert tested.passed is False
    by_name = {r.name: r for r in tested.results}
    assert by_name["content.packages"].status == "failed"
    assert by_name["content.packages"].detail == "lvm2 is not installed"
    assert by_name["boot.live"].status == "skipped"
    assert by_name["integrity.sha256"].status == "passed"
    assert tested.report_url is not None and tested.report_url.endswith(".xml")
    xml = Path(tested.report_url.removeprefix("file://")).read_text()
    suite = ET.fromstring(xml).find("testsuite")  # noqa: S314 - our own output
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures")) == (str(len(tested.results)), "1")
    key = f"{tested.build_id}.{tested.image.artifact.sha256}"
    log = h.store.read_record("reports", f"{key}.log")
    assert log is not None and b"e2fsck -fn" in log
    assert h.metric("imgline_images_tested_total", verdict="failed") == 1
    assert h.metric("imgline_checks_total", check="content.packages", status="failed") == 1
    assert not any((tmp_path / "work").iterdir()), "work directory left behind"


def test_passing_image_and_redelivery_reuses_the_verdict(images: Images, tmp_path: Path) -> None:
    h = Harness(tmp_path, PLAN.replace('packages = ["lvm2"]', "packages = []"))
    ref = h.stored(images.build())
    first = h.test(ref)
    assert first.passed, first.results
    # a redelivered image.built: the same verdict is published again, nothing is re-run
    h.store.path_for(ref.artifact.sha256).unlink()  # a re-run would fail
    again = h.test(ref)
    assert again == first
    assert len(h.sent) == 2
    assert h.metric("imgline_images_tested_total", verdict="passed") == 1


def test_a_known_build_id_with_other_bytes_gets_its_own_verdict(
    images: Images, tmp_path: Path
) -> None:
    """A verdict belongs to the bytes tested: an image.built that reuses a tested build_id
    for other bytes neither gets that verdict nor replaces it."""
    h = Harness(tmp_path, PLAN.replace('packages = ["lvm2"]', "packages = []"))
    ref = h.stored(images.build())
    first = h.test(ref)
    assert first.passed, first.results
    other = h.store.put_bytes(b"not an image at all")
    forged = ref.model_copy(
        update={
            "artifact": p.Artifact(uri=other.uri, sha256=other.sha256, size=other.size),
        }
    )
    verdict = h.test(forged)
    assert not verdict.passed
    assert verdict.image.artifact.sha256 == other.sha256
    assert h.test(ref) == first  # the real image's verdict is untouched


@pytest.mark.parametrize(
    "where",
    ["file:///etc/passwd", "outside", "link", "file://elsewhere/img", "http://evil.example/i"],
)
def test_an_artifact_outside_the_store_is_never_read(
    images: Images, tmp_path: Path, where: str
) -> None:
    h = Harness(tmp_path)
    ref = images.build()  # outside the store, where the test images are made
    uri = ref.artifact.uri
    if where == "link":  # a symbolic link in the store that leads out of it
        h.store.root.mkdir(parents=True, exist_ok=True)
        link = h.store.root / "planted.img"
        link.symlink_to(Path(uri.removeprefix("file://")))
        uri = link.as_uri()
    elif where != "outside":
        uri = where
    bad = ref.model_copy(update={"artifact": ref.artifact.model_copy(update={"uri": uri})})
    tested = h.test(bad)
    assert not tested.passed
    [result] = tested.results
    assert re.search(r"outside the artifact store|another host|prefix", result.detail), result
    assert h.store.list_records("tests") == []  # no verdict stored for a message's fault


def test_missing_artifact_ends_in_a_failed_verdict(images: Images, tmp_path: Path) -> None:
    h = Harness(tmp_path)
    ref = images.build()
    gone = ref.model_copy(
        update={"artifact": ref.artifact.model_copy(update={"uri": f"file://{tmp_path}/nope"})}
    )
    tested = h.test(gone)  # a failed image.tested naming the error, not a crash
    assert not tested.passed
    [result] = tested.results
    assert (result.name, result.status) == ("tester.error", "error")
    assert "does not exist on this host" in result.detail
