"""What hosts and tools read the repository with: python-tuf's ngclient, bounded and resumable.

Only what the signed metadata says is trusted: a stream's ``releases.json`` and each release's
``manifest.json`` are targets whose length and hash the stream's role signs, and every
download is checked against them before it is used. ngclient refuses tampered, rolled-back,
expired (frozen), mixed-and-matched and oversized metadata; this module adds a deadline per
download (a server that trickles bytes cannot hold a host forever), downloads that resume
with HTTP Range (multi-GB images over poor links), and errors that say what happened.
The host's trusted metadata persists in ``<state_dir>/metadata``, so a rollback is detected
across restarts, and an idle refresh costs one small ``timestamp.json``.
"""

from __future__ import annotations

import logging
import shutil
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import urllib3
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tuf.api import exceptions as tuf_exc
from tuf.api.metadata import TargetFile
from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig

from imgline.core.trust import layout, rollout
from imgline.core.trust.errors import Reason, TrustError

log = logging.getLogger(__name__)
CHUNK = 1 << 20


class ClientLimits(BaseModel):
    """Bounds on what a repository may make a host do; all have safe defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    connect_timeout: float = Field(default=10.0, gt=0)
    read_timeout: float = Field(default=30.0, gt=0, description="longest gap between bytes")
    metadata_seconds: float = Field(default=60.0, gt=0, description="whole metadata download")
    min_rate: int = Field(
        default=64 * 1024, gt=0, description="bytes/s a target download must average"
    )
    root_max_bytes: int = Field(default=512 * 1024, gt=0)
    timestamp_max_bytes: int = Field(default=16 * 1024, gt=0)
    snapshot_max_bytes: int = Field(default=2 * 1024 * 1024, gt=0)
    targets_max_bytes: int = Field(default=5 * 1024 * 1024, gt=0)
    index_max_bytes: int = Field(default=1024 * 1024, gt=0, description="releases, manifests")


class _Fetcher(FetcherInterface):
    """urllib3 with a deadline per download and a count of the bytes received."""

    def __init__(self, limits: ClientLimits) -> None:
        self.limits = limits
        self.pool = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=limits.connect_timeout, read=limits.read_timeout),
            retries=False,
            headers={"User-Agent": "imgline-tuf-client"},
        )
        self.received = 0
        weakref.finalize(self, self.pool.clear)  # pooled sockets close with the client

    def _fetch(self, url: str) -> Iterator[bytes]:
        response = self._request(url, {})
        if response.status >= 400:
            response.release_conn()
            raise tuf_exc.DownloadHTTPError(f"HTTP {response.status} for {url}", response.status)
        return self._chunks(response, url, time.monotonic() + self.limits.metadata_seconds)

    def download_bytes(self, url: str, max_length: int) -> bytes:
        """At most ``max_length`` bytes; on refusal the connection is dropped at once, not
        when the garbage collector gets to the abandoned download."""
        chunks = self.fetch(url)
        try:
            parts: list[bytes] = []
            received = 0
            for chunk in chunks:
                received += len(chunk)
                if received > max_length:
                    raise tuf_exc.DownloadLengthMismatchError(
                        f"{url} sent more than the {max_length} bytes allowed for it"
                    )
                parts.append(chunk)
            return b"".join(parts)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    def _request(self, url: str, headers: dict[str, str]) -> urllib3.BaseHTTPResponse:
        try:
            return self.pool.request("GET", url, headers=headers, preload_content=False)
        except urllib3.exceptions.TimeoutError as exc:
            raise tuf_exc.SlowRetrievalError(f"no answer from {url} in time") from exc
        except urllib3.exceptions.HTTPError as exc:
            raise tuf_exc.DownloadError(f"cannot reach {url}: {exc}") from exc

    def _chunks(
        self, response: urllib3.BaseHTTPResponse, url: str, deadline: float
    ) -> Iterator[bytes]:
        complete = False
        try:
            for chunk in response.stream(64 * 1024):
                self.received += len(chunk)
                if time.monotonic() > deadline:
                    raise tuf_exc.SlowRetrievalError(f"{url} is arriving too slowly")
                yield chunk
            complete = True
        except urllib3.exceptions.TimeoutError as exc:
            raise tuf_exc.SlowRetrievalError(f"{url} stalled") from exc
        except urllib3.exceptions.HTTPError as exc:
            raise tuf_exc.DownloadError(f"download of {url} broke off: {exc}") from exc
        finally:
            if complete:
                response.release_conn()
            else:  # the rest of an endless or trickling body is never read: drop the socket
                response.close()
                conn = getattr(response, "connection", None)
                if conn is not None:
                    conn.close()


def _translate(exc: Exception, what: str) -> NoReturn:
    """One ``TrustError`` with a reason for every way ngclient refuses."""
    reason: Reason
    hint: str
    if isinstance(exc, tuf_exc.ExpiredMetadataError):
        reason, hint = "expired", "the repository or a mirror serves expired metadata (frozen?)"
    elif isinstance(exc, tuf_exc.BadVersionNumberError):
        reason, hint = "rollback", "older than metadata this host already trusts (a rollback?)"
    elif isinstance(exc, tuf_exc.UnsignedMetadataError):
        reason, hint = "unsigned", "not signed by enough trusted keys (tampered, or a revoked key)"
    elif isinstance(exc, tuf_exc.LengthOrHashMismatchError):
        reason, hint = "tampered", "does not match the length or hash signed for it"
    elif isinstance(exc, tuf_exc.DownloadLengthMismatchError):
        reason, hint = "too_large", "more data than the signed length or the configured bound"
    elif isinstance(exc, tuf_exc.SlowRetrievalError):
        reason, hint = "slow", "the server is too slow (or trickling bytes on purpose)"
    elif isinstance(exc, tuf_exc.DownloadError):
        reason, hint = "unavailable", "could not be downloaded"
    else:
        reason, hint = "invalid", "refused"
    raise TrustError(f"{what}: {hint}: {exc}", reason) from exc


class RepositoryClient:
    """A host's view of one repository.

    ``root`` is the pinned root metadata for the first use (install.ks writes it to
    ``<state_dir>/metadata/root.json``); afterwards the trusted state in ``state_dir`` is used,
    and newer roots are accepted only when signed as TUF requires.
    """

    def __init__(
        self,
        metadata_url: str,
        targets_url: str,
        state_dir: Path,
        *,
        root: bytes | None = None,
        limits: ClientLimits | None = None,
    ) -> None:
        self.metadata_url = metadata_url
        self.targets_url = targets_url.rstrip("/") + "/"
        self.metadata_dir = state_dir / "metadata"
        self.download_dir = state_dir / "targets"
        self.limits = limits or ClientLimits()
        self.fetcher = _Fetcher(self.limits)
        self.config = UpdaterConfig(
            max_root_rotations=32,
            root_max_length=self.limits.root_max_bytes,
            timestamp_max_length=self.limits.timestamp_max_bytes,
            snapshot_max_length=self.limits.snapshot_max_bytes,
            targets_max_length=self.limits.targets_max_bytes,
        )
        self.metadata_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        self.download_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        if root is None and not (self.metadata_dir / "root.json").exists():
            raise TrustError(
                f"no trusted root in {self.metadata_dir}: pin the repository's root first "
                "(install.ks does; or pass the root metadata)",
                "not_found",
            )
        self._root = root
        self._updater: Updater | None = None

    @classmethod
    def for_base_url(
        cls,
        base_url: str,
        state_dir: Path,
        *,
        root: bytes | None = None,
        limits: ClientLimits | None = None,
    ) -> RepositoryClient:
        """A repository served as ``<base>/metadata/`` and ``<base>/targets/``."""
        base = base_url.rstrip("/")
        return cls(f"{base}/metadata/", f"{base}/targets/", state_dir, root=root, limits=limits)

    def close(self) -> None:
        """Close pooled connections now (they are closed anyway when the client goes)."""
        self.fetcher.pool.clear()

    @property
    def bytes_received(self) -> int:
        return self.fetcher.received

    def refresh(self) -> None:
        """Fetch and verify the newest metadata (root chain, timestamp, snapshot, targets)."""
        try:
            updater = Updater(
                str(self.metadata_dir),
                self.metadata_url,
                str(self.download_dir),
                self.targets_url,
                fetcher=self.fetcher,
                config=self.config,
                bootstrap=self._root,
            )
            self._root = None  # pinned once: from now on the persisted, verified chain counts
            updater.refresh()
        except (tuf_exc.RepositoryError, tuf_exc.DownloadError) as exc:
            _translate(exc, "refreshing the repository metadata")
        self._updater = updater

    def _updated(self) -> Updater:
        if self._updater is None:
            self.refresh()
        assert self._updater is not None  # noqa: S101 - refresh sets it or raises
        return self._updater

    def target(self, path: str) -> TargetFile:
        """The signed description (length, hashes, custom) of a target."""
        try:
            info = self._updated().get_targetinfo(path)
        except (tuf_exc.RepositoryError, tuf_exc.DownloadError) as exc:
            _translate(exc, f"looking up {path}")
        if info is None:
            raise TrustError(f"{path} is not listed in the signed metadata", "not_found")
        return info

    def _small(self, path: str) -> bytes:
        info = self.target(path)
        if info.length > self.limits.index_max_bytes:
            raise TrustError(
                f"{path} is signed as {info.length} bytes, over the bound of "
                f"{self.limits.index_max_bytes}",
                "too_large",
            )
        name = layout.hashed_path(path, info.hashes["sha256"])
        cached = self.download_dir / name
        try:
            data = cached.read_bytes()
            info.verify_length_and_hashes(data)
            return data  # content-addressed: what matches the signed hash is the target
        except (OSError, tuf_exc.LengthOrHashMismatchError):
            pass
        try:
            data = self.fetcher.download_bytes(self.targets_url + name, info.length)
            info.verify_length_and_hashes(data)
        except (tuf_exc.RepositoryError, tuf_exc.DownloadError) as exc:
            _translate(exc, path)
        cached.parent.mkdir(parents=True, exist_ok=True)
        base = path.rpartition("/")[2]
        for old in cached.parent.glob(f"*.{base}"):  # earlier versions of this target
            old.unlink(missing_ok=True)
        tmp = cached.with_name(cached.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(cached)
        return data

    def releases(self, stream: str) -> layout.ReleaseIndex:
        """The stream's releases, newest first, as its role signed them."""
        path = layout.releases_target(stream)
        try:
            data = self._small(path)
        except TrustError as exc:
            if exc.reason == "not_found":
                raise TrustError(
                    f"stream {stream!r} has no releases in this repository", "not_found"
                ) from None
            raise
        try:
            index = layout.ReleaseIndex.model_validate_json(data)
        except ValidationError as exc:
            raise TrustError(f"{path} is signed but malformed: {exc}") from None
        if index.stream != stream:
            raise TrustError(f"{path} is the index of stream {index.stream!r}", "wrong_stream")
        prefix = f"{stream}/"
        for r in index.releases:
            for p in (r.manifest, r.image, r.install_ks):
                if not p.startswith(prefix):
                    raise TrustError(
                        f"{path} points to {p}, outside stream {stream}", "wrong_stream"
                    )
        return index

    def rollouts(self, stream: str) -> rollout.RolloutTable:
        """The stream's staged-rollout table: the ``custom`` field the stream's role signs on
        its ``releases.json`` (empty when the publisher stages nothing)."""
        path = layout.releases_target(stream)
        return rollout.table_of(self.target(path).custom, path)

    def manifest(self, stream: str, release: layout.Release) -> layout.Manifest:
        """A release's signed manifest, checked against its index entry."""
        data = self._small(release.manifest)
        try:
            manifest = layout.Manifest.model_validate_json(data)
        except ValidationError as exc:
            raise TrustError(f"{release.manifest} is signed but malformed: {exc}") from None
        facts = (
            manifest.stream,
            manifest.name,
            manifest.version,
            manifest.build_id,
            manifest.image,
        )
        expect = (stream, release.name, release.version, release.build_id, release.image)
        if facts != expect:
            raise TrustError(
                f"{release.manifest} describes {manifest.stream}/{manifest.name}-"
                f"{manifest.version} (build {manifest.build_id[:12]}), not the release the index "
                f"of {stream} lists",
                "wrong_stream",
            )
        return manifest

    def latest(self, stream: str, name: str) -> layout.Manifest | None:
        release = self.releases(stream).latest(name)
        return None if release is None else self.manifest(stream, release)

    def download(self, path: str, dest: Path) -> Path:
        """Download target ``path`` to ``dest``, resuming a partial ``dest.part`` with Range;
        the file appears at ``dest`` only once its length and hash match the signed ones."""
        info = self.target(path)
        part = dest.with_name(dest.name + ".part")
        dest.parent.mkdir(parents=True, exist_ok=True)
        have = part.stat().st_size if part.exists() else 0
        if have > info.length:
            part.unlink()
            have = 0
        free = shutil.disk_usage(dest.parent).free
        if info.length - have > free:
            raise TrustError(
                f"{path} needs {info.length - have} more bytes, {dest.parent} has {free} free",
                "no_space",
            )
        url = self.targets_url + layout.hashed_path(path, info.hashes["sha256"])
        deadline = time.monotonic() + max(
            self.limits.metadata_seconds, (info.length - have) / self.limits.min_rate
        )
        try:
            self._fetch_into(url, part, have, info.length, deadline)
            with part.open("rb") as f:
                info.verify_length_and_hashes(f)
        except tuf_exc.LengthOrHashMismatchError as exc:
            part.unlink(missing_ok=True)  # never resume from bytes that proved wrong
            _translate(exc, path)
        except (tuf_exc.RepositoryError, tuf_exc.DownloadError) as exc:
            _translate(exc, path)
        part.replace(dest)
        return dest

    def _fetch_into(self, url: str, part: Path, have: int, length: int, deadline: float) -> None:
        headers = {"Range": f"bytes={have}-"} if have else {}
        response = self.fetcher._request(url, headers)
        if response.status == 416 and have == length:  # already complete
            response.release_conn()
            return
        if response.status == 200:  # the server ignored Range: start over
            have = 0
        elif response.status == 206:
            first = (response.headers.get("Content-Range") or "").removeprefix("bytes ")
            if not first.startswith(f"{have}-"):
                response.release_conn()
                raise tuf_exc.DownloadError(f"{url} answered Range {have}- with {first!r}")
        else:
            response.release_conn()
            raise tuf_exc.DownloadHTTPError(f"HTTP {response.status} for {url}", response.status)
        with part.open("r+b" if have else "wb") as out:
            out.seek(have)
            out.truncate()
            for chunk in self.fetcher._chunks(response, url, deadline):
                have += len(chunk)
                if have > length:
                    raise tuf_exc.DownloadLengthMismatchError(
                        f"{url} sent more than the {length} bytes signed for it"
                    )
                out.write(chunk)
        if have < length:
            raise tuf_exc.DownloadError(f"{url} ended after {have} of {length} bytes")
