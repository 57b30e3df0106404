"""One check's outcome, and the rules for running checks cheapest first.

A check that fails makes later checks meaningless only when they would read the same broken
thing: an image whose checksum or squashfs is wrong is not opened further; a missing package
does not stop the boot check (the boot tells the user something the package list cannot).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["passed", "failed", "error", "skipped"]


class CheckResult(BaseModel):
    """What one check found. ``error`` means the check itself could not run (a tool crashed)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, description="dotted: integrity.sha256, content.packages, …")
    status: Status
    duration_seconds: float = Field(ge=0)
    detail: str = ""
    attachments: tuple[Path, ...] = ()  # files stored beside the report (console logs)

    @property
    def ok(self) -> bool:
        return self.status in ("passed", "skipped")


def verdict(results: list[CheckResult]) -> bool:
    """Passed when at least one check passed and none failed or errored."""
    return any(r.status == "passed" for r in results) and all(r.ok for r in results)


def skipped(name: str, reason: str) -> CheckResult:
    return CheckResult(name=name, status="skipped", duration_seconds=0.0, detail=reason)
