"""Repository scaling and the cost of an idle host, measured on real files and real HTTP.

1. Publish cost as the repository grows: the time to publish release 1,000 into a repository
   that already holds 999 releases across 10 streams, divided by the time to publish the first
   release into an empty one. Both are medians of several publishes (first: into several fresh
   repositories; late: releases 1,000 to 1,004). Retention bounds each stream's role, and the
   garbage queue is looked at only when something is due, so the ratio should stay flat.
   Target: <= 2.
2. An idle host: after one full refresh, a second refresh and "what is the latest release?"
   when nothing changed, through the TUF client over loopback HTTP. Printed: response-body
   bytes the client received and the requests made. Target: <= 2 KiB.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from imgline.core.trust.client import RepositoryClient
from imgline.core.trust.keys import KeyDir
from imgline.core.trust.repository import TufRepository
from imgline.publisher import http
from imgline.publisher.adapters.repo import Repository
from imgline.schemas import payloads as p

TARGET_RATIO = 2.0
TARGET_IDLE_BYTES = 2048
STREAMS = 10
IMAGE_BYTES = 1 << 20


def tested(tmp: Path, n: int, stream: str) -> tuple[p.ImageTested, Path]:
    image = tmp / f"img-{n}"
    data = os.urandom(IMAGE_BYTES)
    image.write_bytes(data)
    ref = p.ImageRef(
        build_id=hashlib.sha256(f"bench/{n}".encode()).hexdigest(),
        name="node",
        version=f"20261201.{n}",
        stream=stream,
        artifact=p.Artifact(
            uri=image.as_uri(), sha256=hashlib.sha256(data).hexdigest(), size=len(data)
        ),
    )
    result = p.TestResult(name="boot.live", status="passed", duration_seconds=1.0)
    return p.ImageTested(build_id=ref.build_id, image=ref, passed=True, results=[result]), image


def new_repository(where: Path) -> Repository:
    keys = KeyDir(where / "keys")
    TufRepository.init(where / "repo", keys, KeyDir(where / "root-keys"))
    return Repository(where / "repo", keys, "http://127.0.0.1:8090")


def timed_publish(repo: Repository, tmp: Path, n: int, stream: str) -> float:
    msg, image = tested(tmp, n, stream)
    started = time.perf_counter()
    done = repo.publish(msg, image)
    elapsed = time.perf_counter() - started
    assert done.new
    image.unlink()
    return elapsed


def bench_growth(tmp: Path, first_runs: int, late_runs: int) -> float:
    firsts = []
    for i in range(first_runs):
        repo = new_repository(tmp / f"fresh-{i}")
        firsts.append(timed_publish(repo, tmp, 1, "s0"))
    repo = new_repository(tmp / "grown")
    for n in range(1, 1000):
        timed_publish(repo, tmp, n, f"s{n % STREAMS}")
    lates = [timed_publish(repo, tmp, n, f"s{n % STREAMS}") for n in range(1000, 1000 + late_runs)]
    first, late = statistics.median(firsts), statistics.median(lates)
    ratio = late / first
    print(f"publish #1 into an empty repository: {[round(t * 1000, 1) for t in firsts]} ms")
    print(
        f"publish #1000.. with 999 releases in {STREAMS} streams: "
        f"{[round(t * 1000, 1) for t in lates]} ms"
    )
    metadata = repo.tuf.metadata_dir
    sizes = {f.name: f.stat().st_size for f in metadata.iterdir() if f.name.startswith("1")}
    state = repo.tuf.load()
    print(
        f"metadata now: snapshot {len(state.snapshot.to_bytes())} B, targets "
        f"{len(state.targets['targets'].to_bytes())} B, a stream role "
        f"{len(state.targets['stream-s0'].to_bytes())} B, timestamp "
        f"{(metadata / 'timestamp.json').stat().st_size} B ({len(sizes)} files sampled)"
    )
    print(f"median ratio (late / first): {ratio:.2f} (target <= {TARGET_RATIO})")
    return ratio


def bench_idle(tmp: Path) -> int:
    repo = new_repository(tmp / "idle")
    for n in range(1, 4):
        timed_publish(repo, tmp, n, "stable")
    with http.running(repo.root) as server:
        state = tmp / "host"
        first = RepositoryClient.for_base_url(server.url, state, root=repo.tuf.root_bytes())
        assert first.latest("stable", "node") is not None
        full = first.bytes_received
        again = RepositoryClient.for_base_url(server.url, state)
        latest = again.latest("stable", "node")
        assert latest is not None and latest.version == "20261201.3"
        idle = again.bytes_received
    print(f"first refresh + latest: {full} B of response bodies")
    print(
        f"idle refresh + latest: {idle} B of response bodies (timestamp.json; the next root "
        f"answers 404) (target <= {TARGET_IDLE_BYTES})"
    )
    return idle


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--first-runs", type=int, default=5)
    parser.add_argument("--late-runs", type=int, default=5)
    args = parser.parse_args()
    logging.getLogger("imgline").setLevel(logging.WARNING)  # one line per publish otherwise
    with tempfile.TemporaryDirectory(prefix="imgline-bench-repo-") as tmp:
        started = time.perf_counter()
        ratio = bench_growth(Path(tmp), args.first_runs, args.late_runs)
        idle = bench_idle(Path(tmp))
        print(f"(bench took {time.perf_counter() - started:.0f}s)")
    ok = ratio <= TARGET_RATIO and idle <= TARGET_IDLE_BYTES
    print("targets met" if ok else "TARGET MISSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
