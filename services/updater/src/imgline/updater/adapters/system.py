"""Running the host's tools for the updater: every command is logged and a failure becomes an
``UpdaterError`` naming the step, so a report says where an apply stopped, not just "exit 1".

The log goes to ``<state_dir>/logs/`` on the host (docs/updater.md, "Logs").
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from imgline.core.runner import CommandError, run
from imgline.updater.errors import UpdaterError


class System:
    """The commands one apply or install runs, all into one log file."""

    def __init__(self, log: IO[str] | None = None) -> None:
        self.log = log

    def run(self, step: str, argv: Sequence[str | Path], *, input_text: str | None = None) -> str:
        try:
            return run(argv, self.log, input_text=input_text)
        except CommandError as exc:
            raise UpdaterError(str(exc), step) from exc

    @contextmanager
    def mounted(
        self, step: str, device: Path, *, options: str = "", fstype: str | None = None
    ) -> Iterator[Path]:
        """``device`` mounted on a fresh temporary directory for the block, unmounted after
        (lazily if something still holds it, so a failed step never leaves a busy mount)."""
        where = Path(tempfile.mkdtemp(prefix="imgline-mnt-"))
        argv: list[str | Path] = ["mount"]
        if fstype:
            argv += ["-t", fstype]
        if options:
            argv += ["-o", options]
        self.run(step, [*argv, "--", device, where])
        try:
            yield where
        finally:
            try:
                run(["umount", "--", where], self.log)
            except CommandError:
                run(["umount", "--lazy", "--", where], self.log)
            where.rmdir()


def same_device(mounted_at: Path, device: Path) -> bool:
    """Whether the file system at ``mounted_at`` lives on block device ``device``."""
    try:
        return os.stat(mounted_at).st_dev == os.stat(device).st_rdev
    except OSError:
        return False
