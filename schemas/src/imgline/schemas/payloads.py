"""Message bodies as frozen pydantic models: the one strict definition of each contract.

The fedora-messaging classes in ``messages`` derive their JSON schema from these models, so the
wire contract and the Python contract cannot drift apart.
"""

from __future__ import annotations

import hashlib
import json
import re
import types
import typing
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    model_validator,
)

SCHEMA_MAJOR = 1
SCHEMA_MINOR = 2  # 1.1: ImageRef.source_commit; 1.2: ImagePublished names its TUF targets
SCHEMA_VERSION = f"{SCHEMA_MAJOR}.{SCHEMA_MINOR}"

_VERSION_RE = re.compile(r"^(\d+)\.(\d+)$")


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() != UTC.utcoffset(None):
        raise ValueError("timestamps must be timezone-aware UTC (end with 'Z' or '+00:00')")
    return value


def utcnow() -> datetime:
    """Now, in UTC, to the microsecond: the only clock the contracts accept."""
    return datetime.now(tz=UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_utc)]
Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
ImageName = Annotated[
    str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$", description="image name, e.g. 'node'")
]
StreamName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]
Version = Annotated[
    str,
    Field(
        pattern=r"^[0-9A-Za-z][0-9A-Za-z._+~-]{0,63}$",
        description="image version, e.g. '20261123.1'",
    ),
]
HostId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
BuildId = Sha256Hex


class Model(BaseModel):
    """Base of every contract object: immutable, and unknown fields are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def _model_types(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic model classes an annotation can hold (through Optional, list, unions)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _model_types(typing.get_args(annotation)[0])
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if origin in (list, tuple, Union, types.UnionType):
        found: list[type[BaseModel]] = []
        for arg in typing.get_args(annotation):
            found.extend(_model_types(arg))
        return found
    return []


def _prune(model: type[BaseModel], data: Any) -> Any:
    """Drop keys ``model`` does not know, recursively: how a newer minor version is read."""
    if not isinstance(data, dict):
        return data
    known = {name: field for name, field in model.model_fields.items()}
    pruned: dict[str, Any] = {}
    for key, value in data.items():
        field = known.get(key)
        if field is None:
            continue
        candidates = _model_types(field.annotation)
        if candidates and isinstance(value, list):
            pruned[key] = [_prune_any(candidates, item) for item in value]
        elif candidates:
            pruned[key] = _prune_any(candidates, value)
        else:
            pruned[key] = value
    return pruned


def _prune_any(candidates: list[type[BaseModel]], value: Any) -> Any:
    """Prune against the union member a discriminated value names (``kind``), else the first."""
    if isinstance(value, dict) and len(candidates) > 1:
        for cand in candidates:
            kind = cand.model_fields.get("kind")
            if kind is not None and kind.default == value.get("kind"):
                return _prune(cand, value)
    return _prune(candidates[0], value)


class Payload(Model):
    """Fields every message body carries.

    ``schema_version`` is ``MAJOR.MINOR``. A body whose major version differs is refused (it is
    a different contract); a body from a newer minor version is accepted and the fields this
    version does not know are dropped, so old consumers keep working while producers move on.
    """

    topic: ClassVar[str]

    schema_version: str = SCHEMA_VERSION
    emitted_at: UtcDatetime = Field(default_factory=utcnow)

    @model_validator(mode="before")
    @classmethod
    def _accept_newer_minor(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "schema_version" not in data:
            return data
        raw = data["schema_version"]
        match = _VERSION_RE.match(str(raw))
        if match is None:
            raise ValueError(f"schema_version {raw!r} is not of the form MAJOR.MINOR, e.g. '1.0'")
        major, minor = int(match.group(1)), int(match.group(2))
        if major != SCHEMA_MAJOR:
            raise ValueError(
                f"schema_version {raw!r} has major version {major}; this consumer reads "
                f"{SCHEMA_MAJOR}.x: upgrade imgline-schemas"
            )
        if minor > SCHEMA_MINOR:
            return _prune(cls, data)
        return data


# --- reusable sub-objects -------------------------------------------------------------------


class GitSource(Model):
    """A kickstart in a git repository, at a ref (branch, tag) or a pinned commit."""

    kind: Literal["git"] = "git"
    url: str = Field(min_length=1)
    ref: str = Field(default="HEAD", min_length=1)
    commit: Annotated[str, Field(pattern=r"^[0-9a-f]{7,64}$")] | None = None
    kickstart_path: str = Field(min_length=1, description="path of the kickstart in the repo")


class InlineSource(Model):
    """A kickstart sent in the message itself (CLI, tests)."""

    kind: Literal["inline"] = "inline"
    kickstart: str = Field(min_length=1)


Source = Annotated[GitSource | InlineSource, Field(discriminator="kind")]


class Artifact(Model):
    """A stored image file, addressed by its content."""

    uri: str = Field(min_length=1)
    sha256: Sha256Hex
    size: int = Field(ge=0)
    format: Literal["liveimg-squashfs"] = "liveimg-squashfs"
    compression: Literal["zstd", "xz", "gzip", "lz4", "lzo"] = "zstd"


class ImageRef(Model):
    """Which build an event is about, with its artefact, as later stages need it."""

    build_id: BuildId
    name: ImageName
    version: Version
    stream: StreamName
    artifact: Artifact
    source_commit: str | None = Field(
        default=None, description="git commit the kickstart came from (1.1); the manifest names it"
    )


class TestResult(Model):
    """One check the tester ran."""

    __test__: ClassVar[bool] = False  # not a pytest test class

    name: str = Field(min_length=1)
    status: Literal["passed", "failed", "error", "skipped"]
    duration_seconds: float = Field(ge=0)
    detail: str = ""


# --- message bodies -------------------------------------------------------------------------


def canonical_build_id(fields: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of what defines a build: equal requests, equal builds."""
    blob = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _require_build_id(schema: dict[str, Any]) -> None:
    """On the wire build_id is required; in Python it is computed when left out."""
    schema.setdefault("required", [])
    if "build_id" not in schema["required"]:
        schema["required"].append("build_id")
    schema["properties"]["build_id"].pop("default", None)


class BuildRequested(Payload):
    """Someone (a git push, the CLI) asks for an image to be built."""

    topic: ClassVar[str] = "build.requested"

    model_config = ConfigDict(json_schema_extra=_require_build_id)

    request_id: str = Field(min_length=1, max_length=128)
    build_id: BuildId = Field(default="", description="sha256 of the request; computed if absent")
    source: Source
    name: ImageName
    stream: StreamName = "main"
    backend: Literal["mmdebstrap", "livemedia-creator"] = "mmdebstrap"
    version: Version | None = Field(default=None, description="pin the version; else one is made")
    requested_by: str | None = None

    @staticmethod
    def identity(data: dict[str, Any]) -> dict[str, Any]:
        """The fields that make two requests the same build (request id and time excluded)."""
        return {k: data.get(k) for k in ("source", "name", "stream", "backend", "version")}

    @model_validator(mode="before")
    @classmethod
    def _fill_build_id(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("build_id"):
            try:
                return {**data, "build_id": cls.model_construct_id(data)}
            except (TypeError, ValueError):
                return data  # field validation reports what is wrong with the request
        return data

    @model_validator(mode="after")
    def _check_build_id(self) -> BuildRequested:
        expected = canonical_build_id(self.identity(self.model_dump(mode="json")))
        if self.build_id != expected:
            raise ValueError(
                f"build_id {self.build_id!r} does not match the request's content "
                f"(expected {expected}); leave build_id out and it is computed"
            )
        return self

    @classmethod
    def model_construct_id(cls, data: dict[str, Any]) -> str:
        """The build_id of raw request fields, applying the same defaults as the model."""
        source = data.get("source")
        if isinstance(source, BaseModel):
            source = source.model_dump(mode="json")
        elif isinstance(source, dict):
            kind = source.get("kind", "git")
            model = GitSource if kind == "git" else InlineSource
            source = model.model_validate(source).model_dump(mode="json")
        ident = cls.identity({**data, "source": source})
        ident["stream"] = ident["stream"] or "main"
        ident["backend"] = ident["backend"] or "mmdebstrap"
        return canonical_build_id(ident)


class BuildFailed(Payload):
    """A build ended without an image; ``kickstart_line`` points at the offending line."""

    topic: ClassVar[str] = "build.failed"

    request_id: str = Field(min_length=1, max_length=128)
    build_id: BuildId
    name: ImageName
    stage: Literal["fetch", "parse", "build", "assemble", "store", "publish"]
    error: str = Field(min_length=1)
    kickstart_line: int | None = Field(default=None, ge=1)
    log_url: str | None = None


class ImageBuilt(Payload):
    """An image exists in the artefact store."""

    topic: ClassVar[str] = "image.built"

    build_id: BuildId
    request_id: str = Field(min_length=1, max_length=128)
    name: ImageName
    version: Version
    stream: StreamName
    artifact: Artifact
    source_commit: str | None = None
    kickstart_sha256: Sha256Hex
    backend: Literal["mmdebstrap", "livemedia-creator"]
    duration_seconds: float = Field(ge=0)
    log_url: str | None = None

    def ref(self) -> ImageRef:
        """The image as later stages refer to it."""
        return ImageRef(
            build_id=self.build_id,
            name=self.name,
            version=self.version,
            stream=self.stream,
            artifact=self.artifact,
            source_commit=self.source_commit,
        )


class ImageTested(Payload):
    """The tester's verdict with every check it ran."""

    topic: ClassVar[str] = "image.tested"

    build_id: BuildId
    image: ImageRef
    passed: bool
    results: list[TestResult] = Field(min_length=1)
    report_url: str | None = None

    @model_validator(mode="after")
    def _verdict_matches_results(self) -> ImageTested:
        bad = [r.name for r in self.results if r.status in ("failed", "error")]
        if self.passed and bad:
            raise ValueError(f"passed is true but checks failed: {', '.join(bad)}")
        if not self.passed and not bad:
            raise ValueError("passed is false but no check has status 'failed' or 'error'")
        if self.image.build_id != self.build_id:
            raise ValueError("image.build_id differs from build_id")
        return self


class ImageRejected(Payload):
    """The publisher refused an image; it never reaches a repository."""

    topic: ClassVar[str] = "image.rejected"

    build_id: BuildId
    image: ImageRef
    reason: str = Field(min_length=1)
    failed_checks: list[str] = Field(default_factory=list)


class PublishedTargets(Model):
    """TUF target paths of one release."""

    image: str = Field(min_length=1)
    manifest: str = Field(min_length=1)
    install_ks: str = Field(min_length=1)


class ImagePublished(Payload):
    """An image is in the signed repository; hosts on its stream may apply it."""

    topic: ClassVar[str] = "image.published"

    build_id: BuildId
    name: ImageName
    version: Version
    stream: StreamName
    manifest_url: str = Field(min_length=1)
    manifest_sha256: Sha256Hex
    image_url: str = Field(min_length=1)
    image_sha256: Sha256Hex
    image_size: int = Field(ge=0)
    key_id: str = Field(
        min_length=1, description="key id(s) of the stream's signing role (16 hex, comma-separated)"
    )
    # 1.2: the release as the signed (TUF) repository names it. Hosts verify with these, never
    # with the URLs above: the message is a hint to refresh, not a proof.
    repository_url: str | None = Field(default=None, description="base of metadata/ and targets/")
    targets: PublishedTargets | None = None
    role: str | None = Field(default=None, description="the stream's delegated targets role")
    role_version: int | None = Field(default=None, ge=1)
    snapshot_version: int | None = Field(default=None, ge=1)
    timestamp_version: int | None = Field(default=None, ge=1)


class HostEvent(Payload):
    """What every host report carries."""

    host_id: HostId
    name: ImageName
    stream: StreamName
    from_version: Version | None = None
    to_version: Version
    duration_seconds: float = Field(ge=0)


class HostUpgraded(HostEvent):
    """A host booted the new layer and it passed its health check."""

    topic: ClassVar[str] = "host.upgraded"

    layer: str = Field(min_length=1)


class HostUpgradeFailed(HostEvent):
    """Applying an image failed at ``step``; the host still boots its previous layer."""

    topic: ClassVar[str] = "host.upgrade.failed"

    step: str = Field(min_length=1)
    error: str = Field(min_length=1)


class HostRolledBack(HostEvent):
    """The new layer failed its health check; the host went back to ``from_version``."""

    topic: ClassVar[str] = "host.rolled_back"

    step: str = Field(min_length=1)
    error: str = Field(min_length=1)


ALL_PAYLOADS: tuple[type[Payload], ...] = (
    BuildRequested,
    BuildFailed,
    ImageBuilt,
    ImageTested,
    ImageRejected,
    ImagePublished,
    HostUpgraded,
    HostUpgradeFailed,
    HostRolledBack,
)
