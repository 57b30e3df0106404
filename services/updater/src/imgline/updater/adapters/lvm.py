"""lvm2 as the updater uses it: one VG, one thin pool, thin LVs for bases, layers and /var.

Names reach lvm only after ``check_name`` and always after ``--`` or as ``vg/lv`` operands, so
a release name can never become an option. Tags record what each LV is (``imgline:base``,
``imgline:layer``, ``imgline:volume``), so ``status`` and GC can tell ours from the admin's.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from imgline.updater.adapters.system import System
from imgline.updater.errors import UpdaterError

BASE_TAG = "imgline:base"
LAYER_TAG = "imgline:layer"
VOLUME_TAG = "imgline:volume"
POOL_TAG = "imgline:pool"

# lvm2's own rule for VG and LV names, minus a leading '-' and the reserved names.
_NAME = re.compile(r"^[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,126}$")
_RESERVED = (
    "snapshot",
    "pvmove",
    "_cdata",
    "_cmeta",
    "_corig",
    "_mlog",
    "_mimage",
    "_rimage",
    "_rmeta",
    "_tdata",
    "_tmeta",
    "_vorigin",
    "_vdata",
)


def check_name(name: str, what: str = "LV") -> str:
    """``name`` if lvm accepts it as a VG/LV name, else an error saying which characters may be
    used (a version like ``1.0~rc1`` is valid for the repository but not for lvm)."""
    if not _NAME.match(name) or name in (".", "..") or any(r in name for r in _RESERVED):
        raise UpdaterError(
            f"{what} name {name!r} is not valid for lvm2: use letters, digits and + _ . - "
            "(not first), at most 127 characters",
            "verify",
        )
    return name


@dataclass(frozen=True)
class LogicalVolume:
    name: str
    tags: frozenset[str]
    size_bytes: int
    origin: str
    read_only: bool
    active: bool


class Lvm:
    """One volume group, driven through the lvm2 command-line tools."""

    def __init__(self, system: System, vg: str, pool: str) -> None:
        self.system = system
        self.vg = check_name(vg, "VG")
        self.pool = check_name(pool, "thin pool")

    def path(self, lv: str) -> Path:
        return Path("/dev") / self.vg / check_name(lv)

    def _lv(self, lv: str) -> str:
        return f"{self.vg}/{check_name(lv)}"

    # --- install ------------------------------------------------------------------------------

    def create_vg(self, step: str, pv: Path) -> None:
        self.system.run(step, ["pvcreate", "--yes", "--force", "--", pv])
        self.system.run(step, ["vgcreate", "--yes", "--", self.vg, pv])

    def create_pool(self, step: str, percent_free: int = 90) -> None:
        """The thin pool over most of the VG; the rest stays free for its metadata to grow."""
        self.system.run(
            step,
            [
                "lvcreate",
                "--yes",
                "--type",
                "thin-pool",
                "--extents",
                f"{percent_free}%FREE",
                "--addtag",
                POOL_TAG,
                "--name",
                self.pool,
                "--",
                self.vg,
            ],
        )

    # --- thin LVs -----------------------------------------------------------------------------

    def create_thin(self, step: str, lv: str, size_bytes: int, tag: str) -> Path:
        mib = -(-size_bytes // (1 << 20))
        self.system.run(
            step,
            [
                "lvcreate",
                "--yes",
                "--thin",
                "--virtualsize",
                f"{mib}m",
                "--addtag",
                tag,
                "--setactivationskip",
                "n",
                "--name",
                check_name(lv),
                "--",
                f"{self.vg}/{self.pool}",
            ],
        )
        return self.path(lv)

    def protect(self, step: str, lv: str) -> None:
        """A base never changes again: read-only, skipped at activation, tagged. (lvchange
        fails on an LV that is read-only already: a rerun after a crash must not.)"""
        current = self.get(lv)
        if current is None:
            raise UpdaterError(f"{self.vg}/{lv} is missing: it cannot be protected", step)
        if not current.read_only:
            self.system.run(step, ["lvchange", "--permission", "r", "--", self._lv(lv)])
        self.system.run(step, ["lvchange", "--setactivationskip", "y", "--", self._lv(lv)])

    def snapshot(self, step: str, origin: str, lv: str, tag: str) -> Path:
        """A writable thin snapshot of ``origin``, active now and at every boot."""
        self.system.run(
            step,
            [
                "lvcreate",
                "--yes",
                "--snapshot",
                "--setactivationskip",
                "n",
                "--permission",
                "rw",
                "--addtag",
                tag,
                "--name",
                check_name(lv),
                "--",
                self._lv(origin),
            ],
        )
        self.activate(step, lv)
        return self.path(lv)

    def activate(self, step: str, lv: str) -> None:
        self.system.run(
            step, ["lvchange", "--activate", "y", "--ignoreactivationskip", "--", self._lv(lv)]
        )

    def deactivate(self, step: str, lv: str) -> None:
        self.system.run(step, ["lvchange", "--activate", "n", "--", self._lv(lv)])

    def remove(self, step: str, lv: str) -> None:
        if self.get(lv) is not None:
            self.system.run(step, ["lvremove", "--yes", "--force", "--", self._lv(lv)])

    # --- reading ------------------------------------------------------------------------------

    def list(self) -> list[LogicalVolume]:
        out = self.system.run(
            "status",
            [
                "lvs",
                "--reportformat",
                "json",
                "--units",
                "b",
                "--nosuffix",
                "-o",
                "lv_name,lv_tags,lv_size,origin,lv_permissions,lv_active",
                "--",
                self.vg,
            ],
        )
        rows = json.loads(out)["report"][0]["lv"]
        return [
            LogicalVolume(
                name=row["lv_name"],
                tags=frozenset(t for t in row["lv_tags"].split(",") if t),
                size_bytes=int(row["lv_size"] or 0),
                origin=row["origin"],
                read_only="read-only" in row["lv_permissions"],
                active=row["lv_active"] == "active",
            )
            for row in rows
        ]

    def get(self, lv: str) -> LogicalVolume | None:
        return next((v for v in self.list() if v.name == lv), None)

    def pool_percent(self) -> tuple[float, float]:
        """(data %, metadata %) of the thin pool: what the health check bounds."""
        out = self.system.run(
            "health",
            [
                "lvs",
                "--reportformat",
                "json",
                "-o",
                "data_percent,metadata_percent",
                "--",
                f"{self.vg}/{self.pool}",
            ],
        )
        row = json.loads(out)["report"][0]["lv"][0]
        return float(row["data_percent"] or 0), float(row["metadata_percent"] or 0)
