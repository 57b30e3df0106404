"""Publishing a release into the TUF repository, so that a reader never sees half of it.

One publish, under the repository lock:

1. the ledger claims ``name/version`` for this build (every name/version ever published is
   remembered, so none comes back with other content);
2. the image is checked against the tested sha256 and size, then hard-linked (or copied) to
   its content-addressed target file; manifest.json and install.ks are written the same way;
3. the stream's role gets the three targets and a new ``releases.json``; retention drops the
   oldest releases from the list;
4. one commit signs the stream role, a snapshot and a timestamp, the timestamp last: that
   rename is the moment the release appears;
5. the ledger marks the release published; files no longer listed are queued, and deleted
   only after every snapshot that may list them has expired.

A crash anywhere before 4 leaves the previous release list in force and unreferenced files
behind; a redelivery of the same build finishes the publish. Each target file a publish creates
is first recorded in ``.state/placing.jsonl``, so the next publish removes those of an
interrupted one that no signed role lists (they were never listed, so no host can need them;
a redelivery writes its own: the manifest and release list carry the time they were made), as
well as ``.tmp-*`` files. ``crash`` is a test hook called between the steps.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError
from tuf.api.metadata import TargetFile, Targets

from imgline.core.artifacts import ArtifactError, verify_digest
from imgline.core.fsutil import TMP_PREFIX, fsync_dir, out_of_space, write_atomic
from imgline.core.trust import layout, rollout
from imgline.core.trust.errors import TrustError
from imgline.core.trust.keys import KeyDir
from imgline.core.trust.repository import State, TufRepository
from imgline.publisher.domain import installks, release, retention
from imgline.publisher.errors import (
    IntegrityError,
    ReleaseError,
    RepositoryConfigError,
    RepositoryError,
    RetiredError,
)
from imgline.schemas import payloads as p

log = logging.getLogger(__name__)

#: The target files the publish in progress created (one relative path a line), removed once
#: it committed: what is left in it after a crash and not listed is an orphan.
PLACING = "placing.jsonl"


class LedgerRecord(BaseModel):
    """What the repository remembers of a name/version, forever."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: str
    stream: str
    build_id: str
    image_sha256: str
    image_size: int
    state: Literal["claimed", "published"]
    manifest: layout.Manifest | None = None


class Ledger:
    """``.state/ledger/<name>/<version>.json``: one small file per release, so checking and
    recording cost the same with ten releases or ten thousand."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, name: str, version: str) -> Path:
        return self.directory / name / f"{version}.json"

    def get(self, name: str, version: str) -> LedgerRecord | None:
        path = self._path(name, version)
        try:
            return LedgerRecord.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return None
        except ValidationError as exc:
            raise RepositoryError(f"ledger entry {path} is damaged: {exc}") from None

    def put(self, record: LedgerRecord) -> None:
        path = self._path(record.name, record.version)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, record.model_dump_json().encode())


@dataclass(frozen=True)
class Published:
    """Where a release is, as image.published reports it."""

    manifest: layout.Manifest
    manifest_sha256: str
    role: str
    key_ids: list[str]
    role_version: int
    snapshot_version: int
    timestamp_version: int
    new: bool  # False when the release was already published (a redelivery)


class Repository:
    """The publisher's view of a TUF repository at ``root`` served at ``base_url``."""

    def __init__(
        self,
        root: Path,
        keys: KeyDir,
        base_url: str,
        *,
        keep: int = 3,
        keep_per_stream: Mapping[str, int] | None = None,
        layout_: installks.InstallLayout | None = None,
        expiry: layout.Expiry | None = None,
        clock: Callable[[], datetime] = layout.now,
        crash: Callable[[str], None] = lambda step: None,
        first_wave: Callable[[str, str, datetime], rollout.Rollout | None] = lambda n, v, t: None,
    ) -> None:
        self.first_wave = first_wave  # the rollout a new release starts with (None: everyone)
        self.keep_per_stream = dict(keep_per_stream or {})
        if min([keep, *self.keep_per_stream.values()]) < 1:
            raise RepositoryConfigError("retention must keep at least one release per image")
        self.tuf = TufRepository(root, keys, expiry=expiry, clock=clock)
        if not self.tuf.exists():
            raise RepositoryConfigError(
                f"no repository at {root}: create it once with "
                f"`imgline repo init {root} --keys {keys.directory} --root-keys <offline dir>`"
            )
        self.root = root
        self.base_url = base_url.rstrip("/") + "/"
        self.keep = keep
        self.layout = layout_ or installks.InstallLayout()
        self.clock = clock
        self.crash = crash
        self.ledger = Ledger(self.tuf.state_dir / "ledger")

    @property
    def targets_url(self) -> str:
        return self.base_url + layout.TARGETS_DIR + "/"

    def url_of(self, target: str, sha256: str) -> str:
        return self.targets_url + layout.hashed_path(target, sha256)

    # --- reading ----------------------------------------------------------------------------

    def load(self) -> State:
        try:
            return self.tuf.load()
        except TrustError as exc:
            raise RepositoryError(
                f"the repository at {self.root} does not verify ({exc}); refusing to publish "
                "over it: restore it from backup"
            ) from exc

    def releases(self, state: State, stream: str) -> layout.ReleaseIndex:
        """The stream's current release list, as signed (read from our own disk, checked
        against the hash its role lists)."""
        role = state.role(layout.stream_role(stream))
        info = role.signed.targets.get(layout.releases_target(stream)) if role else None
        if info is None:
            return layout.ReleaseIndex(stream=stream)
        data = self._target_bytes(info)
        return layout.ReleaseIndex.model_validate_json(data)

    def _target_bytes(self, info: TargetFile) -> bytes:
        path = self._file_of(info)
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != info.hashes["sha256"]:
            raise RepositoryError(f"{path} does not match its signed hash: restore it")
        return data

    # --- publishing -------------------------------------------------------------------------

    def publish(self, tested: p.ImageTested, image_file: Path) -> Published:
        """Put a tested image into its stream; idempotent per (name, version, build_id)."""
        if not tested.passed:
            raise ReleaseError(f"build {tested.build_id} did not pass its tests: not published")
        try:
            return self._publish(tested, image_file)
        except OSError as exc:
            if not out_of_space(exc):
                raise
            raise RepositoryError(
                f"no space left on the repository's file system at {self.root} "
                f"({exc.strerror}): free space there; the timestamp is written last, so hosts "
                "still see the repository as it was, and the release is retried"
            ) from exc

    def _publish(self, tested: p.ImageTested, image_file: Path) -> Published:
        img = tested.image
        with self.tuf.locked():
            self._clean_leftovers()
            record = self.ledger.get(img.name, img.version)
            if record is not None and record.build_id != tested.build_id:
                raise ReleaseError(
                    f"{img.name}-{img.version} was published from build {record.build_id}, not "
                    f"{tested.build_id}: a version is never reused, build a new one"
                )
            state = self.load()
            self._remove_unlisted_placed(state)
            if record is not None and record.state == "published" and record.manifest:
                return self._describe(state, record.manifest, new=False)
            current = self.releases(state, img.stream)  # verified before anything is written
            listed = current.find(img.name, img.version)
            if record is not None and listed is not None and listed.build_id == tested.build_id:
                # a crash after the commit, before the ledger said so: finish the record only
                info = state.role(layout.stream_role(img.stream))
                assert info is not None  # noqa: S101 - the release list came from it
                manifest = layout.Manifest.model_validate_json(
                    self._target_bytes(info.signed.targets[listed.manifest])
                )
                self.ledger.put(
                    record.model_copy(update={"state": "published", "manifest": manifest})
                )
                return self._describe(state, manifest, new=False)
            claim = LedgerRecord(
                name=img.name,
                version=img.version,
                stream=img.stream,
                build_id=tested.build_id,
                image_sha256=img.artifact.sha256,
                image_size=img.artifact.size,
                state="claimed",
            )
            self.ledger.put(claim)
            manifest = release.manifest(tested, self.clock())
            changed: dict[str, Targets] = {}
            role = self.tuf.ensure_stream(state, img.stream, changed)
            retired = self._place_release(current, tested, manifest, image_file, role)
            self.crash("targets_placed")
            commit = self.tuf.commit(state, changed)
            self.tuf.retire(retired)  # only once nothing current lists them
            (self.tuf.state_dir / PLACING).unlink(missing_ok=True)  # all listed now
            self.crash("committed")
            self.ledger.put(claim.model_copy(update={"state": "published", "manifest": manifest}))
            self.tuf.collect_garbage()
            log.info(
                "published %s-%s to stream %s (%s v%d, snapshot v%d, timestamp v%d)",
                img.name,
                img.version,
                img.stream,
                layout.stream_role(img.stream),
                commit.versions[layout.stream_role(img.stream)],
                commit.snapshot_version,
                commit.timestamp_version,
            )
            return self._describe(state, manifest, new=True)

    def _describe(self, state: State, manifest: layout.Manifest, *, new: bool) -> Published:
        role = layout.stream_role(manifest.stream)
        md = state.role(role)
        path = layout.manifest_target(manifest.stream, manifest.name, manifest.version)
        info = md.signed.targets.get(path) if md else None
        if md is None or info is None:
            raise RetiredError(
                f"{manifest.name}-{manifest.version} is recorded as published but its stream "
                f"role no longer lists it (retention dropped it): nothing to announce again"
            )
        delegations = state.top.delegations
        spec = delegations.roles.get(role) if delegations and delegations.roles else None
        return Published(
            manifest=manifest,
            manifest_sha256=info.hashes["sha256"],
            role=role,
            key_ids=list(spec.keyids) if spec else [],
            role_version=md.signed.version,
            snapshot_version=state.snapshot.signed.version,
            timestamp_version=state.timestamp.signed.version,
            new=new,
        )

    def _place_release(
        self,
        current: layout.ReleaseIndex,
        tested: p.ImageTested,
        manifest: layout.Manifest,
        image_file: Path,
        role: Targets,
    ) -> list[str]:
        """Write the release's target files and list them (and the new index) in ``role``;
        returns the files the new state no longer lists."""
        img = tested.image
        try:
            verify_digest(image_file, img.artifact.sha256, img.artifact.size, "image")
        except ArtifactError as exc:
            raise IntegrityError(f"the image is not the one tested: {exc}") from exc
        custom = {
            "imgline": {"name": img.name, "version": img.version, "build_id": tested.build_id}
        }
        image = TargetFile(
            img.artifact.size,
            {"sha256": img.artifact.sha256},
            manifest.image,
            {"custom": custom},
        )
        self._link_target(image, image_file)
        self.crash("image_linked")
        manifest_bytes = layout.canonical_bytes(manifest)
        ks = installks.render(
            name=img.name,
            version=img.version,
            stream=img.stream,
            image_url=self.url_of(manifest.image, img.artifact.sha256),
            sha256=img.artifact.sha256,
            repository_url=self.base_url,
            root_metadata=self.tuf.root_bytes(),
            layout=self.layout,
        )
        installks.validate(ks)
        stream_dir = layout.release_dir(img.stream, img.name, img.version)
        for path, data in (
            (f"{stream_dir}/{layout.MANIFEST}", manifest_bytes),
            (manifest.install_ks, ks.encode()),
        ):
            role.targets[path] = self._write_target(path, data)
        role.targets[manifest.image] = image
        listed = [release.entry(manifest), *current.releases]
        keep = self.keep_per_stream.get(img.stream, self.keep)
        kept, dropped = retention.keep_newest(listed, keep)
        retired: list[str] = []
        for gone in dropped:
            log.info("retention: %s-%s leaves stream %s", gone.name, gone.version, img.stream)
            for target in (gone.manifest, gone.image, gone.install_ks):
                info = role.targets.pop(target, None)
                if info is not None:
                    retired.append(self._public_path(info))
        index_path = layout.releases_target(img.stream)
        old_index = role.targets.get(index_path)
        if old_index is not None:
            retired.append(self._public_path(old_index))
        index = layout.ReleaseIndex(stream=img.stream, releases=kept)
        table = rollout.table_of(old_index.custom if old_index else None, index_path)
        table = table.only((r.name, r.version) for r in kept)
        first = self.first_wave(img.name, img.version, manifest.published)
        if first is not None:
            table = table.put(first)
        info = self._write_target(index_path, layout.canonical_bytes(index))
        _sign_rollouts(info, table)
        role.targets[index_path] = info
        return retired

    # --- staged rollouts --------------------------------------------------------------------

    def rollouts(self, stream: str, state: State | None = None) -> rollout.RolloutTable:
        """The stream's signed rollout table, as hosts read it."""
        state = state or self.load()
        role = state.role(layout.stream_role(stream))
        path = layout.releases_target(stream)
        info = role.signed.targets.get(path) if role else None
        return rollout.table_of(info.custom if info else None, path)

    def update_rollout(
        self,
        stream: str,
        name: str,
        version: str,
        change: Callable[[rollout.Rollout | None], rollout.Rollout | None],
    ) -> rollout.Rollout | None:
        """Sign ``change(current)`` as the release's rollout, in one commit; returns the rollout
        in force afterwards.

        ``change`` sees the signed state under the repository lock, so a decision made on an
        older view (a pause racing an operator's resume) is made again on the current one.
        Returning ``current`` (or None) changes nothing and signs nothing: a repeated pause
        or a redelivered report costs no new metadata. Crash-safe like a publish: the new
        stream role and snapshot are new files, and the timestamp's rename is the commit.
        """
        path = layout.releases_target(stream)
        with self.tuf.locked():
            state = self.load()
            if self.releases(state, stream).find(name, version) is None:
                raise ReleaseError(
                    f"{name}-{version} is not listed in stream {stream}: no rollout to change "
                    "(never published there, or retention dropped it)"
                )
            table = self.rollouts(stream, state)
            current = table.of(name, version)
            new = change(current)
            if new is None or new == current:
                return current
            if (new.name, new.version) != (name, version):
                raise ReleaseError(f"a rollout of {new.name}-{new.version} given for {version}")
            changed: dict[str, Targets] = {}
            role = self.tuf.ensure_stream(state, stream, changed)
            _sign_rollouts(role.targets[path], table.put(new))
            self.crash("rollout_prepared")
            commit = self.tuf.commit(state, changed)
            log.info(
                "rollout of %s-%s in stream %s: %s (%s v%d, timestamp v%d)",
                name,
                version,
                stream,
                f"paused: {new.reason}" if new.paused else f"open to {new.share:.1%}",
                layout.stream_role(stream),
                commit.versions[layout.stream_role(stream)],
                commit.timestamp_version,
            )
            return new

    def _public_path(self, info: TargetFile) -> str:
        return self._file_of(info).relative_to(self.root).as_posix()

    def _file_of(self, info: TargetFile) -> Path:
        return self.tuf.targets_dir / layout.hashed_path(info.path, info.hashes["sha256"])

    def _write_target(self, path: str, data: bytes) -> TargetFile:
        info = TargetFile.from_data(path, data, ["sha256"])
        final = self._file_of(info)
        if not final.exists():  # content-addressed: an existing file already holds these bytes
            self._placing(final)
            final.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(final, data)
        return info

    def _link_target(self, info: TargetFile, source: Path) -> None:
        """Hard-link the (immutable, content-addressed) artefact when on the same file system."""
        final = self._file_of(info)
        if final.exists():
            return
        self._placing(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f"{TMP_PREFIX}{final.name}")
        tmp.unlink(missing_ok=True)
        try:
            try:
                os.link(source, tmp)
            except OSError:
                shutil.copyfile(source, tmp)
                with tmp.open("rb+") as f:
                    os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a copy cut short (a full disk) is never left behind
            raise
        fsync_dir(final.parent)

    # --- upkeep -----------------------------------------------------------------------------

    def refresh(self) -> list[str]:
        """Re-sign what is due (the timestamp above all) and delete what has expired."""
        try:
            return self.tuf.refresh()
        except TrustError as exc:
            raise RepositoryError(f"cannot re-sign the repository: {exc}") from exc

    def announce(self, build_id: str, done: Published) -> p.ImagePublished:
        """``image.published`` for ``done`` (see ``published_event``)."""
        return published_event(self, build_id, done)

    def _placing(self, final: Path) -> None:
        """Record ``final`` before it is created (synced: the record must outlive a crash)."""
        self.tuf.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with (self.tuf.state_dir / PLACING).open("a") as placing:
            placing.write(final.relative_to(self.root).as_posix() + "\n")
            placing.flush()
            os.fsync(placing.fileno())

    def _remove_unlisted_placed(self, state: State) -> None:
        """Remove what an interrupted publish created and no signed role lists (under the lock;
        a file a role lists stays: the crash came after the commit)."""
        placing = self.tuf.state_dir / PLACING
        try:
            placed = set(placing.read_text().split())
        except FileNotFoundError:
            return
        listed = {
            self._public_path(info)
            for role in state.targets.values()
            for info in role.signed.targets.values()
        }
        for rel in sorted(placed - listed):
            path = self.root / rel
            if path.resolve().is_relative_to(self.tuf.targets_dir.resolve()):
                log.warning("removing %s, written by an interrupted publish and never listed", rel)
                path.unlink(missing_ok=True)
        placing.unlink()

    def _clean_leftovers(self) -> None:
        """``.tmp-*`` files an interrupted publish left (never listed; safe under the lock)."""
        for directory in (self.tuf.metadata_dir, self.tuf.targets_dir):
            if not directory.is_dir():
                continue
            for leftover in directory.rglob(f"{TMP_PREFIX}*"):
                log.warning("removing %s left by an interrupted publish", leftover)
                leftover.unlink(missing_ok=True)


def _sign_rollouts(info: TargetFile, table: rollout.RolloutTable) -> None:
    """Put ``table`` in the custom field of the stream's releases.json entry (the stream role
    signs it at the next commit); an empty table leaves no field."""
    custom = rollout.custom_with(info.custom, table)
    if custom:
        info.unrecognized_fields["custom"] = custom
    else:
        info.unrecognized_fields.pop("custom", None)


def published_event(repo: Repository, build_id: str, done: Published) -> p.ImagePublished:
    """``image.published`` for a release: where it is, and the metadata versions that list it."""
    m = done.manifest
    manifest = layout.manifest_target(m.stream, m.name, m.version)
    return p.ImagePublished(
        build_id=build_id,
        name=m.name,
        version=m.version,
        stream=m.stream,
        manifest_url=repo.url_of(manifest, done.manifest_sha256),
        manifest_sha256=done.manifest_sha256,
        image_url=repo.url_of(m.image, m.image_sha256),
        image_sha256=m.image_sha256,
        image_size=m.image_size,
        key_id=",".join(k[:16] for k in done.key_ids),
        repository_url=repo.base_url,
        targets=p.PublishedTargets(image=m.image, manifest=manifest, install_ks=m.install_ks),
        role=done.role,
        role_version=done.role_version,
        snapshot_version=done.snapshot_version,
        timestamp_version=done.timestamp_version,
    )
