"""The signed image repository's formats, shared by the publisher (writes) and the updater
(reads and verifies). Layout (DESIGN.md section 4)::

    streams/<stream>/index.json          + index.json.sig       (replaced on each publish)
    images/<name>/<version>/<name>-<version>.squashfs.img        (never changed once there)
                           /manifest.json + manifest.json.sig
                           /install.ks

Signatures cover the exact bytes of a file, so the bytes are made canonical here (sorted keys,
two-space indent, one trailing newline) and a reader parses only bytes it has verified.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from imgline.core.errors import ImglineError
from imgline.core.signing import Signature, TrustedKeys, verify

MANIFEST_FORMAT: Literal["imgline-manifest/1"] = "imgline-manifest/1"
INDEX_FORMAT: Literal["imgline-index/1"] = "imgline-index/1"
SIG_SUFFIX = ".sig"

M = TypeVar("M", bound=BaseModel)


class RepositoryError(ImglineError):
    """A repository file is missing, unsigned, tampered with or not in the expected format."""


def image_dir(name: str, version: str) -> PurePosixPath:
    return PurePosixPath("images") / name / version


def image_path(name: str, version: str) -> PurePosixPath:
    return image_dir(name, version) / f"{name}-{version}.squashfs.img"


def manifest_path(name: str, version: str) -> PurePosixPath:
    return image_dir(name, version) / "manifest.json"


def install_ks_path(name: str, version: str) -> PurePosixPath:
    return image_dir(name, version) / "install.ks"


def index_path(stream: str) -> PurePosixPath:
    return PurePosixPath("streams") / stream / "index.json"


def sig_of(path: PurePosixPath) -> PurePosixPath:
    return path.with_name(path.name + SIG_SUFFIX)


def join_url(base_url: str, path: PurePosixPath) -> str:
    return base_url.rstrip("/") + "/" + path.as_posix()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImageFile(_Strict):
    path: str = Field(description="relative to the repository root")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class TestSummary(_Strict):
    """What the tester found, in short; the full report is at ``report_url``."""

    __test__ = False

    passed: bool
    checks: int = Field(ge=0)
    failed: list[str] = Field(default_factory=list)
    skipped: list[str] = Field(default_factory=list)
    report_url: str | None = None


class Manifest(_Strict):
    """One release: which image, from which build and commit, how it was tested."""

    format: Literal["imgline-manifest/1"] = MANIFEST_FORMAT
    name: str
    version: str
    stream: str
    build_id: str
    image: ImageFile
    source_commit: str | None
    tests: TestSummary
    created: datetime
    key_id: str


class IndexEntry(_Strict):
    name: str
    version: str
    build_id: str
    manifest: str = Field(description="path of manifest.json, relative to the repository root")
    manifest_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    image_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    image_size: int = Field(ge=0)
    published: datetime


class StreamIndex(_Strict):
    """The releases of one stream, newest first. ``generation`` only ever grows, so a host can
    refuse an index older than one it has already seen (a replayed or rolled-back mirror)."""

    format: Literal["imgline-index/1"] = INDEX_FORMAT
    stream: str
    generation: int = Field(ge=0)
    updated: datetime
    releases: list[IndexEntry] = Field(default_factory=list)

    def latest(self, name: str) -> IndexEntry | None:
        return next((r for r in self.releases if r.name == name), None)

    def find(self, name: str, version: str) -> IndexEntry | None:
        return next((r for r in self.releases if (r.name, r.version) == (name, version)), None)


def canonical_bytes(model: BaseModel) -> bytes:
    """The one byte form a model is signed and stored in."""
    data = model.model_dump(mode="json")
    return (json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _parse(model: type[M], data: bytes, what: str) -> M:
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        raise RepositoryError(f"{what} is signed but not a valid {model.__name__}: {exc}") from exc


def verify_manifest(data: bytes, sig: bytes | Signature, trusted: TrustedKeys) -> Manifest:
    """The manifest, if ``data`` carries a good signature by a trusted key."""
    key = verify(data, sig, trusted, "manifest.json")
    manifest = _parse(Manifest, data, "manifest.json")
    if manifest.key_id != key:
        raise RepositoryError(f"manifest.json names key {manifest.key_id} but was signed by {key}")
    return manifest


def verify_index(
    data: bytes, sig: bytes | Signature, trusted: TrustedKeys, stream: str, min_generation: int = 0
) -> StreamIndex:
    """The stream index, if signed by a trusted key, for ``stream``, and not older than
    ``min_generation`` (the newest a reader has seen: protection against replay)."""
    verify(data, sig, trusted, f"streams/{stream}/index.json")
    index = _parse(StreamIndex, data, f"streams/{stream}/index.json")
    if index.stream != stream:
        raise RepositoryError(f"the index of stream {stream!r} is signed for {index.stream!r}")
    if index.generation < min_generation:
        raise RepositoryError(
            f"the index of stream {stream!r} is generation {index.generation}, older than "
            f"{min_generation} already seen: a stale mirror or a replay"
        )
    return index
