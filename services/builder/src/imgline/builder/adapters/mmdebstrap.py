"""The mmdebstrap backend: a Debian root tree from the plan, on any Debian-like host."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import IO

from imgline.builder.domain import debian
from imgline.builder.domain.plan import BuildPlan
from imgline.builder.errors import (
    BackendError,
    BackendTransientError,
    BackendUnavailableError,
)
from imgline.builder.ports import BuildOutput
from imgline.core.runner import CommandError, run

_POST_FAILED = re.compile(re.escape(debian.POST_FAILED) + r" (\d+) failed with status (\d+)$", re.M)
_MISSING_PKG = re.compile(
    r"(Unable to locate package \S+|Package '?\S+'? has no installation candidate"
    r"|E: Package '\S+' has no installation candidate)"
)
_NETWORK = (
    "Could not resolve",
    "Failed to fetch",
    "Temporary failure resolving",
    "Connection failed",
)


def _line(where: str) -> int | None:
    """The line of a ``file:line`` position, for ``build.failed``."""
    tail = where.rpartition(":")[2]
    return int(tail) if tail.isdigit() else None


class MmdebstrapBackend:
    """Runs ``mmdebstrap --mode=root``: needs root (or fails with that advice)."""

    name = "mmdebstrap"

    def __init__(self, suite: str, cache_dir: Path, mirror: str | None, timeout: float) -> None:
        self.suite = suite
        self.cache_dir = cache_dir
        self.mirror = mirror
        self.timeout = timeout

    def check_available(self) -> None:
        if shutil.which("mmdebstrap") is None:
            raise BackendUnavailableError(
                "the mmdebstrap backend needs mmdebstrap: apt-get install mmdebstrap"
            )
        if os.geteuid() != 0:
            raise BackendUnavailableError(
                "the mmdebstrap backend builds in root mode: run the builder as root"
            )

    def build(self, plan: BuildPlan, kickstart: Path, workdir: Path, log: IO[str]) -> BuildOutput:
        _, problems = debian.package_list(plan)
        if problems:
            raise BackendError("; ".join(problems))
        for repo in (plan.mirror, *plan.repos):
            if repo is not None and repo.baseurl is None:
                raise BackendError(
                    f"{repo.where}: the mmdebstrap backend needs a Debian mirror's URL "
                    f"({'url --url' if repo.name == 'base' else 'repo --baseurl'}=…); a mirror "
                    "list or metalink is dnf's, for the livemedia-creator backend",
                    line=_line(repo.where),
                )
        for warning in plan.warnings:
            log.write(f"# warning: {warning}\n")
        if plan.groups:
            log.write(
                "# warning: package groups are not supported by the mmdebstrap backend, "
                f"ignored: {', '.join('@' + g for g in plan.groups)}\n"
            )
        if plan.selinux:
            log.write(
                f"# note: selinux {plan.selinux} recorded in image.json (no SELinux on Debian)\n"
            )
        hook = workdir / "customize.sh"
        hook.write_text(debian.customize_script(plan), encoding="utf-8")
        hook.chmod(0o700)
        target = workdir / "root"
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        cmd = debian.mmdebstrap_command(
            plan,
            suite=self.suite,
            target=target,
            hook=hook,
            cache_dir=self.cache_dir,
            mirror=plan.mirror.baseurl if plan.mirror else self.mirror,
            extra=tuple(r.baseurl for r in plan.repos if r.baseurl),
        )
        try:
            run(cmd, log, timeout=self.timeout)
        except CommandError as exc:
            raise self._classify(exc) from exc
        finally:
            hook.unlink(missing_ok=True)  # it may hold password hashes
        return BuildOutput(tree=target)

    @staticmethod
    def _classify(exc: CommandError) -> Exception:
        tail = exc.tail
        post = _POST_FAILED.search(tail)
        if post:
            return BackendError(
                f"%post script from kickstart line {post.group(1)} failed with status "
                f"{post.group(2)} (it has --erroronfail); see the build log",
                line=int(post.group(1)),
            )
        missing = _MISSING_PKG.search(tail)
        if missing:
            return BackendError(f"a package in %packages is not available: {missing.group(1)}")
        if any(marker in tail for marker in _NETWORK):
            return BackendTransientError(f"the package mirror could not be reached: {exc}")
        for line in reversed(tail.splitlines()):
            if line.startswith("imgline: "):
                return BackendError(line.removeprefix("imgline: "))
        return BackendError(f"mmdebstrap failed: {exc}")
