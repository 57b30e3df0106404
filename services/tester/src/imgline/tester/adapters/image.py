"""Sanity checks of a liveimg without booting it: integrity first, then content.

Everything here reads the image as it is, with the real tools: ``unsquashfs`` for the outer
layer (superblock and directory), ``e2fsck -fn`` and ``debugfs`` for the inner ext4. As root
the squashfs is loop-mounted read-only, so e2fsck and debugfs read only the blocks they need;
otherwise ``rootfs.img`` is extracted first (slower, same results).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from imgline.core import liveimg
from imgline.core.artifacts import hash_stream
from imgline.core.errors import ImglineError
from imgline.core.runner import CommandError, require, run
from imgline.schemas import payloads as p
from imgline.tester.domain import packages
from imgline.tester.domain.plan import Expectations, has_wildcard
from imgline.tester.domain.results import CheckResult, Status, skipped

_SUPERBLOCK_SIZE = re.compile(r"Filesystem size (\d+) bytes")
UNIT_DIRS = ("/etc/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system")
DPKG_STATUS = "/var/lib/dpkg/status"
RPM_DBS = ("/usr/lib/sysimage/rpm", "/var/lib/rpm")
_META_KEYS = ("build_id", "name", "version", "stream")
#: Where ``run_sanity`` leaves the image's kernel and initramfs for the boot check.
BOOT_KERNEL, BOOT_INITRD = "vmlinuz", "initrd.img"

INTEGRITY = ("integrity.size", "integrity.squashfs", "integrity.sha256", "integrity.ext4")
CONTENT = ("content.image_json", "content.packages", "content.files", "content.services")


@dataclass(frozen=True)
class OpenedImage:
    """The inner ext4 of an opened liveimg, ready for e2fsck and debugfs."""

    rootfs: Path
    mounted: bool


@contextmanager
def open_image(
    squashfs: Path, where: Path, log: IO[str] | None, *, mount: bool | None = None
) -> Iterator[OpenedImage]:
    """Give access to ``LiveOS/rootfs.img``: mounted read-only when we may (root), extracted
    into ``where`` otherwise or when mounting fails (no loop devices in a container)."""
    where.mkdir(parents=True, exist_ok=True)
    if mount is None:
        mount = os.geteuid() == 0
    if mount:
        try:
            run(["mount", "-t", "squashfs", "-o", "ro,loop,nodev,nosuid", squashfs, where], log)
        except CommandError:
            mount = False
    if not mount:
        yield OpenedImage(liveimg.extract_rootfs(squashfs, where, log), mounted=False)
        return
    try:
        rootfs = where / liveimg.ROOTFS_IN_SQUASHFS
        if not rootfs.is_file():
            raise liveimg.LiveImgError(f"{squashfs} has no {liveimg.ROOTFS_IN_SQUASHFS}")
        yield OpenedImage(rootfs, mounted=True)
    finally:
        run(["umount", where], log)


# --- single checks: each returns (status, detail) ------------------------------------------

Outcome = tuple[Status, str]


def check_size(image: Path, expected: p.Artifact) -> Outcome:
    size = image.stat().st_size
    if size == expected.size:
        return "passed", f"{size} bytes"
    diff = expected.size - size
    how = f"truncated by {diff} bytes" if diff > 0 else f"{-diff} bytes too long"
    return "failed", f"the file has {size} bytes, image.built says {expected.size} ({how})"


def check_sha256(image: Path, expected: p.Artifact) -> Outcome:
    with image.open("rb") as f:
        digest, _ = hash_stream(f)
    if digest == expected.sha256:
        return "passed", digest
    return "failed", (
        f"sha256 is {digest}, image.built says {expected.sha256}: "
        "the file changed after it was built (bit flip, partial copy or replacement)"
    )


def check_squashfs(image: Path, log: IO[str] | None) -> Outcome:
    """Superblock (and the size it claims), then the whole directory, then the one file."""
    require("unsquashfs", "apt-get install squashfs-tools")
    problem = _squashfs_superblock(image, log)
    if problem:
        return "failed", problem
    try:
        listing = run(["unsquashfs", "-no-progress", "-lls", image], log)
    except CommandError as exc:
        return "failed", f"the squashfs directory cannot be read: {exc.tail.strip()[-500:]}"
    inner = liveimg.ROOTFS_IN_SQUASHFS
    entry = next((ln for ln in listing.splitlines() if ln.endswith(f"/{inner}")), None)
    if entry is None:
        return "failed", f"no {inner} in the squashfs: not a liveimg"
    if not entry.startswith("-"):
        return "failed", f"{inner} is not a regular file: {entry.strip()}"
    return "passed", f"superblock and directory readable, {entry.split()[2]}-byte {inner}"


def _squashfs_superblock(image: Path, log: IO[str] | None) -> str | None:
    """Why the superblock is unusable, or ``None``."""
    try:
        info = run(["unsquashfs", "-s", image], log)
    except CommandError as exc:
        return f"no valid squashfs superblock: {exc.tail.strip()[-500:]}"
    m = _SUPERBLOCK_SIZE.search(info)
    if m is None:
        return "the squashfs superblock gives no filesystem size"
    size = image.stat().st_size
    if int(m.group(1)) > size:
        return f"the squashfs superblock says {m.group(1)} bytes but the file has {size}: truncated"
    return None


def check_ext4(rootfs: Path, log: IO[str] | None) -> Outcome:
    try:
        liveimg.fsck(rootfs, log)
    except liveimg.LiveImgError as exc:
        lines = [ln for ln in str(exc).splitlines() if ln.strip()]
        return "failed", "e2fsck -fn found problems: " + " | ".join(lines[1:12] or lines)
    return "passed", "e2fsck -fn clean"


def read_meta(rootfs: Path, log: IO[str] | None) -> dict[str, Any] | None:
    """image.json as a dict, or ``None`` when it is missing or not a JSON object."""
    try:
        data = json.loads(liveimg.read_file(rootfs, f"/{liveimg.IMAGE_JSON}", log))
    except (liveimg.LiveImgError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def check_image_json(meta: dict[str, Any] | None, expected: p.ImageRef) -> Outcome:
    if meta is None:
        return "failed", f"/{liveimg.IMAGE_JSON} is missing or not a JSON object"
    wrong = [
        f"{key} is {meta.get(key)!r}, the message says {getattr(expected, key)!r}"
        for key in _META_KEYS
        if meta.get(key) != getattr(expected, key)
    ]
    if wrong:
        return "failed", "image.json does not match image.built: " + "; ".join(wrong)
    boot = "kernel and initrd named" if meta.get("kernel") and meta.get("initrd") else "no boot"
    return "passed", f"{expected.name}-{expected.version} ({expected.build_id[:12]}), {boot}"


def installed_packages(
    rootfs: Path, workdir: Path, log: IO[str] | None
) -> tuple[str, dict[str, str]] | None:
    """(database kind, name → version) from the image's own package database, if it has one."""
    found = liveimg.stat_paths(rootfs, [DPKG_STATUS, *RPM_DBS], log)
    if found[DPKG_STATUS] is not None:
        text = liveimg.read_file(rootfs, DPKG_STATUS, log).decode("utf-8", "replace")
        return "dpkg", packages.parse_dpkg_status(text)
    for db in RPM_DBS:
        info = found[db]
        if info is not None and info.kind == "directory":
            return "rpm", _rpm_query(rootfs, db, workdir, log)
    return None


def _rpm_query(rootfs: Path, db: str, workdir: Path, log: IO[str] | None) -> dict[str, str]:
    """Copy the image's rpm database out and ask the host's ``rpm`` about it."""
    rpm = require("rpm", "apt-get install rpm (needed to read Fedora/EL images)")
    dest = workdir / "rpmdb"
    dest.mkdir(parents=True, exist_ok=True)
    dbpath = liveimg.dump_dir(rootfs, db, dest, log)
    out = run(
        [rpm, "--dbpath", dbpath, "-qa", "--qf", "%{NAME} %{EPOCHNUM}:%{VERSION}-%{RELEASE}\\n"],
        log,
    )
    return packages.parse_rpm_query(out)


def check_packages(
    rootfs: Path, expectations: Expectations, workdir: Path, log: IO[str] | None
) -> Outcome:
    db = installed_packages(rootfs, workdir, log)
    if db is None:
        return "failed", f"no package database ({DPKG_STATUS} or an rpm database) in the image"
    kind, installed = db
    problems = packages.unmet(expectations.packages, installed, kind)
    if problems:
        return "failed", "; ".join(problems)
    have = ", ".join(f"{r.name} {installed[r.name]}" for r in expectations.packages)
    return "passed", f"{len(installed)} packages ({kind}); required: {have or 'none'}"


def _present(rootfs: Path, paths: tuple[str, ...], log: IO[str] | None) -> dict[str, list[str]]:
    """For each plan path (wildcards allowed in the last part), the image paths matching it."""
    plain = [x for x in paths if not has_wildcard(x)]
    globs = [x for x in paths if has_wildcard(x)]
    stats = liveimg.stat_paths(rootfs, plain, log)
    parents = sorted({str(PurePosixPath(g).parent) for g in globs})
    listings = liveimg.list_dirs(rootfs, parents, log)
    found: dict[str, list[str]] = {x: [x] if stats[x] is not None else [] for x in plain}
    for g in globs:
        parent, pattern = PurePosixPath(g).parent, PurePosixPath(g).name
        entries = listings[str(parent)] or []
        found[g] = [str(parent / e.name) for e in entries if fnmatch.fnmatchcase(e.name, pattern)]
    return found


def check_files(rootfs: Path, expectations: Expectations, log: IO[str] | None) -> Outcome:
    required, forbidden = expectations.required_files, expectations.forbidden_files
    found = _present(rootfs, tuple(dict.fromkeys(required + forbidden)), log)
    missing = [x for x in required if not found[x]]
    present = [m for x in forbidden for m in found[x]]
    problems = []
    if missing:
        problems.append("missing: " + ", ".join(missing))
    if present:
        problems.append("forbidden but present: " + ", ".join(present))
    if problems:
        return "failed", "; ".join(problems)
    return "passed", f"{len(required)} required present, {len(forbidden)} forbidden absent"


def check_services(rootfs: Path, expectations: Expectations, log: IO[str] | None) -> Outcome:
    """A unit is enabled when a ``*.wants``/``*.requires`` directory links it and it is neither
    masked nor missing; a link to a unit file that does not exist is reported as broken."""
    units = expectations.services
    tops = liveimg.list_dirs(rootfs, UNIT_DIRS, log)
    dep_dirs = [
        f"{top}/{e.name}"
        for top, entries in tops.items()
        for e in entries or []
        if e.is_dir and e.name.endswith((".wants", ".requires"))
    ]
    deps = liveimg.list_dirs(rootfs, dep_dirs, log)
    linked = {e.name for entries in deps.values() for e in entries or []}
    files = {e.name for entries in tops.values() for e in entries or [] if not e.is_dir}
    masks = liveimg.stat_paths(rootfs, [f"/etc/systemd/system/{u}" for u in units], log)
    problems = []
    for unit in units:
        mask = masks[f"/etc/systemd/system/{unit}"]
        template = re.sub(r"@[^.]*\.", "@.", unit)
        if mask is not None and mask.link_target == "/dev/null":
            problems.append(f"{unit} is masked")
        elif unit not in files and template not in files:
            problems.append(f"{unit} has no unit file in {', '.join(UNIT_DIRS[:2])}")
        elif unit not in linked:
            problems.append(f"{unit} is not enabled (no link in any *.wants directory)")
    if problems:
        return "failed", "; ".join(problems)
    return "passed", f"enabled: {', '.join(units) or 'none required'}"


# --- the sequence ---------------------------------------------------------------------------


def _timed(name: str, check: Callable[[], Outcome]) -> CheckResult:
    started = time.monotonic()
    try:
        status, detail = check()
    except (ImglineError, OSError) as exc:
        status, detail = "error", f"the check could not run: {exc}"
    return CheckResult(
        name=name,
        status=status,
        duration_seconds=round(time.monotonic() - started, 4),
        detail=detail,
    )


def run_sanity(
    image: Path,
    expected: p.ImageRef,
    expectations: Expectations,
    workdir: Path,
    log: IO[str] | None,
    *,
    mount: bool | None = None,
    boot_dir: Path | None = None,
) -> tuple[list[CheckResult], dict[str, Any] | None]:
    """All checks but the boot, cheapest first; returns the results and image.json (for boot).

    Integrity failures end the run (what follows would read a broken file); content checks
    are independent and all run, so one report lists every problem. The sha256 pass runs on a
    thread while the image is opened (unsquashfs, without root): the two read the same file
    and together take little more than the longer one. With ``boot_dir``, the kernel and
    initramfs that image.json names are copied there while the image is open, so the boot
    check does not open it again.
    """
    artifact = expected.artifact
    results = [_timed("integrity.size", lambda: check_size(image, artifact))]
    if not results[-1].ok:
        return _skip_rest(results, "the image file is damaged"), None
    results.append(_timed("integrity.squashfs", lambda: check_squashfs(image, log)))
    if not results[-1].ok:  # the hash still tells a changed file from a badly built one
        results.append(_timed("integrity.sha256", lambda: check_sha256(image, artifact)))
        return _skip_rest(results, "the image file is damaged"), None
    meta: dict[str, Any] | None = None
    with (
        ThreadPoolExecutor(1, thread_name_prefix="sha256") as pool,
        ExitStack() as stack,
    ):
        digest = pool.submit(_timed, "integrity.sha256", lambda: check_sha256(image, artifact))
        try:
            opened = stack.enter_context(open_image(image, workdir / "mnt", log, mount=mount))
        except (ImglineError, OSError) as exc:
            opened_error: Exception | None = exc
        else:
            opened_error = None
        results.append(digest.result())
        if not results[-1].ok:
            return _skip_rest(results, "the image file is damaged"), None
        if opened_error is not None:
            raise opened_error
        rootfs = opened.rootfs
        results.append(_timed("integrity.ext4", lambda: check_ext4(rootfs, log)))
        if not results[-1].ok:
            return _skip_rest(results, "the root file system is damaged"), None
        meta = read_meta(rootfs, log)
        if expectations.image_json:
            results.append(_timed("content.image_json", lambda: check_image_json(meta, expected)))
        else:
            results.append(skipped("content.image_json", "not checked by the test plan"))
        results.append(
            _timed("content.packages", lambda: check_packages(rootfs, expectations, workdir, log))
        )
        results.append(_timed("content.files", lambda: check_files(rootfs, expectations, log)))
        if expectations.services:
            results.append(
                _timed("content.services", lambda: check_services(rootfs, expectations, log))
            )
        else:
            results.append(skipped("content.services", "the test plan requires no services"))
        if boot_dir is not None and meta is not None:
            take_boot_files(rootfs, meta, boot_dir, log)
    return results, meta


def take_boot_files(
    rootfs: Path, meta: dict[str, Any], boot_dir: Path, log: IO[str] | None
) -> None:
    """Copy the kernel and initramfs image.json names to ``boot_dir`` (vmlinuz, initrd.img);
    what cannot be read is left out, and the boot check says so."""
    boot_dir.mkdir(parents=True, exist_ok=True)
    for key, name in (("kernel", BOOT_KERNEL), ("initrd", BOOT_INITRD)):
        path = meta.get(key)
        if not isinstance(path, str):
            continue
        try:
            (boot_dir / name).write_bytes(liveimg.read_file(rootfs, path, log))
        except (ImglineError, OSError) as exc:
            if log is not None:
                log.write(f"# cannot take {key} {path} out of the image: {exc}\n")


def _skip_rest(results: list[CheckResult], why: str) -> list[CheckResult]:
    done = {r.name for r in results}
    return results + [skipped(n, why) for n in (*INTEGRITY, *CONTENT) if n not in done]
