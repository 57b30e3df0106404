"""Content-addressed store: what goes in comes out under its digest, once, intact."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from imgline.core.artifacts import ArtifactError, LocalArtifactStore, StoredArtifact, verify_digest

pytestmark = pytest.mark.unit

CONTENT = b"squashfs bytes\n" * 100_000  # > 1 MiB, so hashing spans several chunks
DIGEST = hashlib.sha256(CONTENT).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> LocalArtifactStore:
    return LocalArtifactStore(tmp_path / "store")


@pytest.fixture
def src(tmp_path: Path) -> Path:
    path = tmp_path / "image.squashfs.img"
    path.write_bytes(CONTENT)
    return path


def tmp_entries(store: LocalArtifactStore) -> list[str]:
    return os.listdir(store.root / "tmp")


def test_put_file_stores_under_digest(store: LocalArtifactStore, src: Path) -> None:
    got = store.put_file(src)
    assert got.sha256 == DIGEST
    assert got.size == len(CONTENT)
    assert got.path == store.root / "sha256" / DIGEST
    assert got.path.read_bytes() == CONTENT
    assert got.uri == got.path.as_uri()
    assert got.uri.startswith("file:///")
    assert src.read_bytes() == CONTENT  # a copy leaves the source alone
    assert got.path.stat().st_mode & 0o777 == 0o444
    assert store.path_for(DIGEST) == got.path
    assert store.exists(DIGEST)
    assert store.verify(DIGEST)
    assert tmp_entries(store) == []


def test_stored_artifact_is_frozen(store: LocalArtifactStore, src: Path) -> None:
    got = store.put_file(src)
    with pytest.raises(ValueError, match="frozen"):
        got.size = 1  # type: ignore[misc]


def test_relative_root_gives_absolute_uri(
    tmp_path: Path, src: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    got = LocalArtifactStore(Path("rel")).put_file(src)
    assert got.path.is_absolute()
    assert got.uri == (tmp_path / "rel" / "sha256" / DIGEST).as_uri()


def test_put_twice_reuses_the_object(store: LocalArtifactStore, src: Path) -> None:
    first = store.put_file(src)
    inode = first.path.stat().st_ino
    second = store.put_file(src)
    assert second == first
    assert first.path.stat().st_ino == inode  # not rewritten
    assert store.put_bytes(CONTENT) == first
    assert os.listdir(store.root / "sha256") == [DIGEST]
    assert tmp_entries(store) == []


def test_move_consumes_the_source_and_still_hashes(store: LocalArtifactStore, src: Path) -> None:
    got = store.put_file(src, move=True)
    assert not src.exists()
    assert got.sha256 == DIGEST
    assert store.verify(DIGEST)
    assert tmp_entries(store) == []


def test_move_of_known_content_drops_the_source(store: LocalArtifactStore, src: Path) -> None:
    store.put_bytes(CONTENT)
    got = store.put_file(src, move=True)
    assert not src.exists()
    assert got.path.read_bytes() == CONTENT


def test_put_bytes(store: LocalArtifactStore) -> None:
    got = store.put_bytes(b"")
    assert got.sha256 == hashlib.sha256(b"").hexdigest()
    assert got.size == 0
    assert got.path.read_bytes() == b""


def test_object_of_wrong_size_is_replaced(store: LocalArtifactStore, src: Path) -> None:
    target = store.path_for(DIGEST)
    target.parent.mkdir(parents=True)
    target.write_bytes(CONTENT[:10])  # a torn copy from outside the store
    got = store.put_file(src)
    assert got.path.read_bytes() == CONTENT
    assert store.verify(DIGEST)


def test_verify_detects_tampering(store: LocalArtifactStore, src: Path) -> None:
    got = store.put_file(src)
    got.path.chmod(0o644)
    data = bytearray(CONTENT)
    data[len(data) // 2] ^= 0xFF  # same size, one flipped byte
    got.path.write_bytes(bytes(data))
    assert store.exists(DIGEST)
    assert not store.verify(DIGEST)


def test_missing_object(store: LocalArtifactStore) -> None:
    assert not store.exists(DIGEST)
    assert not store.verify(DIGEST)


def test_digest_is_case_insensitive(store: LocalArtifactStore, src: Path) -> None:
    store.put_file(src)
    assert store.path_for(DIGEST.upper()) == store.path_for(DIGEST)
    assert store.verify(DIGEST.upper())


@pytest.mark.parametrize(
    "digest",
    ["", "abc", DIGEST[:-1], DIGEST + "0", "g" * 64, "../" + DIGEST[3:], f"sha256:{DIGEST}"],
)
def test_bad_digest_refused(store: LocalArtifactStore, digest: str) -> None:
    with pytest.raises(ArtifactError, match="not a sha256 digest"):
        store.path_for(digest)


def test_put_missing_file(store: LocalArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"nope\.img: it does not exist"):
        store.put_file(tmp_path / "nope.img")


def test_put_directory(store: LocalArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="not a regular file"):
        store.put_file(tmp_path)


def test_records_round_trip(store: LocalArtifactStore) -> None:
    assert store.read_record("builds", "b1") is None
    assert store.list_records("builds") == []
    path = store.write_record("builds", "b1", b"first")
    assert path == store.root / "builds" / "b1"
    store.write_record("builds", "a-0.1_x+y", b"other")
    store.write_record("builds", "b1", b"second")  # replaced atomically
    assert store.read_record("builds", "b1") == b"second"
    assert store.list_records("builds") == ["a-0.1_x+y", "b1"]
    assert store.record_uri("builds", "b1") == path.as_uri()
    assert tmp_entries(store) == []


def test_claim_record_is_first_come(store: LocalArtifactStore) -> None:
    assert store.claim_record("versions", "20261123.1", b"build-a")
    assert not store.claim_record("versions", "20261123.1", b"build-b")
    assert store.read_record("versions", "20261123.1") == b"build-a"
    assert store.claim_record("versions", "20261123.2", b"build-b")
    assert store.list_records("versions") == ["20261123.1", "20261123.2"]
    assert tmp_entries(store) == []


def test_list_records_ignores_strays(store: LocalArtifactStore) -> None:
    store.write_record("builds", "b1", b"x")
    (store.root / "builds" / ".partial").write_bytes(b"")
    (store.root / "builds" / "subdir").mkdir()
    assert store.list_records("builds") == ["b1"]


@pytest.mark.parametrize(
    ("namespace", "key", "complaint"),
    [
        ("builds", "../escape", "invalid record key"),
        ("builds", "a/b", "invalid record key"),
        ("builds", "..", "invalid record key"),
        ("builds", ".", "invalid record key"),
        ("builds", ".hidden", "invalid record key"),
        ("builds", "", "invalid record key"),
        ("builds", "/etc/passwd", "invalid record key"),
        ("builds", "a\nb", "invalid record key"),
        ("builds", "k" * 201, "invalid record key"),
        ("..", "key", "invalid record namespace"),
        ("a/../..", "key", "invalid record namespace"),
        ("", "key", "invalid record namespace"),
        ("sha256", DIGEST, "reserved"),
        ("tmp", "key", "reserved"),
    ],
)
def test_unsafe_record_names_refused(
    store: LocalArtifactStore, namespace: str, key: str, complaint: str
) -> None:
    with pytest.raises(ArtifactError, match=complaint):
        store.write_record(namespace, key, b"x")
    with pytest.raises(ArtifactError, match=complaint):
        store.read_record(namespace, key)
    with pytest.raises(ArtifactError, match=complaint):
        store.record_uri(namespace, key)
    with pytest.raises(ArtifactError, match=complaint):
        store.claim_record(namespace, key, b"x")
    assert not (store.root.parent / "escape").exists()


def test_reading_needs_no_write_access(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "never-created")
    assert not store.exists(DIGEST)
    assert store.read_record("builds", "b1") is None
    assert not (tmp_path / "never-created").exists()


def test_stored_artifact_rejects_unknown_fields() -> None:
    with pytest.raises(ValueError, match="extra"):
        StoredArtifact(uri="file:///x", sha256=DIGEST, size=1, path=Path("/x"), extra=1)  # type: ignore[call-arg]


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
    with pytest.raises(ArtifactError, match=r"root image \(.*\) is truncated: .*100 bytes missing"):
        verify_digest(image, IMAGE_SHA, len(IMAGE), "root image")


def test_verify_digest_extended(image: Path) -> None:
    image.write_bytes(IMAGE + b"xyz")
    with pytest.raises(ArtifactError, match="is 3 bytes longer than expected"):
        verify_digest(image, IMAGE_SHA, len(IMAGE), "root image")


def test_verify_digest_bit_flipped(image: Path) -> None:
    flipped = bytearray(IMAGE)
    flipped[len(IMAGE) // 2] ^= 0x10
    image.write_bytes(bytes(flipped))
    with pytest.raises(ArtifactError, match=rf"corrupt or was replaced: .*expected {IMAGE_SHA}"):
        verify_digest(image, IMAGE_SHA, len(IMAGE), "root image")


def test_verify_digest_missing_and_malformed(tmp_path: Path, image: Path) -> None:
    with pytest.raises(ArtifactError, match="root image is missing"):
        verify_digest(tmp_path / "absent.img", IMAGE_SHA, len(IMAGE), "root image")
    with pytest.raises(ArtifactError, match="malformed"):
        verify_digest(image, "abc", len(IMAGE), "root image")
