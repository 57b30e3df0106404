"""Sanity-check cost: the tester's checks without the boot, against one ``sha256sum`` pass.

The image is the real one from ``examples/node.ks`` (built once and cached under ``.cache/``,
as the vm tests do). Each round runs, in alternation so page-cache drift hits both alike:

* baseline: ``sha256sum <image>``, the least any integrity check must do (read every byte);
* imgline: ``run_sanity`` with the example test plan: size, squashfs superblock and directory,
  sha256, ``e2fsck -fn`` of the inner ext4, image.json, the dpkg database, files, services.

Both read a warm page cache (one untimed warm-up each). Printed: per-round seconds, medians,
the ratio, and the per-check split of the last imgline round. Target: median ratio <= 2.0.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from imgline.schemas.payloads import ImageRef
from imgline.tester.adapters.image import run_sanity
from imgline.tester.domain.plan import Expectations, load_plan, resolve
from imgline.tester.domain.results import CheckResult

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from nodeimage import node_image  # noqa: E402 - after the path is set

TARGET_RATIO = 2.0


def sha256sum(image: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["sha256sum", str(image)], check=True, capture_output=True)  # noqa: S607
    return time.perf_counter() - started


def sanity(
    image: Path, ref: ImageRef, expectations: Expectations, mount: bool | None
) -> tuple[float, list[CheckResult]]:
    work = Path(tempfile.mkdtemp(prefix="bench-tester-"))
    try:
        started = time.perf_counter()
        with (work / "test.log").open("w") as log:
            results, _ = run_sanity(image, ref, expectations, work, log, mount=mount)
        took = time.perf_counter() - started
    finally:
        shutil.rmtree(work, ignore_errors=True)
    bad = [r for r in results if not r.ok]
    if bad:
        raise SystemExit(f"the node image fails its sanity checks: {bad}")
    return took, results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--extract", action="store_true", help="extract instead of mounting")
    args = parser.parse_args()
    mount = False if args.extract or os.geteuid() != 0 else None
    built, store = node_image()
    image = store.path_for(built.artifact.sha256)
    plan = load_plan((REPO / "examples" / "test-plan.toml").read_text(), "examples/test-plan.toml")
    ref, expectations = built.ref(), resolve(plan, built.name, built.stream)
    size_mib = image.stat().st_size / (1 << 20)
    print(
        f"image: {built.name}-{built.version}, {size_mib:.1f} MiB, "
        f"{'mounted' if mount is None else 'extracted'} rootfs"
    )
    sha256sum(image)
    sanity(image, ref, expectations, mount)
    raw, ours = [], []
    results: list[CheckResult] = []
    for n in range(args.rounds):
        raw.append(sha256sum(image))
        took, results = sanity(image, ref, expectations, mount)
        ours.append(took)
        print(f"round {n + 1}: sha256sum {raw[-1]:.3f} s  sanity {ours[-1]:.3f} s")
    base, mine = statistics.median(raw), statistics.median(ours)
    ratio = mine / base
    print(
        "last sanity run, per check: "
        + ", ".join(f"{r.name} {r.duration_seconds:.3f}" for r in results)
    )
    print(
        f"median: sha256sum {base:.3f} s, sanity {mine:.3f} s, ratio {ratio:.2f}x "
        f"(target <= {TARGET_RATIO}): {'OK' if ratio <= TARGET_RATIO else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
