"""Liveimg assembly overhead: ``liveimg.assemble`` against raw mke2fs + mksquashfs, same run.

Both sides turn the same ~300 MB root tree into a squashfs with the same command lines
(``liveimg.ext4_command`` / ``liveimg.squashfs_command``); the imgline side also pays for what
it adds on purpose: ``prepare_tree`` (image.json), the factory copy of /etc (which mke2fs reads
through a bind mount of /etc: the ext4 holds it twice), the size check,
the root-inode fix-up, the logged runner, and cleanup. Runs alternate raw / imgline so drift in
the page cache or the machine hits both alike.

``--namespace`` measures the path unshare-mode builds take: the tree is owned by the build
user's namespace (imgline-build), the raw side runs mke2fs in that namespace too (it must, for
the image's owners), and the imgline side is ``nsimage.assemble``.

The tree is generated deterministically (seeded) and cached under ``<repo>/.cache/`` keyed by
the generator's parameters, so reruns skip generation. Target: median ratio <= 1.10.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO, Any
from unittest import mock

from imgline.core import liveimg, nsimage
from imgline.core.runner import require, run
from imgline.core.userns import BuildUser

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache"
MIB = 1 << 20
TARGET_RATIO = 1.10
META = {"name": "bench", "version": "1", "build_id": "0" * 64}
FIXED_MTIME = 1_700_000_000

# Everything that shapes the tree; their hash names the cache directory. Bump GENERATOR when
# the code below changes what it writes.
GENERATOR = 1
SEED = 1729
TOTAL_MIB = 300
SIGMA = 1.2  # spread of the log-normal file sizes
# (top directory, content kind, file count, median size in bytes)
GROUPS: tuple[tuple[str, str, int, int], ...] = (
    ("usr/lib64", "binary", 1200, 60_000),
    ("usr/bin", "binary", 500, 40_000),
    ("usr/share/doc", "text", 1500, 6_000),
    ("usr/lib/python3.12/site-packages", "text", 2500, 8_000),
    ("usr/share/locale", "binary", 600, 20_000),
    ("etc", "text", 1200, 2_000),
)
BIG_FILES: tuple[tuple[str, int], ...] = (
    ("var/lib/rpm/rpmdb.sqlite", 24 * MIB),
    ("usr/lib/locale/locale-archive", 16 * MIB),
)
PARAMS = {
    "generator": GENERATOR,
    "seed": SEED,
    "total_mib": TOTAL_MIB,
    "sigma": SIGMA,
    "groups": GROUPS,
    "big_files": BIG_FILES,
}


def cache_dir() -> Path:
    key = hashlib.sha256(json.dumps(PARAMS, sort_keys=True).encode()).hexdigest()[:16]
    return CACHE / f"bench-tree-{key}"


def text_corpus(rnd: random.Random) -> bytes:
    """4 MiB of word-like text: compresses about like documentation and Python sources."""
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    words = ["".join(rnd.choices(letters, k=rnd.randint(2, 10))) for _ in range(3000)]
    parts: list[str] = []
    size = 0
    while size < 4 * MIB:
        line = " ".join(rnd.choices(words, k=rnd.randint(3, 14))) + "\n"
        parts.append(line)
        size += len(line)
    return "".join(parts).encode()


def binary_content(rnd: random.Random, size: int) -> bytes:
    """Like compiled code and data: 4 KiB pages, most incompressible, some zero-filled."""
    out = bytearray()
    while len(out) < size:
        n = min(4096, size - len(out))
        out += rnd.randbytes(n) if rnd.random() < 0.65 else bytes(n)
    return bytes(out)


def plan(rnd: random.Random) -> list[tuple[str, str, int]]:
    """(path, kind, size) for every file; all but /etc scaled so the total is TOTAL_MIB."""
    files: list[tuple[str, str, int]] = []
    etc: list[tuple[str, str, int]] = []
    for top, kind, count, median in GROUPS:
        for i in range(count):
            sub = f"{top}/pkg{i % 97:02d}/d{i % 5}" if top != "etc" else f"etc/conf{i % 40}.d"
            suffix = ".txt" if kind == "text" else ".bin"
            size = int(rnd.lognormvariate(math.log(median), SIGMA))
            (etc if top == "etc" else files).append((f"{sub}/f{i}{suffix}", kind, size))
    target = TOTAL_MIB * MIB - sum(size for _, size in BIG_FILES) - sum(s for _, _, s in etc)
    scale = target / sum(size for _, _, size in files)
    return (
        [(p, k, int(s * scale)) for p, k, s in files]
        + etc  # config stays small, as it is on a real system
        + [(p, "binary", s) for p, s in BIG_FILES]
    )


def generate(dest: Path) -> None:
    """Write the tree into a temp dir beside ``dest`` and rename it: a cache dir is complete."""
    rnd = random.Random(SEED)  # noqa: S311 - test data, not secrets
    corpus = text_corpus(rnd)
    partial = Path(tempfile.mkdtemp(prefix=f"{dest.name}.partial-", dir=dest.parent))
    try:
        for rel, kind, size in plan(rnd):
            path = partial / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if kind == "text":
                start = rnd.randrange(0, len(corpus) - min(size, len(corpus) - 1))
                data = (corpus[start:] + corpus)[:size]
            else:
                data = binary_content(rnd, size)
            path.write_bytes(data)
            if kind == "binary" and "/bin/" in f"/{rel}":
                path.chmod(0o755)
        for i, lib in enumerate(sorted((partial / "usr/lib64").rglob("*.bin"))):
            if i % 10 == 0:
                lib.with_suffix(".so").symlink_to(lib.name)
        for i, doc in enumerate(sorted((partial / "usr/share/doc").rglob("*.txt"))):
            if i % 50 == 0:
                os.link(doc, doc.with_suffix(".copy"))
        (partial / "bin").symlink_to("usr/bin")
        (partial / "lib64").symlink_to("usr/lib64")
        for dirpath, _, names in os.walk(partial):
            for name in names:
                os.utime(Path(dirpath) / name, (FIXED_MTIME, FIXED_MTIME), follow_symlinks=False)
        partial.chmod(0o555)  # like Fedora's /, so the imgline side does its root fix-up
        partial.rename(dest)
    except BaseException:
        partial.chmod(0o755)
        shutil.rmtree(partial, ignore_errors=True)
        raise


def tree() -> Path:
    dest = cache_dir()
    if not dest.is_dir():
        CACHE.mkdir(exist_ok=True)
        print(f"generating {dest} ...", flush=True)
        started = time.monotonic()
        generate(dest)
        print(f"  generated in {time.monotonic() - started:.1f}s", flush=True)
    return dest


def reset(root: Path) -> None:
    """Undo prepare_tree, so the raw side and the next run see the tree as generated."""
    shutil.rmtree(root / "usr/share/factory", ignore_errors=True)
    shutil.rmtree(root / "usr/lib/imgline", ignore_errors=True)


def warm(root: Path) -> None:
    """Read every file once: neither side should pay for the cold cache alone."""
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                with path.open("rb") as f:
                    while f.read(MIB):
                        pass


def absolute(argv: list[str]) -> list[str]:
    return [require(argv[0], "install e2fsprogs and squashfs-tools"), *argv[1:]]


def raw_once(
    root: Path,
    work: Path,
    out: Path,
    *,
    size_mib: int,
    comp: str,
    log: IO[str],
    user: BuildUser | None = None,
) -> float:
    """What a hand-written script would do: truncate, mke2fs -d, link, mksquashfs, clean
    (mke2fs in ``user``'s namespace, which owns the tree, when given)."""
    started = time.perf_counter()
    image = work / "rootfs.img"
    if user is None:
        with image.open("wb") as f:
            f.truncate(size_mib * MIB)
    ext4 = absolute(liveimg.ext4_command(root, image, size_mib=size_mib))
    subprocess.run(
        user.inside(ext4) if user else ext4, check=True, stdout=log, stderr=subprocess.STDOUT
    )
    stage = work / "stage"
    (stage / "LiveOS").mkdir(parents=True)
    os.link(image, stage / "LiveOS" / "rootfs.img")
    squash = absolute(liveimg.squashfs_command(stage, out, comp))
    subprocess.run(squash, check=True, stdout=log, stderr=subprocess.STDOUT)
    shutil.rmtree(stage)
    image.unlink()
    return time.perf_counter() - started


def namespace_copy(root: Path, work: Path, user: BuildUser) -> Path:
    """The tree copied by the namespace's root, so that namespace owns it (as after mmdebstrap
    --mode=unshare); ``work`` becomes the build user's."""
    user.let_in(work.parent)
    work.mkdir(mode=0o700)
    user.hand_over(work, namespace_bits=7)
    run(user.inside(["cp", "-a", "--", str(root), str(work / "root")]))
    return work / "root"


def namespace_once(
    root: Path, out: Path, *, size_mib: int, comp: str, log: IO[str], user: BuildUser
) -> tuple[float, float]:
    """Seconds for ``nsimage.assemble`` (nothing of it is timed apart: 0 for prepare)."""
    started = time.perf_counter()
    nsimage.assemble(
        root, out, user=user, size_mib=size_mib, meta=META, compression=comp, log_file=log
    )
    took = time.perf_counter() - started
    run(
        user.inside(
            ["rm", "-rf", "--", str(root / "usr/share/factory"), str(root / "usr/lib/imgline")]
        )
    )
    return took, 0.0


def imgline_once(
    root: Path, work: Path, out: Path, *, size_mib: int, comp: str, log: IO[str]
) -> tuple[float, float]:
    """Seconds for ``liveimg.assemble``, and how many of them went to ``prepare_tree``."""
    original = liveimg.prepare_tree
    spent = [0.0]

    def timed(root: Path, meta: dict[str, Any], **kw: bool) -> None:
        started = time.perf_counter()
        original(root, meta, **kw)
        spent[0] += time.perf_counter() - started

    started = time.perf_counter()
    with mock.patch.object(liveimg, "prepare_tree", timed):
        liveimg.assemble(
            root, out, size_mib=size_mib, meta=META, compression=comp, workdir=work, log_file=log
        )
    return time.perf_counter() - started, spent[0]


def alternate(
    root: Path,
    work: Path,
    *,
    runs: int,
    size_mib: int,
    comp: str,
    log: IO[str],
    user: BuildUser | None,
) -> tuple[list[float], list[float], list[float], dict[str, int]]:
    """Seconds of each raw run and each imgline run (and its prepare_tree), alternating, and
    the sizes of the last images."""
    raw: list[float] = []
    ours: list[float] = []
    prep: list[float] = []
    sizes: dict[str, int] = {}
    for i in range(runs):
        out = work / "raw.squashfs.img"
        os.sync()  # start each run without the previous run's writeback in flight
        raw_work = work / "ns" if user else work
        raw.append(
            raw_once(
                root,
                raw_work,
                out,
                size_mib=size_mib,
                comp=comp,
                log=log,
                user=user,
            )
        )
        sizes["raw"] = out.stat().st_size
        out.unlink()
        out = work / "imgline.squashfs.img"
        os.sync()
        if user is not None:
            total, prepare = namespace_once(
                root, out, size_mib=size_mib, comp=comp, log=log, user=user
            )
        else:
            total, prepare = imgline_once(root, work, out, size_mib=size_mib, comp=comp, log=log)
        ours.append(total)
        prep.append(prepare)
        sizes["imgline"] = out.stat().st_size
        out.unlink()
        reset(root)
        print(
            f"  run {i + 1}: raw {raw[-1]:6.2f}s   imgline {ours[-1]:6.2f}s"
            f" (prepare_tree {prep[-1]:.2f}s)",
            flush=True,
        )
    return raw, ours, prep, sizes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3, help="runs per side (alternating)")
    ap.add_argument("--compression", default="zstd", choices=liveimg.COMPRESSIONS)
    ap.add_argument(
        "--namespace", action="store_true", help="the unshare-mode path, as imgline-build"
    )
    args = ap.parse_args()
    user = BuildUser.lookup("imgline-build") if args.namespace else None

    root = tree()
    reset(root)
    stats = liveimg.tree_stats(root)
    etc = liveimg.tree_stats(root / "etc")
    # Room for the factory /etc and some slack, the same for both sides.
    size_mib = math.ceil(
        liveimg.min_size_mib(stats.size_bytes + etc.size_bytes, stats.inodes + etc.inodes) * 1.1
    )
    print(
        f"tree {root.relative_to(REPO)}: {stats.size_bytes / MIB:.0f} MiB in {stats.inodes} inodes"
    )
    print(
        f"  /etc: {etc.size_bytes / MIB:.1f} MiB in {etc.inodes} inodes;"
        f" part / --size {size_mib} MiB"
    )
    warm(root)

    with tempfile.TemporaryDirectory(prefix="bench-assemble-", dir=CACHE) as tmp:
        work = Path(tmp)
        log = (work / "bench.log").open("w")
        source = root
        if user is not None:
            print(f"  in {user.name}'s namespace (copying the tree there)", flush=True)
            root = namespace_copy(source, work / "ns", user)
            warm(root)
        try:
            raw, ours, prep, sizes = alternate(
                root,
                work,
                runs=args.runs,
                size_mib=size_mib,
                comp=args.compression,
                log=log,
                user=user,
            )
        finally:
            log.close()
            reset(source)
            if user is not None:
                user.empty(work / "ns")

    raw_median = statistics.median(raw)
    our_median = statistics.median(ours)
    ratio = our_median / raw_median
    print(f"median of {args.runs}, {args.compression}:")
    print(f"  raw mke2fs + mksquashfs   {raw_median:7.2f} s   -> {sizes['raw'] / MIB:6.1f} MiB")
    ours_name = "nsimage.assemble" if user else "liveimg.assemble"
    print(f"  {ours_name:<25} {our_median:7.2f} s   -> {sizes['imgline'] / MIB:6.1f} MiB")
    prep_median = statistics.median(prep)
    print(f"    of which prepare_tree   {prep_median:7.2f} s (median of the same runs)")
    verdict = "OK" if ratio <= TARGET_RATIO else "MISSED"
    print(f"  ratio                     {ratio:7.3f}x  (target <= {TARGET_RATIO:.2f})  {verdict}")
    print(
        f"  ratio without prepare_tree {(our_median - prep_median) / raw_median:6.3f}x  (for info)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
