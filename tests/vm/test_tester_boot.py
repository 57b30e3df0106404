"""The tester on the real node image: every check, the live boot in qemu included.

The good image goes the whole way: image.built on a private broker, imgline-tester as its own
process, image.tested back with the console log, the in-guest checks and JUnit report stored.
Two broken variants of the same image must fail and say why: one with a damaged initramfs
(it never comes up), one with a unit that fails at boot (it comes up, but is not healthy).
"""

from __future__ import annotations

import json
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from bushelpers import service_process

from imgline.core import liveimg
from imgline.core.artifacts import LocalArtifactStore
from imgline.schemas import payloads as p
from imgline.schemas.messages import ImageBuiltV1, ImageTestedV1
from imgline.tester.adapters.boot import boot_check
from imgline.tester.adapters.image import take_boot_files
from imgline.tester.domain.plan import BootPlan
from imgline.tester.domain.results import verdict

pytestmark = pytest.mark.vm

REPO = Path(__file__).resolve().parents[2]
PLAN = REPO / "examples" / "test-plan.toml"
NodeImage = tuple[p.ImageBuilt, LocalArtifactStore]


def test_node_image_passes_every_check_through_the_broker(
    amqp_url: str, tmp_path: Path, node_image: NodeImage
) -> None:
    cached, cache = node_image
    # a store of its own, as the builder would leave it: a verdict in the cached store would
    # be replayed by the next run instead of booting again
    store = LocalArtifactStore(tmp_path / "store")
    art = store.put_file(cache.path_for(cached.artifact.sha256))
    built = cached.model_copy(
        update={"artifact": cached.artifact.model_copy(update={"uri": art.uri})}
    )
    config = {
        "store_dir": str(store.root),
        "work_dir": str(tmp_path / "work"),
        "plan_file": str(PLAN),
    }
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
        "boot.system",
        "boot.unit:ssh.service",
        "boot.unit:ssh-hostkeys.service",
        "boot.unit:systemd-networkd.service",
        "boot.unit:node-payload.service",
        "boot.failed-units",
        "boot.disk:/",
        "boot.network",
    }
    assert {r.status for r in tested.results} == {"passed"}
    assert "'IMGLINE-PAYLOAD-READY' on the console" in results["boot.live"].detail
    assert results["boot.system"].detail == "running"
    assert results["boot.unit:ssh.service"].detail == "active"
    assert "answers with this image's image.json" in results["boot.network"].detail
    key = f"{built.build_id}.{built.artifact.sha256}"  # reports belong to the bytes tested
    console = store.read_record("reports", f"{key}.console.log")
    assert console is not None
    assert f"IMGLINE-PAYLOAD-READY {built.version}".encode() in console
    assert tested.report_url == store.record_uri("reports", f"{key}.xml")
    xml = store.read_record("reports", f"{key}.xml")
    assert xml is not None
    suite = ET.fromstring(xml).find("testsuite")  # noqa: S314 - our own output
    assert suite is not None and suite.get("failures") == "0"
    cases = {(c.get("classname"), c.get("name")) for c in suite.iter("testcase")}
    boot = "imgline.node.boot"
    assert {(boot, "unit:ssh.service"), (boot, "failed-units"), (boot, "network")} <= cases
    checks = store.read_record("reports", f"{key}.checks.log")
    assert checks is not None and b"IMGLINE-CHECK-END 0" in checks


def variant(
    built: p.ImageBuilt, store: LocalArtifactStore, work: Path, change: Callable[[Path, Any], str]
) -> tuple[Path, dict[str, Any], Path]:
    """The node image changed in place with debugfs (``change`` returns its requests), packed
    again; returns it, its (unchanged) image.json and the kernel and initramfs taken out."""
    image = store.path_for(built.artifact.sha256)
    rootfs = liveimg.extract_rootfs(image, work / "x")
    meta = json.loads(liveimg.read_file(rootfs, "/usr/lib/imgline/image.json"))
    requests = change(rootfs, meta)
    subprocess.run(["debugfs", "-w", "-f", "-", str(rootfs)], input=requests, text=True, check=True)
    boot_dir = work / "boot-files"
    take_boot_files(rootfs, meta, boot_dir, None)
    return liveimg.make_squashfs(rootfs, work / "variant.squashfs"), meta, boot_dir


def cut_initramfs(rootfs: Path, meta: dict[str, Any]) -> str:
    """The initramfs cut to a quarter: what a full disk during dracut or an interrupted copy
    leaves behind."""
    initrd = liveimg.read_file(rootfs, meta["initrd"])
    cut = rootfs.parent / "initrd.cut"
    cut.write_bytes(initrd[: len(initrd) // 4])
    return f"rm {meta['initrd']}\nwrite {cut} {meta['initrd']}\n"


FAILING_UNIT = """\
[Unit]
Description=A unit that fails at every boot (imgline test)

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo "broken-on-purpose: cannot reach the licence server" >&2; exit 3'

[Install]
WantedBy=multi-user.target
"""


def add_failing_unit(rootfs: Path, meta: dict[str, Any]) -> str:
    unit = rootfs.parent / "broken-on-purpose.service"
    unit.write_text(FAILING_UNIT)
    unit.chmod(0o644)
    where = "/etc/systemd/system"
    return (
        f"write {unit} {where}/broken-on-purpose.service\n"
        f"symlink {where}/multi-user.target.wants/broken-on-purpose.service "
        f"{where}/broken-on-purpose.service\n"
    )


def test_broken_initramfs_fails_the_boot_check(node_image: NodeImage, tmp_path: Path) -> None:
    built, store = node_image
    broken, meta, boot_dir = variant(built, store, tmp_path, cut_initramfs)
    plan = BootPlan(marker="IMGLINE-PAYLOAD-READY", timeout_seconds=600, http_port=8080)
    work = tmp_path / "boot"
    work.mkdir()
    started = time.monotonic()
    with (tmp_path / "test.log").open("w") as log:
        result, *rest = boot_check(
            broken, meta, plan, work, log, expected=built.ref(), boot_dir=boot_dir
        )
    took = time.monotonic() - started
    assert [(r.name, r.status) for r in rest] == [
        ("boot.checks", "skipped"),
        ("boot.network", "skipped"),
    ]
    assert result.status == "failed"
    assert work / "console.log" in result.attachments
    console = (work / "console.log").read_text(errors="replace")
    assert "IMGLINE-PAYLOAD-READY" not in console
    assert "the guest stopped" in result.detail, result.detail
    assert took < plan.timeout_seconds, "a broken boot must end the guest, not wait it out"


def test_a_unit_failing_at_boot_fails_the_boot_check_by_name(
    node_image: NodeImage, tmp_path: Path
) -> None:
    """The image comes up and its payload prints the marker, but a unit failed: the boot is
    not healthy, and the report names the unit with its own journal lines."""
    built, store = node_image
    image, meta, boot_dir = variant(built, store, tmp_path, add_failing_unit)
    plan = BootPlan(marker="IMGLINE-PAYLOAD-READY", timeout_seconds=600)
    work = tmp_path / "boot"
    work.mkdir()
    with (tmp_path / "test.log").open("w") as log:
        results = boot_check(
            image,
            meta,
            plan,
            work,
            log,
            expected=built.ref(),
            units=["ssh.service", "node-payload.service"],
            boot_dir=boot_dir,
        )
    by_name = {r.name: r for r in results}
    assert by_name["boot.live"].status == "passed"
    assert by_name["boot.unit:ssh.service"].status == "passed"
    failed = by_name["boot.failed-units"]
    assert failed.status == "failed"
    # first line: the failed units' names (on a starved machine others may time out too)
    assert "broken-on-purpose.service" in failed.detail.splitlines()[0].split()
    assert "cannot reach the licence server" in failed.detail  # its journal, in the report
    assert by_name["boot.system"].status == "failed"
    assert by_name["boot.system"].detail == "degraded"
    assert verdict(results) is False
