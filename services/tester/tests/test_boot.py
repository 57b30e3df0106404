"""The boot check's pure parts: the qemu command line and reading a console."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgline.tester.domain.boot import (
    DEFAULT_BOOT_ARGS,
    clean,
    compare_answer,
    explain,
    qemu_command,
)

pytestmark = pytest.mark.unit


def test_qemu_boots_the_image_read_only_on_a_closed_network() -> None:
    argv = qemu_command(
        kernel=Path("/w/vmlinuz"),
        initrd=Path("/w/initrd.img"),
        image=Path("/s/a,b.squashfs"),
        memory_mib=1536,
        results=Path("/w/checks.log"),
        forward=(40123, 8080),
        extra_args="rd.retry=30",
    )
    assert argv[0] == "qemu-system-x86_64"
    assert argv[argv.index("-accel") + 1] == "tcg"
    assert argv[argv.index("-m") + 1] == "1536"
    assert "file=/s/a,,b.squashfs,format=raw,if=virtio,readonly=on" in argv  # comma escaped
    serials = [argv[i + 1] for i, a in enumerate(argv) if a == "-serial"]
    assert serials == ["stdio", "file:/w/checks.log"]  # console ttyS0, check results ttyS1
    nic = argv[argv.index("-nic") + 1]
    assert nic == (
        "user,model=virtio-net-pci,restrict=on,hostfwd=tcp:127.0.0.1:40123-:8080"
    )  # the guest cannot leave; one port, on the host's loopback only
    assert "-no-reboot" in argv  # a panic ends qemu instead of looping
    append = argv[argv.index("-append") + 1]
    assert append.startswith(DEFAULT_BOOT_ARGS + " console=ttyS0")
    assert "rd.shell=0" in append and "rd.emergency=poweroff" in append
    assert append.endswith("rd.retry=30")


def test_kvm_uses_the_host_cpu() -> None:
    argv = qemu_command(
        kernel=Path("k"),
        initrd=Path("i"),
        image=Path("s"),
        memory_mib=512,
        results=Path("r"),
        accel="kvm",
    )
    assert argv[argv.index("-cpu") + 1] == "host"
    assert argv[argv.index("-nic") + 1] == "user,model=virtio-net-pci,restrict=on"


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


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b'{"build_id": "b1", "name": "node", "version": "1", "stream": "s"}', None),
        (b'{"build_id": "b0", "name": "node", "version": "1", "stream": "s"}', "build_id is 'b0'"),
        (b"<html>", "not JSON"),
        (b"[1]", "not a JSON object"),
    ],
)
def test_the_payloads_answer_must_be_the_image_under_test(body: bytes, problem: str | None) -> None:
    want = {"build_id": "b1", "name": "node", "version": "1", "stream": "s"}
    got = compare_answer(body, want)
    assert (got is None) if problem is None else (got is not None and problem in got)
