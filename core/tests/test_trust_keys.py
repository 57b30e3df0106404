"""Key files: private (0600 in 0700 directories), never overwritten, refused when others can
read them or when they are not an unencrypted Ed25519 key, and named by their key id."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from imgline.core.trust.errors import TrustError
from imgline.core.trust.keys import KeyDir, load_key, write_new_key

pytestmark = pytest.mark.unit


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def write_private(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    os.chmod(path, 0o600)
    return path


# --- write_new_key / load_key ----------------------------------------------------------------


def test_write_new_key_is_private_pem_0600_in_0700_dirs(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "timestamp.key"
    key = write_new_key(path)
    assert key.path == path
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    assert mode(path.parent.parent) == 0o700
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert os.listdir(path.parent) == ["timestamp.key"]  # no temp file left behind
    loaded = load_key(path)
    assert loaded.keyid == key.keyid
    assert loaded.public == key.public
    assert re.fullmatch(r"[0-9a-f]{64}", key.keyid)


def test_a_loaded_key_signs_what_its_public_key_verifies(tmp_path: Path) -> None:
    key = write_new_key(tmp_path / "k.key")
    loaded = load_key(tmp_path / "k.key")
    sig = loaded.signer.sign(b"metadata")
    key.public.verify_signature(sig, b"metadata")


def test_repr_names_the_key_not_its_secret(tmp_path: Path) -> None:
    key = write_new_key(tmp_path / "k.key")
    text = repr(key)
    assert key.keyid[:16] in text
    assert "PRIVATE" not in text and key.keyid not in text


def test_write_new_key_leaves_existing_parent_modes_alone(tmp_path: Path) -> None:
    parent = tmp_path / "shared"
    parent.mkdir(mode=0o755)
    os.chmod(parent, 0o755)  # noqa: S103 - a directory others share, as /etc is
    write_new_key(parent / "k.key")
    assert mode(parent) == 0o755


def test_write_new_key_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    path.write_bytes(b"precious")
    with pytest.raises(TrustError, match="refusing to overwrite"):
        write_new_key(path)
    assert path.read_bytes() == b"precious"


def test_write_new_key_refuses_to_overwrite_a_key(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    first = write_new_key(path)
    with pytest.raises(TrustError, match="refusing to overwrite"):
        write_new_key(path)
    assert load_key(path).keyid == first.keyid


def test_write_new_key_refuses_a_dangling_symlink(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    path.symlink_to(tmp_path / "elsewhere.key")
    with pytest.raises(TrustError, match="refusing to overwrite"):
        write_new_key(path)
    assert not (tmp_path / "elsewhere.key").exists()


@pytest.mark.parametrize("bad_mode", [0o640, 0o644, 0o604, 0o660])
def test_load_refuses_group_or_world_access(tmp_path: Path, bad_mode: int) -> None:
    path = tmp_path / "k.key"
    write_new_key(path)
    os.chmod(path, bad_mode)
    with pytest.raises(TrustError, match=rf"mode {bad_mode:04o}.*chmod 600 {re.escape(str(path))}"):
        load_key(path)


def test_load_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.key"
    with pytest.raises(TrustError, match=rf"no key at {re.escape(str(path))}"):
        load_key(path)


def test_load_refuses_a_directory(tmp_path: Path) -> None:
    path = tmp_path / "dir.key"
    path.mkdir(mode=0o700)
    with pytest.raises(TrustError, match="is not a regular file"):
        load_key(path)


def test_load_not_pem(tmp_path: Path) -> None:
    path = write_private(tmp_path / "k.key", b"ed25519:AAAA\n")
    with pytest.raises(TrustError, match="is not a PEM file"):
        load_key(path)


def test_load_damaged_pem(tmp_path: Path) -> None:
    path = write_private(tmp_path / "k.key", b"-----BEGIN PRIVATE KEY-----\nxx\n")
    with pytest.raises(TrustError, match="does not hold a readable PEM private key"):
        load_key(path)


def test_load_not_ed25519(tmp_path: Path) -> None:
    ec = generate_private_key(SECP256R1())
    pem = ec.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = write_private(tmp_path / "k.key", pem)
    with pytest.raises(TrustError, match=r"holds a key that is not Ed25519"):
        load_key(path)


def test_load_encrypted(tmp_path: Path) -> None:
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    path = write_private(tmp_path / "k.key", pem)
    with pytest.raises(TrustError, match="is encrypted"):
        load_key(path)


# --- KeyDir ----------------------------------------------------------------------------------


def test_generate_stores_each_key_under_its_key_id(tmp_path: Path) -> None:
    keys = KeyDir(tmp_path / "keys")
    first = keys.generate("timestamp")
    second = keys.generate("timestamp")
    role_dir = tmp_path / "keys" / "timestamp"
    assert first.path == role_dir / f"{first.keyid}.key"
    assert second.path == role_dir / f"{second.keyid}.key"
    assert first.keyid != second.keyid
    assert mode(first.path) == 0o600
    assert mode(role_dir) == 0o700
    assert mode(tmp_path / "keys") == 0o700
    assert sorted(os.listdir(role_dir)) == sorted(  # no temp file left behind
        [f"{first.keyid}.key", f"{second.keyid}.key"]
    )
    assert [k.keyid for k in keys.keys("timestamp")] == sorted([first.keyid, second.keyid])


def test_keys_of_a_role_with_no_directory(tmp_path: Path) -> None:
    keys = KeyDir(tmp_path / "keys")
    assert keys.keys("snapshot") == []
    assert not (tmp_path / "keys").exists()


def test_keys_are_per_role(tmp_path: Path) -> None:
    keys = KeyDir(tmp_path)
    key = keys.generate("stream-stable")
    assert [k.keyid for k in keys.keys("stream-stable")] == [key.keyid]
    assert keys.keys("stream-testing") == []


def test_keys_refuses_a_file_not_named_by_its_key_id(tmp_path: Path) -> None:
    keys = KeyDir(tmp_path)
    key = write_new_key(tmp_path / "targets" / "mine.key")
    with pytest.raises(TrustError, match=rf"holds key {key.keyid}: rename it to {key.keyid}\.key"):
        keys.keys("targets")


def test_keys_refuses_a_key_others_can_read(tmp_path: Path) -> None:
    keys = KeyDir(tmp_path)
    key = keys.generate("targets")
    assert key.path is not None
    os.chmod(key.path, 0o644)
    with pytest.raises(TrustError, match="accessible by group or others"):
        keys.keys("targets")


def test_keys_ignores_other_files(tmp_path: Path) -> None:
    keys = KeyDir(tmp_path)
    key = keys.generate("targets")
    (tmp_path / "targets" / "README").write_text("not a key\n")
    assert [k.keyid for k in keys.keys("targets")] == [key.keyid]


def test_retire_makes_a_key_unusable(tmp_path: Path) -> None:
    keys = KeyDir(tmp_path)
    old = keys.generate("timestamp")
    kept = keys.generate("timestamp")
    gone = keys.retire("timestamp", old.keyid)
    assert gone == tmp_path / "timestamp" / f"{old.keyid}.key.revoked"
    assert gone.exists() and old.path is not None and not old.path.exists()
    assert [k.keyid for k in keys.keys("timestamp")] == [kept.keyid]
    assert load_key(gone).keyid == old.keyid  # kept for the audit, not for signing
    assert keys.retire("timestamp", old.keyid) is None  # already gone


def test_retire_unknown_key(tmp_path: Path) -> None:
    assert KeyDir(tmp_path).retire("timestamp", "ab" * 32) is None


@pytest.mark.parametrize("role", ["", "a/b", ".hidden", "../root"])
def test_role_names_cannot_leave_the_directory(tmp_path: Path, role: str) -> None:
    keys = KeyDir(tmp_path / "keys")
    with pytest.raises(TrustError, match="not a role name"):
        keys.generate(role)
    with pytest.raises(TrustError, match="not a role name"):
        keys.keys(role)
    assert not (tmp_path / "keys").exists()
