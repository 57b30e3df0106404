"""Applying one release as a new layer, one journaled step at a time (docs/updater.md, "Apply").

The order is what keeps a host bootable: everything is built beside the running layer, and only
``switch_default`` changes what boots, with a boot counter. Each step is recorded in
``apply.json`` (written atomically) after it has done its work; a process killed anywhere is
rerun with the same release to resume, or with another to clean up first. Steps are written so
that doing one twice is harmless, and a half-done /etc merge is redone from a fresh snapshot.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from imgline.core.artifacts import hash_stream
from imgline.core.crashpoint import crash_hook
from imgline.core.fsutil import write_atomic
from imgline.core.liveimg import FACTORY_ETC
from imgline.schemas.payloads import utcnow
from imgline.updater import image as img
from imgline.updater.adapters.bootloader import BootLoader
from imgline.updater.adapters.lvm import BASE_TAG, LAYER_TAG, VOLUME_TAG, Lvm, check_name
from imgline.updater.adapters.system import System, same_device
from imgline.updater.domain import bootentry, etcmerge, journal
from imgline.updater.domain.bootentry import Entry
from imgline.updater.domain.journal import ApplyJournal, HostState, Layer, Pending
from imgline.updater.errors import UpdaterError
from imgline.updater.settings import HostConfig

log = logging.getLogger(__name__)

#: Test and drill hook: the apply kills itself with SIGKILL right after doing this step's work
#: and before journaling it (the worst moment). Read from the environment only.
CRASH_ENV = "IMGLINE_UPDATER_CRASH_AFTER"


@dataclass(frozen=True)
class Release:
    """What to apply: a verified download (or an admin's file with its expected sha256)."""

    name: str
    version: str
    build_id: str
    sha256: str
    image: Path


def base_lv(name: str, version: str) -> str:
    return check_name(f"{name}-{version}")


def layer_lv(name: str, version: str) -> str:
    return check_name(f"{name}-{version}+1")


def layer_options(
    vg: str, layer: str, image_args: str, host_args: str, volumes: Iterable[str] = ()
) -> str:
    """A layer's kernel command line: its root LV and the host's shared volumes, then the
    image's args, then the host's.

    The initramfs activates the shared volumes (``/var``, ``/var/log``, ...) with the root.
    Left to lvm's event activation in the booted system, one of them now and then never showed
    up on a loaded machine: the boot waited for /dev/imgline/var_log and ended in emergency
    mode, before any health check could roll it back."""
    lvs = [layer, *sorted(volumes)]
    own = f"root=/dev/{vg}/{layer} " + " ".join(f"rd.lvm.lv={vg}/{lv}" for lv in lvs) + " rw"
    return " ".join(a for a in (own, image_args, host_args) if a)


def volume_lvs(lvm: Lvm) -> list[str]:
    """The host's shared volumes, as its install made them (tagged)."""
    return sorted(lv.name for lv in lvm.list() if VOLUME_TAG in lv.tags)


class HostFiles:
    """Where a host keeps its state: ``state.json`` and the apply journal."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.state = state_dir / "state.json"
        self.journal = state_dir / "apply.json"

    def load_state(self) -> HostState:
        state = journal.load_json(self.state, HostState)
        if state is None:
            raise UpdaterError(
                f"{self.state} is missing: this host was not installed by imgline "
                "(run `imgline-updater install`)",
                "verify",
            )
        return state

    def save_state(self, state: HostState) -> None:
        journal.save_json(self.state, state)


class Applier:
    """Builds the next layer beside the running one and makes it the default."""

    def __init__(
        self,
        config: HostConfig,
        system: System,
        lvm: Lvm,
        loader: BootLoader,
        files: HostFiles,
        *,
        boot_dir: Path,
        clock: Callable[[], datetime] = utcnow,
        running_root: Path = Path("/"),
    ) -> None:
        self.config = config
        self.system = system
        self.lvm = lvm
        self.loader = loader
        self.files = files
        self.boot = boot_dir
        self.clock = clock
        self.running_root = running_root
        self._crash = crash_hook(CRASH_ENV)

    # --- the whole apply ----------------------------------------------------------------------

    def apply(self, release: Release) -> Layer:
        """Apply ``release``; resume its journal if a previous run was cut short."""
        state = self.files.load_state()
        jr = journal.load_json(self.files.journal, ApplyJournal)
        if jr is not None and (jr.name, jr.version) != (release.name, release.version):
            log.warning("an apply of %s %s was left unfinished: cleaning up", jr.name, jr.version)
            self.abort(jr)
            jr = None
        if jr is None:
            jr = self._new_journal(release, state)
        elif jr.next_step() == "merge_etc":
            # a merge may have been cut half-way: redo it on a fresh snapshot of the base
            jr = jr.model_copy(update={"done": jr.done[: jr.done.index("snapshot")]})
        journal.save_json(self.files.journal, jr)
        started = time.monotonic()
        while (step := jr.next_step()) is not None:
            t0 = time.monotonic()
            try:
                jr = getattr(self, f"_{step}")(jr, release)
            except UpdaterError as exc:
                exc.step = exc.step or step
                self._fail(jr, step, exc)
                raise
            except OSError as exc:
                error = UpdaterError(f"{step} failed: {exc}", step)
                self._fail(jr, step, error)
                raise error from exc
            self._crash(step)
            jr = jr.mark_done(step)
            journal.save_json(self.files.journal, jr)
            log.info(
                "apply %s %s: %s done in %.1fs", jr.name, jr.version, step, time.monotonic() - t0
            )
        layer = self._commit(jr, state)
        log.info(
            "applied %s %s as %s in %.1fs",
            jr.name,
            jr.version,
            jr.layer_lv,
            time.monotonic() - started,
        )
        return layer

    def _new_journal(self, release: Release, state: HostState) -> ApplyJournal:
        if state.by_version(release.version) is not None:
            raise UpdaterError(
                f"{release.name} {release.version} is already a layer here", "verify"
            )
        current = state.layer(state.default_layer) if state.default_layer else None
        return ApplyJournal(
            name=release.name,
            version=release.version,
            build_id=release.build_id,
            image_sha256=release.sha256,
            image_path=str(release.image),
            base_lv=base_lv(release.name, release.version),
            layer_lv=layer_lv(release.name, release.version),
            entry_id=bootentry.entry_id(release.name, release.version),
            from_layer=current.layer_lv if current else None,
            from_entry=current.entry_id if current else None,
            from_version=current.version if current else None,
            started=self.clock(),
            done=[],
            notes={},
        )

    def _fail(self, jr: ApplyJournal, step: str, exc: UpdaterError) -> None:
        """A failed step: undo what this apply made, so the next try starts clean."""
        log.error("apply %s %s failed at %s: %s", jr.name, jr.version, step, exc)
        if jr.switched:
            return
        self.abort(jr)

    def abort(self, jr: ApplyJournal | None = None) -> None:
        """Remove what an unfinished apply made (never anything that boots) and its journal."""
        jr = jr or journal.load_json(self.files.journal, ApplyJournal)
        if jr is None:
            return
        if jr.switched:
            raise UpdaterError(
                f"the apply of {jr.version} already switched the default: use rollback", "abort"
            )
        if jr.from_layer is not None and "boot_entry" in jr.done:
            # the switch may have happened before the crash: the old layer boots again first
            self._restore_default(jr)
        for item in journal.undo_plan(jr):
            kind, _, what = item.partition(":")
            try:
                if kind == "entry":
                    self.loader.remove(what)
                elif kind == "bootdir":
                    shutil.rmtree(self.boot / "imgline" / what, ignore_errors=True)
                elif kind == "lv":
                    self.lvm.remove("abort", what)
            except (UpdaterError, OSError) as exc:
                log.error("cleanup of %s failed (remove it by hand): %s", item, exc)
        self.files.journal.unlink(missing_ok=True)

    def _restore_default(self, jr: ApplyJournal) -> None:
        entries = {e.id: e for e in self.loader.entries()}
        old = entries.get(jr.from_entry or "")
        if old is None:
            raise UpdaterError(
                f"the running layer {jr.from_layer} has no boot entry: fix /boot/loader/entries "
                "before cleaning up",
                "abort",
            )
        new = entries.get(jr.entry_id)
        self.loader.set_default(old, [new] if new is not None else [])

    def _commit(self, jr: ApplyJournal, state: HostState) -> Layer:
        """Record the new layer in the host state; the journal goes once the state has it."""
        layer = Layer(
            name=jr.name,
            version=jr.version,
            build_id=jr.build_id,
            base_lv=jr.base_lv,
            layer_lv=jr.layer_lv,
            entry_id=jr.entry_id,
            kernel_args=str(jr.notes.get("options", "")),
            applied=self.clock(),
        )
        layers = [x for x in state.layers if x.layer_lv != layer.layer_lv] + [layer]
        pending = None
        if jr.from_layer is not None:
            pending = Pending(
                layer_lv=jr.layer_lv,
                version=jr.version,
                from_layer_lv=jr.from_layer,
                from_version=jr.from_version or "",
                tries=self.config.boot_tries,
                since=self.clock(),
            )
        state = state.model_copy(
            update={"layers": layers, "default_layer": layer.layer_lv, "pending": pending}
        )
        self.files.save_state(state)
        self.files.journal.unlink(missing_ok=True)
        return layer

    # --- the steps, in journal.STEPS order ----------------------------------------------------

    def _verify(self, jr: ApplyJournal, release: Release) -> ApplyJournal:
        with release.image.open("rb") as f:
            got, _size = hash_stream(f)
        if got != release.sha256:
            raise UpdaterError(
                f"{release.image} has sha256 {got}, the signed release says {release.sha256}: "
                "the download is corrupt or was tampered with; it is not applied",
                "verify",
            )
        info = img.inspect(self.system, release.image)
        if (info.name, info.version, info.build_id) != (jr.name, jr.version, jr.build_id):
            raise UpdaterError(
                f"the image says it is {info.name} {info.version} (build {info.build_id[:12]}), "
                f"the release is {jr.name} {jr.version} (build {jr.build_id[:12]}): not applied",
                "verify",
            )
        options = layer_options(
            self.lvm.vg,
            jr.layer_lv,
            info.kernel_args,
            self.config.kernel_args,
            volume_lvs(self.lvm),
        )
        notes = {
            **jr.notes,
            "rootfs_bytes": info.rootfs_bytes,
            "kernel": info.kernel,
            "initrd": info.initrd,
            "options": options,
        }
        return jr.model_copy(update={"notes": notes})

    def _create_lv(self, jr: ApplyJournal, release: Release) -> ApplyJournal:
        self.lvm.remove("create_lv", jr.base_lv)  # left by a run killed in this step
        size = int(jr.notes["rootfs_bytes"]) + self.config.layout.root_extra_mib * (1 << 20)  # type: ignore[arg-type]
        self.lvm.create_thin("create_lv", jr.base_lv, size, BASE_TAG)
        return jr

    def _copy(self, jr: ApplyJournal, release: Release) -> ApplyJournal:
        """Only the blocks the file system uses are copied (e2image -ra): a mostly empty root
        costs what it holds, not its size. The fresh thin LV reads zeros everywhere else."""
        dest = self.lvm.path(jr.base_lv)
        with img.rootfs(self.system, release.image, "copy") as inner:
            self.system.run("copy", ["e2image", "-ra", "--", inner, dest])
        return jr

    def _resize(self, jr: ApplyJournal, release: Release) -> ApplyJournal:
        dev = self.lvm.path(jr.base_lv)
        self.system.run("resize", ["e2fsck", "-f", "-p", "--", dev])
        self.system.run("resize", ["resize2fs", "--", dev])
        return jr

    def _protect_base(self, jr: ApplyJournal, release: Release) -> ApplyJournal:
        self.lvm.protect("protect_base", jr.base_lv)
        return jr

    def _snapshot(self, jr: ApplyJournal, release: Release) -> ApplyJournal:
        self.lvm.remove("snapshot", jr.layer_lv)
        self.lvm.snapshot("snapshot", jr.base_lv, jr.layer_lv, LAYER_TAG)
        return jr

    def _new_uuid(self, jr: ApplyJournal, release: Release) -> ApplyJournal:
        """Each layer's file system gets its own UUID, or two layers would look like one."""
        dev = self.lvm.path(jr.layer_lv)
        self.system.run("new_uuid", ["e2fsck", "-f", "-p", "--", dev])
        self.system.run("new_uuid", ["tune2fs", "-U", "random", "--", dev])
        return jr

    def _merge_etc(self, jr: ApplyJournal, release: Release) -> ApplyJournal:
        if jr.from_layer is None:
            return jr.model_copy(update={"notes": {**jr.notes, "etc": "first layer"}})
        with (
            self._layer_root(jr.from_layer, "merge_etc") as old,
            self.system.mounted("merge_etc", self.lvm.path(jr.layer_lv)) as new,
        ):
            base = old / FACTORY_ETC
            if not base.is_dir():
                raise UpdaterError(
                    f"the running layer has no {FACTORY_ETC}: its /etc cannot be merged "
                    "(was it built by imgline?)",
                    "merge_etc",
                )
            plan = etcmerge.plan(
                etcmerge.scan(base), etcmerge.scan(old / "etc"), etcmerge.scan(new / "etc")
            )
            etcmerge.apply_plan(plan, old / "etc", new / "etc")
        if plan.conflicts:
            log.warning("/etc conflicts (vendor version saved as .imgnew): %s", plan.conflicts)
        notes = {
            **jr.notes,
            "etc_kept": len(plan.copy_admin),
            "etc_removed": len(plan.remove),
            "etc_conflicts": list(plan.conflicts),
        }
        return jr.model_copy(update={"notes": notes})

    def _boot_files(self, jr: ApplyJournal, release: Release) -> ApplyJournal:
        dest = self.boot / "imgline" / jr.layer_lv
        with self.system.mounted("boot_files", self.lvm.path(jr.layer_lv), options="ro") as root:
            files = [
                (root / str(src).lstrip("/"), name)
                for src, name in (
                    (jr.notes["kernel"], "vmlinuz"),
                    (jr.notes["initrd"], "initrd.img"),
                )
            ]
            for path, _name in files:
                if not path.is_file():
                    raise UpdaterError(
                        f"the image has no {path.name}: it cannot boot", "boot_files"
                    )
            needed = sum(path.stat().st_size for path, _name in files)
            free = shutil.disk_usage(self.boot).free
            if needed > free:
                raise UpdaterError(
                    f"{self.boot} has {free >> 20} MiB free, and the kernel and initramfs of "
                    f"{jr.name} {jr.version} need {needed >> 20} MiB: remove an old layer "
                    "(`imgline-updater remove VERSION`) or give the boot partition more room "
                    "(layout.boot_mib at install)",
                    "boot_files",
                )
            for path, name in files:
                write_atomic(dest / name, path.read_bytes(), parents=True)
        return jr

    def _boot_entry(self, jr: ApplyJournal, release: Release) -> ApplyJournal:
        self.loader.add(self._entry(jr))
        return jr

    def _switch_default(self, jr: ApplyJournal, release: Release) -> ApplyJournal:
        fallback = None
        if jr.from_layer is not None:
            fallback = next((e for e in self.loader.entries() if e.id == jr.from_entry), None)
            if fallback is None:
                raise UpdaterError(
                    f"the running layer {jr.from_layer} has no boot entry: refusing to switch "
                    "without a fallback",
                    "switch_default",
                )
        self.loader.switch(self._entry(jr), fallback, self.config.boot_tries)
        return jr

    # --- helpers ------------------------------------------------------------------------------

    def _entry(self, jr: ApplyJournal) -> Entry:
        return Entry(
            id=jr.entry_id,
            title=f"{jr.name} {jr.version}",
            version=jr.version,
            linux=f"/imgline/{jr.layer_lv}/vmlinuz",
            initrd=f"/imgline/{jr.layer_lv}/initrd.img",
            options=str(jr.notes["options"]),
        )

    @contextmanager
    def _layer_root(self, lv: str, step: str) -> Iterator[Path]:
        """The root of layer ``lv``: the running root if that is it, else mounted read-only."""
        if same_device(self.running_root, self.lvm.path(lv)):
            yield self.running_root
            return
        self.lvm.activate(step, lv)
        with self.system.mounted(step, self.lvm.path(lv), options="ro") as root:
            yield root
