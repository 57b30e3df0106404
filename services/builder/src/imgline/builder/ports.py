"""Interfaces the builder's handler needs; adapters implement them, tests fake them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from imgline.builder.domain.plan import BuildPlan
from imgline.core.userns import BuildUser


@dataclass(frozen=True)
class BuildOutput:
    """What a backend made: a root tree (mmdebstrap) or a finished ext4 image (lorax)."""

    tree: Path | None = None
    fsimage: Path | None = None
    #: the build user whose namespace owns ``tree`` (unshare mode): every later step that
    #: reads its owners or changes it runs in that namespace, and it removes the tree
    owner: BuildUser | None = None


class Backend(Protocol):
    """Turns a BuildPlan (and the kickstart it came from) into a root file system."""

    name: str

    def check_available(self) -> None:
        """Raise ``BackendUnavailableError`` saying what is missing on this host."""

    def build(self, plan: BuildPlan, kickstart: Path, workdir: Path, log: IO[str]) -> BuildOutput:
        """Build into ``workdir``; every command and its output goes to ``log``."""
        ...
