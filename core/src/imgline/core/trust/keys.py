"""Signing keys on disk: one Ed25519 key per file, PKCS8 PEM, mode 0600.

A key directory holds the keys of some roles as ``<role>/<keyid>.key``. The publisher's
directory holds the online roles (targets, snapshot, timestamp, and the stream roles); root
keys live in another directory that is kept offline and is needed only to change the root.
Revoked keys are renamed ``<keyid>.key.revoked`` and never used again, so an audit can still
tell which key signed what. Files that group or others can read are refused, as ssh refuses
them: a leaked online key lets anyone sign releases until it is revoked.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner, SSlibKey

from imgline.core.fsutil import fsync_dir
from imgline.core.trust.errors import TrustError

KEY_MODE = 0o600
KEY_DIR_MODE = 0o700
KEY_SUFFIX = ".key"
REVOKED_SUFFIX = ".revoked"
_PEM_BEGIN = b"-----BEGIN "


@dataclass(frozen=True)
class SigningKey:
    """A private key and its TUF public form; ``keyid`` is what metadata names it by."""

    signer: CryptoSigner
    public: SSlibKey
    path: Path | None = None

    @property
    def keyid(self) -> str:
        return str(self.public.keyid)

    def __repr__(self) -> str:
        return f"SigningKey(keyid={self.keyid[:16]}..., path={self.path})"


def _from_private(private: Ed25519PrivateKey, path: Path | None) -> SigningKey:
    public = SSlibKey.from_crypto(private.public_key())
    return SigningKey(CryptoSigner(private, public), public, path)


def _make_private_dirs(directory: Path) -> None:
    """Create missing directories as 0700 whatever the umask; existing ones are left alone,
    since tightening e.g. ``/etc`` would break the host."""
    missing = []
    for d in (directory, *directory.parents):
        if d.exists():
            break
        missing.append(d)
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=KEY_DIR_MODE)
            os.chmod(d, KEY_DIR_MODE)


def write_new_key(path: Path) -> SigningKey:
    """Create a key at ``path`` (never overwriting: a lost key that hosts trust is costly).

    Written to a temp file, fsynced, then hard-linked into place: link(2), unlike rename,
    refuses an existing name, so the file is never partial and never replaces another key.
    """
    if path.exists() or path.is_symlink():
        raise TrustError(f"refusing to overwrite {path}: a key file already exists there")
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    parent = path.parent
    try:
        _make_private_dirs(parent)
        fd, tmp_name = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.tmp-")
    except OSError as exc:
        raise TrustError(f"cannot create {path}: {exc.strerror or exc}") from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), KEY_MODE)
            out.write(pem)
            out.flush()
            os.fsync(out.fileno())
        os.link(tmp, path)
    except FileExistsError:
        raise TrustError(f"refusing to overwrite {path}: it appeared while being written") from None
    except OSError as exc:
        raise TrustError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(parent)
    return _from_private(private, path)


def load_key(path: Path) -> SigningKey:
    """The private key at ``path``; refuses files others can read and anything not Ed25519."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise TrustError(f"no key at {path}") from None
    except OSError as exc:
        raise TrustError(f"cannot read key {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise TrustError(f"key {path} is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise TrustError(
            f"key {path} is accessible by group or others (mode {mode:04o}): "
            f"run `chmod 600 {path}` if it has not leaked, else revoke it"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TrustError(f"cannot read key {path}: {exc.strerror or exc}") from None
    if not data.lstrip().startswith(_PEM_BEGIN):
        raise TrustError(f"{path} is not a PEM file: expected a key made by `imgline repo`")
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TrustError(f"key {path} is encrypted: imgline needs an unencrypted key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise TrustError(f"{path} does not hold a readable PEM private key") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise TrustError(f"{path} holds a key that is not Ed25519: imgline signs with Ed25519")
    return _from_private(private, path)


class KeyDir:
    """The keys of some roles, as ``<dir>/<role>/<keyid>.key``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def __repr__(self) -> str:
        return f"KeyDir({self.directory})"

    def role_dir(self, role: str) -> Path:
        if not role or "/" in role or role.startswith("."):
            raise TrustError(f"not a role name: {role!r}")
        return self.directory / role

    def keys(self, role: str) -> list[SigningKey]:
        """Every usable key of ``role`` here; a file whose name is not its key id is refused,
        since the name is how an operator finds the key to revoke."""
        d = self.role_dir(role)
        if not d.is_dir():
            return []
        found = []
        for path in sorted(d.glob(f"*{KEY_SUFFIX}")):
            key = load_key(path)
            if path.name != key.keyid + KEY_SUFFIX:
                raise TrustError(f"{path} holds key {key.keyid}: rename it to {key.keyid}.key")
            found.append(key)
        return found

    def generate(self, role: str) -> SigningKey:
        """A new key for ``role``, stored under its key id."""
        d = self.role_dir(role)
        _make_private_dirs(d)
        tmp = d / f".new-{os.getpid()}{KEY_SUFFIX}"
        tmp.unlink(missing_ok=True)
        key = write_new_key(tmp)
        final = d / (key.keyid + KEY_SUFFIX)
        os.rename(tmp, final)
        fsync_dir(d)
        return SigningKey(key.signer, key.public, final)

    def retire(self, role: str, keyid: str) -> Path | None:
        """Rename the key's file so it is never used again; its path, if it was here."""
        path = self.role_dir(role) / (keyid + KEY_SUFFIX)
        if not path.exists():
            return None
        gone = path.with_name(path.name + REVOKED_SUFFIX)
        os.rename(path, gone)
        fsync_dir(path.parent)
        return gone
