"""The VM harness itself (tests/vmguest.py) on the real node image.

The updater's VM tests stand on three things proven here: the helper guest runs real LVM thin
provisioning on an attached disk and the updater's Python from the job disk; a guest reaches a
loopback service through a guest forward (more than once: HTTP clients open many
connections); and a disk set up inside the helper boots through SeaBIOS (GRUB) and through
OVMF (systemd-boot, into the image's kernel and initramfs).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from vmguest import (
    GUEST_SERVICES_ADDR,
    NetSpec,
    blank_disk,
    boot_disk,
    python_bundle_dir,
    run_helper,
    start_disk,
    uefi_vars,
)

pytestmark = pytest.mark.vm


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A directory served over HTTP on 127.0.0.1 (as the repository will be): (dir, port)."""
    served = tmp_path / "www"
    served.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(served))
    with ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield served, server.server_address[1]
        server.shutdown()
        thread.join()


LVM_SCRIPT = f"""\
disk=$IMGLINE_DISK0
echo "disk0=$disk serial=$(cat /sys/block/${{disk#/dev/}}/serial)"
lvmconfig activation/udev_sync devices/obtain_device_list_from_udev
t0=$(cut -d' ' -f1 /proc/uptime)
pvcreate -q "$disk"
vgcreate -q imgline "$disk"
lvcreate -q --type thin-pool -L 1G -n pool imgline
lvcreate -q -V 3G --thinpool imgline/pool -n node-1
mkfs.ext4 -q -L node-1 /dev/imgline/node-1
mkdir -p /mnt/root
mount /dev/imgline/node-1 /mnt/root
echo v1 >/mnt/root/version
umount /mnt/root
lvcreate -q -s imgline/node-1 -n node-1+1
lvchange -q -ay -K imgline/node-1+1
mount /dev/imgline/node-1+1 /mnt/root
echo "layer sees $(cat /mnt/root/version)"
umount /mnt/root
lvs --noheadings --separator '|' -o lv_name,segtype,pool_lv,origin imgline | tr -d ' '
vgchange -q -an imgline
echo "lvm-seconds $t0 $(cut -d' ' -f1 /proc/uptime)"
PYTHONPATH=/job/site python3 -c "import imgline.core, imgline.updater, pydantic, tuf
print('imports ok')"
python3 - <<'PY'
import urllib.request
for i in range(3):  # one connection each: every one must get through the guest forward
    url = "http://{GUEST_SERVICES_ADDR}:8000/hello.txt"
    print("fetched", urllib.request.urlopen(url, timeout=30).read().decode().strip())
PY
"""


def test_helper_runs_lvm_thin_python_bundle_and_guest_forwards(
    node_liveimg: Path, tmp_path: Path, http_dir: tuple[Path, int]
) -> None:
    served, port = http_dir
    (served / "hello.txt").write_text("hello from the host\n")
    disk = blank_disk(tmp_path / "lvm.img", 2048)
    result = run_helper(
        node_liveimg,
        LVM_SCRIPT,
        disks=[disk],
        python_bundle=True,
        net=NetSpec(guest_forwards={8000: port}),
        timeout=600,
        workdir=tmp_path / "helper",
    )
    out = result.output
    assert result.rc == 0, f"{out}\n--- console:\n{result.console[-3000:]}"
    assert "disk0=/dev/vdc serial=imgline-disk0" in out
    assert "udev_sync=0" in out and "obtain_device_list_from_udev=0" in out
    lvs = {line.split("|")[0]: line.split("|")[1:] for line in out.splitlines() if "|" in line}
    assert lvs == {
        "node-1": ["thin", "pool", ""],
        "node-1+1": ["thin", "pool", "node-1"],
        "pool": ["thin-pool", "", ""],
    }
    assert "layer sees v1" in out
    assert "imports ok" in out
    assert out.count("fetched hello from the host") == 3
    # the guest's writes are on the disk file: LVM's label and the VG's metadata
    head = disk.read_bytes()[: 1 << 20]
    assert b"LABELONE" in head and b"imgline {" in head
    assert result.job is not None and result.job.is_file()
    assert (python_bundle_dir() / "imgline" / "updater").is_dir()
    lvm_from, lvm_to = next(
        map(float, line.split()[1:]) for line in out.splitlines() if line.startswith("lvm-seconds")
    )
    print(
        f"helper: script started {result.script_started}s after qemu, "
        f"LVM steps {lvm_to - lvm_from:.1f}s, whole run {result.seconds}s"
    )
    assert result.script_started is not None and result.script_started < 180


GRUB_MARKER = "IMGLINE-GRUB-SAYS-HELLO"
SDBOOT_TITLE = "IMGLINE-SDBOOT-ENTRY"
KERNEL_MARKER = "imgline.test=IMGLINE-KERNEL-FROM-SDBOOT"

# $IMGLINE_DISK0: BIOS. GPT with a 1 MiB BIOS boot partition for GRUB's core.img and a FAT ESP
# holding grub.cfg. grub-bios-setup guesses the "root" of the -d directory, so that directory
# must be on a real block device (on tmpfs it fails: "failed to get canonical path of tmpfs"):
# it lives on the ESP, as /boot/grub/i386-pc lives on /boot on a host.
# $IMGLINE_DISK1: UEFI. GPT with only an ESP; systemd-boot by bootctl, kernel and initramfs
# from the helper's own /boot (the image's), one loader entry, menu shown for a second.
BOOT_DISKS_SCRIPT = f"""\
bios=$IMGLINE_DISK0
sfdisk -q --label gpt "$bios" <<'TABLE'
size=1MiB, type=21686148-6449-6E6F-744E-656564454649, name=bios-boot
size=64MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=esp
TABLE
mkfs.vfat -n ESP "${{bios}}2" >/dev/null
mkdir -p /mnt/esp
mount "${{bios}}2" /mnt/esp
mkdir -p /mnt/esp/grub/i386-pc
cp /usr/lib/grub/i386-pc/boot.img /mnt/esp/grub/i386-pc/
grub-mkimage -O i386-pc -d /usr/lib/grub/i386-pc -o /mnt/esp/grub/i386-pc/core.img \\
  -p '(hd0,gpt2)/grub' biosdisk part_gpt fat normal echo halt serial terminal
/usr/lib/grub/i386-pc/grub-bios-setup -d /mnt/esp/grub/i386-pc "$bios"
cat >/mnt/esp/grub/grub.cfg <<'CFG'
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
echo "{GRUB_MARKER} from grub.cfg"
halt
CFG
umount /mnt/esp

uefi=$IMGLINE_DISK1
echo 'size=200MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=esp' \\
  | sfdisk -q --label gpt "$uefi"
mkfs.vfat -F 32 -n ESP "${{uefi}}1" >/dev/null
mkdir -p /mnt/uefi
mount "${{uefi}}1" /mnt/uefi
bootctl install --esp-path=/mnt/uefi --no-variables
mkdir -p /mnt/uefi/imgline
cp /boot/vmlinuz-* /mnt/uefi/imgline/vmlinuz
cp /boot/initrd.img-* /mnt/uefi/imgline/initrd.img
printf 'timeout 1\\ndefault imgline-test.conf\\n' >/mnt/uefi/loader/loader.conf
cat >/mnt/uefi/loader/entries/imgline-test.conf <<'ENTRY'
title {SDBOOT_TITLE}
linux /imgline/vmlinuz
initrd /imgline/initrd.img
options console=ttyS0 panic=-1 rd.shell=0 rd.emergency=poweroff {KERNEL_MARKER}
ENTRY
umount /mnt/uefi
"""


def test_disks_set_up_in_the_helper_boot_with_bios_and_uefi(
    node_liveimg: Path, tmp_path: Path
) -> None:
    bios_disk = blank_disk(tmp_path / "bios.img", 128)
    uefi_disk = blank_disk(tmp_path / "uefi.img", 256)
    made = run_helper(
        node_liveimg, BOOT_DISKS_SCRIPT, disks=[bios_disk, uefi_disk], workdir=tmp_path / "helper"
    )
    assert made.rc == 0, f"{made.output}\n--- console:\n{made.console[-3000:]}"

    bios = boot_disk(bios_disk, firmware="bios", until=[GRUB_MARKER], timeout=120)
    assert bios.matched is not None, bios.console[-3000:]
    assert "GRUB loading" in bios.console  # SeaBIOS ran GRUB's boot.img from the MBR

    with start_disk(uefi_disk, firmware="uefi", reboot=False) as guest:
        menu = guest.wait_for(SDBOOT_TITLE, 120)
        kernel = guest.wait_for(KERNEL_MARKER, 120)  # the kernel echoes its command line
        initramfs = guest.wait_for("Run /init as init process", 120)
        console = guest.console
    assert menu is not None, console[-3000:]
    assert kernel is not None and initramfs is not None, console[-3000:]
    assert uefi_vars(uefi_disk).is_file()
    print(
        f"disk boots: BIOS GRUB marker at {bios.matched.seconds}s; UEFI sd-boot menu at "
        f"{menu.seconds}s, kernel at {kernel.seconds}s, initramfs at {initramfs.seconds}s; "
        f"helper run {made.seconds}s"
    )
