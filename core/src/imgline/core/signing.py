"""Ed25519 signatures over the exact bytes of repository metadata (manifests, stream indexes).

Hosts pin public keys and refuse anything not signed by one of them, so a compromised mirror
or a man in the middle cannot steer an update. Signatures cover raw bytes, never a re-serialised
model: the verifier hands back the very bytes it checked, and callers parse those, so there is
no gap between what was verified and what is trusted. Image files themselves are too large to
sign directly; the signed manifest carries their sha256 and size, checked by ``verify_digest``.

A signature lives next to the file it covers as ``<name>.sig``: one line of canonical JSON
naming the algorithm and the key id, so a verifier can say which key signed when it is not
trusted instead of a bare "invalid signature".
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import re
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from imgline.core.artifacts import hash_stream
from imgline.core.errors import ImglineError
from imgline.core.fsutil import fsync_dir

ALGORITHM: Literal["ed25519"] = "ed25519"
PUBLIC_PREFIX = f"{ALGORITHM}:"
KEY_ID_LENGTH = 16
PUBLIC_KEY_LENGTH = 32
SIGNATURE_LENGTH = 64
KEY_MODE = 0o600
KEY_DIR_MODE = 0o700

_PEM_BEGIN = b"-----BEGIN "
_SHA256 = re.compile(r"[0-9a-f]{64}")

TrustedKeys = dict[str, Ed25519PublicKey]
"""Public keys a host accepts, by ``key_id``: lookup by the id a signature names."""


class SigningError(ImglineError):
    """A key could not be created or loaded, or content failed verification: the message names
    the file and the reason (wrong permissions, untrusted key, modified content) so the operator
    can fix the key or re-fetch the content. Never retry verification failures blindly."""


def key_id(public: Ed25519PublicKey) -> str:
    """Short, stable name of a public key, so signatures and errors can say which key is meant
    without carrying the key itself."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:KEY_ID_LENGTH]


def _b64decode(text: str) -> bytes:
    """Strict base64: stray characters or bad padding are errors, not silently dropped."""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError("is not valid base64") from None


class Signature(BaseModel):
    """The content of a ``.sig`` file: which algorithm and key made ``signature``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    algorithm: Literal["ed25519"]
    key_id: str = Field(pattern=rf"^[0-9a-f]{{{KEY_ID_LENGTH}}}$")
    signature: str

    @field_validator("signature")
    @classmethod
    def _check_signature(cls, value: str) -> str:
        raw = _b64decode(value)
        if len(raw) != SIGNATURE_LENGTH:
            raise ValueError(f"decodes to {len(raw)} bytes, an ed25519 signature has 64")
        return value

    def raw(self) -> bytes:
        """The 64 signature bytes (validated at construction, so this cannot fail)."""
        return base64.b64decode(self.signature)

    def to_bytes(self) -> bytes:
        """Canonical form (sorted keys, no spaces, trailing newline): the same signature always
        serialises to the same file, so re-signing unchanged content changes nothing."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return text.encode("utf-8") + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> Signature:
        """Parse a ``.sig`` file; the error names what is wrong with it."""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise SigningError("not a signature: the content is not UTF-8 text") from None
        try:
            obj: Any = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SigningError(f"not a signature: not JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise SigningError(f"not a signature: expected a JSON object, got {type(obj).__name__}")
        try:
            return cls.model_validate(obj)
        except ValidationError as exc:
            raise SigningError(f"not a valid signature: {_describe(exc)}") from None


def _describe(exc: ValidationError) -> str:
    """One line per problem, ``field: reason (got ...)``, without pydantic's URL noise."""
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] not in {"missing", "extra_forbidden"}:
            got = repr(err.get("input"))
            msg += f" (got {got[:60]}{'...' if len(got) > 60 else ''})"
        parts.append(f"{field}: {msg}")
    return "; ".join(parts)


class SigningKey:
    """A private key with what is derived from it; the only thing that can make signatures."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self.private_key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id(self.public_key)

    def __repr__(self) -> str:
        return f"SigningKey(key_id={self.key_id!r})"

    def sign(self, data: bytes) -> Signature:
        """Sign exactly ``data``: publish these bytes unchanged, or the signature breaks."""
        raw = self.private_key.sign(data)
        return Signature(
            algorithm=ALGORITHM,
            key_id=self.key_id,
            signature=base64.b64encode(raw).decode("ascii"),
        )

    def public_text(self) -> str:
        """``ed25519:<base64>``: one line an operator can paste into host configuration."""
        raw = self.public_key.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return PUBLIC_PREFIX + base64.b64encode(raw).decode("ascii")


def _make_private_dirs(directory: Path) -> None:
    """Create missing directories as 0700 (explicitly, whatever the umask); existing ones are
    left alone, since tightening e.g. ``/etc`` would break the host."""
    missing = []
    for d in (directory, *directory.parents):
        if d.exists():
            break
        missing.append(d)
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=KEY_DIR_MODE)
            os.chmod(d, KEY_DIR_MODE)


def generate_key(path: Path) -> SigningKey:
    """Create a new key at ``path`` (unencrypted PKCS8 PEM, mode 0600) and return it.

    Never overwrites: losing a private key that hosts trust means re-keying every host, so an
    existing file is an error. The key is written to a temp file, fsynced, then hard-linked into
    place (link(2), unlike rename, refuses an existing name), so the file is never partial.
    """
    if path.exists() or path.is_symlink():
        raise SigningError(
            f"refusing to overwrite {path}: a key file already exists there; "
            "move it away first if you really mean to replace it"
        )
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
        raise SigningError(f"cannot create {path}: {exc.strerror or exc}") from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), KEY_MODE)
            out.write(pem)
            out.flush()
            os.fsync(out.fileno())
        os.link(tmp, path)
    except FileExistsError:
        raise SigningError(
            f"refusing to overwrite {path}: it appeared while the key was being written"
        ) from None
    except OSError as exc:
        raise SigningError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(parent)
    return SigningKey(private)


def load_signing_key(path: Path) -> SigningKey:
    """Load the private key at ``path``; refuses files others can read, as ssh does, since a
    leaked signing key lets anyone push updates to every host trusting it."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise SigningError(
            f"no signing key at {path}: create one with `imgline keys generate {path}`"
        ) from None
    except OSError as exc:
        raise SigningError(f"cannot read signing key {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise SigningError(f"signing key {path} is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise SigningError(
            f"signing key {path} is accessible by group or others (mode {mode:04o}): "
            f"run `chmod 600 {path}`"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningError(f"cannot read signing key {path}: {exc.strerror or exc}") from None
    if not data.lstrip().startswith(_PEM_BEGIN):
        raise SigningError(f"{path} is not a PEM file: expected a key made by `imgline keys`")
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise SigningError(
            f"signing key {path} is encrypted: imgline needs an unencrypted PKCS8 key"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise SigningError(
            f"{path} does not hold a readable PEM private key (a public key or a damaged file?)"
        ) from None
    if not isinstance(private, Ed25519PrivateKey):
        raise SigningError(
            f"{path} holds a {type(private).__name__.lstrip('_')} key, not an Ed25519 key: "
            "create one with `imgline keys generate`"
        )
    return SigningKey(private)


def parse_public_key(text: str) -> Ed25519PublicKey:
    """Read a trusted key from host configuration: ``ed25519:<base64>`` or a PEM public key."""
    stripped = text.strip()
    if stripped.startswith(PUBLIC_PREFIX):
        try:
            raw = _b64decode(stripped.removeprefix(PUBLIC_PREFIX).strip())
        except ValueError:
            raise SigningError(
                f"public key {stripped[:30]!r}...: the part after 'ed25519:' is not valid base64"
            ) from None
        if len(raw) != PUBLIC_KEY_LENGTH:
            raise SigningError(
                f"public key {stripped!r} decodes to {len(raw)} bytes, an ed25519 key has 32: "
                "copy the whole line printed by `imgline keys show`"
            )
        return Ed25519PublicKey.from_public_bytes(raw)
    if stripped.startswith(_PEM_BEGIN.decode()):
        if "PRIVATE KEY" in stripped.splitlines()[0]:
            raise SigningError(
                "this is a PRIVATE key: never put it in host configuration; "
                "use the ed25519: line printed by `imgline keys show`"
            )
        try:
            public = serialization.load_pem_public_key(stripped.encode("ascii"))
        except (ValueError, UnicodeEncodeError, UnsupportedAlgorithm):
            raise SigningError("PEM public key is damaged or not a public key") from None
        if not isinstance(public, Ed25519PublicKey):
            raise SigningError(
                f"PEM public key is a {type(public).__name__.lstrip('_')}, not an Ed25519 key"
            )
        return public
    shown = stripped[:30] + ("..." if len(stripped) > 30 else "")
    raise SigningError(
        f"not a public key: {shown!r}; expected 'ed25519:<base64>' "
        "(as printed by `imgline keys show`) or a PEM public key"
    )


def trusted_keys(texts: Iterable[str]) -> TrustedKeys:
    """Parse configured public keys; two different keys sharing an id are refused, since a
    signature could then not say which of them it needs."""
    keys: TrustedKeys = {}
    for text in texts:
        public = parse_public_key(text)
        kid = key_id(public)
        other = keys.get(kid)
        if other is not None and other.public_bytes_raw() != public.public_bytes_raw():
            raise SigningError(f"two different trusted keys share the key id {kid}")
        keys[kid] = public
    return keys


def verify(data: bytes, sig: bytes | Signature, trusted: TrustedKeys, what: str) -> str:
    """Check that ``data`` was signed by a trusted key; return that key's id.

    ``what`` names the content in errors (a path or URL), so the operator knows what to re-fetch.
    """
    if not isinstance(sig, Signature):
        try:
            sig = Signature.from_bytes(sig)
        except SigningError as exc:
            raise SigningError(f"unreadable signature file for {what}: {exc}") from None
    public = trusted.get(sig.key_id)
    if public is None:
        known = ", ".join(sorted(trusted)) or "none configured"
        raise SigningError(
            f"{what} is signed by key {sig.key_id}, which is not among the trusted keys "
            f"({known}): add its public key to the host configuration if you trust it"
        )
    try:
        public.verify(sig.raw(), data)
    except InvalidSignature:
        raise SigningError(
            f"signature by key {sig.key_id} does not match the content of {what}: it was "
            "modified after signing, or signed by a different key with a colliding id"
        ) from None
    return sig.key_id


def verify_file(path: Path, sig_path: Path, trusted: TrustedKeys) -> bytes:
    """Verify ``path`` against ``sig_path`` and return the bytes that were verified: parse those,
    never re-read the file, or it could change between the check and the use."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SigningError(f"cannot verify {path}: it does not exist") from None
    except OSError as exc:
        raise SigningError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        sig = sig_path.read_bytes()
    except FileNotFoundError:
        raise SigningError(f"{path} has no signature {sig_path}: refusing to trust it") from None
    except OSError as exc:
        raise SigningError(f"cannot read signature {sig_path}: {exc.strerror or exc}") from None
    verify(data, sig, trusted, str(path))
    return data


def verify_digest(path: Path, sha256: str, size: int, what: str) -> None:
    """Check a large file against the digest and size a signed manifest gave for it.

    Size first: a truncated download is the common failure and needs no full read to detect.
    """
    expected = sha256.lower()
    if not _SHA256.fullmatch(expected):
        raise SigningError(f"expected sha256 for {what} is malformed: {sha256!r}")
    try:
        stream = path.open("rb")
    except FileNotFoundError:
        raise SigningError(f"{what} is missing: {path} does not exist") from None
    except OSError as exc:
        raise SigningError(f"cannot read {what} at {path}: {exc.strerror or exc}") from None
    with stream:
        _check_size(os.fstat(stream.fileno()).st_size, size, path, what)
        actual, actual_size = hash_stream(stream)
    # The file may have changed while being read: trust what was hashed, not the first stat.
    _check_size(actual_size, size, path, what)
    if actual != expected:
        raise SigningError(
            f"{what} ({path}) is corrupt or was replaced: its sha256 is {actual}, "
            f"expected {expected}; fetch it again"
        )


def _check_size(actual: int, expected: int, path: Path, what: str) -> None:
    if actual < expected:
        raise SigningError(
            f"{what} ({path}) is truncated: {actual} bytes, expected {expected} "
            f"({expected - actual} bytes missing); fetch it again"
        )
    if actual > expected:
        raise SigningError(
            f"{what} ({path}) is {actual - expected} bytes longer than expected "
            f"({actual} bytes, expected {expected}); fetch it again"
        )
