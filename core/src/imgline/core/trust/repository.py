"""Writing and re-signing the repository's TUF metadata (python-tuf's Metadata API).

Every change is one commit: the changed targets roles get new versions, then a new snapshot
lists them, then a new ``timestamp.json`` replaces the old one with a rename. The rename is the
commit point: before it, readers see the previous state in full; the files written before it
are new names (``<version>.<role>.json``) that nothing points to yet, and a retried commit
writes them again. Files the new state no longer needs are not deleted at once: a host may
still hold a snapshot that lists them, so they are queued and removed only after every
snapshot that could list them has expired (``collect_garbage``).

What the keys may do: the root (offline keys) names the keys of targets, snapshot and
timestamp; targets delegates each stream to its own role and keys. Metadata read back from
disk is verified against those keys before anything is built on it, so a tampered repository
is refused instead of being signed over. See docs/repository.md for the key ceremony.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

from tuf.api.exceptions import LengthOrHashMismatchError, UnsignedMetadataError
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Role,
    Root,
    Signed,
    Snapshot,
    Targets,
    Timestamp,
)
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import JSONSerializer

from imgline.core.fsutil import write_atomic
from imgline.core.trust import layout
from imgline.core.trust.errors import TrustError
from imgline.core.trust.keys import KeyDir, SigningKey

log = logging.getLogger(__name__)

T = TypeVar("T", Root, Timestamp, Snapshot, Targets)
SERIALIZER = JSONSerializer(compact=True)
STATE_DIR = ".state"
JOURNAL = "retired.jsonl"
NEXT_DUE = "retired.next"
_thread_lock = threading.Lock()


def _meta_file(version: int, data: bytes) -> MetaFile:
    """Version, length and hash: the length bounds what a client downloads."""
    return MetaFile(version, len(data), {"sha256": hashlib.sha256(data).hexdigest()})


def _parse(data: bytes, kind: type[T], what: str) -> Metadata[T]:
    try:
        md: Metadata[Any] = Metadata.from_bytes(data)
    except DeserializationError as exc:
        raise TrustError(f"{what} is not valid TUF metadata: {exc}") from None
    if not isinstance(md.signed, kind):
        raise TrustError(f"{what} holds {md.signed.type} metadata, expected {kind.type}")
    return cast(Metadata[T], md)


@dataclass
class State:
    """The repository's current metadata, verified, and the exact bytes of each file."""

    root: Metadata[Root]
    timestamp: Metadata[Timestamp]
    snapshot: Metadata[Snapshot]
    targets: dict[str, Metadata[Targets]] = field(default_factory=dict)

    @property
    def top(self) -> Targets:
        return self.targets[Targets.type].signed

    def streams(self) -> list[str]:
        return sorted(s for r in self.targets if (s := layout.stream_of_role(r)) is not None)

    def role(self, name: str) -> Metadata[Targets] | None:
        return self.targets.get(name)

    def spec(self, role: str) -> Role:
        """Who may sign ``role`` (key ids, threshold): the root names the top-level roles,
        the targets role delegates the streams."""
        if role in layout.TOP_LEVEL:
            return self.root.signed.roles[role]
        delegations = self.top.delegations
        if delegations is None or not delegations.roles or role not in delegations.roles:
            known = ", ".join(self.streams()) or "none yet"
            raise TrustError(
                f"no role {role!r}: stream roles are named stream-<stream> (streams: {known})"
            )
        return delegations.roles[role]


@dataclass(frozen=True)
class Commit:
    """What a commit wrote: the new versions, for ``image.published`` and logs."""

    versions: dict[str, int]
    snapshot_version: int
    timestamp_version: int


class TufRepository:
    """The metadata of the repository rooted at ``root_dir``, signed with ``keys``."""

    def __init__(
        self,
        root_dir: Path,
        keys: KeyDir,
        *,
        expiry: layout.Expiry | None = None,
        clock: Callable[[], datetime] = layout.now,
    ) -> None:
        self.root_dir = root_dir
        self.metadata_dir = root_dir / layout.METADATA_DIR
        self.targets_dir = root_dir / layout.TARGETS_DIR
        self.state_dir = root_dir / STATE_DIR
        self.keys = keys
        self.expiry = expiry or layout.Expiry()
        self.clock = clock

    # --- locking ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One writer at a time, across processes (flock) and threads (a lock)."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with _thread_lock, (self.state_dir / "lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # --- reading ----------------------------------------------------------------------------

    def exists(self) -> bool:
        return (self.metadata_dir / "1.root.json").exists()

    def root_version(self) -> int:
        version = 1
        while (self.metadata_dir / layout.metadata_file("root", version + 1)).exists():
            version += 1
        return version

    def root_bytes(self) -> bytes:
        """The newest root, as a host pins it."""
        return self._read(layout.metadata_file("root", self.root_version()))

    def _read(self, name: str) -> bytes:
        try:
            return (self.metadata_dir / name).read_bytes()
        except FileNotFoundError:
            raise TrustError(
                f"{self.metadata_dir / name} is missing: the repository is incomplete "
                "(restore it from backup, or create it with `imgline repo init`)"
            ) from None

    def load(self) -> State:
        """The current state, every role verified against the keys that delegate it."""
        if not self.exists():
            raise TrustError(
                f"no repository at {self.root_dir}: create one with "
                f"`imgline repo init {self.root_dir}`"
            )
        root = self._load_root_chain()
        ts = _parse(self._read("timestamp.json"), Timestamp, "timestamp.json")
        self._verify(root.signed, "timestamp", ts, "timestamp.json")
        snap_version = ts.signed.snapshot_meta.version
        snap_name = layout.metadata_file("snapshot", snap_version)
        snap_data = self._read(snap_name)
        self._check_meta(ts.signed.snapshot_meta, snap_data, snap_name)
        snap = _parse(snap_data, Snapshot, snap_name)
        self._verify(root.signed, "snapshot", snap, snap_name)
        state = State(root, ts, snap)
        top_meta = snap.signed.meta.get("targets.json")
        if top_meta is None:
            raise TrustError(f"{snap_name} does not list targets.json")
        state.targets["targets"] = self._load_targets("targets", top_meta, root.signed)
        delegations = state.top.delegations
        for role_name in (delegations.roles or {}) if delegations else ():
            meta = snap.signed.meta.get(f"{role_name}.json")
            if meta is None:
                raise TrustError(f"{snap_name} does not list delegated role {role_name}")
            state.targets[role_name] = self._load_targets(role_name, meta, state.top)
        return state

    def _load_root_chain(self) -> Metadata[Root]:
        """Walk 1.root.json → newest, each signed by its predecessor's threshold and its own,
        as a client would: a root written without the old keys is refused here too."""
        trusted = _parse(self._read("1.root.json"), Root, "1.root.json")
        self._verify(trusted.signed, "root", trusted, "1.root.json")
        for version in range(2, self.root_version() + 1):
            name = layout.metadata_file("root", version)
            new = _parse(self._read(name), Root, name)
            self._verify(trusted.signed, "root", new, f"{name} (by the previous root)")
            self._verify(new.signed, "root", new, name)
            if new.signed.version != version:
                raise TrustError(f"{name} says it is version {new.signed.version}")
            trusted = new
        return trusted

    def _load_targets(
        self, role: str, meta: MetaFile, delegator: Root | Targets
    ) -> Metadata[Targets]:
        name = layout.metadata_file(role, meta.version)
        data = self._read(name)
        self._check_meta(meta, data, name)
        md = _parse(data, Targets, name)
        self._verify(delegator, role, md, name)
        return md

    @staticmethod
    def _check_meta(meta: MetaFile, data: bytes, name: str) -> None:
        try:
            meta.verify_length_and_hashes(data)
        except LengthOrHashMismatchError as exc:
            raise TrustError(
                f"{name} does not match the length or hash listed for it: {exc}"
            ) from None

    @staticmethod
    def _verify(delegator: Root | Targets, role: str, md: Metadata[Any], name: str) -> None:
        try:
            delegator.verify_delegate(role, md.signed_bytes, md.signatures)
        except UnsignedMetadataError as exc:
            raise TrustError(
                f"{name} is not signed by enough trusted keys for role {role} ({exc}): it was "
                "modified, or signed with a key that was revoked; refusing to build on it"
            ) from None

    # --- signing ----------------------------------------------------------------------------

    def _signers(self, state: State, role: str) -> list[SigningKey]:
        spec = state.spec(role)
        have = [k for k in self.keys.keys(role) if k.keyid in spec.keyids]
        if len(have) < spec.threshold:
            raise TrustError(
                f"role {role} needs {spec.threshold} signature(s) but "
                f"{self.keys.role_dir(role)} holds "
                f"{len(have)} of its keys: add the missing key files, or lower the threshold"
            )
        return have

    def check_keys(self, state: State) -> None:
        """Every online role can be signed with the keys at hand: found at start-up, not hours
        later when the timestamp falls due."""
        for role in {*TOP_ONLINE, *state.targets}:
            self._signers(state, role)

    def _sign(self, state: State, role: str, md: Metadata[Any]) -> None:
        md.signatures.clear()
        for key in self._signers(state, role):
            md.sign(key.signer, append=True)

    def _bump(self, signed: Signed, role: str, now: datetime) -> None:
        signed.version += 1
        signed.expires = now + self.expiry.lifetime(role)

    def commit(self, state: State, changed: dict[str, Targets]) -> Commit:
        """Sign the changed targets roles, a snapshot listing them and a timestamp; write them
        with the timestamp last. ``state`` is updated to the new state. Call under ``locked``."""
        now = self.clock()
        old_files: list[str] = []
        new_meta: dict[str, MetaFile] = {}
        versions: dict[str, int] = {}
        # the top-level targets role first: stream roles are verified against its delegations
        for role in sorted(changed, key=lambda r: r != Targets.type):
            signed = changed[role]
            previous = state.targets.get(role)
            if previous is not None:
                signed.version = previous.signed.version
                old_files.append(layout.metadata_file(role, previous.signed.version))
            else:
                signed.version = 0
            self._bump(signed, role, now)
            md = Metadata(signed)
            self._sign(state, role, md)
            data = md.to_bytes(SERIALIZER)
            write_atomic(
                self.metadata_dir / layout.metadata_file(role, signed.version), data, parents=True
            )
            state.targets[role] = md
            new_meta[f"{role}.json"] = _meta_file(signed.version, data)
            versions[role] = signed.version
        snap = self._write_snapshot(state, new_meta, now, old_files)
        ts = self._write_timestamp(state, now)
        self.retire(old_files, now)
        return Commit(versions, snap, ts)

    def _write_snapshot(
        self, state: State, new_meta: dict[str, MetaFile], now: datetime, old_files: list[str]
    ) -> int:
        snapshot = state.snapshot.signed
        if snapshot.version >= 1:
            old_files.append(layout.metadata_file("snapshot", snapshot.version))
        snapshot.meta.update(new_meta)
        self._bump(snapshot, "snapshot", now)
        self._sign(state, "snapshot", state.snapshot)
        data = state.snapshot.to_bytes(SERIALIZER)
        write_atomic(
            self.metadata_dir / layout.metadata_file("snapshot", snapshot.version),
            data,
            parents=True,
        )
        state.timestamp.signed.snapshot_meta = _meta_file(snapshot.version, data)
        return snapshot.version

    def _write_timestamp(self, state: State, now: datetime) -> int:
        timestamp = state.timestamp.signed
        self._bump(timestamp, "timestamp", now)
        self._sign(state, "timestamp", state.timestamp)
        write_atomic(
            self.metadata_dir / "timestamp.json", state.timestamp.to_bytes(SERIALIZER), parents=True
        )
        return timestamp.version

    # --- creating ---------------------------------------------------------------------------

    @classmethod
    def init(
        cls,
        root_dir: Path,
        keys: KeyDir,
        root_keys: KeyDir,
        *,
        root_threshold: int = 1,
        root_key_count: int = 1,
        expiry: layout.Expiry | None = None,
        clock: Callable[[], datetime] = layout.now,
    ) -> TufRepository:
        """A new, empty repository: root keys in ``root_keys`` (move them offline), one online
        key each for targets, snapshot and timestamp in ``keys``."""
        if root_threshold < 1 or root_key_count < root_threshold:
            raise TrustError(
                f"a root threshold of {root_threshold} needs at least that many root keys "
                f"(asked for {root_key_count})"
            )
        repo = cls(root_dir, keys, expiry=expiry, clock=clock)
        if repo.exists():
            raise TrustError(f"{root_dir} already holds a repository: refusing to replace it")
        with repo.locked():
            now = clock()
            roots = [root_keys.generate("root") for _ in range(root_key_count)]
            online = {r: keys.keys(r)[:1] or [keys.generate(r)] for r in TOP_ONLINE}
            root = Root(expires=now + repo.expiry.root, consistent_snapshot=True)
            for key in roots:
                root.add_key(key.public, "root")
            root.roles["root"].threshold = root_threshold
            for role, role_keys in online.items():
                for key in role_keys:
                    root.add_key(key.public, role)
            root_md = Metadata(root)
            for key in roots:
                root_md.sign(key.signer, append=True)
            write_atomic(
                repo.metadata_dir / "1.root.json", root_md.to_bytes(SERIALIZER), parents=True
            )
            targets = Targets(
                expires=now + repo.expiry.targets, delegations=Delegations(keys={}, roles={})
            )
            state = State(
                root_md,
                Metadata(Timestamp(expires=now)),
                Metadata(Snapshot(expires=now, meta={})),
            )
            state.snapshot.signed.version = 0
            state.timestamp.signed.version = 0
            repo.commit(state, {"targets": targets})
            repo.targets_dir.mkdir(parents=True, exist_ok=True)
        return repo

    def ensure_stream(self, state: State, stream: str, changed: dict[str, Targets]) -> Targets:
        """The stream's role, to edit; a new stream gets a delegation and its own online key
        (an operator may add keys or raise its threshold later with ``imgline repo``)."""
        role = layout.stream_role(stream)
        if role in changed:
            return changed[role]
        current = state.role(role)
        if current is not None:
            signed = _copy(current.signed)
            changed[role] = signed
            return signed
        top = changed.get("targets") or _copy(state.top)
        changed["targets"] = top
        keys = self.keys.keys(role) or [self.keys.generate(role)]
        delegations = top.delegations or Delegations(keys={}, roles={})
        top.delegations = delegations
        roles = delegations.roles if delegations.roles is not None else {}
        delegations.roles = roles
        roles[role] = DelegatedRole(
            name=role, keyids=[], threshold=1, terminating=True, paths=layout.stream_paths(stream)
        )
        for key in keys:
            top.add_key(key.public, role)
        signed = Targets(expires=self.clock())
        changed[role] = signed
        log.info("stream %s: new role %s with key %s", stream, role, keys[0].keyid[:16])
        return signed

    # --- re-signing -------------------------------------------------------------------------

    def refresh(self, *, force: bool = False) -> list[str]:
        """Re-sign whatever is past half its life (the timestamp above all), so hosts never
        see expired metadata while the publisher runs. Returns the roles re-signed. The root
        cannot be re-signed here (its keys are offline): a root close to expiry is logged."""
        with self.locked():
            state = self.load()
            now = self.clock()
            root = state.root.signed
            if layout.due(root.expires, now, self.expiry.root):
                log.warning(
                    "root metadata expires %s: re-sign it with the offline root keys "
                    "(`imgline repo resign-root`)",
                    root.expires.isoformat(),
                )
            changed = {
                role: _copy(md.signed)
                for role, md in state.targets.items()
                if force or layout.due(md.signed.expires, now, self.expiry.lifetime(role))
            }
            snapshot_due = layout.due(state.snapshot.signed.expires, now, self.expiry.snapshot)
            timestamp_due = layout.due(state.timestamp.signed.expires, now, self.expiry.timestamp)
            if not (changed or snapshot_due or timestamp_due or force):
                return []
            self.commit(state, changed)
            done = [*sorted(changed), "snapshot", "timestamp"]
            log.info("re-signed %s", ", ".join(done))
            self.collect_garbage()
            return done

    # --- garbage ----------------------------------------------------------------------------

    def retire(self, files: list[str], now: datetime | None = None) -> None:
        """Queue files (relative to the repository root, or bare metadata names) for deletion
        once no snapshot that may list them is still valid."""
        if not files:
            return
        now = now or self.clock()
        after = now + max(self.expiry.snapshot, self.expiry.timestamp) + timedelta(minutes=5)
        lines = []
        for name in files:
            rel = name if "/" in name else f"{layout.METADATA_DIR}/{name}"
            lines.append(json.dumps({"path": rel, "after": after.isoformat()}) + "\n")
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with (self.state_dir / JOURNAL).open("a") as journal:
            journal.write("".join(lines))
            journal.flush()
            os.fsync(journal.fileno())
        marker = self.state_dir / NEXT_DUE
        if not marker.exists():
            write_atomic(marker, after.isoformat().encode(), parents=True)

    def collect_garbage(self) -> list[str]:
        """Delete queued files whose time has come; cheap when nothing is due (one small read),
        so it can run after every publish however long the queue is."""
        marker = self.state_dir / NEXT_DUE
        journal = self.state_dir / JOURNAL
        try:
            next_due = datetime.fromisoformat(marker.read_text().strip())
        except FileNotFoundError:
            return []
        now = self.clock()
        if now < next_due:
            return []
        keep: list[str] = []
        deleted: list[str] = []
        earliest: datetime | None = None
        for line in journal.read_text().splitlines():
            entry = json.loads(line)
            after = datetime.fromisoformat(entry["after"])
            if after <= now:
                path = self.root_dir / entry["path"]
                if path.resolve().is_relative_to(self.root_dir.resolve()):
                    path.unlink(missing_ok=True)
                    deleted.append(entry["path"])
                    _remove_empty_parents(path.parent, self.targets_dir)
            else:
                keep.append(line + "\n")
                earliest = after if earliest is None else min(earliest, after)
        write_atomic(journal, "".join(keep).encode(), parents=True)
        if earliest is None:
            marker.unlink(missing_ok=True)
        else:
            write_atomic(marker, earliest.isoformat().encode(), parents=True)
        if deleted:
            log.info("deleted %d file(s) no valid snapshot lists any more", len(deleted))
        return deleted


TOP_ONLINE = ("targets", "snapshot", "timestamp")


def _copy(signed: T) -> T:
    """A deep copy to edit, so a failed commit leaves the loaded state as it was."""
    md: Metadata[Any] = Metadata.from_bytes(Metadata(signed).to_bytes(SERIALIZER))
    return cast(T, md.signed)


def _remove_empty_parents(directory: Path, stop: Path) -> None:
    while directory != stop and directory.is_relative_to(stop):
        try:
            directory.rmdir()
        except OSError:
            return
        directory = directory.parent
