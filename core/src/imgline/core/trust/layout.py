"""Names and policies of the repository, shared by the publisher and the client (pure).

Layout on disk and over HTTP (consistent snapshots, so every file but one is immutable)::

    metadata/timestamp.json                 the only file ever replaced (a rename)
    metadata/<N>.root.json                  every root version: clients walk the chain
    metadata/<N>.targets.json               delegates each stream to its own role
    metadata/<N>.snapshot.json              versions of every targets role
    metadata/<N>.stream-<stream>.json       one delegated targets role per stream
    targets/<stream>/releases.json          (as <sha256>.releases.json) the stream's releases
    targets/<stream>/<name>/<version>/      (as <sha256>.<file>) image, manifest.json, install.ks

A target path starts with its stream, and each stream's role is trusted only for paths under
that stream, so one stream's key cannot hand out another stream's images.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from imgline.core.trust.errors import TrustError

ROLE_PREFIX = "stream-"
TOP_LEVEL = ("root", "targets", "snapshot", "timestamp")
METADATA_DIR = "metadata"
TARGETS_DIR = "targets"
RELEASES = "releases.json"
MANIFEST = "manifest.json"
INSTALL_KS = "install.ks"
MANIFEST_FORMAT: Literal["imgline-manifest/2"] = "imgline-manifest/2"
RELEASES_FORMAT: Literal["imgline-releases/1"] = "imgline-releases/1"

# The same grammar as the message schemas: no '/', no leading dot, no fnmatch specials.
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._+~-]{0,63}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _check(kind: str, value: str, pattern: re.Pattern[str]) -> str:
    if not pattern.fullmatch(value):
        raise TrustError(f"{kind} {value!r} is not a valid {kind} name for the repository")
    return value


def stream_role(stream: str) -> str:
    """The delegated targets role that signs ``stream``'s releases."""
    return ROLE_PREFIX + _check("stream", stream, _NAME)


def stream_of_role(role: str) -> str | None:
    """The stream a delegated role signs for; ``None`` for anything else."""
    if not role.startswith(ROLE_PREFIX):
        return None
    stream = role.removeprefix(ROLE_PREFIX)
    return stream if _NAME.fullmatch(stream) else None


def stream_paths(stream: str) -> list[str]:
    """The delegation's path patterns: the stream's index and its release files, nothing else
    (TUF matches patterns segment by segment, so ``*`` never crosses a ``/``)."""
    _check("stream", stream, _NAME)
    return [f"{stream}/{RELEASES}", f"{stream}/*/*/*"]


def release_dir(stream: str, name: str, version: str) -> str:
    return "/".join(
        (_check("stream", stream, _NAME), _check("image", name, _NAME), _check_version(version))
    )


def _check_version(version: str) -> str:
    return _check("version", version, _VERSION)


def image_target(stream: str, name: str, version: str) -> str:
    return f"{release_dir(stream, name, version)}/{name}-{version}.squashfs.img"


def manifest_target(stream: str, name: str, version: str) -> str:
    return f"{release_dir(stream, name, version)}/{MANIFEST}"


def install_ks_target(stream: str, name: str, version: str) -> str:
    return f"{release_dir(stream, name, version)}/{INSTALL_KS}"


def releases_target(stream: str) -> str:
    return f"{_check('stream', stream, _NAME)}/{RELEASES}"


def hashed_path(target_path: str, sha256: str) -> str:
    """Where a target's bytes live (consistent snapshots): ``dir/<sha256>.<file>``."""
    if not _SHA256.fullmatch(sha256):
        raise TrustError(f"not a sha256: {sha256!r}")
    directory, _, base = target_path.rpartition("/")
    return f"{directory}/{sha256}.{base}" if directory else f"{sha256}.{base}"


def metadata_file(role: str, version: int | None) -> str:
    """``<version>.<role>.json``; the timestamp alone is unversioned."""
    return f"{role}.json" if version is None else f"{version}.{role}.json"


class Expiry(BaseModel):
    """How long each role's signature is good for. Short for online roles, so a mirror cannot
    freeze a host on old metadata for long; long for root, whose keys are offline."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    root: timedelta = Field(default=timedelta(days=365), gt=timedelta(0))
    targets: timedelta = Field(default=timedelta(days=90), gt=timedelta(0))
    snapshot: timedelta = Field(default=timedelta(days=7), gt=timedelta(0))
    timestamp: timedelta = Field(default=timedelta(days=1), gt=timedelta(0))

    def lifetime(self, role: str) -> timedelta:
        """Delegated (stream) roles live as long as the top-level targets role."""
        if role in ("root", "snapshot", "timestamp"):
            lifetime: timedelta = getattr(self, role)
            return lifetime
        return self.targets


def due(expires: datetime, now: datetime, lifetime: timedelta) -> bool:
    """Re-sign once half of a signature's life is gone: a missed timer run or two still leaves
    hosts with valid metadata."""
    return expires - now <= lifetime / 2


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TestSummary(_Strict):
    """What the tester found, in short; the full report is at ``report_url``."""

    __test__ = False

    passed: bool
    checks: int = Field(ge=0)
    failed: list[str] = Field(default_factory=list)
    skipped: list[str] = Field(default_factory=list)
    report_url: str | None = None


class Manifest(_Strict):
    """One release, as the ``manifest.json`` target says: which image, from which build and
    commit, how it was tested. Signed through the stream role that lists its hash."""

    format: Literal["imgline-manifest/2"] = MANIFEST_FORMAT
    name: str = Field(pattern=_NAME.pattern)
    version: str = Field(pattern=_VERSION.pattern)
    stream: str = Field(pattern=_NAME.pattern)
    build_id: str = Field(pattern=_SHA256.pattern)
    image: str = Field(description="target path of the image")
    image_sha256: str = Field(pattern=_SHA256.pattern)
    image_size: int = Field(ge=0)
    install_ks: str = Field(description="target path of install.ks")
    source_commit: str | None = None
    tests: TestSummary
    published: datetime


class Release(_Strict):
    """One line of a stream's ``releases.json``: enough to choose, paths to fetch the rest."""

    name: str = Field(pattern=_NAME.pattern)
    version: str = Field(pattern=_VERSION.pattern)
    build_id: str = Field(pattern=_SHA256.pattern)
    manifest: str
    image: str
    install_ks: str
    published: datetime


class ReleaseIndex(_Strict):
    """A stream's releases, newest first (publish order, not clock time)."""

    format: Literal["imgline-releases/1"] = RELEASES_FORMAT
    stream: str = Field(pattern=_NAME.pattern)
    releases: list[Release] = Field(default_factory=list)

    def latest(self, name: str) -> Release | None:
        return next((r for r in self.releases if r.name == name), None)

    def find(self, name: str, version: str) -> Release | None:
        return next((r for r in self.releases if (r.name, r.version) == (name, version)), None)


def canonical_bytes(model: BaseModel) -> bytes:
    """The one byte form a manifest or index is stored in (its hash goes into metadata)."""
    return (model.model_dump_json(indent=2) + "\n").encode()
