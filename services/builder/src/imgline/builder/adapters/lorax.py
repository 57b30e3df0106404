"""The livemedia-creator backend (lorax): only on Fedora/EL hosts, which ship it.

``livemedia-creator --make-fsimage --no-virt`` runs anaconda in a directory install and leaves
an ext4 image; the builder then adds imgline's metadata and squashes it like any other.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import IO, Any

from imgline.builder.domain.plan import BuildPlan
from imgline.builder.errors import BackendError, BackendUnavailableError
from imgline.builder.ports import BuildOutput
from imgline.core import liveimg
from imgline.core.runner import CommandError, run

IMAGE_NAME = "rootfs.img"


def lmc_command(kickstart: Path, workdir: Path, releasever: str | None = None) -> list[str]:
    """The exact livemedia-creator command line. The fs size comes from the kickstart's
    ``part /``; the image lands in ``<workdir>/lmc`` (older lorax: ``--tmp``). dnf fills the
    kickstart's ``$releasever`` from ``--releasever`` (the builder's config) and
    ``$basearch`` from the host."""
    extra = [f"--releasever={releasever}"] if releasever else []
    return [
        "livemedia-creator",
        "--make-fsimage",
        "--no-virt",
        f"--ks={kickstart}",
        f"--image-name={IMAGE_NAME}",
        f"--resultdir={workdir / 'lmc'}",
        f"--tmp={workdir / 'lmc-tmp'}",
        f"--logfile={workdir / 'livemedia-creator.log'}",
        *extra,
    ]


class LoraxBackend:
    """Wraps livemedia-creator; refuses clearly on hosts without lorax (e.g. Debian)."""

    name = "livemedia-creator"

    def __init__(self, timeout: float, releasever: str | None = None) -> None:
        self.timeout = timeout
        self.releasever = releasever

    def check_available(self) -> None:
        if shutil.which("livemedia-creator") is None:
            distro = _os_release()
            raise BackendUnavailableError(
                f"the livemedia-creator backend needs lorax, which this host ({distro}) does not "
                "have: it exists only on Fedora/EL ('dnf install lorax'); send the build to such a "
                "builder or use backend 'mmdebstrap'"
            )
        if os.geteuid() != 0:
            raise BackendUnavailableError("livemedia-creator --no-virt must run as root")

    def build(self, plan: BuildPlan, kickstart: Path, workdir: Path, log: IO[str]) -> BuildOutput:
        if plan.rootfs.size_mib is None:
            raise BackendError(
                "livemedia-creator makes the image as large as `part / --size=N`: add that "
                "line (only the mmdebstrap backend sizes an image from its content)"
            )
        (workdir / "lmc-tmp").mkdir(parents=True, exist_ok=True)
        log.write(f"# kickstart syntax checked for {len(plan.packages)} packages\n")
        try:
            run(lmc_command(kickstart, workdir, self.releasever), log, timeout=self.timeout)
        except CommandError as exc:
            raise BackendError(f"livemedia-creator failed: {exc}") from exc
        candidates = [workdir / "lmc" / IMAGE_NAME, workdir / "lmc-tmp" / IMAGE_NAME]
        image = next((c for c in candidates if c.is_file()), None)
        if image is None:
            raise BackendError(f"livemedia-creator finished but left no {IMAGE_NAME} in {workdir}")
        return BuildOutput(fsimage=image)


def _os_release() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return "unknown OS"


def prepare_fsimage(fsimage: Path, meta: dict[str, Any], workdir: Path, log: IO[str]) -> None:
    """Add imgline's metadata and factory /etc to a finished ext4 image, through a loop mount
    (lorax leaves an image, not a tree)."""
    mnt = workdir / "lmc-mnt"
    mnt.mkdir(exist_ok=True)
    run(["mount", "-o", "loop", str(fsimage), str(mnt)], log)
    try:
        liveimg.prepare_tree(mnt, meta)
    finally:
        run(["umount", str(mnt)], log)
