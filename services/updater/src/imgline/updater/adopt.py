"""Adopting a host that anaconda installed from a release's ``install.ks`` (docs/updater.md,
"Hosts installed by anaconda").

``install.ks`` gives the host the updater's volume group, thin pool and shared volumes, and
names the root LV like a first layer; its ``%post`` leaves ``installed.json``. What anaconda
cannot leave is the updater's own record: ``state.json``, a boot entry of ours and the boot
counter. Adoption adds exactly those, on the running host, and changes nothing that boots
until its last step (the default switches to our entry of the very same layer). The adopted
layer has no read-only base (anaconda copied files, not blocks), so later upgrades start from
its ``/usr/share/factory/etc`` like any other layer, and GC removes it like any other.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from imgline.core.fsutil import write_atomic
from imgline.core.liveimg import IMAGE_JSON
from imgline.schemas.payloads import ImageName, Sha256Hex, StreamName, Version, utcnow
from imgline.updater.adapters.bootloader import BootLoader
from imgline.updater.adapters.lvm import Lvm
from imgline.updater.adapters.system import same_device
from imgline.updater.apply import HostFiles, layer_options, volume_lvs
from imgline.updater.domain import bootentry, journal
from imgline.updater.domain.bootentry import Entry
from imgline.updater.domain.journal import HostState, LastResult, Layer, LvName
from imgline.updater.errors import UpdaterError
from imgline.updater.install import write_drop_ins
from imgline.updater.settings import HostConfig

log = logging.getLogger(__name__)

INSTALLED = "installed.json"


class Installed(BaseModel):
    """What ``install.ks`` records about the release anaconda installed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: ImageName
    version: Version
    sha256: Sha256Hex
    layer: LvName
    stream: StreamName


class _ImageJson(BaseModel):
    """The fields of the image's own ``image.json`` that a boot entry needs."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: ImageName
    version: Version
    build_id: str
    kernel: str
    initrd: str
    kernel_args: str = ""


def installed_record(files: HostFiles) -> Installed | None:
    """``installed.json`` if anaconda left one and the updater has not adopted the host yet."""
    if files.state.exists():
        return None
    return journal.load_json(files.dir / INSTALLED, Installed)


class Adopter:
    """Turns the anaconda-installed layer the host runs into the updater's first layer."""

    def __init__(
        self,
        config: HostConfig,
        lvm: Lvm,
        loader: BootLoader,
        files: HostFiles,
        *,
        boot_dir: Path,
        root: Path = Path("/"),
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.config = config
        self.lvm = lvm
        self.loader = loader
        self.files = files
        self.boot = boot_dir
        self.root = root
        self.clock = clock

    def adopt(self, install_boot_loader: Callable[[], None]) -> HostState:
        """Adopt the host; ``install_boot_loader`` adds the countdown to the host's loader."""
        if self.files.state.exists():
            raise UpdaterError(
                f"{self.files.state} exists: this host is managed by the updater already",
                "adopt",
            )
        installed = journal.load_json(self.files.dir / INSTALLED, Installed)
        if installed is None:
            raise UpdaterError(
                f"{self.files.dir / INSTALLED} is missing: this host was not installed from an "
                "imgline install.ks (use `imgline-updater install` on a blank disk instead)",
                "adopt",
            )
        self._check_config(installed)
        if self.lvm.get(installed.layer) is None:
            raise UpdaterError(
                f"the installed root LV {self.lvm.vg}/{installed.layer} does not exist",
                "adopt",
            )
        if not same_device(self.root, self.lvm.path(installed.layer)):
            raise UpdaterError(
                f"{self.root} is not mounted from {self.lvm.vg}/{installed.layer}: boot the "
                "installed system, then adopt it",
                "adopt",
            )
        meta = self._image_json(installed)
        entry = Entry(
            id=bootentry.entry_id(installed.name, installed.version),
            title=f"{installed.name} {installed.version}",
            version=installed.version,
            linux=f"/imgline/{installed.layer}/vmlinuz",
            initrd=f"/imgline/{installed.layer}/initrd.img",
            options=layer_options(
                self.lvm.vg,
                installed.layer,
                meta.kernel_args,
                self.config.kernel_args,
                volume_lvs(self.lvm),
            ),
        )
        self._boot_files(installed.layer, meta)
        install_boot_loader()
        self.loader.add(entry)
        self.loader.switch(entry, None, self.config.boot_tries)
        state = HostState(
            name=installed.name,
            stream=installed.stream,
            boot_loader=self.loader.kind,  # type: ignore[arg-type]
            vg=self.lvm.vg,
            layers=[
                Layer(
                    name=installed.name,
                    version=installed.version,
                    build_id=meta.build_id,
                    base_lv=None,
                    layer_lv=installed.layer,
                    entry_id=entry.id,
                    kernel_args=entry.options,
                    applied=self.clock(),
                )
            ],
            default_layer=installed.layer,
            last_result=LastResult(kind="installed", version=installed.version, at=self.clock()),
        )
        write_drop_ins(self.root / "etc")
        self.files.save_state(state)
        log.info("adopted %s %s (layer %s)", installed.name, installed.version, installed.layer)
        return state

    def _check_config(self, installed: Installed) -> None:
        for what, have, want in (
            ("name", self.config.name, installed.name),
            ("stream", self.config.stream, installed.stream),
        ):
            if have != want:
                raise UpdaterError(
                    f"the host was installed as {what} {want!r} but updater.toml says {have!r}; "
                    f"set {what} = {want!r} in [consumer_config], or reinstall",
                    "adopt",
                )

    def _image_json(self, installed: Installed) -> _ImageJson:
        path = self.root / IMAGE_JSON
        try:
            meta = _ImageJson.model_validate(json.loads(path.read_bytes()))
        except (OSError, ValueError, ValidationError) as exc:
            raise UpdaterError(
                f"cannot read {path}: {exc}; the root was not made by imgline's builder",
                "adopt",
            ) from exc
        if (meta.name, meta.version) != (installed.name, installed.version):
            raise UpdaterError(
                f"the root says it is {meta.name} {meta.version}, {INSTALLED} says "
                f"{installed.name} {installed.version}: refusing to guess which is right",
                "adopt",
            )
        return meta

    def _boot_files(self, layer: str, meta: _ImageJson) -> None:
        """The image's kernel and initramfs, where our entries expect them; on an anaconda host
        the image's /boot is the boot partition, so they are read through the root."""
        dest = self.boot / "imgline" / layer
        for src, name in ((meta.kernel, "vmlinuz"), (meta.initrd, "initrd.img")):
            path = self.root / src.lstrip("/")
            if not path.is_file():
                raise UpdaterError(
                    f"{path} is missing: the installed system has no kernel or initramfs "
                    f"where its image.json says ({src})",
                    "adopt",
                )
            write_atomic(dest / name, path.read_bytes(), parents=True)
