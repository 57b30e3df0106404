"""The boot loaders a host may use, behind one interface: where entries live, how the default
switches with a boot counter, how a boot is blessed or falls back.

All keep Boot Loader Specification entries in ``<boot>/loader/entries`` on the file system
mounted at ``/boot`` (the ESP, or anaconda's boot partition) and the kernels in
``<boot>/imgline/<layer>/``:

- GRUB (one install boots on BIOS and on UEFI) has no BLS support on Debian, so ``grub.cfg``
  is rendered from the entries, and the default, the fallback and the ``boot_counter`` live in
  ``grubenv`` (one 1024-byte file replaced by rename, so a switch is atomic). GRUB counts
  down and falls back on its own.
- GRUB with BLS support (Fedora/EL, on hosts anaconda installed from ``install.ks``) reads
  the entries itself; the same grubenv countdown comes from a ``/etc/grub.d`` snippet.
- systemd-boot counts in the entry's file name (``<id>+LEFT-DONE.conf``), sorts entries with
  no tries left last, and picks the first entry matching ``imgline-<name>-*``. An entry is
  written as ``+0`` (never preferred) and the switch is one rename to ``+<tries>``.

docs/updater.md ("Boot counting") explains each from the admin's side.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from imgline.core.fsutil import fsync_dir, write_atomic
from imgline.updater.adapters.system import System
from imgline.updater.domain import bootentry
from imgline.updater.domain.bootentry import Entry
from imgline.updater.errors import UpdaterError

ENTRIES = Path("loader/entries")


@dataclass(frozen=True)
class BootStatus:
    """What the loader says about this boot: which entry it preferred, whether it fell back."""

    fell_back: bool
    tries_left: int | None


class BootLoader(Protocol):
    kind: str

    def install(self, system: System, disk: Path, layer_root: Path) -> None: ...
    def entries(self) -> list[Entry]: ...
    def add(self, entry: Entry) -> None: ...
    def remove(self, entry_id: str) -> None: ...
    def switch(self, new: Entry, fallback: Entry | None, tries: int) -> None: ...
    def set_default(self, entry: Entry, newer: Sequence[Entry]) -> None: ...
    def status(self, entry: Entry) -> BootStatus: ...
    def bless(self, entry: Entry) -> None: ...
    def mark_bad(self, entry: Entry, fallback: Entry) -> None: ...


class _Entries:
    """BLS entry files, whatever counter their names carry."""

    def __init__(self, boot: Path) -> None:
        self.boot = boot
        self.dir = boot / ENTRIES

    def files(self) -> dict[str, Path]:
        found: dict[str, Path] = {}
        if self.dir.is_dir():
            for path in sorted(self.dir.glob("imgline-*.conf")):
                entry_id, _left, _done = bootentry.parse_name(path.name)
                found[entry_id] = path
        return found

    def entries(self) -> list[Entry]:
        return [bootentry.parse_bls(p.read_text(), i) for i, p in self.files().items()]

    def write(self, entry: Entry, name: str) -> None:
        old = self.files().get(entry.id)
        write_atomic(self.dir / name, bootentry.render_bls(entry).encode(), parents=True)
        if old is not None and old.name != name:
            old.unlink()
            fsync_dir(self.dir)

    def remove(self, entry_id: str) -> None:
        path = self.files().get(entry_id)
        if path is not None:
            path.unlink()
            fsync_dir(self.dir)

    def rename(self, entry_id: str, name: str) -> None:
        path = self.files().get(entry_id)
        if path is None:
            raise UpdaterError(f"boot entry {entry_id} is missing from {self.dir}", "boot_entry")
        if path.name != name:
            os.replace(path, self.dir / name)
            fsync_dir(self.dir)


class _GrubEnv:
    """The default, the fallback and the countdown in grubenv, for both GRUB flavours.

    A switch rewrites the whole 1024-byte block and renames it into place, so it is atomic;
    variables that are not ours (Fedora keeps ``saved_entry``, ``boot_success`` and more there)
    are carried over untouched.
    """

    env: Path

    def _read_env(self) -> dict[str, str]:
        return bootentry.parse_grubenv(self.env.read_bytes()) if self.env.exists() else {}

    def _write_env(self, values: dict[str, str]) -> None:
        write_atomic(self.env, bootentry.render_grubenv(values), parents=True)

    def _stable(self, env: dict[str, str], entry: Entry) -> None:
        """What a blessed or restored default adds to grubenv (nothing, for our own GRUB)."""

    def switch(self, new: Entry, fallback: Entry | None, tries: int) -> None:
        env = self._read_env()
        env["imgline_default"] = new.id
        env.pop("imgline_fell_back", None)
        if fallback is None:
            env.pop("imgline_fallback", None)
            env.pop("boot_counter", None)
            self._stable(env, new)
        else:
            env["imgline_fallback"] = fallback.id
            env["boot_counter"] = str(tries)
        self._write_env(env)

    def set_default(self, entry: Entry, newer: Sequence[Entry]) -> None:
        env = self._read_env()
        env["imgline_default"] = entry.id
        for key in ("imgline_fallback", "boot_counter", "imgline_fell_back"):
            env.pop(key, None)
        self._stable(env, entry)
        self._write_env(env)

    def status(self, entry: Entry) -> BootStatus:
        env = self._read_env()
        left = env.get("boot_counter")
        return BootStatus(
            fell_back=env.get("imgline_fell_back") == "1",
            tries_left=int(left) if left and left.isdigit() else None,
        )

    def bless(self, entry: Entry) -> None:
        self.set_default(entry, ())

    def mark_bad(self, entry: Entry, fallback: Entry) -> None:
        self.set_default(fallback, ())


class Grub(_GrubEnv):
    """GRUB for BIOS and UEFI hosts: core.img in the BIOS boot partition, BOOTX64.EFI on the
    ESP, one config and env on the ESP."""

    kind = "grub"
    MODULES = (  # for both platforms; BIOS adds biosdisk, EFI has its disk driver built in
        "part_gpt",
        "fat",
        "ext2",
        "normal",
        "configfile",
        "loadenv",
        "test",
        "echo",
        "linux",
        "search",
        "serial",
        "terminal",
        "halt",
        "reboot",
        "sleep",
    )

    def __init__(self, boot: Path, tries: int) -> None:
        self.boot = boot
        self.tries = tries
        self._entries = _Entries(boot)
        self.cfg = boot / "grub" / "grub.cfg"
        self.env = boot / "grub" / "grubenv"

    def install(self, system: System, disk: Path, layer_root: Path) -> None:
        """Put GRUB on ``disk`` from the image's own GRUB files, for both firmwares: the BIOS
        boot sector and core image, and ``EFI/BOOT/BOOTX64.EFI`` on the ESP (the removable-media
        path, so no EFI variable is needed). Both read the same grub.cfg and grubenv on the ESP
        (partition 2); nothing of the running system is probed."""
        bios = layer_root / "usr/lib/grub/i386-pc"
        efi = layer_root / "usr/lib/grub/x86_64-efi"
        if not (bios / "boot.img").is_file() and not (efi / "linux.mod").is_file():
            raise UpdaterError(
                "the image has no GRUB (usr/lib/grub/i386-pc or x86_64-efi): add grub-pc-bin "
                "and grub-efi-amd64-bin to its %packages, or install with --boot-loader "
                "systemd-boot",
                "boot_loader",
            )
        mkimage = layer_root / "usr/bin/grub-mkimage"
        if (bios / "boot.img").is_file():
            core = self._modules(bios, "i386-pc") / "core.img"
            self._mkimage(system, mkimage, bios, "i386-pc", core, names=("biosdisk", *self.MODULES))
            setup = layer_root / "usr/lib/grub/i386-pc/grub-bios-setup"
            setup = setup if setup.exists() else layer_root / "usr/sbin/grub-bios-setup"
            devmap = self.boot / "grub" / "device.map"
            devmap.write_text(f"(hd0) {disk}\n")
            system.run("boot_loader", [setup, "-d", core.parent, "-m", devmap, "--", str(disk)])
        if (efi / "linux.mod").is_file():
            image = self._modules(efi, "x86_64-efi") / "core.efi"
            self._mkimage(system, mkimage, efi, "x86_64-efi", image, names=self.MODULES)
            write_atomic(self.boot / "EFI/BOOT/BOOTX64.EFI", image.read_bytes(), parents=True)
        self._write_cfg()
        if not self.env.exists():
            write_atomic(self.env, bootentry.render_grubenv({}), parents=True)

    def _modules(self, source: Path, platform: str) -> Path:
        """The platform's modules on the ESP, where GRUB loads any it was not built with."""
        target = self.boot / "grub" / platform
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target)
        return target

    def _mkimage(
        self,
        system: System,
        mkimage: Path,
        modules: Path,
        platform: str,
        output: Path,
        *,
        names: Sequence[str],
    ) -> None:
        argv: list[str | Path] = [mkimage, "-O", platform, "-d", modules, "-o", output]
        system.run("boot_loader", [*argv, "-p", "(hd0,gpt2)/grub", *names])

    def _write_cfg(self) -> None:
        entries = self._entries.entries()
        write_atomic(
            self.cfg, bootentry.render_grub_cfg(entries, self.tries).encode(), parents=True
        )

    def entries(self) -> list[Entry]:
        return self._entries.entries()

    def add(self, entry: Entry) -> None:
        self._entries.write(entry, bootentry.plain_name(entry.id))
        self._write_cfg()

    def remove(self, entry_id: str) -> None:
        self._entries.remove(entry_id)
        self._write_cfg()


class GrubBls(_GrubEnv):
    """Fedora/EL GRUB, as anaconda installs it: ``blscfg`` reads ``/boot/loader/entries`` at
    boot and names each menu entry by its file name, and ``grub.cfg`` is made by
    ``grub2-mkconfig``. The countdown comes from our ``/etc/grub.d`` snippet (greenboot's way);
    ``saved_entry`` follows every stable default, so a grub.cfg regenerated without the
    snippet still boots the last good layer, never one on trial.
    """

    kind = "grub-bls"
    SNIPPET = Path("etc/grub.d/08_imgline_boot_counter")

    def __init__(self, boot: Path, tries: int) -> None:
        self.boot = boot
        self.tries = tries
        self._entries = _Entries(boot)
        self.cfg = boot / "grub2" / "grub.cfg"
        self.env = boot / "grub2" / "grubenv"

    def install(self, system: System, disk: Path, layer_root: Path) -> None:
        """Adopt the GRUB anaconda installed on the running host: add the countdown snippet
        and regenerate grub.cfg with the host's own grub2-mkconfig (``disk`` is not touched)."""
        mkconfig = layer_root / "usr/sbin/grub2-mkconfig"
        if not mkconfig.is_file():
            raise UpdaterError(
                f"{mkconfig} is missing: this host has no Fedora/EL GRUB with BLS support; "
                "reinstall it with `imgline-updater install --boot-loader grub`",
                "boot_loader",
            )
        write_atomic(
            layer_root / self.SNIPPET, bootentry.GRUB_D_SNIPPET.encode(), mode=0o755, parents=True
        )
        system.run("boot_loader", [mkconfig, "-o", self.cfg])
        self._require_counter()

    def _require_counter(self) -> None:
        try:
            text = self.cfg.read_text(errors="replace")
        except OSError as exc:
            raise UpdaterError(f"cannot read {self.cfg}: {exc}", "switch_default") from exc
        if bootentry.COUNTER_MARK not in text:
            raise UpdaterError(
                f"{self.cfg} has no imgline boot counter, so a new layer would boot with no "
                f"way back; run `imgline-updater adopt` again to restore {self.SNIPPET}",
                "switch_default",
            )

    def _stable(self, env: dict[str, str], entry: Entry) -> None:
        env["saved_entry"] = entry.id

    def switch(self, new: Entry, fallback: Entry | None, tries: int) -> None:
        if fallback is not None:
            self._require_counter()  # a trial without a countdown could not fall back
        super().switch(new, fallback, tries)

    def entries(self) -> list[Entry]:
        return self._entries.entries()

    def add(self, entry: Entry) -> None:
        self._entries.write(entry, bootentry.plain_name(entry.id))

    def remove(self, entry_id: str) -> None:
        self._entries.remove(entry_id)


class SystemdBoot:
    """systemd-boot for UEFI hosts: the boot counter is the entry's file name."""

    kind = "systemd-boot"

    def __init__(self, boot: Path, name: str) -> None:
        self.boot = boot
        self.name = name
        self._entries = _Entries(boot)

    def install(self, system: System, disk: Path, layer_root: Path) -> None:
        """Copy the image's systemd-boot to the ESP's removable-media path (no EFI variables
        needed, so it works on any firmware) and write loader.conf."""
        efi = layer_root / "usr/lib/systemd/boot/efi/systemd-bootx64.efi"
        if not efi.is_file():
            raise UpdaterError(
                "the image has no systemd-boot (usr/lib/systemd/boot/efi/systemd-bootx64.efi): "
                "add systemd-boot to its %packages, or install with --boot-loader grub",
                "boot_loader",
            )
        for rel in ("EFI/BOOT/BOOTX64.EFI", "EFI/systemd/systemd-bootx64.efi"):
            write_atomic(self.boot / rel, efi.read_bytes(), parents=True)
        pattern = f"imgline-{self.name}-*"
        write_atomic(
            self.boot / "loader/loader.conf",
            bootentry.render_loader_conf(pattern).encode(),
            parents=True,
        )

    def entries(self) -> list[Entry]:
        return self._entries.entries()

    def add(self, entry: Entry) -> None:
        # +0: present but never preferred until the switch renames it
        self._entries.write(entry, bootentry.counted_name(entry.id, 0))

    def remove(self, entry_id: str) -> None:
        self._entries.remove(entry_id)

    def switch(self, new: Entry, fallback: Entry | None, tries: int) -> None:
        if fallback is None:
            self._entries.rename(new.id, bootentry.plain_name(new.id))
        else:
            self._entries.rename(new.id, bootentry.counted_name(new.id, tries))

    def set_default(self, entry: Entry, newer: Sequence[Entry]) -> None:
        """Go back to ``entry``: every newer entry is marked as having no tries left."""
        for other in newer:
            self._entries.rename(other.id, bootentry.counted_name(other.id, 0))
        self._entries.rename(entry.id, bootentry.plain_name(entry.id))

    def status(self, entry: Entry) -> BootStatus:
        path = self._entries.files().get(entry.id)
        if path is None:
            return BootStatus(fell_back=False, tries_left=None)
        _id, left, _done = bootentry.parse_name(path.name)
        return BootStatus(fell_back=left == 0, tries_left=left)

    def bless(self, entry: Entry) -> None:
        self._entries.rename(entry.id, bootentry.plain_name(entry.id))

    def mark_bad(self, entry: Entry, fallback: Entry) -> None:
        self._entries.rename(entry.id, bootentry.counted_name(entry.id, 0))


def boot_loader(kind: str, boot: Path, name: str, tries: int) -> BootLoader:
    if kind == "grub":
        return Grub(boot, tries)
    if kind == "systemd-boot":
        return SystemdBoot(boot, name)
    if kind == "grub-bls":
        return GrubBls(boot, tries)
    raise UpdaterError(
        f"unknown boot loader {kind!r}: use grub, grub-bls or systemd-boot", "boot_loader"
    )
