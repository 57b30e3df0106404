"""The archive appended to the initramfs, read back the way the kernel reads ``newc``."""

from __future__ import annotations

import pytest

from imgline.core import hostcheck
from imgline.tester.domain import inject

pytestmark = pytest.mark.unit


def read_newc(data: bytes) -> dict[str, tuple[int, bytes]]:
    """name -> (mode, data), as init/initramfs.c walks the archive (4-byte alignment)."""
    out: dict[str, tuple[int, bytes]] = {}
    pos = 0
    while True:
        assert data[pos : pos + 6] == b"070701", f"no newc header at {pos}"
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name_at = pos + 110
        name = data[name_at : name_at + namesize - 1].decode()
        assert data[name_at + namesize - 1] == 0
        body_at = name_at + namesize + (-(110 + namesize) % 4)
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, data[body_at : body_at + size])
        pos = body_at + size + (-size % 4)
        assert pos % 4 == 0


def test_the_overlay_carries_hook_script_and_unit() -> None:
    args = hostcheck.arguments(units=["ssh.service"], mounts=["/"], wait_boot_seconds=600)
    members = read_newc(inject.check_overlay(args))
    assert members["imgline"][0] == 0o040755
    assert members["lib/dracut/hooks/pre-pivot"][0] == 0o040755
    mode, script = members["imgline/hostcheck.sh"]
    assert mode == 0o100755 and script.decode() == hostcheck.SCRIPT
    unit = members[f"imgline/{inject.UNIT}"][1].decode()
    assert "ExecStart=/bin/sh /run/imgline/hostcheck.sh -w 600 " in unit
    assert "-u ssh.service -m /" in unit and "StandardOutput=file:/dev/ttyS1" in unit
    assert "Type=simple" in unit  # its own start must not hold the boot in "starting"
    hook = members[inject.HOOK][1].decode()
    assert f"/run/systemd/system/multi-user.target.wants/{inject.UNIT}" in hook


def test_a_unit_name_with_a_backslash_survives_systemds_unescaping() -> None:
    unit = inject.unit_text(["-u", "dev-disk-by\\x2dlabel-data.mount"])
    assert "-u dev-disk-by\\\\x2dlabel-data.mount" in unit


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5])
def test_the_overlay_starts_on_a_4_byte_boundary(size: int) -> None:
    initrd = b"\x28\xb5\x2f\xfd" + b"z" * size  # a zstd stream's magic, then anything
    combined = inject.with_overlay(initrd, inject.archive({}, ()))
    start = combined.index(b"070701")
    assert start % 4 == 0 and combined[: len(initrd)] == initrd
    assert set(combined[len(initrd) : start]) <= {0}
    assert read_newc(combined[start:]) == {}
