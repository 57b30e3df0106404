"""qemu guests for the VM tier: a helper guest that runs a script with real LVM, and disks that
boot like real hosts (SeaBIOS or OVMF) while their serial console is watched.

This machine's kernel has no device-mapper, so whatever needs LVM, a disk's partition devices
or a boot loader written to a disk happens inside a guest. Guests run under TCG: KVM guests
hang on this kind of host.

**Helper guest** (:func:`run_helper`). The image's own kernel and initramfs boot a copy of its
``rootfs.img`` with ``init=/imgline-helper-init``: no systemd, no udev, a shell script as PID 1
that mounts the basics, runs ``/job/run.sh`` from the job disk, prints
``IMGLINE-GUEST-EXIT <rc>`` and powers off. Using the image itself means the guest has exactly
the tools (lvm2, sfdisk, GRUB, bootctl, python3) a host installed from it has. Disks, in order:

* ``/dev/vda`` the helper root (``snapshot=on``: the cached copy stays pristine),
* ``/dev/vdb`` the job disk (ext4 labelled ``IMGLINE-JOB``, mounted on ``/job``),
* ``/dev/vdc``, ``/dev/vdd``, … the caller's ``disks``, writable; ``run.sh`` also gets them
  as ``$IMGLINE_DISK0``, ``$IMGLINE_DISK1``, … (found by their virtio serial numbers, so a
  different enumeration order could not mix them up).

Without udev, partitions appear as ``/dev/vdc1``… as soon as the kernel re-reads a table
(sfdisk does that), LVM makes its own ``/dev/mapper`` and ``/dev/VG/LV`` nodes
(``/etc/lvm/lvmlocal.conf`` in the helper root says so), drivers the initramfs did not load are
loaded by the init, the network interface keeps its kernel name (``eth0``), and
``/dev/disk/by-*`` holds only what the initramfs's udev saw at boot, never updated: find
filesystems with ``blkid`` (``lsblk`` reads udev's database and shows no FSTYPE here).

**Hosts** (:func:`start_disk`, :func:`boot_disk`). A disk boots through SeaBIOS, or OVMF with a
writable copy of its variable store kept beside the disk, so boot entries and counters written
by one boot are there at the next, as on a real machine. Network is qemu's user mode with
``restrict=on``: the guest reaches nothing but what is forwarded explicitly.

Everything slow to make (boot files, helper root, the Python bundle) is cached under
``.cache/vm/`` keyed by its inputs, so only the first run pays; removing the directory is safe.
"""

from __future__ import annotations

import codecs
import compileall
import fcntl
import hashlib
import json
import os
import py_compile
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from bisect import bisect_right
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import IO, Any, Literal

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from imgline.core import liveimg
from imgline.core.runner import require, run

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "vm"
MIB = 1 << 20

JOB_LABEL = "IMGLINE-JOB"
START_MARKER = "IMGLINE-GUEST-START"
EXIT_MARKER = "IMGLINE-GUEST-EXIT"
HELPER_INIT = "/imgline-helper-init"
#: What the helper's kernel is told. The image's initramfs is dracut's: ``root=/dev/vda`` with
#: ``rw`` mounts the plain ext4 (dmsquash-live stays out of it without ``rd.live.image``), and
#: dracut's LVM/MD/DM/LUKS assembly is switched off so it never touches the disks under test:
#: volume groups there are the script's business, not the initramfs's.
HELPER_APPEND = (
    f"root=/dev/vda rootfstype=ext4 rw init={HELPER_INIT} console=ttyS0 panic=-1 "
    "rd.lvm=0 rd.md=0 rd.dm=0 rd.luks=0 rd.shell=0 rd.emergency=poweroff quiet loglevel=4"
)
#: The address a guest uses for host services forwarded with :class:`NetSpec` (qemu's slirp
#: network is 10.0.2.0/24; .2 is the gateway, .3 DNS, .15 the guest).
GUEST_SERVICES_ADDR = "10.0.2.100"
#: The helper guest's address: qemu user mode's fixed guest address, set by the helper's init
#: itself (it runs no DHCP client).
HELPER_GUEST_ADDR = "10.0.2.15"

_DISK_SERIAL = "imgline-disk"

# PID 1 of the helper guest. bash, not sh: PIPESTATUS gives run.sh's status through tee.
_INIT_SCRIPT = rf"""#!/bin/bash
# imgline helper guest (tests/vmguest.py): PID 1 without systemd or udev. Mounts the basics,
# runs /job/run.sh from the disk labelled {JOB_LABEL}, prints "{EXIT_MARKER} <status>" on the
# console and powers off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin HOME=/root LANG=C.UTF-8 TERM=dumb
exec </dev/null >/dev/console 2>&1
mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mountpoint -q /dev/pts || mount -t devpts devpts /dev/pts
# fresh /run and /tmp: what dracut left in /run describes the initramfs, not this system
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
mkdir -p /run/lock /run/lvm
echo imgline-helper >/proc/sys/kernel/hostname
# no udev loads drivers by modalias here: what the initramfs did not load comes in now
modprobe -a dm_mod dm_thin_pool dm_snapshot loop virtio_net vfat nls_cp437 nls_ascii 2>/dev/null
for nic in /sys/class/net/e*; do
  # qemu user-mode network: the guest is always {HELPER_GUEST_ADDR}, the gateway 10.0.2.2
  [ -e "$nic" ] || continue
  ip link set lo up
  ip addr add {HELPER_GUEST_ADDR}/24 dev "${{nic##*/}}" && ip link set "${{nic##*/}}" up \
    && ip route add default via 10.0.2.2
  break
done
for dev in /sys/block/vd*; do
  serial=$(cat "$dev/serial" 2>/dev/null)
  case "$serial" in
    {_DISK_SERIAL}[0-9]*) export "IMGLINE_DISK${{serial#{_DISK_SERIAL}}}=/dev/${{dev##*/}}" ;;
  esac
done
rc=125
job=$(blkid -L {JOB_LABEL})
if [ -z "$job" ]; then
  echo "imgline-helper: no disk labelled {JOB_LABEL}"
elif ! mount -t ext4 "$job" /job; then
  echo "imgline-helper: cannot mount $job on /job"
else
  echo "{START_MARKER} $(cut -d' ' -f1 /proc/uptime)"
  cd /job && /job/run.sh 2>&1 </dev/null | tee /job/output.log
  rc=${{PIPESTATUS[0]}}
  cd /
  sync
  umount /job || echo "imgline-helper: cannot unmount /job"
fi
sync
echo "{EXIT_MARKER} $rc"
echo o >/proc/sysrq-trigger
sleep 60
"""

# No udev in the helper guest: LVM must neither wait for udev nor ask it for devices.
_LVMLOCAL = """\
# imgline helper guest (tests/vmguest.py): no udev runs here, so LVM creates its own device
# nodes and scans /dev itself.
activation {
\tudev_sync = 0
\tudev_rules = 0
}
devices {
\tobtain_device_list_from_udev = 0
}
"""

#: Prepended to a run.sh that names no interpreter of its own.
_SCRIPT_PROLOGUE = "#!/bin/bash\nset -euo pipefail\n"


# --- caching ---------------------------------------------------------------------------------


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big") + data)
    return h.hexdigest()[:16]


@contextmanager
def _cache_lock() -> Iterator[None]:
    """One lock for all of ``.cache/vm``: several pytest runs may fill it at once."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


#: Kinds of entry this module makes in ``.cache/vm`` (other tests keep their own things there).
_KINDS = ("boot-", "helper-", "pybundle-")
#: An entry of ours unused this long is removed when a new one is made. Each image version and
#: each edit of the updater's code makes new entries (0.1 to 0.5 GB each), and all of them are
#: quick to make again. Removing one in use is harmless: qemu keeps open files open.
_UNUSED_SECONDS = 3600


def _cached(name: str, build: Callable[[Path], None]) -> Path:
    """``.cache/vm/<name>``, made by ``build(tmpdir)`` first if missing. The entry appears under
    its name only once complete, so an interrupted build is never taken for a result."""
    entry = CACHE / name
    if not entry.is_dir():
        with _cache_lock():
            if not entry.is_dir():
                _prune()
                tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=CACHE))
                try:
                    build(tmp)
                    tmp.rename(entry)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
    os.utime(entry)  # "used now", for _prune
    return entry


def _prune() -> None:
    cutoff = time.time() - _UNUSED_SECONDS
    for old in CACHE.iterdir():
        if old.is_dir() and old.name.startswith(_KINDS) and old.stat().st_mtime < cutoff:
            shutil.rmtree(old, ignore_errors=True)


@cache
def _sha256_of(path: Path, size: int, mtime_ns: int) -> str:
    del size, mtime_ns  # part of the memo key only
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(4 * MIB):
            h.update(block)
    return h.hexdigest()


def image_sha256(image: Path) -> str:
    """sha256 of a liveimg, computed once per process for an unchanged file."""
    st = image.stat()
    return _sha256_of(image.resolve(), st.st_size, st.st_mtime_ns)


def sparse_copy(src: Path, dst: Path) -> Path:
    """Copy a (disk image) file keeping its holes: a 2 GiB ext4 holding 500 MB stays 500 MB."""
    run(["cp", "--sparse=always", "--reflink=auto", str(src), str(dst)])
    return dst


def blank_disk(path: Path, size_mib: int) -> Path:
    """An empty raw disk image of ``size_mib`` MiB that takes no space until written."""
    with path.open("wb") as f:
        f.truncate(size_mib * MIB)
    return path


# --- boot files and the helper root ----------------------------------------------------------


@dataclass(frozen=True)
class BootFiles:
    """The kernel, initramfs and ``rootfs.img`` of a liveimg, extracted once and cached, with
    the image's ``image.json`` (which names the kernel and initramfs inside the root)."""

    image: Path
    sha256: str
    kernel: Path
    initrd: Path
    rootfs: Path
    meta: dict[str, Any]

    @classmethod
    def of(cls, image: Path) -> BootFiles:
        sha = image_sha256(image)

        def build(tmp: Path) -> None:
            rootfs = liveimg.extract_rootfs(image, tmp / "x")
            meta = json.loads(liveimg.read_file(rootfs, "/" + liveimg.IMAGE_JSON.as_posix()))
            for key in ("kernel", "initrd"):
                if not isinstance(meta.get(key), str):
                    raise RuntimeError(f"{image}: image.json names no {key}: {meta}")
            (tmp / "vmlinuz").write_bytes(liveimg.read_file(rootfs, meta["kernel"]))
            (tmp / "initrd.img").write_bytes(liveimg.read_file(rootfs, meta["initrd"]))
            (tmp / "image.json").write_text(json.dumps(meta, indent=2) + "\n")
            rootfs.rename(tmp / "rootfs.img")
            shutil.rmtree(tmp / "x")

        entry = _cached(f"boot-{sha[:16]}", build)
        return cls(
            image=image,
            sha256=sha,
            kernel=entry / "vmlinuz",
            initrd=entry / "initrd.img",
            rootfs=entry / "rootfs.img",
            meta=json.loads((entry / "image.json").read_text()),
        )


def helper_root(image: Path) -> Path:
    """The image's ``rootfs.img`` with the helper's PID 1 and LVM settings added (cached).

    Written with ``debugfs -w``, which needs neither root nor a mount. Boot it with
    ``snapshot=on`` (as :func:`run_helper` does) so runs never change it.
    """
    files = BootFiles.of(image)

    def build(tmp: Path) -> None:
        root = sparse_copy(files.rootfs, tmp / "root.img")
        init, lvmlocal = tmp / "init", tmp / "lvmlocal.conf"
        init.write_text(_INIT_SCRIPT)
        lvmlocal.write_text(_LVMLOCAL)
        requests = [
            f'write "{init}" {HELPER_INIT}',
            f"sif {HELPER_INIT} mode 0100755",
            "rm /etc/lvm/lvmlocal.conf",  # Debian ships one with comments only
            f'write "{lvmlocal}" /etc/lvm/lvmlocal.conf',
            "sif /etc/lvm/lvmlocal.conf mode 0100644",
            "mkdir /job",
        ]
        for path in (HELPER_INIT, "/etc/lvm/lvmlocal.conf", "/job"):
            requests += [f"sif {path} uid 0", f"sif {path} gid 0"]
        run(["debugfs", "-w", "-f", "-", str(root)], input_text="\n".join(requests) + "\n")
        got = liveimg.stat_path(root, HELPER_INIT)
        if got.kind != "regular" or got.mode != 0o755 or got.uid != 0:
            raise RuntimeError(f"debugfs did not install {HELPER_INIT} in {root}: {got}")
        if liveimg.read_file(root, "/etc/lvm/lvmlocal.conf").decode() != _LVMLOCAL:
            raise RuntimeError(f"debugfs did not write /etc/lvm/lvmlocal.conf in {root}")
        liveimg.fsck(root)
        init.unlink()
        lvmlocal.unlink()

    key = _digest(files.sha256, _INIT_SCRIPT, _LVMLOCAL)
    return _cached(f"helper-{files.sha256[:16]}-{key[:8]}", build) / "root.img"


# --- the Python bundle -----------------------------------------------------------------------

#: Workspace members whose ``src/imgline`` trees make up the updater's ``imgline`` package.
BUNDLE_MEMBERS = ("schemas", "core", "services/updater")
_BUNDLE_ROOT_DIST = "imgline-updater"
_WORKSPACE_PREFIX = "imgline-"


def _requirement_closure(root: str) -> list[metadata.Distribution]:
    """``root`` and every distribution it needs, from the running environment's metadata
    (extras and environment markers evaluated as for a plain install)."""
    found: dict[str, metadata.Distribution] = {}
    todo = [root]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in found:
            continue
        dist = metadata.distribution(name)
        found[name] = dist
        for text in dist.requires or ():
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return [found[name] for name in sorted(found)]


def _member_files() -> list[tuple[Path, Path]]:
    """(source, path relative to the bundle) of every workspace file that goes in."""
    pairs = []
    for member in BUNDLE_MEMBERS:
        src = REPO / member / "src"
        for path in sorted((src / "imgline").rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                pairs.append((path, path.relative_to(src)))
    return pairs


def _dist_files(dist: metadata.Distribution) -> list[tuple[Path, Path]]:
    """(installed file, path relative to site-packages) of a distribution: its RECORD minus
    scripts outside site-packages, bytecode (made afresh below) and .pth files (which only
    ``site`` processes, never ``PYTHONPATH``)."""
    pairs = []
    for rel in dist.files or ():
        parts = Path(str(rel)).parts
        if not parts or parts[0] == ".." or "__pycache__" in parts:
            continue
        if rel.suffix in (".pyc", ".pth"):
            continue
        pairs.append((Path(str(dist.locate_file(rel))), Path(*parts)))
    return pairs


def python_bundle_dir() -> Path:
    """A directory to put on ``PYTHONPATH`` that runs the updater on the image's Python.

    It holds the ``imgline`` namespace packages of :data:`BUNDLE_MEMBERS` merged into one
    ``imgline/``, and every third-party distribution they require, copied from this venv with
    their ``.dist-info`` (entry points such as ``fedora.messages`` live there). The guest's
    Python is Debian bookworm's 3.11, the same minor version as this venv's, so compiled
    wheels (pydantic_core, cryptography) load there as they are; bytecode is compiled here
    with unchecked hashes so a slow emulated guest does not compile on every start. Cached
    per hash of all that went in.
    """
    dists = _requirement_closure(_BUNDLE_ROOT_DIST)
    third_party = [d for d in dists if not d.metadata["Name"].startswith(_WORKSPACE_PREFIX)]
    workspace = [d for d in dists if d.metadata["Name"].startswith(_WORKSPACE_PREFIX)]
    members = _member_files()
    key = _digest(
        sys.implementation.cache_tag,
        *(f"{d.metadata['Name']}=={d.version}" for d in dists),
        *(f"{rel}\0" for _, rel in members),
        *(src.read_bytes() for src, _ in members),
    )

    def build(tmp: Path) -> None:
        site = tmp / "site"
        copies = list(members)
        for dist in third_party:
            copies += _dist_files(dist)
        for dist in workspace:  # editable installs: metadata only, the code came from src/
            copies += [
                (src, rel)
                for src, rel in _dist_files(dist)
                if rel.parts[0].endswith(".dist-info")
                and rel.name not in ("RECORD", "direct_url.json")
                and not rel.name.startswith("uv_")
            ]
        for src, rel in copies:
            dest = site / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)
        ok = compileall.compile_dir(
            site,
            quiet=2,
            workers=0,
            invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
        )
        if not ok:
            raise RuntimeError(f"compiling the Python bundle in {site} failed")
        manifest = {
            "python": sys.implementation.cache_tag,
            "distributions": {d.metadata["Name"]: d.version for d in dists},
            "members": list(BUNDLE_MEMBERS),
        }
        (tmp / "bundle.json").write_text(json.dumps(manifest, indent=2) + "\n")

    return _cached(f"pybundle-{key}", build) / "site"


# --- the job disk ----------------------------------------------------------------------------


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard link when on one filesystem (free), else a copy that keeps holes."""
    try:
        os.link(src, dst)
    except OSError:
        sparse_copy(src, dst)


def _apparent_size(path: Path) -> int:
    if path.is_dir():
        return sum(p.lstat().st_size for p in path.rglob("*"))
    return path.stat().st_size


def job_disk(
    dest: Path,
    script: str,
    files: Mapping[str, Path] | None = None,
    python_bundle: bool = False,
) -> Path:
    """An ext4 image labelled ``IMGLINE-JOB`` holding ``run.sh`` and ``files``.

    ``files`` maps a path under ``/job`` to a file or directory here. ``script`` becomes
    ``/job/run.sh``; one without a ``#!`` line runs under bash with ``set -euo pipefail``.
    With ``python_bundle`` it also holds ``/job/site`` (:func:`python_bundle_dir`), so
    ``PYTHONPATH=/job/site python3 -m imgline.updater …`` works in the guest. The disk is sparse
    and has at least 256 MiB free for what the guest writes (``output.log``, results).
    """
    require("mke2fs", "apt-get install e2fsprogs")
    stage = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        run_sh = stage / "run.sh"
        run_sh.write_text(script if script.startswith("#!") else _SCRIPT_PROLOGUE + script)
        run_sh.chmod(0o755)
        for name, src in (files or {}).items():
            rel = Path(name)
            if rel.is_absolute() or ".." in rel.parts or rel.parts[:1] in (("run.sh",), ("site",)):
                raise ValueError(
                    f"job file name {name!r} must be relative, without '..', and not "
                    "run.sh or under site/ (the script and the Python bundle go there)"
                )
            target = stage / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, target, symlinks=True, copy_function=_copy_function)
            else:
                _link_or_copy(src, target)
        if python_bundle:
            shutil.copytree(
                python_bundle_dir(), stage / "site", symlinks=True, copy_function=_copy_function
            )
        content = _apparent_size(stage)
        size_mib = (content + content // 4) // MIB + 256
        dest.unlink(missing_ok=True)
        run(
            [
                "mke2fs",
                "-t",
                "ext4",
                "-F",
                "-q",
                "-L",
                JOB_LABEL,
                "-E",
                "root_owner=0:0",
                "-d",
                str(stage),
                str(dest),
                f"{size_mib}M",
            ]
        )
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return dest


def _copy_function(src: str, dst: str) -> None:
    _link_or_copy(Path(src), Path(dst))


def read_job_file(job: Path, name: str) -> bytes:
    """A file the guest left on the job disk (``name`` relative to ``/job``)."""
    return liveimg.read_file(job, "/" + name.lstrip("/"))


# --- watching a running guest ----------------------------------------------------------------

# CSI sequences (colours, cursor moves), charset selection and two-byte escapes (SeaBIOS starts
# with ESC c, a terminal reset) that firmware, GRUB and systemd write to a serial terminal; they
# split words that tests look for.
_ESCAPE = re.compile(r"\x1b(?:\[[0-9;?]*[ -/]*[@-~]|[()][0-9A-Za-z]|[@-Z\\-~])")


def clean_console(text: str) -> str:
    """Serial console text without terminal escapes, carriage returns and NULs."""
    return _ESCAPE.sub("", text).replace("\r", "").replace("\0", "")


@dataclass(frozen=True)
class Seen:
    """A substring that showed on the console, and when (seconds after qemu started)."""

    text: str
    seconds: float


class Watcher:
    """A running qemu whose serial console (stdout) is copied to a file and searched.

    A thread reads the console as it comes; :meth:`wait_for` blocks until a substring shows
    up *after the previous match*, so a test can wait for the same marker once per boot across
    guest reboots (boot v1 → apply → reboot → v2 ready). Use it as a context manager, or call
    :meth:`stop`.
    """

    def __init__(
        self,
        argv: Sequence[str],
        console_log: Path,
        *,
        host_ports: Mapping[int, int] | None = None,
        restart_on_reset: bool = False,
    ) -> None:
        self.argv = list(argv)
        #: ``argv`` has ``-no-reboot``: when the guest resets, start qemu again (a power cycle)
        self.restart_on_reset = restart_on_reset
        self.restarts = 0
        self.console_log = console_log
        #: guest port -> port on 127.0.0.1 that reaches it
        self.host_ports: dict[int, int] = dict(host_ports or {})
        self._text = ""
        self._arrivals: list[tuple[int, float]] = []  # (offset in _text, seconds) per chunk
        self._cursor = 0
        self._eof = False
        self._cond = threading.Condition()
        self._stopped_by_us = False
        self._stopping = False
        self.started = time.monotonic()
        self._proc = self._spawn()
        self._thread = threading.Thread(target=self._pump, name="qemu-console", daemon=True)
        self._thread.start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        """Start qemu with its console on a pipe the pump reads."""
        return subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )

    def _pump(self) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        pending = ""
        try:
            with self.console_log.open("wb") as out:
                while True:
                    since = len(self._text)
                    pending = self._copy(self._proc, out, decoder, pending)
                    if not self._restart_after_reset(since):
                        break
        finally:  # waiters must learn that nothing more will come, however this ends
            self._append(clean_console(pending + decoder.decode(b"", final=True)), eof=True)

    def _copy(
        self, proc: subprocess.Popen[bytes], out: IO[bytes], decoder: Any, pending: str
    ) -> str:
        """Copy ``proc``'s console until it ends; what is left of an escape sequence."""
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        while chunk := os.read(fd, 65536):
            out.write(chunk)
            out.flush()
            pending += decoder.decode(chunk)
            # keep a possibly incomplete escape sequence for the next chunk
            cut = pending.rfind("\x1b")
            if cut >= 0 and not _ESCAPE.match(pending, cut) and len(pending) - cut < 32:
                ready, pending = pending[:cut], pending[cut:]
            else:
                ready, pending = pending, ""
            self._append(clean_console(ready))
        proc.wait()
        proc.stdout.close()
        return pending

    def _restart_after_reset(self, since: int) -> bool:
        """After qemu ended: when the guest rebooted (not powered off) and we did not stop it,
        start it again. A warm reset of OVMF under TCG now and then hangs before the firmware
        prints anything (seen once in 14 minutes of silence); a power cycle does what a
        machine's restart does for these tests: the disks and the UEFI variables persist."""
        with self._cond:
            rebooted = "reboot: machine restart" in self._text[since:]
            if not (self.restart_on_reset and rebooted) or self._stopping:
                return False
            self._proc = self._spawn()
            self.restarts += 1
            return True

    def _append(self, text: str, *, eof: bool = False) -> None:
        with self._cond:
            if text:
                self._arrivals.append((len(self._text), time.monotonic() - self.started))
                self._text += text
            self._eof = self._eof or eof
            self._cond.notify_all()

    def _seconds_at(self, offset: int) -> float:
        i = bisect_right(self._arrivals, (offset, float("inf"))) - 1
        return self._arrivals[max(i, 0)][1] if self._arrivals else 0.0

    def wait_any(self, needles: Sequence[str], timeout: float) -> Seen | None:
        """The first of ``needles`` to show after the previous match, or ``None`` when qemu
        ends or ``timeout`` seconds pass first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                hits = [
                    (pos, needle)
                    for needle in needles
                    if (pos := self._text.find(needle, self._cursor)) >= 0
                ]
                if hits:
                    pos, needle = min(hits)
                    self._cursor = pos + len(needle)
                    return Seen(needle, round(self._seconds_at(pos), 2))
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    return None
                self._cond.wait(min(remaining, 1.0))

    def wait_for(self, needle: str, timeout: float) -> Seen | None:
        """``needle`` on the console after the previous match, or ``None`` (qemu ended or
        ``timeout`` passed)."""
        return self.wait_any([needle], timeout)

    @property
    def console(self) -> str:
        """Everything the guest printed so far, escapes removed."""
        with self._cond:
            return self._text

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    @property
    def running(self) -> bool:
        return self._proc.poll() is None

    def wait_exit(self, timeout: float) -> int | None:
        """qemu's exit status once it ends by itself within ``timeout``, else ``None``."""
        try:
            return self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> int | None:
        """End qemu (if still running) and the console thread; qemu's own exit status, or
        ``None`` when it had to be stopped."""
        with self._cond:
            self._stopping = True  # no restart from here on: self._proc is the last one
            self._stopped_by_us = self._stopped_by_us or self._proc.poll() is None
        if self._proc.poll() is None:
            self._proc.terminate()  # qemu flushes its disks on SIGTERM
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._thread.join(timeout=10)
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        return None if self._stopped_by_us else self._proc.returncode

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- qemu command lines ----------------------------------------------------------------------


def qemu_base(memory_mib: int, *, reboot: bool = False) -> list[str]:
    """What every guest here gets: TCG (KVM guests hang on this host), serial console on
    stdout (``-nographic`` also mirrors SeaBIOS's text screen there, so GRUB shows up), and a
    virtio RNG so early userspace does not stall for entropy."""
    qemu = require("qemu-system-x86_64", "apt-get install qemu-system-x86")
    argv = [qemu, "-accel", "tcg", "-cpu", "max", "-m", str(memory_mib), "-smp", "2"]
    argv += ["-nographic", "-device", "virtio-rng-pci"]
    if not reboot:
        argv.append("-no-reboot")
    return argv


def _drive(
    path: Path, ident: str, *, serial: str | None = None, snapshot: bool = False
) -> list[str]:
    drive = f"file={path},format=raw,if=none,id={ident},cache=unsafe"
    if snapshot:
        drive += ",snapshot=on"
    device = f"virtio-blk-pci,drive={ident}" + (f",serial={serial}" if serial else "")
    return ["-drive", drive, "-device", device]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class NetSpec:
    """The guest's view of the network: nothing, except what is forwarded here.

    ``host_forwards`` maps a guest TCP port to a port on this machine's 127.0.0.1 (0: pick a
    free one; :attr:`Watcher.host_ports` says which). ``guest_forwards`` maps a port on
    :data:`GUEST_SERVICES_ADDR` (10.0.2.100), as the guest sees it, to a service on this
    machine's 127.0.0.1, e.g. the repository's HTTP server or the broker.
    """

    host_forwards: Mapping[int, int] = field(default_factory=dict)
    guest_forwards: Mapping[int, int] = field(default_factory=dict)

    def resolve(self) -> dict[int, int]:
        """The host forwards with every 0 replaced by a free port."""
        return {guest: host or _free_port() for guest, host in self.host_forwards.items()}


def _nic(net: NetSpec | None, host_ports: Mapping[int, int]) -> list[str]:
    if net is None:
        return ["-nic", "none"]
    opts = ["user", "model=virtio-net-pci", "restrict=on"]
    opts += [f"hostfwd=tcp:127.0.0.1:{h}-:{g}" for g, h in sorted(host_ports.items())]
    opts += [
        f"guestfwd=tcp:{GUEST_SERVICES_ADDR}:{g}-{_relay(h)}"
        for g, h in sorted(net.guest_forwards.items())
    ]
    return ["-nic", ",".join(opts)]


# qemu's ``guestfwd=…-tcp:HOST:PORT`` form opens one connection when qemu starts and serves only
# the guest's first connection with it (seen here: every later one timed out). The ``cmd:`` form
# starts a program per connection with the guest's socket as its stdin/stdout: this relay.
_RELAY = """\
# guestfwd relay (tests/vmguest.py): fd 0 is the guest's connection, argv[1] the local port.
import selectors, socket, sys
guest = socket.socket(fileno=0)
host = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
sel = selectors.DefaultSelector()
sel.register(guest, selectors.EVENT_READ, host)
sel.register(host, selectors.EVENT_READ, guest)
while sel.get_map():
    for key, _ in sel.select():
        data = key.fileobj.recv(65536)
        if data:
            key.data.sendall(data)
            continue
        sel.unregister(key.fileobj)
        try:
            key.data.shutdown(socket.SHUT_WR)
        except OSError:
            pass
"""


def _relay(host_port: int) -> str:
    """The ``cmd:`` half of a guestfwd to ``127.0.0.1:host_port`` (commas doubled: qemu's
    option syntax)."""
    relay = CACHE / "guestfwd-relay.py"
    if not relay.is_file() or relay.read_text() != _RELAY:
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = relay.with_name(f".{relay.name}.{os.getpid()}")
        tmp.write_text(_RELAY)
        tmp.replace(relay)
    command = shlex.join([sys.executable, "-I", "-S", str(relay), str(host_port)])
    return "cmd:" + command.replace(",", ",,")


# --- the helper guest ------------------------------------------------------------------------


@dataclass(frozen=True)
class GuestRun:
    """How a helper guest run went.

    ``rc`` is run.sh's exit status, ``None`` when the guest never reported one (it crashed or
    timed out: read ``console``). ``output`` is run.sh's stdout and stderr (``/job/output.log``).
    ``script_started`` is when run.sh began, in seconds after qemu started; ``job`` is the job
    disk (with anything else the script left in ``/job``) when kept in a ``workdir``.
    """

    rc: int | None
    console: str
    output: str
    seconds: float
    script_started: float | None = None
    job: Path | None = None


_EXIT_RE = re.compile(rf"{EXIT_MARKER} (\d+)")


def run_helper(
    image: Path,
    script: str,
    *,
    disks: Sequence[Path] = (),
    files: Mapping[str, Path] | None = None,
    python_bundle: bool = False,
    net: NetSpec | None = None,
    timeout: float = 600,
    memory_mib: int = 1024,
    workdir: Path | None = None,
) -> GuestRun:
    """Boot the helper guest of ``image`` (a liveimg) and run ``script`` as ``/job/run.sh``.

    ``disks`` are raw images attached writable as ``/dev/vdc``, ``/dev/vdd``, … (also
    ``$IMGLINE_DISK0``, …). ``files`` and ``python_bundle`` go on the job disk (see
    :func:`job_disk`). With ``net`` the guest's first interface is up as 10.0.2.15 and reaches
    ``net.guest_forwards`` on 10.0.2.100. The console log and job disk stay in ``workdir``
    (default: a temporary directory removed on return).
    """
    boot = BootFiles.of(image)
    root = helper_root(image)
    with _workdir(workdir) as work:
        job = job_disk(work / "job.img", script, files, python_bundle)
        host_ports = net.resolve() if net else {}
        argv = qemu_base(memory_mib)
        argv += ["-kernel", str(boot.kernel), "-initrd", str(boot.initrd)]
        argv += ["-append", HELPER_APPEND]
        argv += _drive(root, "root", serial="helper-root", snapshot=True)
        argv += _drive(job, "job", serial="job")
        for i, disk in enumerate(disks):
            argv += _drive(disk, f"disk{i}", serial=f"{_DISK_SERIAL}{i}")
        argv += _nic(net, host_ports)
        with Watcher(argv, work / "console.log", host_ports=host_ports) as guest:
            started = guest.wait_for(START_MARKER, timeout)
            ended = started and guest.wait_for(EXIT_MARKER, max(timeout - guest.seconds, 1))
            seconds = guest.seconds
            if ended:
                guest.wait_exit(30)  # the init powers off right after the marker
        # read only now: the status may come in a later chunk of console output than the marker
        found = _EXIT_RE.findall(guest.console)
        rc = int(found[-1]) if found else None
        try:
            output = read_job_file(job, "output.log").decode("utf-8", "replace")
        except liveimg.LiveImgError:
            output = ""
        return GuestRun(
            rc=rc,
            console=guest.console,
            output=output,
            seconds=round(seconds, 2),
            script_started=started.seconds if started else None,
            job=job if workdir is not None else None,
        )


@contextmanager
def _workdir(given: Path | None) -> Iterator[Path]:
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="imgline-helper-") as tmp:
        yield Path(tmp)


# --- booting a disk like a host --------------------------------------------------------------

Firmware = Literal["bios", "uefi"]
_FIRMWARE_DIRS = (Path("/etc/qemu/firmware"), Path("/usr/share/qemu/firmware"))
_OVMF_HINT = (
    "install the UEFI firmware for qemu: apt-get install ovmf (Fedora: dnf install edk2-ovmf)"
)


@dataclass(frozen=True)
class Ovmf:
    """OVMF firmware: ``code`` (read-only flash) and ``vars`` (template of the variable store)."""

    code: Path
    vars: Path


@cache
def ovmf() -> Ovmf:
    """The plain (no Secure Boot, no SMM) x86_64 OVMF, found through qemu's firmware
    descriptors (docs/interop/firmware.json), which Debian's ``ovmf`` and Fedora's
    ``edk2-ovmf`` both install; fails with the package to install when there is none."""
    descriptors: dict[str, Path] = {}
    for folder in reversed(_FIRMWARE_DIRS):  # /etc overrides /usr/share, by file name
        if folder.is_dir():
            descriptors.update({p.name: p for p in folder.glob("*.json")})
    for name in sorted(descriptors):
        try:
            desc = json.loads(descriptors[name].read_text())
            mapping = desc["mapping"]
            features = set(desc.get("features", ()))
            targets = desc.get("targets", ())
            if (
                "uefi" in desc.get("interface-types", ())
                and mapping.get("device") == "flash"
                and not features & {"secure-boot", "requires-smm", "enrolled-keys"}
                and any(
                    t.get("architecture") == "x86_64"
                    and any(m.startswith("pc-i440fx") for m in t.get("machines", ()))
                    for t in targets
                )
            ):
                code = Path(mapping["executable"]["filename"])
                nvram = Path(mapping["nvram-template"]["filename"])
                if code.is_file() and nvram.is_file():
                    return Ovmf(code, nvram)
        except (OSError, ValueError, KeyError, TypeError):
            continue
    raise RuntimeError(f"no OVMF (UEFI firmware) for qemu found: {_OVMF_HINT}")


def uefi_vars(disk: Path) -> Path:
    """The disk's own UEFI variable store, beside it (made from OVMF's template once): what a
    machine's NVRAM is, so boot entries survive reboots and belong to that one disk."""
    store = disk.with_name(disk.name + ".OVMF_VARS.fd")
    if not store.exists():
        shutil.copyfile(ovmf().vars, store)
    return store


def start_disk(
    disk: Path,
    *,
    firmware: Firmware = "bios",
    net: NetSpec | None = None,
    memory_mib: int = 1024,
    reboot: bool = True,
    console_log: Path | None = None,
    extra_disks: Sequence[Path] = (),
) -> Watcher:
    """Boot ``disk`` as a host's first disk (``/dev/vda``) and return the running guest.

    With ``reboot`` (default) a reboot in the guest restarts it the way a machine restarts;
    without, qemu exits instead. The console goes to ``console_log`` (default:
    ``<disk>.console.log`` beside the disk, replaced each boot).
    """
    # a guest's reboot is a power cycle here: qemu exits (-no-reboot) and the watcher starts it
    # again (see Watcher._restart_after_reset)
    argv = qemu_base(memory_mib, reboot=False)
    if firmware == "uefi":
        fw = ovmf()
        argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={fw.code}"]
        argv += ["-drive", f"if=pflash,format=raw,unit=1,file={uefi_vars(disk)}"]
    elif firmware != "bios":
        raise ValueError(f"firmware must be 'bios' or 'uefi', not {firmware!r}")
    argv += _drive(disk, "disk0", serial=f"{_DISK_SERIAL}0")
    for i, extra in enumerate(extra_disks, start=1):
        argv += _drive(extra, f"disk{i}", serial=f"{_DISK_SERIAL}{i}")
    host_ports = net.resolve() if net else {}
    argv += _nic(net, host_ports)
    log = console_log or disk.with_name(disk.name + ".console.log")
    return Watcher(argv, log, host_ports=host_ports, restart_on_reset=reboot)


@dataclass(frozen=True)
class BootRun:
    """One boot of a disk: the first ``until`` marker seen (``None``: none in time), the
    console, how long it took, qemu's exit status (``None`` when it was stopped)."""

    matched: Seen | None
    console: str
    seconds: float
    rc: int | None


def boot_disk(
    disk: Path,
    *,
    firmware: Firmware,
    until: Sequence[str],
    timeout: float,
    net: NetSpec | None = None,
    memory_mib: int = 1024,
    console_log: Path | None = None,
) -> BootRun:
    """Boot ``disk`` until one of ``until`` shows on the console, qemu exits (the guest powered
    off or reset: no reboots here) or ``timeout`` passes; then stop it."""
    with start_disk(
        disk,
        firmware=firmware,
        net=net,
        memory_mib=memory_mib,
        reboot=False,
        console_log=console_log,
    ) as guest:
        matched = guest.wait_any(until, timeout)
        seconds = guest.seconds
        rc = guest.stop()
    return BootRun(matched=matched, console=guest.console, seconds=round(seconds, 2), rc=rc)
