"""The mmdebstrap backend: a Debian root tree from the plan, on any Debian-like host.

Two runs: the package root (``debian.package_root_command``, kept between builds by
``rootcache``), then the configuration and scripts (``debian.customize_command``).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import IO

from imgline.builder.adapters.rootcache import RootCache
from imgline.builder.domain import debian
from imgline.builder.domain.debian import BuildMode
from imgline.builder.domain.plan import BuildPlan
from imgline.builder.errors import (
    BackendError,
    BackendTransientError,
    BackendUnavailableError,
)
from imgline.builder.ports import BuildOutput
from imgline.core.errors import ConfigError
from imgline.core.runner import CommandError, run
from imgline.core.userns import BuildUser

#: The part of a work directory an unshare-mode build hands to the build user.
AREA = "ns"

_POST_FAILED = re.compile(re.escape(debian.POST_FAILED) + r" (\d+) failed with status (\d+)$", re.M)
_MISSING_PKG = re.compile(
    r"(Unable to locate package (?P<a>\S+)|Package '?(?P<b>[^'\s]+)'? has no installation "
    r"candidate)"
)
_NETWORK = (
    "Could not resolve",
    "Failed to fetch",
    "Temporary failure resolving",
    "Connection failed",
)


def _missing_package(tail: str) -> str | None:
    """The package apt could not find, from the end of mmdebstrap's output."""
    found = _MISSING_PKG.search(tail)
    return (found.group("a") or found.group("b")) if found else None


def _extra(plan: BuildPlan) -> tuple[str, ...]:
    """The kickstart's ``repo --baseurl`` mirrors."""
    return tuple(r.baseurl for r in plan.repos if r.baseurl)


def _own(directory: Path, user: BuildUser) -> None:
    """``directory`` (made when missing) and what is in it belong to the build user, who
    writes the .deb cache and package roots there; a root-mode build leaves root's files."""
    directory.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == user.uid:
        return  # the builder is the build user: what it made is its own
    for parent, dirs, files in os.walk(directory):
        for name in (*dirs, *files):
            path = Path(parent) / name
            if path.lstat().st_uid != user.uid:
                os.chown(path, user.uid, user.gid, follow_symlinks=False)
    if directory.stat().st_uid != user.uid:
        os.chown(directory, user.uid, user.gid)


def _line(where: str) -> int | None:
    """The line of a ``file:line`` position, for ``build.failed``."""
    tail = where.rpartition(":")[2]
    return int(tail) if tail.isdigit() else None


class MmdebstrapBackend:
    """Runs mmdebstrap twice: the package root (kept in ``roots`` when given), then the
    kickstart's configuration and scripts on it.

    Unshare mode (the default) runs both as ``user`` (None: the builder's own user) in its user
    namespace, in a part of the work directory handed to that user; root mode needs root."""

    name = "mmdebstrap"

    def __init__(
        self,
        suite: str,
        cache_dir: Path,
        mirror: str | None,
        timeout: float,
        roots: RootCache | None = None,
        *,
        mode: BuildMode = "unshare",
        user: str | None = None,
    ) -> None:
        self.mode: BuildMode = mode
        self.user_name = user
        self._user: BuildUser | None = None
        self.suite = suite
        self.cache_dir = cache_dir
        self.mirror = mirror
        self.timeout = timeout
        self.roots = roots
        self._tool: str | None = None

    def check_available(self) -> None:
        if shutil.which("mmdebstrap") is None:
            raise BackendUnavailableError(
                "the mmdebstrap backend needs mmdebstrap: apt-get install mmdebstrap"
            )
        if self.mode == "root":
            if os.geteuid() != 0:
                raise BackendUnavailableError(
                    'the mmdebstrap backend has build_mode = "root": run the builder as root, '
                    'or use build_mode = "unshare"'
                )
            return
        self.build_user()

    def build_user(self) -> BuildUser:
        """The unshare-mode build user, checked once: it exists, has subordinate ids and can
        make a user namespace on this host."""
        if self._user is not None:
            return self._user
        if shutil.which("newuidmap") is None:
            raise BackendUnavailableError(
                "unshare-mode builds need newuidmap: apt-get install uidmap (Debian) or "
                "shadow-utils (Fedora)"
            )
        try:
            user = BuildUser.lookup(self.user_name)
        except ConfigError as exc:
            raise BackendUnavailableError(str(exc)) from exc
        try:
            run(user.inside(["true"]), timeout=60)
        except CommandError as exc:
            raise BackendUnavailableError(
                f"build user {user.name!r} cannot make a user namespace on this host "
                "(kernel.unprivileged_userns_clone or user.max_user_namespaces may forbid it, "
                "or a container does; unshare --map-users=auto needs util-linux 2.38): "
                f'{exc.tail.strip()[-500:]}; or set build_mode = "root"'
            ) from exc
        for cache in (self.cache_dir, *([self.roots.directory] if self.roots else [])):
            _own(cache, user)
        self._user = user
        return user

    def build(self, plan: BuildPlan, kickstart: Path, workdir: Path, log: IO[str]) -> BuildOutput:
        _, problems = debian.package_list(plan)
        _, dpkg_problems = debian.dpkg_options(plan)
        if problems or dpkg_problems:
            raise BackendError("; ".join(problems + dpkg_problems), line=_line(plan.packages_where))
        if unsupported := debian.unsupported_groups(plan):
            raise BackendError(
                f"{plan.packages_where}: %packages "
                f"{', '.join('@' + g for g in unsupported)}: no Debian equivalent in the "
                f"mmdebstrap backend (it maps {', '.join('@' + g for g in debian.GROUP_VARIANTS)}"
                "); list the packages instead",
                line=_line(plan.packages_where),
            )
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
                f"# note: @{', @'.join(plan.groups)}: mmdebstrap --variant={debian.variant(plan)}\n"
            )
        if plan.nocore:
            log.write(
                f"# note: {plan.packages_where}: --nocore: the mmdebstrap backend adds Debian's "
                "important packages only for @core\n"
            )
        if not plan.exclude_weakdeps:
            log.write(
                "# note: weak dependencies (Debian's Recommends) are never installed by the "
                "mmdebstrap backend, as with --exclude-weakdeps\n"
            )
        if plan.selinux:
            log.write(
                f"# note: selinux {plan.selinux} recorded in image.json (no SELinux on Debian)\n"
            )
        area = self._area(workdir)
        try:
            return self._build(plan, area, log)
        except BaseException:
            if self._user is not None:  # what the namespace made, the builder may not remove
                self._user.release(area, log)
            raise

    def _area(self, workdir: Path) -> Path:
        """Where the build's files go: the work directory itself in root mode; in unshare mode
        a directory in it handed to the build user, which only it and its namespace enter."""
        if self.mode == "root":
            return workdir
        user = self.build_user()
        area = workdir / AREA
        area.mkdir(mode=0o700)
        try:
            user.let_in(workdir)
            user.hand_over(area, namespace_bits=7)
        except OSError as exc:
            raise BackendUnavailableError(
                f"could not open {area} to the build user's namespace ({exc.strerror}): "
                "work_dir must be on a file system with POSIX ACLs (ext4, xfs, btrfs, tmpfs)"
            ) from exc
        try:
            run(user.inside(["test", "-w", str(area), "-a", "-x", str(area)]), timeout=60)
        except CommandError as exc:
            raise BackendUnavailableError(
                f"the build user's namespace cannot reach {area}: every directory above the "
                "builder's work_dir must be searchable by others (chmod o+x)"
            ) from exc
        return area

    def _build(self, plan: BuildPlan, area: Path, log: IO[str]) -> BuildOutput:
        package_root = self._package_root(plan, area, log)
        target = area / "root"
        hook = self._script(area / "customize.sh", debian.customize_script(plan))
        cmd = debian.customize_command(
            suite=self.suite,
            package_root=package_root,
            target=target,
            hook=hook,
            mirror=self._mirror(plan),
            extra=_extra(plan),
            mode=self.mode,
        )
        try:
            self._run(cmd, log, area)
        except CommandError as exc:
            raise self._classify(exc) from exc
        finally:
            hook.unlink(missing_ok=True)  # it may hold password hashes
            package_root.unlink(missing_ok=True)
        return BuildOutput(tree=target, owner=self._user)

    def _script(self, path: Path, text: str) -> Path:
        """A hook script only its runner reads (it may hold password hashes)."""
        path.write_text(text, encoding="utf-8")
        path.chmod(0o700)
        if self._user is not None:  # mmdebstrap runs hooks as the namespace's root
            self._user.hand_over(path, namespace_bits=5)
        return path

    def _run(self, cmd: list[str], log: IO[str], area: Path) -> None:
        if self._user is not None:
            cmd = self._user.command(cmd)
        run(cmd, log, timeout=self.timeout, env=self._env(area))

    def _mirror(self, plan: BuildPlan) -> str | None:
        return plan.mirror.baseurl if plan.mirror else self.mirror

    def _env(self, area: Path) -> dict[str, str]:
        """mmdebstrap's temporary chroot goes into the work directory, which the next start
        unmounts and removes if the builder is killed (not into the host's /tmp)."""
        tmp = area / "tmp"
        if not tmp.is_dir():
            tmp.mkdir()
            if self._user is not None:
                self._user.hand_over(tmp, namespace_bits=7)
        return {**os.environ, "TMPDIR": str(tmp)}

    def tool_version(self) -> str:
        if self._tool is None:
            self._tool = run(["mmdebstrap", "--version"]).strip()
        return self._tool

    def _package_root(self, plan: BuildPlan, workdir: Path, log: IO[str]) -> Path:
        """The plan's packages installed, as a tarball in ``workdir``: from the cache when a
        fresh one is kept, else made (and kept)."""
        dest = workdir / "packages.tar"
        if self.roots is None:
            self._make_root(plan, workdir, dest, log)
            return dest
        key = debian.package_root_key(
            plan,
            suite=self.suite,
            mirror=self._mirror(plan),
            extra=_extra(plan),
            tool=self.tool_version(),
            mode=self.mode,
        )
        with self.roots.locked(key):
            hit = self.roots.take(key, dest)
            if hit is not None:
                log.write(
                    f"# package root {key[:16]} reused from the cache (made "
                    f"{hit.age_seconds / 60:.0f} min ago)\n"
                )
                for note in hit.notes:  # what its making said holds for this build too
                    log.write(f"# warning: {note}\n")
                return dest
            log.write(f"# package root {key[:16]} not in the cache: installing the packages\n")
            return self.roots.put(key, lambda out: self._make_root(plan, workdir, out, log), dest)

    def _make_root(self, plan: BuildPlan, workdir: Path, output: Path, log: IO[str]) -> list[str]:
        """Install the plan's packages into the tarball ``output``; returns the warnings a
        build from it must repeat (packages --ignoremissing left out)."""
        notes: list[str] = []
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        hook: Path | None = None
        script = debian.exclusion_script(plan)  # the same for every try: exclusions stay
        if script is not None:
            hook = self._script(workdir / "exclude.sh", script)
        while True:
            cmd = debian.package_root_command(
                plan,
                suite=self.suite,
                output=output,
                cache_dir=self.cache_dir,
                hook=hook,
                mirror=self._mirror(plan),
                extra=_extra(plan),
                mode=self.mode,
            )
            try:
                self._run(cmd, log, workdir)
                return notes
            except CommandError as exc:
                output.unlink(missing_ok=True)
                missing = _missing_package(exc.tail)
                if not (plan.ignore_missing and missing in plan.packages):
                    raise self._classify(exc) from exc
            # --ignoremissing: leave the package out and start again (one run per missing
            # package; the .deb cache makes the next one quicker)
            notes.append(
                f"{plan.packages_where}: %packages --ignoremissing: {missing} is not "
                "available; building without it"
            )
            log.write(f"# warning: {notes[-1]}\n")
            plan = plan.model_copy(
                update={"packages": tuple(p for p in plan.packages if p != missing)}
            )

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
