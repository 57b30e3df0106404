"""``imgline-updater install``: a blank disk becomes a host (docs/updater.md, "Install").

This is the Debian-side twin of anaconda's ``liveimg`` install that ``install.ks`` drives: the
same VG, thin pool, shared ``/var``-family volumes and first base + layer, so that a host made
either way is upgraded the same way. The first layer goes through the same journaled apply as
every later one; install only adds what exists once per host (partitions, VG, volumes, boot
loader, the agent and its units) and records all of it in ``state.json``.
"""

from __future__ import annotations

import logging
import shutil
import stat
import time
from contextlib import ExitStack
from pathlib import Path

from imgline.core.fsutil import write_atomic
from imgline.schemas.payloads import utcnow
from imgline.updater.adapters.bootloader import boot_loader
from imgline.updater.adapters.lvm import VOLUME_TAG, Lvm, check_name
from imgline.updater.adapters.system import System
from imgline.updater.apply import Applier, HostFiles, Release
from imgline.updater.domain.journal import HostState, LastResult
from imgline.updater.errors import UpdaterError
from imgline.updater.settings import BootLoader, HostConfig

log = logging.getLogger(__name__)

BIOS_BOOT = "21686148-6449-6E6F-744E-656564454649"
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_LVM = "E6D6D379-F507-44C2-A23C-238F2A3DF928"

#: Where the agent's Python packages live on a host, until images carry the updater themselves.
AGENT_SITE = Path("lib/imgline/agent/site")  # under /var
CONFIG_PATH = Path("/etc/imgline/updater.toml")


def partition(disk: Path, number: int) -> Path:
    """The device of partition ``number``: ``/dev/vda2``, ``/dev/nvme0n1p2``."""
    sep = "p" if disk.name[-1].isdigit() else ""
    return disk.with_name(f"{disk.name}{sep}{number}")


def volume_lv(mount_point: str) -> str:
    """``/var/log`` → ``var_log``: one LV name per shared volume."""
    return check_name(mount_point.strip("/").replace("/", "_") or "root")


#: Drop-ins for the host's own units, written at install and at adoption; /etc merges keep them.
#: lvm2-monitor asks dmeventd to watch the thin pool; on a slow first boot dmeventd can miss its
#: handshake ("No input from event server") and the unit fails although a second try succeeds.
#: A failed unit fails the health check, so without a retry a healthy release is rolled back.
DROP_INS = {
    "lvm2-monitor.service.d/50-imgline-retry.conf": (
        "# imgline: retry when dmeventd is slow to answer at boot (docs/updater.md)\n"
        "[Service]\nRestart=on-failure\nRestartSec=5\n"
    ),
}


def write_drop_ins(etc: Path) -> None:
    """Writes ``DROP_INS`` under ``etc`` (a root's /etc); they take effect at the next boot."""
    for name, text in DROP_INS.items():
        write_atomic(etc / "systemd/system" / name, text.encode(), parents=True)


def units(python_path: Path, config: Path) -> dict[str, str]:
    """The host's systemd units: the boot health check and the agent."""
    env = f"Environment=PYTHONPATH={python_path}\n"
    cmd = f"/usr/bin/python3 -m imgline.updater --config {config}"
    return {
        "imgline-health.service": (
            # not After=multi-user.target: the target waits for what it wants, so that would be
            # a cycle; the checks wait for the units they need themselves (settle_seconds)
            "[Unit]\nDescription=imgline: check this boot; keep the new layer or roll back\n"
            "After=basic.target\n\n"
            f"[Service]\nType=oneshot\nRemainAfterExit=yes\n{env}"
            f"ExecStart={cmd} health\nStandardOutput=journal+console\n"
            "StandardError=journal+console\n\n[Install]\nWantedBy=multi-user.target\n"
        ),
        "imgline-updater.service": (
            "[Unit]\nDescription=imgline: apply new releases of this host's stream\n"
            "Wants=network-online.target\nAfter=network-online.target imgline-health.service\n\n"
            f"[Service]\n{env}ExecStart={cmd} run\nRestart=on-failure\nRestartSec=10\n"
            "StandardOutput=journal+console\nStandardError=journal+console\n\n"
            "[Install]\nWantedBy=multi-user.target\n"
        ),
    }


class Installer:
    """Partitions ``disk`` and makes it boot ``release``: destroys what the disk held."""

    def __init__(
        self,
        config: HostConfig,
        system: System,
        *,
        boot_loader_kind: BootLoader,
        config_text: str,
        agent_site: Path | None = None,
        root_metadata: bytes | None = None,
    ) -> None:
        self.config = config
        self.system = system
        self.kind = boot_loader_kind
        self.config_text = config_text
        self.agent_site = agent_site
        self.root_metadata = root_metadata
        self.lvm = Lvm(system, config.layout.vg, config.layout.pool)

    def install(self, disk: Path, release: Release) -> HostState:
        started = time.monotonic()
        self._check_disk(disk)
        self._partition(disk)
        esp, pv = partition(disk, 2), partition(disk, 3)
        self.system.run("partition", ["mkfs.vfat", "-F", "32", "-n", "IMGLINE", "--", esp])
        self.lvm.create_vg("volumes", pv)
        self.lvm.create_pool("volumes")
        volumes = self.config.layout.volumes
        for point, mib in volumes.items():
            dev = self.lvm.create_thin("volumes", volume_lv(point), mib << 20, VOLUME_TAG)
            self.system.run("volumes", ["mkfs.ext4", "-q", "--", dev])
        with ExitStack() as stack:
            boot = stack.enter_context(self.system.mounted("boot_loader", esp))
            var = stack.enter_context(self.system.mounted("volumes", self.lvm.path("var")))
            files = HostFiles(var / self.config.state_dir.relative_to("/var"))
            files.dir.mkdir(parents=True, exist_ok=True)
            state = HostState(
                name=release.name,
                stream=self.config.stream,
                boot_loader=self.kind,
                vg=self.lvm.vg,
                layers=[],
                pending=None,
                bad_versions=[],
                last_result=None,
            )
            files.save_state(state)
            if self.root_metadata is not None:
                # the repository's root, pinned: the agent trusts only what it signs
                tuf = files.dir / "tuf" / "metadata"
                write_atomic(tuf / "root.json", self.root_metadata, parents=True)
            loader = boot_loader(self.kind, boot, release.name, self.config.boot_tries)
            applier = Applier(self.config, self.system, self.lvm, loader, files, boot_dir=boot)
            layer = applier.apply(release)
            root = stack.enter_context(
                self.system.mounted("volumes", self.lvm.path(layer.layer_lv))
            )
            self._fill_volumes(root)
            self._etc(root, esp)
            if self.agent_site is not None:
                self._agent(root, var)
            loader.install(self.system, disk, root)
            state = files.load_state()
            state = state.model_copy(
                update={
                    "last_result": LastResult(
                        kind="installed", version=release.version, at=utcnow()
                    )
                }
            )
            files.save_state(state)
        log.info(
            "installed %s %s on %s in %.0fs",
            release.name,
            release.version,
            disk,
            time.monotonic() - started,
        )
        return state

    def _check_disk(self, disk: Path) -> None:
        try:
            mode = disk.stat().st_mode
        except OSError as exc:
            raise UpdaterError(f"{disk}: {exc}", "partition") from exc
        if not stat.S_ISBLK(mode):
            raise UpdaterError(f"{disk} is not a block device", "partition")
        mounts = Path("/proc/mounts").read_text().split("\n")
        busy = [m.split()[0] for m in mounts if m.startswith(str(disk))]
        if busy:
            raise UpdaterError(f"{disk} is in use ({', '.join(busy)} mounted)", "partition")

    def _partition(self, disk: Path) -> None:
        layout = (
            "label: gpt\n"
            f'size=1MiB, type={BIOS_BOOT}, name="bios"\n'
            f'size={self.config.layout.boot_mib}MiB, type={ESP}, name="boot"\n'
            f'type={LINUX_LVM}, name="imgline"\n'
        )
        self.system.run("partition", ["wipefs", "--all", "--force", "--", disk])
        self.system.run("partition", ["sfdisk", "--wipe", "always", "--", disk], input_text=layout)
        deadline = time.monotonic() + 10
        while not partition(disk, 3).exists():
            if time.monotonic() > deadline:
                raise UpdaterError(f"the kernel shows no partitions on {disk}", "partition")
            self.system.run("partition", ["partx", "--update", "--", disk])
            time.sleep(0.2)

    def _fill_volumes(self, root: Path) -> None:
        """Move what the image has under each shared mount point into its volume; deepest
        first, so ``/var`` gets an empty ``log`` directory to mount ``/var/log`` on."""
        for point in sorted(self.config.layout.volumes, key=lambda p: -p.count("/")):
            src = root / point.lstrip("/")
            src.mkdir(parents=True, exist_ok=True)
            with self.system.mounted("volumes", self.lvm.path(volume_lv(point))) as vol:
                self.system.run("volumes", ["cp", "-a", "--", f"{src}/.", f"{vol}/"])
            for child in src.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()

    def _etc(self, root: Path, esp: Path) -> None:
        """fstab and the updater's config: the first admin changes, kept by every merge."""
        uuid = self.system.run("volumes", ["blkid", "-s", "UUID", "-o", "value", "--", esp])
        # LVs appear once lvm autoactivation has run: on a slow or busy machine that can take
        # longer than systemd's default 90 s, and a timeout here means emergency mode
        wait = "x-systemd.device-timeout=300s"
        lines = [f"UUID={uuid.strip()} /boot vfat umask=0077,{wait} 0 2"]
        for point in sorted(self.config.layout.volumes, key=lambda p: p.count("/")):
            lines.append(f"{self.lvm.path(volume_lv(point))} {point} ext4 defaults,{wait} 0 2")
        fstab = root / "etc/fstab"
        old = fstab.read_text() if fstab.exists() else ""
        write_atomic(fstab, (old + "\n".join(lines) + "\n").encode(), parents=True)
        write_drop_ins(root / "etc")
        conf = root / CONFIG_PATH.relative_to("/")
        write_atomic(
            conf, self.config_text.encode(), mode=0o600, parents=True
        )  # it may hold a password

    def _agent(self, root: Path, var: Path) -> None:
        assert self.agent_site is not None  # noqa: S101 - checked by the caller
        dest = var / AGENT_SITE
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(self.agent_site, dest, symlinks=True)
        unit_dir = root / "etc/systemd/system"
        wants = unit_dir / "multi-user.target.wants"
        wants.mkdir(parents=True, exist_ok=True)
        for name, text in units(Path("/var") / AGENT_SITE, CONFIG_PATH).items():
            write_atomic(unit_dir / name, text.encode(), parents=True)
            link = wants / name
            link.unlink(missing_ok=True)
            link.symlink_to(f"../{name}")
