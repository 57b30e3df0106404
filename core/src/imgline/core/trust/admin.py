"""Key ceremonies: adding, rotating and revoking keys, and new root versions.

A new root version is signed by a threshold of the previous root's keys and a threshold of its
own, as TUF requires, so a host that trusts root N accepts N+1 and nothing an attacker made.
Keys of targets, snapshot and timestamp are named in the root, so changing them needs the
offline root keys; keys of a stream role are named by the (online) targets role, so the
publisher's key directory suffices. After a key change the affected role is signed again at
once, so the repository never lists metadata that its own root would refuse.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, Root

from imgline.core.fsutil import write_atomic
from imgline.core.trust import layout
from imgline.core.trust.errors import TrustError
from imgline.core.trust.keys import KeyDir, SigningKey
from imgline.core.trust.repository import (
    SERIALIZER,
    State,
    TufRepository,
    _copy,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeyChange:
    """What a ceremony did, for the operator's record."""

    role: str
    added: list[str]
    removed: list[str]
    threshold: int
    root_version: int


def new_root(
    repo: TufRepository, state: State, root_keys: KeyDir, edit: Callable[[Root], None]
) -> Metadata[Root]:
    """Write root version N+1 (``edit`` applied), signed by old and new root keys."""
    old = state.root
    signed = _copy(old.signed)
    edit(signed)
    signed.version = old.signed.version + 1
    signed.expires = repo.clock() + repo.expiry.root
    md = Metadata(signed)
    wanted = set(old.signed.roles["root"].keyids) | set(signed.roles["root"].keyids)
    for key in root_keys.keys("root"):
        if key.keyid in wanted:
            md.sign(key.signer, append=True)
    for who, delegator in (("previous", old.signed), ("new", signed)):
        try:
            delegator.verify_delegate("root", md.signed_bytes, md.signatures)
        except UnsignedMetadataError:
            need = delegator.roles["root"].threshold
            raise TrustError(
                f"root version {signed.version} needs {need} signature(s) by the {who} root "
                f"keys, and {root_keys.role_dir('root')} does not hold enough of them: "
                "mount the offline root keys and pass --root-keys"
            ) from None
    write_atomic(
        repo.metadata_dir / layout.metadata_file("root", signed.version),
        md.to_bytes(SERIALIZER),
        parents=True,
    )
    state.root = md
    log.info("wrote root version %d", signed.version)
    return md


def _resign_after(repo: TufRepository, state: State, role: str) -> None:
    """Sign a top-level ``role`` again (and what lists it) so it carries the new root's keys;
    a new root itself needs nothing more."""
    if role == "root":
        return
    changed = {role: _copy(state.targets[role].signed)} if role == "targets" else {}
    repo.commit(state, changed)


def _require_root_keys(role: str, root_keys: KeyDir | None) -> None:
    """Keys of top-level roles are named in the root, so changing them needs the root keys;
    checked before any key is made."""
    if role in layout.TOP_LEVEL and root_keys is None:
        raise TrustError(f"the keys of {role} are named in the root: pass --root-keys")


def _apply(
    repo: TufRepository,
    state: State,
    role: str,
    root_keys: KeyDir | None,
    *,
    add: list[SigningKey],
    remove: list[str],
    threshold: int | None,
) -> KeyChange:
    spec = state.spec(role)
    keyids, old_threshold = list(spec.keyids), spec.threshold
    final = [k for k in keyids if k not in remove] + [k.keyid for k in add]
    new_threshold = threshold or old_threshold
    if new_threshold < 1:
        raise TrustError("a threshold must be at least 1")
    if len(final) < new_threshold:
        raise TrustError(
            f"role {role} would keep {len(final)} key(s) for a threshold of {new_threshold}: "
            "add a key first or lower the threshold"
        )
    _require_root_keys(role, root_keys)
    if root_keys is not None and role in layout.TOP_LEVEL:

        def edit(root: Root) -> None:
            for keyid in remove:
                root.revoke_key(keyid, role)
            for key in add:
                root.add_key(key.public, role)
            root.roles[role].threshold = new_threshold

        new_root(repo, state, root_keys, edit)
    else:
        top = _copy(state.top)
        for keyid in remove:
            top.revoke_key(keyid, role)
        for key in add:
            top.add_key(key.public, role)
        assert top.delegations is not None and top.delegations.roles is not None  # noqa: S101
        top.delegations.roles[role].threshold = new_threshold
        repo.commit(state, {"targets": top, role: _copy(state.targets[role].signed)})
        return KeyChange(role, [k.keyid for k in add], remove, new_threshold, _root_v(state))
    _resign_after(repo, state, role)
    return KeyChange(role, [k.keyid for k in add], remove, new_threshold, _root_v(state))


@contextlib.contextmanager
def _undo_keys(store: KeyDir, role: str, keys: list[SigningKey]) -> Iterator[None]:
    """Keys made for a ceremony that then failed are retired, never left lying around."""
    try:
        yield
    except BaseException:
        for key in keys:
            store.retire(role, key.keyid)
        raise


def _root_v(state: State) -> int:
    return state.root.signed.version


def _key_dir_for(repo: TufRepository, role: str, root_keys: KeyDir | None) -> KeyDir:
    if role == "root":
        if root_keys is None:
            raise TrustError("root keys are offline: pass --root-keys with their directory")
        return root_keys
    return repo.keys


def add_key(
    repo: TufRepository, role: str, *, root_keys: KeyDir | None = None, threshold: int | None = None
) -> KeyChange:
    """A new key for ``role`` (and optionally a new threshold)."""
    with repo.locked():
        state = repo.load()
        state.spec(role)  # an unknown role is refused before a key is made
        store = _key_dir_for(repo, role, root_keys)
        _require_root_keys(role, root_keys)
        key = store.generate(role)
        with _undo_keys(store, role, [key]):
            return _apply(repo, state, role, root_keys, add=[key], remove=[], threshold=threshold)


def rotate(repo: TufRepository, role: str, *, root_keys: KeyDir | None = None) -> KeyChange:
    """Replace every key of ``role`` held here with a new one; keys held elsewhere (another
    signer's) stay. Old key files are renamed ``.revoked``."""
    with repo.locked():
        state = repo.load()
        keyids = list(state.spec(role).keyids)
        store = _key_dir_for(repo, role, root_keys)
        held = [k.keyid for k in store.keys(role) if k.keyid in keyids]
        if not held:
            raise TrustError(f"none of the keys of {role} is in {store.role_dir(role)}")
        _require_root_keys(role, root_keys)
        new = [store.generate(role) for _ in held]
        with _undo_keys(store, role, new):
            change = _apply(repo, state, role, root_keys, add=new, remove=held, threshold=None)
        for keyid in held:
            store.retire(role, keyid)
        return change


def revoke(
    repo: TufRepository, role: str, keyid: str, *, root_keys: KeyDir | None = None
) -> KeyChange:
    """Remove ``keyid`` (or a unique prefix of it) from ``role``: metadata it signs is no
    longer trusted once hosts see the new version."""
    with repo.locked():
        state = repo.load()
        keyids = list(state.spec(role).keyids)
        matches = [k for k in keyids if k.startswith(keyid)] if len(keyid) >= 8 else []
        if len(matches) != 1:
            raise TrustError(
                f"{keyid!r} names {len(matches)} key(s) of {role} (give at least 8 hex digits "
                f"of one of: {', '.join(k[:16] for k in keyids)})"
            )
        change = _apply(repo, state, role, root_keys, add=[], remove=matches, threshold=None)
        store = _key_dir_for(repo, role, root_keys)
        store.retire(role, matches[0])
        return change


def resign_root(repo: TufRepository, root_keys: KeyDir) -> int:
    """A new root version with the same keys and a fresh expiry."""
    with repo.locked():
        state = repo.load()
        return new_root(repo, state, root_keys, lambda root: None).signed.version
