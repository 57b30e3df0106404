"""What one boot decides about a pending layer: bless it, roll back, or report the fallback the
boot loader already made; each leaves state.json and the boot loader consistent."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from imgline.updater.adapters.bootloader import Grub
from imgline.updater.apply import HostFiles
from imgline.updater.domain import bootentry
from imgline.updater.domain.bootentry import Entry
from imgline.updater.domain.journal import HostState, Layer, Pending
from imgline.updater.health import BootSettler, Check

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def layer(version: str) -> Layer:
    return Layer(
        name="node",
        version=version,
        build_id="a" * 64,
        base_lv=f"node-{version}",
        layer_lv=f"node-{version}+1",
        entry_id=bootentry.entry_id("node", version),
        kernel_args="rw",
        applied=NOW,
    )


def entry(x: Layer) -> Entry:
    return Entry(x.entry_id, f"node {x.version}", x.version, "/k", "/i", "rw")


@pytest.fixture
def host(tmp_path: Path) -> tuple[HostFiles, Grub, Layer, Layer]:
    v1, v2 = layer("20261201.1"), layer("20261201.2")
    files = HostFiles(tmp_path / "state")
    files.dir.mkdir()
    grub = Grub(tmp_path / "boot", tries=2)
    grub.add(entry(v1))
    grub.add(entry(v2))
    grub.switch(entry(v2), entry(v1), 2)
    pending = Pending(
        layer_lv=v2.layer_lv,
        version=v2.version,
        from_layer_lv=v1.layer_lv,
        from_version=v1.version,
        tries=2,
        since=NOW,
    )
    state = HostState(
        name="node",
        stream="stable",
        boot_loader="grub",
        vg="imgline",
        layers=[v1, v2],
        default_layer=v2.layer_lv,
        pending=pending,
    )
    files.save_state(state)
    return files, grub, v1, v2


def settler(files: HostFiles, grub: Grub) -> BootSettler:
    return BootSettler("host-1", files.load_state(), grub, files)


def test_healthy_new_layer_is_blessed_and_reported(
    host: tuple[HostFiles, Grub, Layer, Layer],
) -> None:
    files, grub, v1, v2 = host
    out = settler(files, grub).settle(v2, lambda: [Check("unit:x", True, "active")])
    assert out.event is not None and out.event.topic == "host.upgraded"
    assert (out.event.from_version, out.event.to_version) == (v1.version, v2.version)
    assert not out.reboot
    state = files.load_state()
    assert state.pending is None and state.default_layer == v2.layer_lv
    assert grub.status(entry(v2)).tries_left is None  # the trial is over


def test_unhealthy_new_layer_rolls_back_and_is_marked_bad(
    host: tuple[HostFiles, Grub, Layer, Layer],
) -> None:
    files, grub, v1, v2 = host
    checks = [Check("unit:node-payload.service", False, "failed\njournal lines")]
    out = settler(files, grub).settle(v2, lambda: checks)
    assert out.event is not None and out.event.topic == "host.rolled_back"
    assert out.reboot
    assert "node-payload.service" in out.event.error  # type: ignore[attr-defined]
    state = files.load_state()
    assert state.default_layer == v1.layer_lv and state.pending is None
    assert state.bad_versions == [v2.version]
    assert state.last_result is not None and state.last_result.step == "health"
    assert bootentry.parse_grubenv((grub.env).read_bytes()) == {"imgline_default": v1.entry_id}


def test_fallback_by_the_boot_loader_is_reported_without_running_checks(
    host: tuple[HostFiles, Grub, Layer, Layer],
) -> None:
    files, grub, v1, v2 = host

    def never() -> list[Check]:
        raise AssertionError("checks must not run on the old layer")

    out = settler(files, grub).settle(v1, never)
    assert out.event is not None and out.event.topic == "host.rolled_back"
    assert out.event.step == "boot"  # type: ignore[attr-defined]
    assert not out.reboot  # already on the good layer
    assert files.load_state().bad_versions == [v2.version]


def test_nothing_pending_reports_nothing(host: tuple[HostFiles, Grub, Layer, Layer]) -> None:
    files, grub, _v1, v2 = host
    settler(files, grub).settle(v2, lambda: [])
    out = settler(files, grub).settle(v2, lambda: [])
    assert out.event is None
