"""Content-addressed artefact store on a local directory (docs/architecture.md, Artifacts).

Images are stored under their own sha256 (``sha256/<hex>``), so a retried build that produces
the same bytes lands on the same name, a reader can always check what it got, and nothing is
ever overwritten with different content. Every write goes to ``tmp/`` first, is fsynced, and is
renamed into place, followed by an fsync of the directory: after a crash a name either holds
complete content or does not exist. ``tmp/`` lives inside the store so the rename never crosses
a filesystem.

Small keyed records (``<namespace>/<key>``) give services a place for bookkeeping (which build
produced which digest) with the same atomicity, without a database.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import secrets
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from pydantic import BaseModel, ConfigDict

from imgline.core.errors import PermanentError, TransientError
from imgline.core.fsutil import fsync_dir, out_of_space, write_temp

log = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
OBJECTS_DIR = "sha256"
TMP_DIR = "tmp"
RESERVED_NAMESPACES = frozenset({OBJECTS_DIR, TMP_DIR})
# Objects are immutable once stored: read-only modes make an accidental in-place edit fail
# loudly instead of silently breaking the digest; records may be rewritten by rename.
OBJECT_MODE = 0o444
RECORD_MODE = 0o644

_DIGEST = re.compile(r"[0-9a-f]{64}")
# One path component, no leading dot (so no ".", "..", hidden temp names), no separators.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,199}")


class ArtifactError(PermanentError):
    """The store refused an operation, or an artefact is missing, malformed or not the bytes
    expected: the message names the file, digest or record and what was wrong with it.
    Permanent: the same input fails the same way."""


class StoreUnavailableError(TransientError):
    """The store cannot take anything now (no space, its directory cannot be made): free
    space or fix permissions under the store root; the work is retried."""


class StoredArtifact(BaseModel):
    """Where one stored object is and what it is; ``uri`` is what messages carry."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    uri: str
    sha256: str
    size: int
    path: Path


def hash_stream(stream: BinaryIO, sink: BinaryIO | None = None) -> tuple[str, int]:
    """sha256 and length of ``stream``, copying it to ``sink`` on the way (one read pass)."""
    digest = hashlib.sha256()
    size = 0
    while chunk := stream.read(CHUNK_SIZE):
        digest.update(chunk)
        size += len(chunk)
        if sink is not None:
            sink.write(chunk)
    return digest.hexdigest(), size


class LocalArtifactStore:
    """A directory holding ``sha256/<hex>`` objects, ``tmp/`` and ``<namespace>/<key>`` records.

    Constructing one touches nothing, so read-only users (a tester verifying a digest) need no
    write access; the directories are created by the first write.
    """

    def __init__(self, root: Path) -> None:
        # Absolute, so that the file:// URIs handed out stay valid from any working directory.
        self.root = Path(os.path.abspath(root))
        self._objects = self.root / OBJECTS_DIR
        self._tmp = self.root / TMP_DIR

    # --- objects -------------------------------------------------------------------------

    def clear_stale_tmp(self, older_than_seconds: float) -> int:
        """Remove what writes that never finished left in ``tmp/`` (a killed service), and not
        touched for ``older_than_seconds``: a write in progress elsewhere keeps its file fresh.
        Returns how many files went."""
        cutoff = time.time() - older_than_seconds
        removed = 0
        if not self._tmp.is_dir():
            return 0
        for entry in self._tmp.iterdir():
            try:
                if entry.is_file() and entry.stat().st_mtime < cutoff:
                    entry.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    def put_file(self, src: Path, *, move: bool = False) -> StoredArtifact:
        """Store the content of ``src`` and return where it now lives.

        Idempotent: content already present (same digest and size) is reused and the new copy
        dropped. With ``move=True`` the source is consumed: renamed into the store when it is on
        the same filesystem (no copy of a multi-GB image), copied and then removed otherwise.
        Either way the digest is computed from the bytes actually stored.
        """
        try:
            st = src.stat()
        except FileNotFoundError:
            raise ArtifactError(f"cannot store {src}: it does not exist") from None
        if not stat.S_ISREG(st.st_mode):
            raise ArtifactError(f"cannot store {src}: it is not a regular file")
        self._ensure_dirs()
        if move and st.st_dev == self._tmp.stat().st_dev and not src.is_symlink():
            with self._room():
                return self._adopt(src)
        with self._room():
            fd, tmp_name = tempfile.mkstemp(dir=self._tmp, prefix="put-")
            tmp = Path(tmp_name)
            try:
                with os.fdopen(fd, "wb") as sink, src.open("rb") as source:
                    digest, size = hash_stream(source, sink)
                    sink.flush()
                    os.fchmod(sink.fileno(), OBJECT_MODE)
                    os.fsync(sink.fileno())
                stored = self._commit(tmp, digest, size)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        if move:
            src.unlink()
        return stored

    def put_bytes(self, data: bytes) -> StoredArtifact:
        """Store ``data``; writes nothing when the same content is already stored."""
        digest = hashlib.sha256(data).hexdigest()
        existing = self._existing(digest, len(data))
        if existing is not None:
            return existing
        self._ensure_dirs()
        with self._room():
            tmp = self._write_tmp(data, OBJECT_MODE, prefix="put-")
            try:
                return self._commit(tmp, digest, len(data))
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise

    def path_for(self, sha256: str) -> Path:
        """Where the object with this digest lives (whether or not it exists yet)."""
        return self._objects / self._check_digest(sha256)

    def exists(self, sha256: str) -> bool:
        """Whether an object with this digest is stored (its content is not re-checked)."""
        return self.path_for(sha256).is_file()

    def verify(self, sha256: str) -> bool:
        """Re-hash the stored object: False when it is missing or its bytes no longer match.

        The cost is a full read; call it before publishing, not on every lookup.
        """
        path = self.path_for(sha256)
        try:
            with path.open("rb") as stream:
                actual, _ = hash_stream(stream)
        except FileNotFoundError:
            return False
        if actual != sha256.lower():
            log.warning("artifact %s is corrupt: its content hashes to %s", path, actual)
            return False
        return True

    # --- records -------------------------------------------------------------------------

    def write_record(self, namespace: str, key: str, data: bytes) -> Path:
        """Atomically create or replace record ``namespace/key`` with ``data``."""
        path = self._record_path(namespace, key)
        self._ensure_dirs()
        with self._room():
            path.parent.mkdir(exist_ok=True)
            tmp = self._write_tmp(data, RECORD_MODE, prefix="rec-")
            try:
                os.replace(tmp, path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        fsync_dir(path.parent)
        return path

    def claim_record(self, namespace: str, key: str, data: bytes) -> bool:
        """Create record ``namespace/key`` only if it does not exist; False if it already did.

        Lets concurrent builders agree on who owns a name (a version number) without a lock:
        the record appears complete via link(2), which refuses to replace an existing name.
        """
        path = self._record_path(namespace, key)
        self._ensure_dirs()
        with self._room():
            path.parent.mkdir(exist_ok=True)
            tmp = self._write_tmp(data, RECORD_MODE, prefix="claim-")
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            finally:
                tmp.unlink()
        fsync_dir(path.parent)
        return True

    def read_record(self, namespace: str, key: str) -> bytes | None:
        """The record's bytes, or None when it was never written."""
        try:
            return self._record_path(namespace, key).read_bytes()
        except FileNotFoundError:
            return None

    def list_records(self, namespace: str) -> list[str]:
        """Keys in ``namespace``, sorted; an unknown namespace is simply empty."""
        directory = self.root / self._check_name("namespace", namespace, namespace=True)
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            return []
        return sorted(
            e.name
            for e in entries
            if SAFE_NAME.fullmatch(e.name) and e.is_file(follow_symlinks=False)
        )

    def record_uri(self, namespace: str, key: str) -> str:
        """``file://`` URI of record ``namespace/key`` (whether or not it exists yet)."""
        return self._record_path(namespace, key).as_uri()

    # --- internals -----------------------------------------------------------------------

    def _ensure_dirs(self) -> None:
        try:
            self._objects.mkdir(parents=True, exist_ok=True)
            self._tmp.mkdir(exist_ok=True)
        except OSError as exc:
            raise StoreUnavailableError(
                f"cannot create the artifact store under {self.root}: {exc.strerror}; "
                "check the path and its permissions"
            ) from exc

    @contextlib.contextmanager
    def _room(self) -> Iterator[None]:
        """Turn a write refused for want of space into ``StoreUnavailableError``: the input is
        fine, and the work succeeds on a later try once space is freed (whatever failed has
        already removed its temporary file)."""
        try:
            yield
        except OSError as exc:
            if out_of_space(exc):
                raise StoreUnavailableError(
                    f"no space left in the artifact store {self.root} ({exc.strerror}): free "
                    "space there; the work is retried"
                ) from exc
            raise

    def _write_tmp(self, data: bytes, mode: int, *, prefix: str) -> Path:
        """A new fsynced file under ``tmp/`` holding ``data``, ready to be renamed or linked."""
        return write_temp(self._tmp, data, mode=mode, prefix=prefix)

    def _adopt(self, src: Path) -> StoredArtifact:
        """Take ``src`` over by rename (same filesystem), then hash it where it now is.

        Renaming first means nobody can keep writing to ``src`` by name while it is hashed; on
        failure the file is put back where it was.
        """
        tmp = self._tmp / f"adopt-{secrets.token_hex(8)}"
        os.rename(src, tmp)
        try:
            with tmp.open("rb") as stream:
                digest, size = hash_stream(stream)
                os.fchmod(stream.fileno(), OBJECT_MODE)
                os.fsync(stream.fileno())
            return self._commit(tmp, digest, size)
        except BaseException:
            if tmp.exists():
                with contextlib.suppress(OSError):
                    os.rename(tmp, src)
            raise

    def _existing(self, digest: str, size: int) -> StoredArtifact | None:
        """The stored object when it is already there with the expected size."""
        target = self._objects / digest
        try:
            st = target.stat()
        except FileNotFoundError:
            return None
        if st.st_size != size:
            # Only a torn copy from outside this class or a damaged disk gets here; the caller
            # has the right bytes in hand, so it replaces the object.
            log.warning(
                "artifact %s has %d bytes, expected %d: replacing it", target, st.st_size, size
            )
            return None
        return self._stored(digest, size)

    def _commit(self, tmp: Path, digest: str, size: int) -> StoredArtifact:
        """Rename the fsynced temp file to its content address (or drop it if already there)."""
        existing = self._existing(digest, size)
        if existing is not None:
            tmp.unlink()
            return existing
        target = self._objects / digest
        os.replace(tmp, target)  # callers hold _room(): a full directory block is no space too
        fsync_dir(self._objects)
        log.info("stored artifact sha256:%s (%d bytes)", digest, size)
        return self._stored(digest, size)

    def _stored(self, digest: str, size: int) -> StoredArtifact:
        path = self._objects / digest
        return StoredArtifact(uri=path.as_uri(), sha256=digest, size=size, path=path)

    @staticmethod
    def _check_digest(sha256: str) -> str:
        digest = sha256.lower()
        if not _DIGEST.fullmatch(digest):
            raise ArtifactError(
                f"not a sha256 digest: {sha256!r}; expected 64 hexadecimal characters"
            )
        return digest

    @staticmethod
    def _check_name(what: str, name: str, *, namespace: bool = False) -> str:
        if not SAFE_NAME.fullmatch(name):
            raise ArtifactError(
                f"invalid record {what} {name!r}: use 1-200 characters of letters, digits, "
                "'.', '_', '+' or '-', starting with a letter or digit"
            )
        if namespace and name in RESERVED_NAMESPACES:
            raise ArtifactError(
                f"record namespace {name!r} is reserved by the artifact store: choose another"
            )
        return name

    def _record_path(self, namespace: str, key: str) -> Path:
        ns = self._check_name("namespace", namespace, namespace=True)
        return self.root / ns / self._check_name("key", key)


def verify_digest(path: Path, sha256: str, size: int, what: str) -> None:
    """Check a large file against the digest and size a signed manifest gave for it.

    Size first: a truncated download is the common failure and needs no full read to detect.
    """
    expected = sha256.lower()
    if not _DIGEST.fullmatch(expected):
        raise ArtifactError(f"expected sha256 for {what} is malformed: {sha256!r}")
    try:
        stream = path.open("rb")
    except FileNotFoundError:
        raise ArtifactError(f"{what} is missing: {path} does not exist") from None
    except OSError as exc:
        raise ArtifactError(f"cannot read {what} at {path}: {exc.strerror or exc}") from None
    with stream:
        _check_size(os.fstat(stream.fileno()).st_size, size, path, what)
        actual, actual_size = hash_stream(stream)
    # The file may have changed while being read: trust what was hashed, not the first stat.
    _check_size(actual_size, size, path, what)
    if actual != expected:
        raise ArtifactError(
            f"{what} ({path}) is corrupt or was replaced: its sha256 is {actual}, "
            f"expected {expected}; fetch it again"
        )


def _check_size(actual: int, expected: int, path: Path, what: str) -> None:
    if actual < expected:
        raise ArtifactError(
            f"{what} ({path}) is truncated: {actual} bytes, expected {expected} "
            f"({expected - actual} bytes missing); fetch it again"
        )
    if actual > expected:
        raise ArtifactError(
            f"{what} ({path}) is {actual - expected} bytes longer than expected "
            f"({actual} bytes, expected {expected}); fetch it again"
        )
