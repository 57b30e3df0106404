"""The apply journal and the host state: what survives a crash or a power cut mid-apply.

An apply is a fixed sequence of steps (``STEPS``); the journal records which are done so a rerun
resumes where it stopped, and so an abandoned apply can be undone exactly (``undo_plan``). Only
``switch_default`` changes what boots, so until it is done everything is safe to throw away.
Both files are written atomically: after a crash a file holds either the old or the new text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from imgline.core.fsutil import write_atomic
from imgline.schemas.payloads import (
    BuildId,
    ImageName,
    Sha256Hex,
    StreamName,
    UtcDatetime,
    Version,
)
from imgline.updater.errors import UpdaterError
from imgline.updater.settings import BootLoader

STEPS: tuple[str, ...] = (
    "verify",
    "create_lv",
    "copy",
    "resize",
    "protect_base",
    "snapshot",
    "new_uuid",
    "merge_etc",
    "boot_files",
    "boot_entry",
    "switch_default",
)

# What lvm2 accepts as an LV name (no leading '-', which lvcreate would read as an option).
LvName = Annotated[str, Field(pattern=r"^[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,127}$")]
EntryId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+~-]{0,200}$")]
NoteValue = str | int | list[str]

M = TypeVar("M", bound=BaseModel)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ApplyJournal(_Model):
    """One apply in progress: the release, the names it makes, and the steps done so far."""

    name: ImageName
    version: Version
    build_id: BuildId
    image_sha256: Sha256Hex
    image_path: str
    base_lv: LvName
    layer_lv: LvName
    entry_id: EntryId
    from_layer: LvName | None
    from_version: Version | None
    from_entry: EntryId | None = Field(
        default=None, description="the running layer's boot entry: the fallback of the switch"
    )
    started: UtcDatetime
    done: list[str] = Field(default_factory=list)
    notes: dict[str, NoteValue] = Field(
        default_factory=dict, description="step outputs, e.g. the layer size or etc conflicts"
    )
    failed_step: str | None = None
    error: str | None = None

    @model_validator(mode="after")
    def _done_in_order(self) -> ApplyJournal:
        if (self.from_layer is None) != (self.from_entry is None):
            raise ValueError("from_layer and from_entry are given together or not at all")
        if tuple(self.done) != STEPS[: len(self.done)]:
            raise ValueError(
                f"done steps {self.done} are not a prefix of the apply steps {list(STEPS)}"
            )
        return self

    def next_step(self) -> str | None:
        """The step to run next; None once every step is done."""
        return STEPS[len(self.done)] if len(self.done) < len(STEPS) else None

    def mark_done(self, step: str) -> ApplyJournal:
        """A copy with ``step`` done; steps finish strictly in order or resuming would skip one."""
        expected = self.next_step()
        if step != expected:
            raise UpdaterError(
                f"apply of {self.name} {self.version}: step {step!r} cannot be done now, the "
                f"next step is {expected!r}; this is a bug in the updater: report it, then run "
                "the apply again (it resumes from the journal)",
                step=step,
            )
        return self.model_copy(update={"done": [*self.done, step]})

    @property
    def switched(self) -> bool:
        """Whether the boot loader already points at the new layer (no undo past this)."""
        return "switch_default" in self.done


class Layer(_Model):
    """One applied release: its read-only base LV, its writable layer LV and its boot entry."""

    name: ImageName
    version: Version
    build_id: BuildId
    base_lv: LvName | None = Field(
        description="None for a layer anaconda installed: it copied files, so no pristine base"
    )
    layer_lv: LvName
    entry_id: EntryId
    kernel_args: str
    applied: UtcDatetime


class Pending(_Model):
    """A layer booted on trial: the boot counter runs until the health check marks it good."""

    layer_lv: LvName
    version: Version
    from_layer_lv: LvName
    from_version: Version
    tries: int = Field(ge=0)
    since: UtcDatetime


class LastResult(_Model):
    """The outcome of the last apply, install or rollback, for ``status`` and the reports."""

    kind: Literal["upgraded", "upgrade_failed", "rolled_back", "installed"]
    version: Version
    from_version: Version | None = None
    step: str | None = None
    error: str | None = None
    at: UtcDatetime


class HostState(_Model):
    """Everything the updater knows about this host's layers (``state.json``)."""

    format: Literal["imgline-host/1"] = "imgline-host/1"
    name: ImageName
    stream: StreamName
    boot_loader: BootLoader
    vg: str
    layers: list[Layer] = Field(description="oldest first")
    default_layer: LvName | None = Field(
        default=None, description="None until install's first layer"
    )
    pending: Pending | None = None
    bad_versions: list[str] = Field(default_factory=list)
    last_result: LastResult | None = None

    @model_validator(mode="after")
    def _consistent(self) -> HostState:
        names = [x.layer_lv for x in self.layers]
        if len(set(names)) != len(names):
            raise ValueError(f"layers are listed twice: {names}")
        if self.default_layer is not None and self.default_layer not in names:
            raise ValueError(f"default_layer {self.default_layer!r} is not one of {names}")
        if self.pending is not None and self.pending.layer_lv not in names:
            raise ValueError(f"the pending layer {self.pending.layer_lv!r} is not one of {names}")
        return self

    def layer(self, lv: str) -> Layer | None:
        return next((x for x in self.layers if x.layer_lv == lv), None)

    def by_version(self, version: str) -> Layer | None:
        return next((x for x in self.layers if x.version == version), None)

    def running_default(self) -> Layer:
        """The layer the boot loader boots by default (the validator guarantees it is listed)."""
        found = None if self.default_layer is None else self.layer(self.default_layer)
        if found is None:  # only reachable through model_copy, which skips validation
            raise UpdaterError(
                f"the host state names {self.default_layer} as default but has no such layer; "
                "run `imgline-updater status` to rebuild the state from the volume group",
                step="state",
            )
        return found

    def gc_candidates(self, keep: int, protect: set[str]) -> list[Layer]:
        """Layers to remove so at most ``keep`` remain, oldest first; never the default, the one
        on trial nor ``protect`` (e.g. the layer booted right now), even if more then remain."""
        if keep < 1:
            raise UpdaterError(f"keep must be at least 1, not {keep}: a host needs a layer")
        spared = {*protect} | ({self.default_layer} if self.default_layer else set())
        if self.pending is not None:
            spared.add(self.pending.layer_lv)
        excess = len(self.layers) - keep
        if excess <= 0:
            return []
        return [x for x in self.layers if x.layer_lv not in spared][:excess]


def save_json(path: Path, model: BaseModel) -> None:
    """Write ``model`` to ``path`` atomically and durably: a crash leaves the old file or the new
    one, never half of one, and the new name survives a power cut once this returns."""
    data = model.model_dump_json(indent=2).encode() + b"\n"
    try:
        write_atomic(path, data)
    except OSError as exc:
        raise UpdaterError(
            f"cannot write {path}: {exc}; check that {path.parent} exists, is writable and its "
            "file system is not full or read-only",
            step="state",
        ) from exc


def load_json(path: Path, model: type[M]) -> M | None:
    """Read ``path`` as ``model``; None if it does not exist (nothing recorded yet)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UpdaterError(
            f"cannot read {path}: {exc}; check its permissions and the file system", step="state"
        ) from exc
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the file"
        raise UpdaterError(
            f"{path} is corrupt ({where}: {first['msg']}); move it aside, then run "
            "`imgline-updater status` or rerun the command to rebuild it",
            step="state",
        ) from exc


_UNDO: dict[str, str] = {
    "create_lv": "lv:{base_lv}",
    "snapshot": "lv:{layer_lv}",
    "boot_files": "bootdir:{layer_lv}",
    "boot_entry": "entry:{entry_id}",
}


def undo_plan(journal: ApplyJournal) -> list[str]:
    """What an unfinished apply made, newest first, as ``kind:name`` items for the caller to
    remove: ``entry:<id>``, ``bootdir:<layer>`` (/boot/imgline/<layer>) and ``lv:<name>``.

    The step that was running when the apply stopped counts too: it may have made its resource
    before failing (or before the power went), and the names are this release's own, which the
    host has no layer of. So a remover must accept a resource that is already gone.
    """
    if journal.switched:
        raise UpdaterError(
            f"the apply of {journal.name} {journal.version} already switched the default boot "
            "entry, so it cannot be undone: roll back to the previous layer instead",
            step="abort",
        )
    fields = {
        "base_lv": journal.base_lv,
        "layer_lv": journal.layer_lv,
        "entry_id": journal.entry_id,
    }
    started = [*journal.done]
    if (running := journal.next_step()) is not None:
        started.append(running)
    return [_UNDO[step].format(**fields) for step in reversed(started) if step in _UNDO]
