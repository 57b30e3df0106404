"""Health checks and what follows from them at boot (docs/updater.md, "Health and rollback").

The checks are pluggable, greenboot-style: units that must be active, disk and thin-pool use
under thresholds, and any executable in the drop-in directory. ``settle`` runs once per boot
from ``imgline-health.service``; with a pending layer it either blesses it (``host.upgraded``)
or marks it bad and goes back to the previous layer (``host.rolled_back``). A boot that never
got here is caught by the boot loader's counter, and ``settle`` on the old layer reports it.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from imgline.core import hostcheck
from imgline.schemas import payloads as p
from imgline.schemas.payloads import utcnow
from imgline.updater.adapters.bootloader import BootLoader
from imgline.updater.adapters.lvm import Lvm
from imgline.updater.apply import HostFiles
from imgline.updater.domain.bootentry import Entry
from imgline.updater.domain.journal import HostState, LastResult, Layer
from imgline.updater.errors import UpdaterError
from imgline.updater.settings import HealthConfig

log = logging.getLogger(__name__)


#: One check's outcome: the shared script's, or the updater's own thin-pool check.
Check = hostcheck.HostCheck


def _run(argv: list[str], timeout: float) -> tuple[int, str]:
    try:
        done = subprocess.run(  # noqa: S603 - argv list from config, no shell
            argv, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, str(exc)
    return done.returncode, (done.stdout + done.stderr).strip()


def host_checks(config: HealthConfig, mounts: tuple[str, ...]) -> list[Check]:
    """Units active (waiting up to ``settle_seconds``), no failed unit, disk use, drop-ins:
    the shared script (``imgline.core.hostcheck``) that the tester also runs in its guests."""
    args = hostcheck.arguments(
        units=config.units,
        mounts=mounts,
        settle_seconds=config.settle_seconds,
        disk_max_percent=config.disk_max_percent,
        drop_in_dir=str(config.drop_in_dir),
        script_timeout_seconds=config.check_timeout_seconds,
    )
    scripts = len(list(config.drop_in_dir.iterdir())) if config.drop_in_dir.is_dir() else 0
    limit = config.settle_seconds + config.check_timeout_seconds * (scripts + 2) + 30
    code, out = _run(["sh", "-c", hostcheck.SCRIPT, "imgline-hostcheck", *args], limit)
    report = hostcheck.parse(out)
    checks = list(report.checks)
    if not report.complete:
        checks.append(Check("host-checks", False, f"the checks did not finish (exit {code})"))
    return checks


def pool_check(config: HealthConfig, lvm: Lvm) -> Check:
    try:
        data, meta = lvm.pool_percent()
    except UpdaterError as exc:
        return Check("thin-pool", False, str(exc))
    worst = max(data, meta)
    return Check(
        "thin-pool",
        worst <= config.thin_pool_max_percent,
        f"data {data:.0f}%, metadata {meta:.0f}% (limit {config.thin_pool_max_percent}%)",
    )


def run_checks(config: HealthConfig, lvm: Lvm | None) -> list[Check]:
    checks = host_checks(config, ("/", "/var"))
    return [*checks, pool_check(config, lvm)] if lvm is not None else checks


def summary(checks: list[Check]) -> str:
    bad = [c for c in checks if not c.ok]
    if not bad:
        return f"all {len(checks)} checks passed"
    return "; ".join(f"{c.name}: {c.detail.splitlines()[0] if c.detail else 'failed'}" for c in bad)


@dataclass(frozen=True)
class Settled:
    """What ``settle`` decided: the report to send and whether the host must reboot."""

    event: p.HostEvent | None
    reboot: bool


@dataclass(frozen=True)
class BootSettler:
    """One boot's verdict on the pending layer, for one host."""

    host_id: str
    state: HostState
    loader: BootLoader
    files: HostFiles

    def settle(self, running: Layer | None, checks: Callable[[], list[Check]]) -> Settled:
        """Bless, roll back, or report a fallback the boot loader already made."""
        state, pending = self.state, self.state.pending
        if pending is None:
            return Settled(None, reboot=False)
        new = state.layer(pending.layer_lv)
        old = state.layer(pending.from_layer_lv)
        if new is None or old is None:
            raise UpdaterError(
                f"{self.files.state} names a pending layer it does not list", "health"
            )
        base: dict[str, Any] = {
            "host_id": self.host_id,
            "name": state.name,
            "stream": state.stream,
            "from_version": old.version,
            "to_version": new.version,
            "duration_seconds": max(0.0, (utcnow() - pending.since).total_seconds()),
        }
        if running is None or running.layer_lv != new.layer_lv:
            # the boot loader fell back (the counter ran out) or the admin booted the old entry
            why = (
                f"{new.version} did not finish booting within {pending.tries} tries; the boot "
                f"loader went back to {old.version}"
            )
            return self._roll_back(new, old, base, "boot", why)
        results = checks()
        for c in results:
            log.info("health %s: %s %s", c.name, "ok" if c.ok else "FAILED", c.detail)
        if not all(c.ok for c in results):
            return self._roll_back(new, old, base, "health", summary(results))
        self.loader.bless(self._entry(new))
        result = LastResult(
            kind="upgraded", version=new.version, from_version=old.version, at=utcnow()
        )
        self.files.save_state(
            state.model_copy(
                update={"pending": None, "default_layer": new.layer_lv, "last_result": result}
            )
        )
        return Settled(p.HostUpgraded(**base, layer=new.layer_lv), reboot=False)

    def _entry(self, layer: Layer) -> Entry:
        entry = next((e for e in self.loader.entries() if e.id == layer.entry_id), None)
        if entry is None:
            raise UpdaterError(f"layer {layer.layer_lv} has no boot entry", "health")
        return entry

    def _roll_back(
        self, new: Layer, old: Layer, base: dict[str, Any], step: str, error: str
    ) -> Settled:
        good = self._entry(old)
        bad = next((e for e in self.loader.entries() if e.id == new.entry_id), None)
        if bad is not None:
            self.loader.mark_bad(bad, good)
        self.loader.set_default(good, [bad] if bad is not None else [])
        result = LastResult(
            kind="rolled_back",
            version=new.version,
            from_version=old.version,
            step=step,
            error=error[:2000],
            at=utcnow(),
        )
        self.files.save_state(
            self.state.model_copy(
                update={
                    "pending": None,
                    "default_layer": old.layer_lv,
                    "bad_versions": sorted({*self.state.bad_versions, new.version}),
                    "last_result": result,
                }
            )
        )
        event = p.HostRolledBack(**base, step=step, error=error[:2000] or "unhealthy")
        return Settled(event, reboot=step == "health")
