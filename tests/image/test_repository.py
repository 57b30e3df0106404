"""The repository on disk: layout, signatures, idempotency, retention, crashes, tampering.

Files are real (a random "image" of a few MiB); a crash is injected between every two steps
of a publish, once as an exception and once as a SIGKILL of the publishing process.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from imgline.core import repository as repo
from imgline.core.signing import SigningError, SigningKey, generate_key, verify_digest
from imgline.publisher.adapters.repo import Repository
from imgline.publisher.domain.installks import validate
from imgline.publisher.errors import PublisherError
from imgline.schemas import payloads as p

pytestmark = pytest.mark.image

STEPS = ("image_copied", "release_staged", "release_in_place", "index_staged", "index_committed")
BASE = "http://repo.test:8090"


class Crash(Exception):
    pass


class Clock:
    def __init__(self) -> None:
        self.t = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.t += timedelta(minutes=1)
        return self.t


def make_tested(
    tmp: Path,
    version: str,
    *,
    stream: str = "stable",
    build: int | None = None,
    passed: bool = True,
) -> tuple[p.ImageTested, Path]:
    image = tmp / f"node-{version}.img"
    image.write_bytes(os.urandom(3 << 20))
    data = image.read_bytes()
    ref = p.ImageRef(
        build_id=hashlib.sha256(f"{version}/{stream}/{build}".encode()).hexdigest(),
        name="node",
        version=version,
        stream=stream,
        artifact=p.Artifact(
            uri=image.as_uri(), sha256=hashlib.sha256(data).hexdigest(), size=len(data)
        ),
        source_commit="c0ffee" * 6 + "abcd",
    )
    results = [
        p.TestResult(
            name="boot.live", status="passed" if passed else "failed", duration_seconds=1.0
        )
    ]
    tested = p.ImageTested(
        build_id=ref.build_id,
        image=ref,
        passed=passed,
        results=results,
        report_url="file:///reports/x.xml",
    )
    return tested, image


@pytest.fixture
def key(tmp_path: Path) -> SigningKey:
    return generate_key(tmp_path / "keys" / "signing.key")


def repository(root: Path, key: SigningKey, **kw: object) -> Repository:
    return Repository(root, key, BASE, clock=Clock(), **kw)  # type: ignore[arg-type]


def index_of(root: Path, key: SigningKey, stream: str = "stable") -> repo.StreamIndex:
    data = (root / repo.index_path(stream)).read_bytes()
    sig = (root / repo.sig_of(repo.index_path(stream))).read_bytes()
    return repo.verify_index(data, sig, {key.key_id: key.public_key}, stream)


def visible_files(root: Path) -> set[str]:
    """What a reader (HTTP, no dot-paths, following the stream symlinks) can reach."""
    found = set()
    for top, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = Path(top).relative_to(root)
        found |= {(rel / f).as_posix() for f in files if not f.startswith(".")}
    return found


def test_first_publish_lays_out_a_signed_release(tmp_path: Path, key: SigningKey) -> None:
    root = tmp_path / "repo"
    tested, image = make_tested(tmp_path, "20261123.1")
    done = repository(root, key).publish(tested, image)
    assert done.new and done.generation == 1
    d = "images/node/20261123.1"
    assert visible_files(root) == {
        f"{d}/node-20261123.1.squashfs.img",
        f"{d}/manifest.json",
        f"{d}/manifest.json.sig",
        f"{d}/install.ks",
        "streams/stable/index.json",
        "streams/stable/index.json.sig",
    }
    assert done.manifest_url == f"{BASE}/{d}/manifest.json"
    assert done.image_url == f"{BASE}/{d}/node-20261123.1.squashfs.img"
    trusted = {key.key_id: key.public_key}
    data = (root / d / "manifest.json").read_bytes()
    manifest = repo.verify_manifest(data, (root / d / "manifest.json.sig").read_bytes(), trusted)
    assert (manifest.name, manifest.version, manifest.stream) == ("node", "20261123.1", "stable")
    assert manifest.source_commit == tested.image.source_commit
    assert manifest.tests.passed and manifest.tests.checks == 1
    assert manifest.image.sha256 == tested.image.artifact.sha256
    assert hashlib.sha256(data).hexdigest() == done.entry.manifest_sha256
    verify_digest(root / manifest.image.path, manifest.image.sha256, manifest.image.size, "image")
    index = index_of(root, key)
    assert index.latest("node") == done.entry
    ks = (root / d / "install.ks").read_text()
    validate(ks)
    assert f"--url={done.image_url} --checksum={manifest.image.sha256}" in ks


def test_same_build_twice_is_one_release(tmp_path: Path, key: SigningKey) -> None:
    root = tmp_path / "repo"
    tested, image = make_tested(tmp_path, "1")
    first = repository(root, key).publish(tested, image)
    again = repository(root, key).publish(tested, image)
    assert not again.new
    assert again.entry == first.entry and again.generation == 1
    assert len(index_of(root, key).releases) == 1


def test_a_version_is_never_republished_from_another_build(tmp_path: Path, key: SigningKey) -> None:
    root = tmp_path / "repo"
    repository(root, key).publish(*make_tested(tmp_path, "1"))
    other, image = make_tested(tmp_path, "1", build=2)
    with pytest.raises(PublisherError, match="already published from build"):
        repository(root, key).publish(other, image)


def test_failed_image_is_refused(tmp_path: Path, key: SigningKey) -> None:
    root = tmp_path / "repo"
    with pytest.raises(PublisherError, match="did not pass"):
        repository(root, key).publish(*make_tested(tmp_path, "1", passed=False))
    assert visible_files(root) == set()


def test_image_changed_since_it_was_tested_is_refused(tmp_path: Path, key: SigningKey) -> None:
    root = tmp_path / "repo"
    tested, image = make_tested(tmp_path, "1")
    with image.open("r+b") as f:
        f.seek(1000)
        f.write(b"X")
    with pytest.raises(SigningError, match="sha256"):
        repository(root, key).publish(tested, image)
    assert visible_files(root) == set()


def test_retention_keeps_n_and_deletes_only_unlisted(tmp_path: Path, key: SigningKey) -> None:
    root = tmp_path / "repo"
    r = repository(root, key, keep=2, keep_per_stream={"lts": 3})
    for n in range(1, 5):
        r.publish(*make_tested(tmp_path, f"{n}"))
        r.publish(*make_tested(tmp_path, f"{n}.lts", stream="lts"))
    stable = index_of(root, key)
    assert [e.version for e in stable.releases] == ["4", "3"]
    assert stable.generation == 4
    assert [e.version for e in index_of(root, key, "lts").releases] == ["4.lts", "3.lts", "2.lts"]
    versions = sorted(d.name for d in (root / "images" / "node").iterdir())
    assert versions == ["2.lts", "3", "3.lts", "4", "4.lts"]
    streams = sorted(x.name for x in (root / "streams").iterdir())
    # the current index generation and the one before, per stream (readers mid-download)
    assert [s for s in streams if ".gen-" in s] == [
        ".lts.gen-00000003",
        ".lts.gen-00000004",
        ".stable.gen-00000003",
        ".stable.gen-00000004",
    ]


@pytest.mark.parametrize("step", STEPS)
def test_a_crash_at_any_step_leaves_the_previous_state(
    tmp_path: Path, key: SigningKey, step: str
) -> None:
    root = tmp_path / "repo"
    repository(root, key).publish(*make_tested(tmp_path, "1"))
    before = visible_files(root)
    old_index = (root / repo.index_path("stable")).read_bytes()

    def crash(at: str) -> None:
        if at == step:
            raise Crash(at)

    tested, image = make_tested(tmp_path, "2")
    with pytest.raises(Crash):
        repository(root, key, crash=crash).publish(tested, image)
    index = index_of(root, key)  # whatever happened, the index verifies
    if step == "index_committed":
        assert [e.version for e in index.releases] == ["2", "1"]
    else:
        assert (root / repo.index_path("stable")).read_bytes() == old_index
        if step in ("release_in_place", "index_staged"):  # complete, unlisted: unused
            assert visible_files(root) - before == {
                f"images/node/2/{n}"
                for n in ("node-2.squashfs.img", "manifest.json", "manifest.json.sig", "install.ks")
            }
        else:
            assert visible_files(root) == before
    # the next publish finishes the job and leaves nothing behind
    done = repository(root, key).publish(tested, image)
    assert [e.version for e in index_of(root, key).releases] == ["2", "1"]
    assert done.entry.version == "2"
    leftovers = [x for x in root.rglob(".tmp-*")]
    assert leftovers == []


def test_sigkill_between_index_and_switch(tmp_path: Path, key: SigningKey) -> None:
    """A real crash: the publishing process is killed after the new index generation is
    written but before the stream is switched to it."""
    root = tmp_path / "repo"
    repository(root, key).publish(*make_tested(tmp_path, "1"))
    old_index = (root / repo.index_path("stable")).read_bytes()
    tested, image = make_tested(tmp_path, "2")
    (tmp_path / "tested.json").write_text(tested.model_dump_json())
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from imgline.core.signing import load_signing_key
        from imgline.publisher.adapters.repo import Repository
        from imgline.schemas.payloads import ImageTested

        def crash(step):
            if step == "index_staged":
                os.kill(os.getpid(), signal.SIGKILL)

        tested_json = Path({str(tmp_path / "tested.json")!r}).read_text()
        tested = ImageTested.model_validate_json(tested_json)
        key = load_signing_key(Path({str(tmp_path / "keys" / "signing.key")!r}))
        Repository(Path({str(root)!r}), key, {BASE!r}, crash=crash).publish(
            tested, Path({str(image)!r}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], check=False)
    assert proc.returncode == -9
    assert (root / repo.index_path("stable")).read_bytes() == old_index
    assert [e.version for e in index_of(root, key).releases] == ["1"]
    repository(root, key).publish(tested, image)
    assert [e.version for e in index_of(root, key).releases] == ["2", "1"]


def test_tampering_is_detected(tmp_path: Path, key: SigningKey) -> None:
    root = tmp_path / "repo"
    done = repository(root, key).publish(*make_tested(tmp_path, "1"))
    trusted = {key.key_id: key.public_key}
    d = root / "images" / "node" / "1"
    manifest = (d / "manifest.json").read_bytes()
    forged = manifest.replace(b'"version": "1"', b'"version": "9"')
    assert forged != manifest
    with pytest.raises(SigningError, match="does not match"):
        repo.verify_manifest(forged, (d / "manifest.json.sig").read_bytes(), trusted)
    # an index signed by someone else
    stranger = generate_key(tmp_path / "other.key")
    index = (root / repo.index_path("stable")).read_bytes()
    with pytest.raises(SigningError, match="not among the trusted"):
        repo.verify_index(index, stranger.sign(index), trusted, "stable")
    # an index for another stream, correctly signed, swapped in
    with pytest.raises(repo.RepositoryError, match="signed for 'stable'"):
        repo.verify_index(index, key.sign(index), trusted, "testing")
    with pytest.raises(repo.RepositoryError, match="older than"):
        repo.verify_index(index, key.sign(index), trusted, "stable", min_generation=2)
    # the image
    img = root / done.manifest.image.path
    os.chmod(img, 0o644)
    with img.open("r+b") as f:
        f.seek(12345)
        f.write(b"\0")
    with pytest.raises(SigningError, match="sha256"):
        verify_digest(img, done.manifest.image.sha256, done.manifest.image.size, "image")
    # and the publisher refuses to build on a tampered index
    (root / repo.index_path("stable")).write_bytes(
        index.replace(b'"generation": 1', b'"generation": 7')
    )
    with pytest.raises(PublisherError, match="does not verify"):
        repository(root, key).publish(*make_tested(tmp_path, "2"))
