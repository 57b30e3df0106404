"""The boot check's pure parts: the qemu command line and reading a console."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgline.tester.domain.boot import DEFAULT_BOOT_ARGS, clean, explain, qemu_command

pytestmark = pytest.mark.unit


def test_qemu_boots_the_image_read_only_without_network() -> None:
    argv = qemu_command(
        kernel=Path("/w/vmlinuz"),
        initrd=Path("/w/initrd.img"),
        image=Path("/s/image.squashfs"),
        memory_mib=1536,
        extra_args="rd.retry=30",
    )
    assert argv[0] == "qemu-system-x86_64"
    assert argv[argv.index("-accel") + 1] == "tcg"
    assert argv[argv.index("-m") + 1] == "1536"
    assert "file=/s/image.squashfs,format=raw,if=virtio,readonly=on" in argv
    assert argv[argv.index("-nic") + 1] == "none"
    assert "-no-reboot" in argv  # a panic ends qemu instead of looping
    append = argv[argv.index("-append") + 1]
    assert append.startswith(DEFAULT_BOOT_ARGS + " console=ttyS0")
    assert "rd.shell=0" in append and "rd.emergency=poweroff" in append
    assert append.endswith("rd.retry=30")


def test_kvm_uses_the_host_cpu() -> None:
    argv = qemu_command(
        kernel=Path("k"), initrd=Path("i"), image=Path("s"), memory_mib=512, accel="kvm"
    )
    assert argv[argv.index("-cpu") + 1] == "host"


def test_console_lines_are_cleaned() -> None:
    assert clean("\x1b[0;32m  OK  \x1b[0m] Reached target\r\n") == "  OK  ] Reached target"


def test_explain_prefers_the_telling_lines() -> None:
    lines = [
        "[    1.1] Trying to unpack rootfs image as initramfs...",
        "[    1.7] Initramfs unpacking failed: read error",
        "[    2.5] VFS: Cannot open root device",
        "[    2.5] Kernel panic - not syncing: VFS: Unable to mount root fs",
        "[    2.6] Call Trace:",
    ]
    assert explain(lines) == (
        "[    1.7] Initramfs unpacking failed: read error | "
        "[    2.5] Kernel panic - not syncing: VFS: Unable to mount root fs"
    )


def test_explain_falls_back_to_the_last_lines() -> None:
    assert explain([f"line {n}" for n in range(10)], limit=2) == "line 8 | line 9"
    assert explain(["", "\r"]) == "the guest printed nothing"
