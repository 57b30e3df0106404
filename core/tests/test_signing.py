"""Signing: only content signed by a pinned key passes, and every refusal says why."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key

from imgline.core.signing import (
    Signature,
    SigningError,
    SigningKey,
    generate_key,
    key_id,
    load_signing_key,
    parse_public_key,
    trusted_keys,
    verify,
    verify_digest,
    verify_file,
)

pytestmark = pytest.mark.unit

MANIFEST = b'{"version": "2024.06.1", "sha256": "ab"}\n'


@pytest.fixture
def key(tmp_path: Path) -> SigningKey:
    return generate_key(tmp_path / "keys" / "signing.pem")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- sign / verify ---------------------------------------------------------------------------


def test_round_trip_through_sig_bytes(key: SigningKey) -> None:
    sig = key.sign(MANIFEST)
    data = sig.to_bytes()
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    assert json.loads(data) == sig.model_dump()
    assert Signature.from_bytes(data) == sig
    keys = trusted_keys([key.public_text()])
    assert verify(MANIFEST, data, keys, "manifest.json") == key.key_id
    assert verify(MANIFEST, sig, keys, "manifest.json") == key.key_id


def test_to_bytes_is_canonical(key: SigningKey) -> None:
    sig = key.sign(MANIFEST)
    expected = json.dumps(
        {"algorithm": "ed25519", "key_id": key.key_id, "signature": sig.signature},
        sort_keys=True,
        separators=(",", ":"),
    )
    assert sig.to_bytes() == expected.encode() + b"\n"


def test_key_id_is_sha256_prefix_of_raw_public_key(key: SigningKey) -> None:
    raw = key.public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert key.key_id == key_id(key.public_key) == hashlib.sha256(raw).hexdigest()[:16]


def test_one_changed_byte_does_not_match(key: SigningKey) -> None:
    sig = key.sign(MANIFEST)
    tampered = bytearray(MANIFEST)
    tampered[12] ^= 0x01
    with pytest.raises(SigningError, match=r"does not match the content of manifest\.json"):
        verify(bytes(tampered), sig, trusted_keys([key.public_text()]), "manifest.json")


def test_untrusted_key_is_named_with_the_trusted_ones(key: SigningKey, tmp_path: Path) -> None:
    other = generate_key(tmp_path / "other.pem")
    sig = other.sign(MANIFEST)
    with pytest.raises(SigningError) as info:
        verify(MANIFEST, sig, trusted_keys([key.public_text()]), "index.json")
    text = str(info.value)
    assert f"signed by key {other.key_id}" in text
    assert "not among the trusted keys" in text
    assert key.key_id in text


def test_no_trusted_keys_says_so(key: SigningKey) -> None:
    with pytest.raises(SigningError, match="none configured"):
        verify(MANIFEST, key.sign(MANIFEST), {}, "index.json")


def test_colliding_key_id_does_not_match(key: SigningKey, tmp_path: Path) -> None:
    """A signature naming a trusted id but made by another key fails on the maths, not the id."""
    other = generate_key(tmp_path / "other.pem")
    forged = other.sign(MANIFEST).model_copy(update={"key_id": key.key_id})
    with pytest.raises(SigningError, match="colliding id"):
        verify(MANIFEST, forged, trusted_keys([key.public_text()]), "index.json")


def valid_sig_dict(key: SigningKey) -> dict[str, str]:
    return key.sign(MANIFEST).model_dump()


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: b"not json at all", "not JSON"),
        (lambda d: b"\xff\xfe", "not UTF-8"),
        (lambda d: b"[1, 2]", "expected a JSON object"),
        (lambda d: {**d, "algorithm": "rsa"}, r"algorithm: .*'ed25519'.*got 'rsa'"),
        (lambda d: {**d, "signature": "!!!not-base64!!!"}, "signature: is not valid base64"),
        (
            lambda d: {**d, "signature": base64.b64encode(b"x" * 63).decode()},
            "signature: decodes to 63 bytes, an ed25519 signature has 64",
        ),
        (lambda d: {**d, "key_id": "ZZ"}, "key_id: "),
        (lambda d: {k: v for k, v in d.items() if k != "key_id"}, "key_id: Field required"),
        (lambda d: {**d, "extra": 1}, "extra: Extra inputs are not permitted"),
    ],
    ids=[
        "not-json",
        "not-utf8",
        "array",
        "algorithm",
        "base64",
        "length",
        "key-id",
        "missing",
        "extra",
    ],
)
def test_malformed_sig_file_is_unreadable(
    key: SigningKey, mutate: Callable[[dict[str, str]], object], reason: str
) -> None:
    result = mutate(valid_sig_dict(key))
    data = result if isinstance(result, bytes) else json.dumps(result).encode()
    with pytest.raises(SigningError, match=reason):
        Signature.from_bytes(data)
    with pytest.raises(SigningError, match=r"unreadable signature file for m\.json: .*" + reason):
        verify(MANIFEST, data, trusted_keys([key.public_text()]), "m.json")


# --- verify_file -----------------------------------------------------------------------------


def test_verify_file_returns_the_verified_bytes(key: SigningKey, tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    path.write_bytes(MANIFEST)
    sig_path = tmp_path / "manifest.json.sig"
    sig_path.write_bytes(key.sign(MANIFEST).to_bytes())
    assert verify_file(path, sig_path, trusted_keys([key.public_text()])) == MANIFEST


def test_verify_file_modified_after_signing(key: SigningKey, tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    sig_path = tmp_path / "manifest.json.sig"
    sig_path.write_bytes(key.sign(MANIFEST).to_bytes())
    path.write_bytes(MANIFEST + b" ")
    with pytest.raises(SigningError, match=re.escape(f"does not match the content of {path}")):
        verify_file(path, sig_path, trusted_keys([key.public_text()]))


def test_missing_sig_refuses_to_trust(key: SigningKey, tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    path.write_bytes(MANIFEST)
    sig_path = tmp_path / "manifest.json.sig"
    with pytest.raises(SigningError) as info:
        verify_file(path, sig_path, trusted_keys([key.public_text()]))
    assert str(info.value) == f"{path} has no signature {sig_path}: refusing to trust it"


def test_missing_content_file(key: SigningKey, tmp_path: Path) -> None:
    with pytest.raises(SigningError, match="does not exist"):
        verify_file(tmp_path / "nope", tmp_path / "nope.sig", trusted_keys([key.public_text()]))


# --- key files -------------------------------------------------------------------------------


def test_generate_writes_private_pem_0600_in_0700_dirs(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "signing.pem"
    key = generate_key(path)
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    assert mode(path.parent.parent) == 0o700
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert os.listdir(path.parent) == ["signing.pem"]  # no temp file left behind
    loaded = load_signing_key(path)
    assert loaded.key_id == key.key_id
    assert loaded.public_text() == key.public_text()


def test_generate_leaves_existing_parent_modes_alone(tmp_path: Path) -> None:
    parent = tmp_path / "shared"
    parent.mkdir(mode=0o755)
    os.chmod(parent, 0o755)  # noqa: S103 - a directory others share, as /etc is
    generate_key(parent / "k.pem")
    assert mode(parent) == 0o755


def test_generate_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "signing.pem"
    path.write_bytes(b"precious")
    with pytest.raises(SigningError, match="refusing to overwrite"):
        generate_key(path)
    assert path.read_bytes() == b"precious"


def test_generate_refuses_to_overwrite_a_key(tmp_path: Path) -> None:
    path = tmp_path / "signing.pem"
    first = generate_key(path)
    with pytest.raises(SigningError, match="refusing to overwrite"):
        generate_key(path)
    assert load_signing_key(path).key_id == first.key_id


@pytest.mark.parametrize("bad_mode", [0o640, 0o644, 0o604, 0o660])
def test_load_refuses_group_or_world_access(tmp_path: Path, bad_mode: int) -> None:
    path = tmp_path / "signing.pem"
    generate_key(path)
    os.chmod(path, bad_mode)
    with pytest.raises(
        SigningError, match=rf"mode {bad_mode:04o}.*chmod 600 {re.escape(str(path))}"
    ):
        load_signing_key(path)


def test_load_missing_file_says_how_to_create(tmp_path: Path) -> None:
    with pytest.raises(SigningError, match=r"no signing key at .*imgline keys generate"):
        load_signing_key(tmp_path / "absent.pem")


def write_private(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    os.chmod(path, 0o600)
    return path


def test_load_not_pem(tmp_path: Path) -> None:
    path = write_private(tmp_path / "k.pem", b"ed25519:AAAA\n")
    with pytest.raises(SigningError, match="is not a PEM file"):
        load_signing_key(path)


def test_load_damaged_pem(tmp_path: Path) -> None:
    path = write_private(tmp_path / "k.pem", b"-----BEGIN PRIVATE KEY-----\nxx\n")
    with pytest.raises(SigningError, match="does not hold a readable PEM private key"):
        load_signing_key(path)


def test_load_not_ed25519(tmp_path: Path) -> None:
    ec = generate_private_key(SECP256R1())
    pem = ec.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = write_private(tmp_path / "k.pem", pem)
    with pytest.raises(SigningError, match="not an Ed25519 key"):
        load_signing_key(path)


def test_load_encrypted(tmp_path: Path, key: SigningKey) -> None:
    pem = key.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    path = write_private(tmp_path / "k.pem", pem)
    with pytest.raises(SigningError, match="is encrypted"):
        load_signing_key(path)


# --- public keys -----------------------------------------------------------------------------


def test_parse_public_key_text_form(key: SigningKey) -> None:
    text = key.public_text()
    assert text.startswith("ed25519:") and "\n" not in text
    assert key_id(parse_public_key(f"  {text}\n")) == key.key_id


def test_parse_public_key_pem_form(key: SigningKey) -> None:
    pem = key.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    assert key_id(parse_public_key(pem)) == key.key_id


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("hello", "not a public key: 'hello'"),
        ("", "not a public key"),
        ("ed25519:***", "not valid base64"),
        ("ed25519:" + base64.b64encode(b"x" * 31).decode(), "decodes to 31 bytes"),
        ("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "damaged"),
    ],
)
def test_parse_public_key_garbage(text: str, reason: str) -> None:
    with pytest.raises(SigningError, match=reason):
        parse_public_key(text)


def test_parse_public_key_refuses_private_pem(tmp_path: Path, key: SigningKey) -> None:
    pem = (tmp_path / "keys" / "signing.pem").read_text()
    with pytest.raises(SigningError, match="PRIVATE key"):
        parse_public_key(pem)


def test_parse_public_key_not_ed25519_pem() -> None:
    pem = (
        generate_private_key(SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    with pytest.raises(SigningError, match="not an Ed25519 key"):
        parse_public_key(pem)


def test_trusted_keys_by_id(key: SigningKey, tmp_path: Path) -> None:
    other = generate_key(tmp_path / "other.pem")
    keys = trusted_keys([key.public_text(), other.public_text(), key.public_text()])
    assert sorted(keys) == sorted([key.key_id, other.key_id])


# --- verify_digest ---------------------------------------------------------------------------

IMAGE = bytes(range(256)) * 10_000  # > 2 MiB: several chunks
IMAGE_SHA = hashlib.sha256(IMAGE).hexdigest()


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "root.img"
    path.write_bytes(IMAGE)
    return path


def test_verify_digest_ok(image: Path) -> None:
    verify_digest(image, IMAGE_SHA, len(IMAGE), "root image")
    verify_digest(image, IMAGE_SHA.upper(), len(IMAGE), "root image")


def test_verify_digest_truncated(image: Path) -> None:
    image.write_bytes(IMAGE[:-100])
    with pytest.raises(SigningError, match=r"root image \(.*\) is truncated: .*100 bytes missing"):
        verify_digest(image, IMAGE_SHA, len(IMAGE), "root image")


def test_verify_digest_extended(image: Path) -> None:
    image.write_bytes(IMAGE + b"xyz")
    with pytest.raises(SigningError, match="is 3 bytes longer than expected"):
        verify_digest(image, IMAGE_SHA, len(IMAGE), "root image")


def test_verify_digest_bit_flipped(image: Path) -> None:
    flipped = bytearray(IMAGE)
    flipped[len(IMAGE) // 2] ^= 0x10
    image.write_bytes(bytes(flipped))
    with pytest.raises(SigningError, match=rf"corrupt or was replaced: .*expected {IMAGE_SHA}"):
        verify_digest(image, IMAGE_SHA, len(IMAGE), "root image")


def test_verify_digest_missing_and_malformed(tmp_path: Path, image: Path) -> None:
    with pytest.raises(SigningError, match="root image is missing"):
        verify_digest(tmp_path / "absent.img", IMAGE_SHA, len(IMAGE), "root image")
    with pytest.raises(SigningError, match="malformed"):
        verify_digest(image, "abc", len(IMAGE), "root image")
