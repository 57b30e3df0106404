"""The tester on the real node image: every check, the live boot in qemu included.

The good image goes the whole way: image.built on a private broker, imgline-tester as its own
process, image.tested back with the console log and JUnit report stored. The broken variant
(the same image with a damaged initramfs) must fail the boot check and say why.
"""

from __future__ import annotations

import json
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from bushelpers import service_process

from imgline.core import liveimg
from imgline.core.artifacts import LocalArtifactStore
from imgline.schemas import payloads as p
from imgline.schemas.messages import ImageBuiltV1, ImageTestedV1
from imgline.tester.adapters.boot import boot_check
from imgline.tester.domain.plan import BootPlan

pytestmark = pytest.mark.vm

REPO = Path(__file__).resolve().parents[2]
PLAN = REPO / "examples" / "test-plan.toml"
NodeImage = tuple[p.ImageBuilt, LocalArtifactStore]


def test_node_image_passes_every_check_through_the_broker(
    amqp_url: str, tmp_path: Path, node_image: NodeImage
) -> None:
    built, _ = node_image
    reports = tmp_path / "reports"
    config = {"store_dir": str(reports), "work_dir": str(tmp_path / "work"), "plan_file": str(PLAN)}
    with service_process(
        "tester",
        amqp_url,
        tmp_path,
        consumes=("image.built",),
        emits=("image.tested",),
        consumer_config=config,
    ) as svc:
        svc.publish(ImageBuiltV1.from_payload(built))
        event = svc.wait_event(1200)

    tested: p.ImageTested = ImageTestedV1(body=event, topic="x").payload
    results = {r.name: r for r in tested.results}
    assert tested.passed, [r for r in tested.results if r.status != "passed"]
    assert set(results) == {
        "integrity.size",
        "integrity.squashfs",
        "integrity.sha256",
        "integrity.ext4",
        "content.image_json",
        "content.packages",
        "content.files",
        "content.services",
        "boot.live",
    }
    assert {r.status for r in tested.results} == {"passed"}
    assert "'IMGLINE-PAYLOAD-READY' on the console" in results["boot.live"].detail
    store = LocalArtifactStore(reports)
    console = store.read_record("reports", f"{built.build_id}.console.log")
    assert console is not None
    assert f"IMGLINE-PAYLOAD-READY {built.version}".encode() in console
    assert tested.report_url == store.record_uri("reports", f"{built.build_id}.xml")
    xml = store.read_record("reports", f"{built.build_id}.xml")
    assert xml is not None
    suite = ET.fromstring(xml).find("testsuite")  # noqa: S314 - our own output
    assert suite is not None and suite.get("failures") == "0"


def break_initramfs(
    built: p.ImageBuilt, store: LocalArtifactStore, work: Path
) -> tuple[Path, dict[str, Any]]:
    """The same image, but its initramfs cut to a quarter: what a full disk during dracut or
    an interrupted copy leaves behind. Returns it with its (unchanged) image.json."""
    image = store.path_for(built.artifact.sha256)
    rootfs = liveimg.extract_rootfs(image, work / "x")
    meta = json.loads(liveimg.read_file(rootfs, "/usr/lib/imgline/image.json"))
    initrd = liveimg.read_file(rootfs, meta["initrd"])
    cut = work / "initrd.cut"
    cut.write_bytes(initrd[: len(initrd) // 4])
    requests = f"rm {meta['initrd']}\nwrite {cut} {meta['initrd']}\n"
    subprocess.run(["debugfs", "-w", "-f", "-", str(rootfs)], input=requests, text=True, check=True)
    assert len(liveimg.read_file(rootfs, meta["initrd"])) == len(initrd) // 4
    return liveimg.make_squashfs(rootfs, work / "broken.squashfs"), meta


def test_broken_initramfs_fails_the_boot_check(node_image: NodeImage, tmp_path: Path) -> None:
    built, store = node_image
    broken, meta = break_initramfs(built, store, tmp_path)
    plan = BootPlan(marker="IMGLINE-PAYLOAD-READY", timeout_seconds=600)
    work = tmp_path / "boot"
    work.mkdir()
    started = time.monotonic()
    with (tmp_path / "test.log").open("w") as log:
        result = boot_check(broken, meta, plan, work, log)
    took = time.monotonic() - started
    assert result.status == "failed"
    assert result.attachments == (work / "console.log",)
    console = (work / "console.log").read_text(errors="replace")
    assert "IMGLINE-PAYLOAD-READY" not in console
    assert "the guest stopped" in result.detail, result.detail
    assert took < plan.timeout_seconds, "a broken boot must end the guest, not wait it out"
