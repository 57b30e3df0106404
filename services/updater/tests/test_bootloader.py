"""The boot-loader adapters on a plain directory standing in for the ESP: which entry boots,
what a switch, a bless, a fallback and a rollback leave behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgline.updater.adapters.bootloader import Grub, SystemdBoot
from imgline.updater.domain import bootentry
from imgline.updater.domain.bootentry import Entry

pytestmark = pytest.mark.unit


def entry(version: str) -> Entry:
    layer = f"node-{version}+1"
    return Entry(
        id=bootentry.entry_id("node", version),
        title=f"node {version}",
        version=version,
        linux=f"/imgline/{layer}/vmlinuz",
        initrd=f"/imgline/{layer}/initrd.img",
        options=f"root=/dev/imgline/{layer} rw",
    )


def env(boot: Path) -> dict[str, str]:
    return bootentry.parse_grubenv((boot / "grub/grubenv").read_bytes())


def test_grub_switch_counts_and_bless_ends_the_trial(tmp_path: Path) -> None:
    grub = Grub(tmp_path, tries=2)
    v1, v2 = entry("20261201.1"), entry("20261201.2")
    grub.add(v1)
    grub.switch(v1, None, 2)
    assert env(tmp_path) == {"imgline_default": v1.id}
    grub.add(v2)
    cfg = (tmp_path / "grub/grub.cfg").read_text()
    assert f"--id '{v1.id}'" in cfg and f"--id '{v2.id}'" in cfg
    assert env(tmp_path)["imgline_default"] == v1.id  # adding an entry changes nothing that boots
    grub.switch(v2, v1, 2)
    assert env(tmp_path) == {
        "imgline_default": v2.id,
        "imgline_fallback": v1.id,
        "boot_counter": "2",
    }
    assert grub.status(v2).tries_left == 2 and not grub.status(v2).fell_back
    grub.bless(v2)
    assert env(tmp_path) == {"imgline_default": v2.id}


def test_grub_fallback_is_seen_and_rollback_clears_it(tmp_path: Path) -> None:
    grub = Grub(tmp_path, tries=1)
    v1, v2 = entry("20261201.1"), entry("20261201.2")
    for e in (v1, v2):
        grub.add(e)
    grub.switch(v2, v1, 1)
    values = env(tmp_path) | {"boot_counter": "0", "imgline_fell_back": "1"}  # as GRUB leaves it
    (tmp_path / "grub/grubenv").write_bytes(bootentry.render_grubenv(values))
    assert grub.status(v2).fell_back
    grub.mark_bad(v2, v1)
    assert env(tmp_path) == {"imgline_default": v1.id}


def test_grub_remove_drops_the_menu_entry(tmp_path: Path) -> None:
    grub = Grub(tmp_path, tries=1)
    v1, v2 = entry("20261201.1"), entry("20261201.2")
    grub.add(v1)
    grub.add(v2)
    grub.remove(v1.id)
    assert [e.id for e in grub.entries()] == [v2.id]
    assert v1.id not in (tmp_path / "grub/grub.cfg").read_text()


def names(boot: Path) -> list[str]:
    return sorted(p.name for p in (boot / "loader/entries").iterdir())


def test_systemd_boot_entry_is_never_preferred_until_the_switch(tmp_path: Path) -> None:
    sdb = SystemdBoot(tmp_path, "node")
    v1, v2 = entry("20261201.1"), entry("20261201.2")
    sdb.add(v1)
    sdb.switch(v1, None, 3)
    sdb.add(v2)
    assert names(tmp_path) == [f"{v1.id}.conf", f"{v2.id}+0.conf"]
    sdb.switch(v2, v1, 3)
    assert names(tmp_path) == [f"{v1.id}.conf", f"{v2.id}+3.conf"]
    assert sdb.status(v2).tries_left == 3
    # systemd-boot counts a boot attempt by renaming; the id stays the same
    (tmp_path / f"loader/entries/{v2.id}+3.conf").rename(
        tmp_path / f"loader/entries/{v2.id}+2-1.conf"
    )
    assert [e.id for e in sdb.entries()] == [v1.id, v2.id]
    sdb.bless(v2)
    assert names(tmp_path) == [f"{v1.id}.conf", f"{v2.id}.conf"]


def test_systemd_boot_rollback_marks_newer_entries_bad(tmp_path: Path) -> None:
    sdb = SystemdBoot(tmp_path, "node")
    v1, v2 = entry("20261201.1"), entry("20261201.2")
    sdb.add(v1)
    sdb.switch(v1, None, 3)
    sdb.add(v2)
    sdb.switch(v2, v1, 3)
    sdb.bless(v2)
    sdb.set_default(v1, [v2])
    assert names(tmp_path) == [f"{v1.id}.conf", f"{v2.id}+0.conf"]
    assert sdb.status(v2).fell_back


def test_systemd_boot_switch_of_a_missing_entry_is_an_error(tmp_path: Path) -> None:
    sdb = SystemdBoot(tmp_path, "node")
    with pytest.raises(Exception, match="missing"):
        sdb.switch(entry("20261201.2"), None, 3)
