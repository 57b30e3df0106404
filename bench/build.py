"""Rebuild speed: a cold build of examples/node.ks against a rebuild with one %post line changed.

Both go through the real builder (its handler and the mmdebstrap backend, run from root; by
default in unshare mode as the build user imgline-build, ``--mode root`` as root) in this
process, with the same .deb cache under ``<repo>/.cache/apt`` so neither side measures the
network: "cold" is a builder without kept package roots, "warm" is the next push of the same
kickstart with one ``%post`` line changed, which reuses the package root the cold build kept.
Target: warm <= 0.35x cold.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from fedora_messaging import message as fm_message
from prometheus_client import CollectorRegistry

from imgline.builder.__main__ import make_backends
from imgline.builder.handlers import BuildMetrics, build_handler
from imgline.builder.settings import BuilderConfig
from imgline.core.artifacts import LocalArtifactStore
from imgline.core.userns import BuildUser
from imgline.schemas import payloads as p
from imgline.schemas.messages import BuildRequestedV1, ImageBuiltV1

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache"
NODE_KS = REPO / "examples" / "node.ks"
TARGET_RATIO = 0.35


def changed_post(text: str, n: int) -> str:
    """node.ks with one more line in its first %post."""
    header = re.search(r"^%post\b.*$", text, re.M)
    if header is None:
        raise SystemExit(f"{NODE_KS} has no %post to change")
    line = f"print('bench rebuild {n}')" if "python3" in header.group(0) else f"echo bench {n}"
    return f"{text[: header.end()]}\n{line}{text[header.end() :]}"


def build_once(config: BuilderConfig, kickstart: str, n: int) -> tuple[float, str]:
    """Seconds from request to ``image.built``, and the build log."""
    sent: list[fm_message.Message] = []
    store = LocalArtifactStore(config.store_dir)
    handler = build_handler(
        config,
        store,
        make_backends(config),
        publish=sent.append,
        topic_prefix="imgline",
        metrics=BuildMetrics(CollectorRegistry()),
    )
    req = p.BuildRequested(
        request_id=f"bench-{n}",
        source=p.InlineSource(kickstart=kickstart),
        name="node",
        stream="bench",
    )
    started = time.perf_counter()
    handler(BuildRequestedV1.from_payload(req))
    took = time.perf_counter() - started
    if len(sent) != 1 or not isinstance(sent[0], ImageBuiltV1):
        raise SystemExit(f"build {n} failed: {[m.body for m in sent]}")
    built: p.ImageBuilt = sent[0].payload
    log = store.read_record("logs", f"{built.build_id}.log") or b""
    return took, log.decode(errors="replace")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--mode", choices=("unshare", "root"), default="unshare")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run this as root: it builds as root or switches to imgline-build")
    text = NODE_KS.read_text(encoding="utf-8")
    CACHE.mkdir(exist_ok=True)
    if args.mode == "unshare":  # its namespace works under .cache/, wherever the checkout is
        BuildUser.lookup("imgline-build").reach(CACHE)
    tmp = tempfile.mkdtemp(prefix="bench-build-", dir=CACHE)
    where = Path(tmp)
    where.chmod(0o755)  # the build user's namespace passes through to the work directory
    config = BuilderConfig(
        store_dir=where / "store",
        work_dir=where / "work",
        cache_dir=CACHE / "apt" / "bookworm-amd64",
        root_cache_dir=where / "roots",  # empty: the first build is cold
        build_mode=args.mode,
        build_user="imgline-build" if args.mode == "unshare" else None,
    )
    print(f"mode {args.mode}", flush=True)
    try:
        cold, cold_log = build_once(config, changed_post(text, 1), 1)
        print(f"cold build (no kept package root)     {cold:7.1f} s", flush=True)
        warm, warm_log = build_once(config, changed_post(text, 2), 2)
        print(f"warm rebuild (one %post line changed) {warm:7.1f} s", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(where, ignore_errors=True)
    if "reused from the cache" not in warm_log or "reused from the cache" in cold_log:
        raise SystemExit("the warm build did not reuse the cold build's package root")
    ratio = warm / cold
    verdict = "OK" if ratio <= TARGET_RATIO else "MISSED"
    print(
        f"ratio                                 {ratio:7.3f}x  (target <= {TARGET_RATIO})  "
        f"{verdict}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
