"""The boot check's runner, brought into the guest without changing the image.

The kernel unpacks every cpio archive concatenated to the initramfs, so the tester appends one
more to the image's own: a dracut ``pre-pivot`` hook, the shared host-check script
(``imgline.core.hostcheck``) and a unit. Dracut runs the hook just before it switches to the
image's root (with or without systemd in the initramfs); the hook copies the script and the
unit to ``/run``, which the booted system keeps, so its systemd starts the unit once
``multi-user.target`` is reached. The unit writes the results to the second serial port, which
nothing else in the guest uses, so no console chatter can garble them. Only this test boot has
the unit: the image and its published bytes stay as built.
"""

from __future__ import annotations

from collections.abc import Sequence

from imgline.core import hostcheck

UNIT = "imgline-boot-check.service"
#: The second serial port: qemu's second ``-serial`` is the guest's ttyS1.
RESULTS_TTY = "/dev/ttyS1"
HOOK = "lib/dracut/hooks/pre-pivot/99-imgline-boot-check.sh"

_HOOK = f"""\
# imgline tester: plant the boot check in /run, which the booted system keeps (test boot only)
mkdir -p /run/systemd/system/multi-user.target.wants /run/imgline
cp /imgline/hostcheck.sh /run/imgline/hostcheck.sh
cp /imgline/{UNIT} /run/systemd/system/{UNIT}
ln -sf ../{UNIT} /run/systemd/system/multi-user.target.wants/{UNIT}
"""


def unit_text(args: Sequence[str]) -> str:
    """The unit that runs the checks once the boot has reached ``multi-user.target``.

    ``Type=simple`` so that its own start does not hold the boot in "starting" while the script
    waits for the boot to finish. Arguments were checked by ``hostcheck.arguments``; a backslash
    is doubled because systemd would read it as an escape.
    """
    words = " ".join(a.replace("\\", "\\\\") for a in args)
    return f"""\
[Unit]
Description=imgline boot check (added by imgline-tester for this test boot only)
After=multi-user.target

[Service]
Type=simple
ExecStart=/bin/sh /run/imgline/hostcheck.sh {words}
StandardOutput=file:{RESULTS_TTY}
StandardError=journal
"""


def _entry(name: str, mode: int, data: bytes = b"", ino: int = 0) -> bytes:
    """One ``newc`` cpio member: header, name and data, each padded to 4 bytes."""
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
    header = b"070701" + b"".join(f"{v:08X}".encode() for v in fields)
    out = header + encoded
    out += b"\0" * (-len(out) % 4)
    out += data + b"\0" * (-len(data) % 4)
    return out


def archive(files: dict[str, tuple[int, bytes]], dirs: Sequence[str]) -> bytes:
    """A ``newc`` archive of ``dirs`` (mode 0755) and ``files`` (path → (mode, bytes))."""
    out = b""
    ino = 1
    for d in dirs:
        out += _entry(d, 0o040755, ino=ino)
        ino += 1
    for path, (mode, data) in files.items():
        out += _entry(path, 0o100000 | mode, data, ino)
        ino += 1
    out += _entry("TRAILER!!!", 0)
    return out + b"\0" * (-len(out) % 512)


def check_overlay(args: Sequence[str]) -> bytes:
    """The archive to append to the initramfs: hook, script and unit."""
    return archive(
        {
            "imgline/hostcheck.sh": (0o755, hostcheck.SCRIPT.encode()),
            f"imgline/{UNIT}": (0o644, unit_text(args).encode()),
            HOOK: (0o755, _HOOK.encode()),
        },
        dirs=("imgline", "lib/dracut", "lib/dracut/hooks", "lib/dracut/hooks/pre-pivot"),
    )


def with_overlay(initrd: bytes, overlay: bytes) -> bytes:
    """``initrd`` with ``overlay`` appended; the kernel looks for the next archive only at a
    4-byte boundary, so the original is padded with zeros first."""
    return initrd + b"\0" * (-len(initrd) % 4) + overlay
