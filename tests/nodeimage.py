"""The image built from examples/node.ks, built once and cached for the vm tier and benches.

A real mmdebstrap build takes minutes, so the result is kept under ``.cache/images/`` keyed by
everything that shapes it: the kickstart and the builder's and liveimg's source. Change any of
them and the next run builds afresh; a half-finished build never becomes the cache entry.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

from fedora_messaging import message as fm_message
from prometheus_client import CollectorRegistry

from imgline.builder.__main__ import make_backends
from imgline.builder.handlers import BuildMetrics, build_handler
from imgline.builder.settings import BuilderConfig
from imgline.core.artifacts import LocalArtifactStore
from imgline.schemas import payloads as p
from imgline.schemas.messages import BuildRequestedV1, ImageBuiltV1

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache"
APT_CACHE = CACHE / "apt" / "bookworm-amd64"
#: package roots the builder keeps, shared by every test build (keyed by their packages)
ROOT_CACHE = CACHE / "roots"
NODE_KS = REPO / "examples" / "node.ks"
#: the unprivileged account test builds run as (scripts/ensure-build-user.sh makes it)
BUILD_USER = "imgline-build"
_INPUTS = (
    NODE_KS,
    *sorted((REPO / "services" / "builder" / "src").rglob("*.py")),
    REPO / "core" / "src" / "imgline" / "core" / "liveimg.py",
    REPO / "core" / "src" / "imgline" / "core" / "nsimage.py",
    REPO / "core" / "src" / "imgline" / "core" / "userns.py",
)


def scratch(prefix: str = "build-") -> Path:
    """A new directory the build user's namespace can reach (pytest's own temporary
    directories are private to root, so a build's work_dir cannot be under them)."""
    parent = CACHE / "tmp"
    parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    path.chmod(0o755)
    return path


def cache_key() -> str:
    h = hashlib.sha256()
    for path in _INPUTS:
        h.update(path.relative_to(REPO).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def node_image() -> tuple[p.ImageBuilt, LocalArtifactStore]:
    """The built node image and the store holding it (built now if not cached)."""
    entry = CACHE / "images" / f"node-{cache_key()}"
    record = entry / "image.built.json"
    if not record.is_file():
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".node-", dir=entry.parent))
        tmp.chmod(0o755)  # the build user's namespace passes through to the work directory
        try:
            (tmp / "image.built.json").write_text(_build(tmp).model_dump_json())
            shutil.rmtree(tmp / "work", ignore_errors=True)
            if entry.exists():
                shutil.rmtree(entry)
            tmp.rename(entry)
            for stale in entry.parent.glob("node-*"):
                if stale != entry:  # built from inputs that no longer exist
                    shutil.rmtree(stale, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    built = p.ImageBuilt.model_validate_json(record.read_bytes())
    store = LocalArtifactStore(entry / "store")
    # the store was written under a temporary name: point the artefact at where it is now
    path = store.path_for(built.artifact.sha256)
    artifact = built.artifact.model_copy(update={"uri": path.as_uri()})
    return built.model_copy(update={"artifact": artifact}), store


def build(config: BuilderConfig, req: p.BuildRequested) -> list[fm_message.Message]:
    """What the real builder (its handler, every backend) sends for ``req``."""
    sent: list[fm_message.Message] = []
    handler = build_handler(
        config,
        LocalArtifactStore(config.store_dir),
        make_backends(config),
        publish=sent.append,
        topic_prefix="imgline",
        metrics=BuildMetrics(CollectorRegistry()),
    )
    handler(BuildRequestedV1.from_payload(req))
    return sent


def _build(where: Path) -> p.ImageBuilt:
    config = BuilderConfig(
        store_dir=where / "store",
        work_dir=where / "work",
        cache_dir=APT_CACHE,
        root_cache_dir=ROOT_CACHE,
        build_user=BUILD_USER,
    )
    req = p.BuildRequested(
        request_id="node-image-fixture",
        source=p.InlineSource(kickstart=NODE_KS.read_text(encoding="utf-8")),
        name="node",
        stream="stable",
    )
    sent = build(config, req)
    if len(sent) != 1 or not isinstance(sent[0], ImageBuiltV1):
        raise RuntimeError(f"building examples/node.ks failed: {[m.body for m in sent]}")
    built: p.ImageBuilt = sent[0].payload
    return built
