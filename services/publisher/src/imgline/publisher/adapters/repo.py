"""The repository on disk, written so that a reader never sees a half-done publish.

* A release is staged in a dot-directory next to its final place and renamed into place only
  when the image, manifest, signature and install.ks are complete and synced.
* A stream's ``index.json`` and ``index.json.sig`` live in a generation directory
  (``streams/.<stream>.gen-<n>/``); ``streams/<stream>`` is a symlink to the current one and is
  swapped with one atomic rename, so the index and its signature always change together.
* Old files go only after the new index is in place, and only when no index lists them.
* One publisher at a time per repository (an flock); dot-files left by a crash are removed by
  the next publish. A crash at any point leaves the previous state readable and verifiable.

``crash`` is a test hook called between the steps above.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from imgline.core import repository as repo
from imgline.core.fsutil import fsync_dir
from imgline.core.signing import SigningError, SigningKey, verify_digest
from imgline.publisher.domain import installks, release, retention
from imgline.publisher.errors import PublisherError
from imgline.schemas import payloads as p

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
GEN_INFIX = ".gen-"
KEEP_GENERATIONS = 2  # the current index and the one before, for readers mid-download


@dataclass(frozen=True)
class Published:
    """Where a release is, as image.published reports it."""

    manifest: repo.Manifest
    entry: repo.IndexEntry
    manifest_url: str
    image_url: str
    generation: int
    new: bool  # False when the release was already published (a redelivery)


def _write(path: Path, data: bytes) -> None:
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class Repository:
    """A signed repository rooted at ``root`` and served at ``base_url``."""

    def __init__(
        self,
        root: Path,
        key: SigningKey,
        base_url: str,
        *,
        keep: int = 3,
        keep_per_stream: Mapping[str, int] | None = None,
        layout: installks.InstallLayout | None = None,
        clock: Callable[[], datetime] = repo.now,
        crash: Callable[[str], None] = lambda step: None,
    ) -> None:
        self.keep_per_stream = dict(keep_per_stream or {})
        if min([keep, *self.keep_per_stream.values()]) < 1:
            raise PublisherError("retention must keep at least one release per image")
        self.root = root
        self.key = key
        self.trusted = {key.key_id: key.public_key}
        self.base_url = base_url
        self.keep = keep
        self.layout = layout or installks.InstallLayout()
        self.clock = clock
        self.crash = crash
        for sub in ("images", "streams"):
            (root / sub).mkdir(parents=True, exist_ok=True)

    # --- reading ----------------------------------------------------------------------------

    def read_index(self, stream: str) -> repo.StreamIndex | None:
        """The stream's current index, verified with our own key; ``None`` before the first."""
        path = self.root / repo.index_path(stream)
        if not path.exists():
            return None
        data = path.read_bytes()
        sig = (self.root / repo.sig_of(repo.index_path(stream))).read_bytes()
        try:
            return repo.verify_index(data, sig, self.trusted, stream)
        except (SigningError, repo.RepositoryError) as exc:
            raise PublisherError(
                f"the published index of stream {stream!r} does not verify ({exc}); "
                "refusing to publish over it: restore it or remove the stream"
            ) from exc

    def streams(self) -> list[str]:
        return sorted(
            p.name for p in (self.root / "streams").iterdir() if not p.name.startswith(".")
        )

    # --- publishing -------------------------------------------------------------------------

    def publish(self, tested: p.ImageTested, image_file: Path) -> Published:
        """Put a tested image into its stream; idempotent per (name, version, build_id)."""
        if not tested.passed:
            raise PublisherError(f"build {tested.build_id} did not pass its tests: not published")
        img = tested.image
        with self._locked():
            self._clean_leftovers()
            index = self.read_index(img.stream)
            existing = index.find(img.name, img.version) if index else None
            if existing is not None and index is not None:
                if existing.build_id != tested.build_id:
                    raise PublisherError(
                        f"{img.name}-{img.version} is already published from build "
                        f"{existing.build_id}, not {tested.build_id}: versions must be unique"
                    )
                manifest, _ = self._load_manifest(existing.name, existing.version)
                return self._published(manifest, existing, index, new=False)
            manifest, manifest_sha = self._place_release(tested, image_file)
            entry = release.entry(manifest, manifest_sha, self.clock())
            new_index = self._commit_index(img.stream, index, entry)
            self.crash("index_committed")
            self._collect_garbage()
            log.info(
                "published %s-%s to stream %s (index generation %d)",
                img.name,
                img.version,
                img.stream,
                new_index.generation,
            )
            return self._published(manifest, entry, new_index, new=True)

    def _published(
        self, manifest: repo.Manifest, entry: repo.IndexEntry, index: repo.StreamIndex, *, new: bool
    ) -> Published:
        return Published(
            manifest=manifest,
            entry=entry,
            manifest_url=repo.join_url(
                self.base_url, repo.manifest_path(entry.name, entry.version)
            ),
            image_url=repo.join_url(self.base_url, repo.image_path(entry.name, entry.version)),
            generation=index.generation,
            new=new,
        )

    def _load_manifest(self, name: str, version: str) -> tuple[repo.Manifest, bytes]:
        """A published manifest, verified with our key, and its exact bytes."""
        path = repo.manifest_path(name, version)
        data = (self.root / path).read_bytes()
        sig = (self.root / repo.sig_of(path)).read_bytes()
        return repo.verify_manifest(data, sig, self.trusted), data

    def _place_release(self, tested: p.ImageTested, image_file: Path) -> tuple[repo.Manifest, str]:
        """The release directory, complete, in its final place; (manifest, its sha256)."""
        img = tested.image
        final = self.root / repo.image_dir(img.name, img.version)
        if final.exists():
            # a crash after the rename but before the index: finish that publish
            manifest, data = self._load_manifest(img.name, img.version)
            if manifest.build_id != tested.build_id:
                raise PublisherError(
                    f"{final} holds build {manifest.build_id}, not {tested.build_id}, and no "
                    "index lists it: remove it by hand if it is garbage"
                )
            verify_digest(
                self.root / manifest.image.path, img.artifact.sha256, img.artifact.size, "image"
            )
            return manifest, _sha256_bytes(data)
        final.parent.mkdir(parents=True, exist_ok=True)
        stage = final.with_name(f"{TMP_PREFIX}{img.version}-{os.getpid()}")
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir()
        image_name = repo.image_path(img.name, img.version).name
        _link_or_copy(image_file, stage / image_name)
        verify_digest(stage / image_name, img.artifact.sha256, img.artifact.size, "image")
        self.crash("image_copied")
        manifest = release.manifest(tested, self.key.key_id, self.clock())
        data = repo.canonical_bytes(manifest)
        _write(stage / "manifest.json", data)
        _write(stage / "manifest.json.sig", self.key.sign(data).to_bytes())
        ks = installks.render(
            name=img.name,
            version=img.version,
            image_url=repo.join_url(self.base_url, repo.image_path(img.name, img.version)),
            sha256=img.artifact.sha256,
            layout=self.layout,
        )
        installks.validate(ks)
        _write(stage / "install.ks", ks.encode())
        fsync_dir(stage)
        self.crash("release_staged")
        stage.rename(final)
        fsync_dir(final.parent)
        self.crash("release_in_place")
        return manifest, _sha256_bytes(data)

    def _commit_index(
        self, stream: str, index: repo.StreamIndex | None, entry: repo.IndexEntry
    ) -> repo.StreamIndex:
        """Write the next index generation and switch the stream to it in one rename."""
        releases = [entry, *(index.releases if index else [])]
        kept, dropped = retention.keep_newest(releases, self.keep_per_stream.get(stream, self.keep))
        for gone in dropped:
            log.info("retention: %s-%s leaves stream %s", gone.name, gone.version, stream)
        new = repo.StreamIndex(
            stream=stream,
            generation=(index.generation if index else 0) + 1,
            updated=self.clock(),
            releases=kept,
        )
        streams = self.root / "streams"
        gen_dir = streams / f".{stream}{GEN_INFIX}{new.generation:08d}"
        shutil.rmtree(gen_dir, ignore_errors=True)
        gen_dir.mkdir()
        data = repo.canonical_bytes(new)
        _write(gen_dir / "index.json", data)
        _write(gen_dir / "index.json.sig", self.key.sign(data).to_bytes())
        fsync_dir(gen_dir)
        self.crash("index_staged")
        link = streams / stream
        if link.exists() and not link.is_symlink():
            raise PublisherError(f"{link} is a directory, not the symlink imgline maintains")
        tmp_link = streams / f"{TMP_PREFIX}{stream}-link"
        with contextlib.suppress(FileNotFoundError):
            tmp_link.unlink()
        tmp_link.symlink_to(gen_dir.name)
        tmp_link.replace(link)
        fsync_dir(streams)
        return new

    # --- cleaning up ------------------------------------------------------------------------

    def _collect_garbage(self) -> None:
        """Delete release directories no index lists, and index generations nobody needs."""
        listed: set[tuple[str, str]] = set()
        for stream in self.streams():
            index = self.read_index(stream)
            if index is not None:
                listed |= {(r.name, r.version) for r in index.releases}
        images = self.root / "images"
        on_disk = [
            (n.name, v.name)
            for n in images.iterdir()
            if n.is_dir() and not n.name.startswith(".")
            for v in n.iterdir()
            if v.is_dir() and not v.name.startswith(".")
        ]
        for name, version in retention.unreferenced(on_disk, listed):
            doomed = images / name / version
            trash = doomed.with_name(f"{TMP_PREFIX}gc-{version}")
            doomed.rename(trash)  # out of sight at once; deleted below or by the next run
            shutil.rmtree(trash)
            log.info("deleted %s-%s: no index lists it", name, version)
        self._prune_generations()

    def _prune_generations(self) -> None:
        streams = self.root / "streams"
        for stream in self.streams():
            current = os.readlink(streams / stream)
            gens = sorted(streams.glob(f".{stream}{GEN_INFIX}*"))
            keep = {g.name for g in gens[-KEEP_GENERATIONS:]} | {current}
            for g in gens:
                if g.name not in keep:
                    shutil.rmtree(g)

    def _clean_leftovers(self) -> None:
        """Dot-files a crashed publish left (never visible to readers; safe under the lock)."""
        for parent in [self.root / "streams", *(self.root / "images").iterdir()]:
            if not parent.is_dir():
                continue
            for leftover in parent.glob(f"{TMP_PREFIX}*"):
                log.warning("removing %s left by an interrupted publish", leftover)
                if leftover.is_dir() and not leftover.is_symlink():
                    shutil.rmtree(leftover)
                else:
                    leftover.unlink()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with (self.root / ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link the (immutable, content-addressed) artefact when on the same file system."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
        with dst.open("rb+") as f:
            os.fsync(f.fileno())
