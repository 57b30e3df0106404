"""Adopting a host anaconda installed from install.ks, and the Fedora/EL GRUB it keeps: a plain
directory stands in for the host's root and /boot, and a small shell script for
grub2-mkconfig (it runs every /etc/grub.d script in order, as the real one does)."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import pytest

from imgline.updater import adopt as adopt_module
from imgline.updater.adapters.bootloader import GrubBls
from imgline.updater.adapters.lvm import LogicalVolume, Lvm
from imgline.updater.adapters.system import System
from imgline.updater.adopt import INSTALLED, Adopter
from imgline.updater.apply import HostFiles
from imgline.updater.domain import bootentry
from imgline.updater.domain.bootentry import Entry
from imgline.updater.errors import UpdaterError
from imgline.updater.settings import HostConfig

pytestmark = pytest.mark.unit

LAYER = "node-20261201.1+1"
NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)
MKCONFIG = """#!/bin/sh
# grub2-mkconfig -o FILE, reduced to what matters here: the grub.d scripts' output, in order
[ "$1" = "-o" ] || exit 64
root=$(dirname "$0")/../..
for script in "$root"/etc/grub.d/*; do
    [ -x "$script" ] && "$script"
done > "$2"
"""


class FakeLvm:
    vg = "imgline"

    def __init__(self, lvs: set[str]) -> None:
        self.lvs = lvs

    def get(self, lv: str) -> LogicalVolume | None:
        if lv not in self.lvs:
            return None
        return LogicalVolume(lv, frozenset(), 1 << 30, "", read_only=False, active=True)

    def path(self, lv: str) -> Path:
        return Path("/dev") / self.vg / lv

    def list(self) -> list[LogicalVolume]:
        return [v for lv in sorted(self.lvs) if (v := self.get(lv)) is not None]


class Host:
    """An anaconda-installed host's files: root, /boot, installed.json, image.json."""

    def __init__(self, tmp: Path, *, stream: str = "stable", mkconfig: bool = True) -> None:
        self.root = tmp / "root"
        self.boot = self.root / "boot"
        self.state_dir = self.root / "var/lib/imgline"
        self.state_dir.mkdir(parents=True)
        (self.boot / "grub2").mkdir(parents=True)
        (self.boot / "vmlinuz-6.1.0-28-amd64").write_bytes(b"kernel")
        (self.boot / "initrd.img-6.1.0-28-amd64").write_bytes(b"initrd")
        meta = self.root / "usr/lib/imgline/image.json"
        meta.parent.mkdir(parents=True)
        meta.write_text(
            json.dumps(
                {
                    "name": "node",
                    "version": "20261201.1",
                    "build_id": "b" * 64,
                    "kernel": "/boot/vmlinuz-6.1.0-28-amd64",
                    "initrd": "/boot/initrd.img-6.1.0-28-amd64",
                    "kernel_args": "quiet",
                    "packages": 400,
                }
            )
        )
        (self.state_dir / INSTALLED).write_text(
            json.dumps(
                {
                    "name": "node",
                    "version": "20261201.1",
                    "sha256": "a" * 64,
                    "layer": LAYER,
                    "stream": stream,
                }
            )
        )
        (self.root / "etc/grub.d").mkdir(parents=True)
        header = self.root / "etc/grub.d/00_header"
        header.write_text("#!/bin/sh\necho 'set default=\"${saved_entry}\"'\n")
        header.chmod(0o755)
        if mkconfig:
            tool = self.root / "usr/sbin/grub2-mkconfig"
            tool.parent.mkdir(parents=True)
            tool.write_text(MKCONFIG)
            tool.chmod(0o755)
        self.files = HostFiles(self.state_dir)
        self.loader = GrubBls(self.boot, tries=3)

    def adopter(self, lvs: set[str] | None = None) -> Adopter:
        return Adopter(
            HostConfig(name="node", stream="stable"),
            cast(Lvm, FakeLvm({LAYER} if lvs is None else lvs)),
            self.loader,
            self.files,
            boot_dir=self.boot,
            root=self.root,
            clock=lambda: NOW,
        )

    def adopt(self, lvs: set[str] | None = None) -> None:
        self.adopter(lvs).adopt(lambda: self.loader.install(System(), Path(), self.root))

    def env(self) -> dict[str, str]:
        return bootentry.parse_grubenv((self.boot / "grub2/grubenv").read_bytes())


@pytest.fixture
def booted_from_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(adopt_module, "same_device", lambda root, dev: dev.name == LAYER)


@pytest.mark.usefixtures("booted_from_layer")
def test_adoption_records_the_layer_and_boots_our_entry_of_it(tmp_path: Path) -> None:
    host = Host(tmp_path)
    host.adopt()
    state = host.files.load_state()
    assert state.boot_loader == "grub-bls" and state.default_layer == LAYER
    (layer,) = state.layers
    assert layer.base_lv is None and layer.build_id == "b" * 64
    assert state.last_result is not None and state.last_result.kind == "installed"
    entry_id = bootentry.entry_id("node", "20261201.1")
    assert (host.boot / "imgline" / LAYER / "vmlinuz").read_bytes() == b"kernel"
    (entry,) = host.loader.entries()
    assert entry.id == entry_id
    assert entry.options.startswith(f"root=/dev/imgline/{LAYER} rd.lvm.lv=imgline/{LAYER} rw quiet")
    # stable default both ways: our countdown and Fedora's own saved_entry
    assert host.env() == {"imgline_default": entry_id, "saved_entry": entry_id}
    cfg = (host.boot / "grub2/grub.cfg").read_text()
    assert cfg.index('set default="${saved_entry}"') < cfg.index(bootentry.COUNTER_MARK)
    snippet = host.root / GrubBls.SNIPPET
    assert snippet.stat().st_mode & 0o111
    # a slow dmeventd at the next boot is retried, not taken for a broken release
    retry = host.root / "etc/systemd/system/lvm2-monitor.service.d/50-imgline-retry.conf"
    assert "Restart=on-failure" in retry.read_text()


@pytest.mark.usefixtures("booted_from_layer")
def test_grub_bls_trial_keeps_saved_entry_on_the_good_layer(tmp_path: Path) -> None:
    host = Host(tmp_path)
    host.adopt()
    (old,) = host.loader.entries()
    new = Entry(
        id=bootentry.entry_id("node", "20261201.2"),
        title="node 20261201.2",
        version="20261201.2",
        linux="/imgline/node-20261201.2+1/vmlinuz",
        initrd="/imgline/node-20261201.2+1/initrd.img",
        options="root=/dev/imgline/node-20261201.2+1 rw",
    )
    host.loader.add(new)
    assert {e.id for e in host.loader.entries()} == {old.id, new.id}
    host.loader.switch(new, old, 3)
    env = host.env()
    assert env["imgline_default"] == new.id and env["boot_counter"] == "3"
    assert env["saved_entry"] == old.id  # a grub.cfg without the countdown boots the good one
    host.loader.bless(new)
    assert host.env() == {"imgline_default": new.id, "saved_entry": new.id}


@pytest.mark.usefixtures("booted_from_layer")
def test_no_trial_starts_when_grub_cfg_lost_the_countdown(tmp_path: Path) -> None:
    host = Host(tmp_path)
    host.adopt()
    (old,) = host.loader.entries()
    (host.boot / "grub2/grub.cfg").write_text("# regenerated without our snippet\n")
    before = host.env()
    with pytest.raises(UpdaterError, match="no imgline boot counter"):
        host.loader.switch(dataclasses.replace(old, id="imgline-node-2"), old, 3)
    assert host.env() == before


@pytest.mark.usefixtures("booted_from_layer")
@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no LV", "does not exist"),
        ("other stream", "installed as stream 'edge'"),
        ("no grub2-mkconfig", "no Fedora/EL GRUB"),
        ("image.json disagrees", "refusing to guess"),
        ("no kernel", "no kernel or initramfs"),
        ("already adopted", "managed by the updater already"),
    ],
)
def test_adoption_refuses_what_it_cannot_vouch_for(tmp_path: Path, case: str, message: str) -> None:
    host = Host(
        tmp_path,
        stream="edge" if case == "other stream" else "stable",
        mkconfig=case != "no grub2-mkconfig",
    )
    if case == "image.json disagrees":
        meta = host.root / "usr/lib/imgline/image.json"
        meta.write_text(meta.read_text().replace("20261201.1", "20261201.9"))
    if case == "no kernel":
        (host.boot / "vmlinuz-6.1.0-28-amd64").unlink()
    if case == "already adopted":
        host.adopt()
    with pytest.raises(UpdaterError, match=message):
        host.adopt(set() if case == "no LV" else None)
    if case != "already adopted":
        assert not host.files.state.exists()
        assert not (host.boot / "grub2/grubenv").exists()  # nothing that boots was touched
        assert not (host.root / "etc/systemd/system/lvm2-monitor.service.d").exists()


def test_adoption_needs_the_installed_layer_to_be_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(adopt_module, "same_device", lambda root, dev: False)
    host = Host(tmp_path)
    with pytest.raises(UpdaterError, match="boot the installed system"):
        host.adopt()
    assert not host.files.state.exists()
