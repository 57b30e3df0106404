"""Apply cost: one ``imgline-updater apply`` against a plain ``dd`` of the same ``rootfs.img``
onto a fresh thin LV, in the same guest (real lvm2, TCG).

A helper guest (tests/vmguest.py) installs release v1 of the node image on a blank disk (not
timed), then, in alternation so the guest's page cache treats both alike:

* baseline: a fresh thin LV of the image's size and ``dd bs=4M conv=fsync`` of the image's
  ``LiveOS/rootfs.img`` (read from the loop-mounted squashfs) onto it; the LV is removed after;
* imgline: ``imgline-updater apply`` of v2 (every journaled step: verify, copy, resize, base,
  layer, /etc merge, boot files and entry, switch), then ``remove`` of it, so the next round
  starts from the same state.

Printed: per-round seconds, the medians, the ratio, and the per-step split of the last apply.
Target: median ratio <= 1.2 (a sparse copy should beat dd on a mostly empty file system).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from hostimages import host_releases  # noqa: E402 - after the path is set
from hostlab import MOUNT_HOST, UPDATER, config_toml, install_script  # noqa: E402
from nodeimage import node_image  # noqa: E402
from vmguest import blank_disk, run_helper  # noqa: E402

TARGET_RATIO = 1.2

ROUND = """\
mkdir -p /mnt/sq && mount -o ro,loop /job/v2.img /mnt/sq
size=$(stat -c %s /mnt/sq/LiveOS/rootfs.img)
lvcreate --yes --thin --virtualsize "${{size}}b" --name bench-dd imgline/pool >/dev/null
t0=$(date +%s.%N)
dd if=/mnt/sq/LiveOS/rootfs.img of=/dev/imgline/bench-dd bs=4M conv=fsync status=none
t1=$(date +%s.%N)
umount /mnt/sq
lvremove --yes imgline/bench-dd >/dev/null
echo "BENCH dd $(python3 -c "print($t1 - $t0)")"
t0=$(date +%s.%N)
{apply}
t1=$(date +%s.%N)
echo "BENCH apply $(python3 -c "print($t1 - $t0)")"
{updater} rollback --to {v1} --no-reboot >/dev/null
{updater} remove {v2} >/dev/null
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    built, store = node_image()
    base = store.path_for(built.artifact.sha256)
    v1, v2, _v3 = host_releases(base, built.artifact.sha256, built.version)
    with tempfile.TemporaryDirectory(prefix="imgline-bench-apply-") as tmp:
        work = Path(tmp)
        disk = blank_disk(work / "disk.img", 6144)
        config = work / "updater.toml"
        config.write_text(config_toml())
        root = work / "root.json"
        root.write_text("{}")  # never read: the bench applies files, not the repository
        apply = f"{UPDATER} apply --image /job/v2.img --sha256 {v2.sha256}"
        one = ROUND.format(apply=apply, updater=UPDATER, v1=v1.version, v2=v2.version)
        script = install_script(v1, "grub") + MOUNT_HOST + one * args.rounds
        run = run_helper(
            base,
            script,
            disks=[disk],
            files={
                "image.img": v1.image,
                "v2.img": v2.image,
                "updater.toml": config,
                "root.json": root,
            },
            python_bundle=True,
            timeout=3600,
        )
    if run.rc != 0:
        print(run.output[-5000:])
        print(f"the bench guest failed (rc {run.rc})")
        return 1
    dd = [float(x) for x in re.findall(r"BENCH dd ([0-9.]+)", run.output)]
    ap = [float(x) for x in re.findall(r"BENCH apply ([0-9.]+)", run.output)]
    for i, (a, b) in enumerate(zip(dd, ap, strict=True), 1):
        print(f"round {i}: dd {a:6.1f}s  apply {b:6.1f}s")
    steps = re.findall(r"apply node \S+: (\w+) done in ([0-9.]+)s", run.output)
    last = {name: float(sec) for name, sec in steps[-11:]}
    print("last apply by step: " + ", ".join(f"{k} {v:.1f}s" for k, v in last.items()))
    ratio = statistics.median(ap) / statistics.median(dd)
    print(f"median dd {statistics.median(dd):.1f}s, apply {statistics.median(ap):.1f}s")
    print(f"ratio apply/dd = {ratio:.2f} (target <= {TARGET_RATIO})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
