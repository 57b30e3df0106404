"""The running host as the agent and the CLI see it: its state, layers, boot loader, and the
operations on it (apply, rollback, GC, reboot), wired to the real tools.

Everything here reads ``state.json`` afresh: several commands (the agent, an admin's
``rollback``, the boot-time health check) may act on one host, one after another.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from datetime import datetime
from pathlib import Path
from typing import IO

from imgline.core.trust.layout import Manifest
from imgline.core.versions import version_key
from imgline.schemas import payloads as p
from imgline.schemas.payloads import utcnow
from imgline.updater.adapters.bootloader import BootLoader, boot_loader
from imgline.updater.adapters.lvm import Lvm
from imgline.updater.adapters.system import System, same_device
from imgline.updater.adopt import Adopter, installed_record
from imgline.updater.apply import Applier, HostFiles, Release
from imgline.updater.domain.journal import HostState, LastResult, Layer
from imgline.updater.domain.policy import HostView
from imgline.updater.errors import UpdaterError
from imgline.updater.settings import HostConfig

log = logging.getLogger(__name__)


def machine_id(config: HostConfig, etc: Path = Path("/etc")) -> str:
    """The host's id in reports: the configured one, else systemd's machine id."""
    if config.host_id:
        return config.host_id
    try:
        value = (etc / "machine-id").read_text().strip()
    except OSError as exc:
        raise UpdaterError(
            f"no host_id configured and {etc / 'machine-id'} unreadable: {exc}", "config"
        ) from exc
    if not value:
        raise UpdaterError("no host_id configured and /etc/machine-id is empty", "config")
    return value


class LocalHost:
    """This machine, booted from one of its layers."""

    def __init__(
        self,
        config: HostConfig,
        *,
        log_file: IO[str] | None = None,
        boot_dir: Path = Path("/boot"),
        root: Path = Path("/"),
    ) -> None:
        self.config = config
        self.system = System(log_file)
        self.files = HostFiles(config.state_dir)
        self.boot_dir = boot_dir
        self.root = root

    # --- reading ------------------------------------------------------------------------------

    def state(self) -> HostState:
        return self.files.load_state()

    def lvm(self, state: HostState | None = None) -> Lvm:
        state = state or self.state()
        return Lvm(self.system, state.vg, self.config.layout.pool)

    def loader(self, state: HostState | None = None) -> BootLoader:
        state = state or self.state()
        return boot_loader(state.boot_loader, self.boot_dir, state.name, self.config.boot_tries)

    def running(self, state: HostState | None = None) -> Layer | None:
        """The layer mounted at ``/`` now (None when booted from something else)."""
        state = state or self.state()
        lvm = self.lvm(state)
        return next((x for x in state.layers if same_device(self.root, lvm.path(x.layer_lv))), None)

    def view(self, now: datetime) -> HostView:
        state = self.state()
        running = self.running(state) or (
            state.layer(state.default_layer) if state.default_layer else None
        )
        return HostView(
            running_version=running.version if running else None,
            pending_version=state.pending.version if state.pending else None,
            bad_versions=frozenset(state.bad_versions),
            reboot_locked=self.config.reboot_lock.exists(),
            now=now,
        )

    # --- acting -------------------------------------------------------------------------------

    def adopt(self) -> HostState | None:
        """Adopt a host anaconda installed (None when there is nothing to adopt): Fedora/EL
        GRUB with BLS support is what anaconda installs, so that is the loader it keeps."""
        if installed_record(self.files) is None:
            return None
        lvm = Lvm(self.system, self.config.layout.vg, self.config.layout.pool)
        loader = boot_loader("grub-bls", self.boot_dir, self.config.name, self.config.boot_tries)
        adopter = Adopter(
            self.config, lvm, loader, self.files, boot_dir=self.boot_dir, root=self.root
        )
        return adopter.adopt(lambda: loader.install(self.system, Path(), self.root))

    def applier(self, state: HostState | None = None) -> Applier:
        state = state or self.state()
        return Applier(
            self.config,
            self.system,
            self.lvm(state),
            self.loader(state),
            self.files,
            boot_dir=self.boot_dir,
            running_root=self.root,
        )

    def apply(self, image: Path, manifest: Manifest) -> str:
        release = Release(
            name=manifest.name,
            version=manifest.version,
            build_id=manifest.build_id,
            sha256=manifest.image_sha256,
            image=image,
        )
        layer = self.applier().apply(release)
        self.gc()
        return layer.layer_lv

    def reboot(self) -> None:
        if self.config.reboot_lock.exists():
            log.warning("not rebooting: %s exists (the reboot lock)", self.config.reboot_lock)
            return
        log.info("rebooting into the default layer")
        subprocess.run(["systemctl", "reboot"], check=False)  # noqa: S607

    def rollback(self, host_id: str, to_version: str | None) -> p.HostRolledBack:
        """Make an older layer the default again; the newer ones are marked bad."""
        state = self.state()
        current = state.layer(state.default_layer) if state.default_layer else None
        if current is None:
            raise UpdaterError("the host state names no default layer", "rollback")
        if to_version is not None:
            target = state.by_version(to_version)
            if target is None:
                have = ", ".join(x.version for x in state.layers)
                raise UpdaterError(f"no layer has version {to_version} (have: {have})", "rollback")
        else:
            older = [
                x for x in state.layers if version_key(x.version) < version_key(current.version)
            ]
            if not older:
                raise UpdaterError("there is no older layer to roll back to", "rollback")
            target = max(older, key=lambda x: version_key(x.version))
        loader = self.loader(state)
        entries = {e.id: e for e in loader.entries()}
        newer = [x for x in state.layers if version_key(x.version) > version_key(target.version)]
        loader.set_default(
            entries[target.entry_id], [entries[x.entry_id] for x in newer if x.entry_id in entries]
        )
        bad = sorted({*state.bad_versions, *(x.version for x in newer)})
        result = LastResult(
            kind="rolled_back",
            version=current.version,
            from_version=target.version,
            step="manual",
            error="rolled back by the admin",
            at=utcnow(),
        )
        self.files.save_state(
            state.model_copy(
                update={
                    "default_layer": target.layer_lv,
                    "pending": None,
                    "bad_versions": bad,
                    "last_result": result,
                }
            )
        )
        return p.HostRolledBack(
            host_id=host_id,
            name=state.name,
            stream=state.stream,
            from_version=target.version,
            to_version=current.version,
            duration_seconds=0.0,
            step="manual",
            error="rolled back by the admin",
        )

    def _protected(self, state: HostState) -> set[str]:
        """Layers that must stay: the default, the running one, a pending one and its fallback."""
        protect = {state.default_layer} if state.default_layer else set()
        running = self.running(state)
        if running is not None:
            protect.add(running.layer_lv)
        if state.pending is not None:
            protect |= {state.pending.layer_lv, state.pending.from_layer_lv}
        return protect

    def _drop(self, state: HostState, layer: Layer) -> HostState:
        """Entry first (nothing boots it any more), then its kernels, then the LVs."""
        self.loader(state).remove(layer.entry_id)
        shutil.rmtree(self.boot_dir / "imgline" / layer.layer_lv, ignore_errors=True)
        lvm = self.lvm(state)
        lvm.remove("gc", layer.layer_lv)
        if layer.base_lv is not None:
            lvm.remove("gc", layer.base_lv)
        state = state.model_copy(
            update={"layers": [x for x in state.layers if x.layer_lv != layer.layer_lv]}
        )
        self.files.save_state(state)
        log.info("removed layer %s", layer.layer_lv)
        return state

    def remove(self, version: str) -> str:
        """Remove one layer by version (never one that boots or may boot next)."""
        state = self.state()
        layer = state.by_version(version)
        if layer is None:
            raise UpdaterError(f"no layer has version {version}", "remove")
        if layer.layer_lv in self._protected(state):
            raise UpdaterError(
                f"{version} is the default, running or pending layer (or its fallback): roll "
                "back first",
                "remove",
            )
        self._drop(state, layer)
        return layer.layer_lv

    def gc(self) -> list[str]:
        """Remove the oldest layers beyond ``keep_layers``, never a protected one."""
        state = self.state()
        doomed = state.gc_candidates(self.config.keep_layers, self._protected(state))
        for layer in doomed:
            state = self._drop(state, layer)
        return [x.layer_lv for x in doomed]
