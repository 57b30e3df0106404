"""The live boot check as data: the qemu command line and reading the serial console.

The guest boots the image the way a host's installer or PXE setup would: the image's own kernel
and initramfs, ``root=live:`` pointing at the squashfs attached as a read-only disk. It is up
when a marker line shows on the serial console within a time limit; it is healthy when the
shared host checks, run inside it (domain/inject.py), pass and report on the second serial
port; its network works when the payload answers on a forwarded port. Anything else fails with
the console lines that explain why.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

#: Where the guest sees the squashfs; image.json's boot_args names it too.
LIVE_DEVICE = "/dev/vda"
DEFAULT_BOOT_ARGS = f"root=live:{LIVE_DEVICE} rd.live.image"
#: No interactive shells (nobody would answer them) and no reboot loops: a guest that cannot go
#: on powers off or panics, and qemu exits at once instead of waiting out the time limit.
NON_INTERACTIVE = "console=ttyS0 panic=-1 rd.shell=0 rd.emergency=poweroff systemd.show_status=1"

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

#: Console lines that explain a failed boot, most telling first.
_CLUES = (
    "Initramfs unpacking failed",
    "Kernel panic",
    "VFS: Unable to mount root",
    "Could not boot",
    "dracut-initqueue: Warning: Could not boot",
    "Warning: /dev/root does not exist",
    "Entering emergency mode",
    "dracut Warning",
    "Failed to start",
    "FAILED",
    "not found",
)


def qemu_path(path: Path) -> str:
    """A path inside a qemu option, where a comma would start the next option."""
    return str(path).replace(",", ",,")


def user_net(forward: tuple[int, int] | None) -> str:
    """User-mode networking the guest cannot leave (``restrict=on``): DHCP from qemu, and at
    most one port, on the host's loopback, forwarded to the guest."""
    nic = "user,model=virtio-net-pci,restrict=on"
    if forward is not None:
        host_port, guest_port = forward
        nic += f",hostfwd=tcp:127.0.0.1:{host_port}-:{guest_port}"
    return nic


def qemu_command(
    *,
    kernel: Path,
    initrd: Path,
    image: Path,
    memory_mib: int,
    results: Path,
    forward: tuple[int, int] | None = None,
    boot_args: str = DEFAULT_BOOT_ARGS,
    extra_args: str = "",
    accel: str = "tcg",
) -> list[str]:
    """qemu for one live boot: TCG by default (KVM guests hung on this kind of host), the
    squashfs as a read-only virtio disk, the console (ttyS0) on stdout, the host checks'
    results (ttyS1) in ``results``, a restricted user-mode network, and a virtio RNG so early
    userspace does not stall waiting for entropy."""
    append = " ".join(x for x in (boot_args, NON_INTERACTIVE, extra_args) if x)
    return [
        "qemu-system-x86_64",
        "-accel",
        accel,
        "-cpu",
        "max" if accel == "tcg" else "host",
        "-m",
        str(memory_mib),
        "-smp",
        "2",
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        "stdio",
        "-serial",
        f"file:{qemu_path(results)}",
        "-no-reboot",
        "-kernel",
        str(kernel),
        "-initrd",
        str(initrd),
        "-append",
        append,
        "-drive",
        f"file={qemu_path(image)},format=raw,if=virtio,readonly=on",
        "-device",
        "virtio-rng-pci",
        "-nic",
        user_net(forward),
    ]


def clean(line: str) -> str:
    """A console line without colour codes and carriage returns."""
    return _ANSI.sub("", line).replace("\r", "").rstrip()


def compare_answer(body: bytes, expected: dict[str, str]) -> str | None:
    """Why the payload's HTTP answer is not the image it should be, or None when it is."""
    try:
        doc = json.loads(body)
    except ValueError:
        return f"the answer is not JSON: {body[:200]!r}"
    if not isinstance(doc, dict):
        return f"the answer is not a JSON object: {body[:200]!r}"
    wrong = [
        f"{key} is {doc.get(key)!r}, image.built says {value!r}"
        for key, value in expected.items()
        if doc.get(key) != value
    ]
    return "; ".join(wrong) or None


def explain(lines: Iterable[str], limit: int = 6) -> str:
    """The console lines most likely to say why a boot failed (or the last ones)."""
    seen = [clean(x) for x in lines if clean(x)]
    clues = [x for x in seen if any(c in x for c in _CLUES)]
    picked = clues[-limit:] if clues else seen[-limit:]
    return " | ".join(picked) if picked else "the guest printed nothing"
