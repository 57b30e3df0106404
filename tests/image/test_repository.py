"""The publisher's TUF repository on disk: layout, idempotency, retention and garbage,
refused inputs, crashes (an exception at every step, and a real SIGKILL), tampering, re-signing.

Files are real (random "images"); what a host sees is checked with the TUF client over HTTP.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from tuf.api.metadata import Signed, TargetFile
from tufrepo import BASE, Site, client, make_site, make_tested, unaccounted_targets

from imgline.core.trust import layout
from imgline.core.trust.repository import State
from imgline.publisher import http
from imgline.publisher.adapters.repo import Repository
from imgline.publisher.domain import release
from imgline.publisher.domain.installks import validate
from imgline.publisher.errors import IntegrityError, PublisherError, ReleaseError, RetiredError

pytestmark = pytest.mark.image

SIZE = 256 << 10
STEPS = ("image_linked", "targets_placed", "committed")
TESTS_DIR = Path(__file__).resolve().parents[1]


class Crash(Exception):
    pass


def crash_at(step: str) -> Callable[[str], None]:
    def crash(at: str) -> None:
        if at == step:
            raise Crash(at)

    return crash


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return make_site(tmp_path)


def tree(root: Path, *tops: str) -> dict[str, str]:
    """Every file under ``tops`` (dot-files too) and the sha256 of its bytes."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for top in tops or ("metadata", "targets")
        for p in (root / top).rglob("*")
        if p.is_file()
    }


def versions(root: Path, role: str) -> list[int]:
    return sorted(int(p.name.split(".")[0]) for p in (root / "metadata").glob(f"*.{role}.json"))


def listed(pub: Repository, stream: str = "stable") -> list[str]:
    return [r.version for r in pub.releases(pub.load(), stream).releases]


def role_files(site: Site, stream: str, paths: list[str] | None = None) -> set[Path]:
    """Where the files the stream's role lists (or ``paths`` of them) are on disk."""
    md = site.tuf().load().role(layout.stream_role(stream))
    assert md is not None
    targets = md.signed.targets
    return {on_disk(site, targets[path]) for path in (targets if paths is None else paths)}


def release_paths(m: layout.Manifest) -> list[str]:
    return [m.image, layout.manifest_target(m.stream, m.name, m.version), m.install_ks]


def on_disk(site: Site, info: TargetFile) -> Path:
    return site.root / "targets" / layout.hashed_path(info.path, info.hashes["sha256"])


def pinned(site: Site) -> bytes:
    return (site.root / "metadata/1.root.json").read_bytes()


def host_sees(site: Site, state: Path, root: bytes | None) -> list[str]:
    """The stable releases a host sees over HTTP (``root``: pinned on first use)."""
    with http.running(site.root) as server:
        host = client(server.url, state, root)
        return [r.version for r in host.releases("stable").releases]


def test_first_publish_lays_out_a_signed_release(site: Site, tmp_path: Path) -> None:
    tested, image = make_tested(tmp_path, "20261123.1")
    pub = site.publisher()
    done = pub.publish(tested, image)
    state = site.tuf().load()
    assert done.new and done.role == "stream-stable"
    assert (done.role_version, done.snapshot_version, done.timestamp_version) == (
        state.targets["stream-stable"].signed.version,
        state.snapshot.signed.version,
        state.timestamp.signed.version,
    )
    d = "stable/node/20261123.1"
    role = state.targets["stream-stable"].signed
    image_path = f"{d}/node-20261123.1.squashfs.img"
    assert set(role.targets) == {image_path, f"{d}/manifest.json", f"{d}/install.ks"} | {
        "stable/releases.json"
    }
    # content-addressed files, and nothing else, under targets/
    assert {p for p in (site.root / "targets").rglob("*") if p.is_file()} == role_files(
        site, "stable"
    )
    for path, info in role.targets.items():
        name = on_disk(site, info)
        assert name.name == f"{info.hashes['sha256']}.{path.rpartition('/')[2]}"
        assert hashlib.sha256(name.read_bytes()).hexdigest() == info.hashes["sha256"]
    assert os.path.samefile(on_disk(site, role.targets[image_path]), image)  # a hard link
    metadata = {p.name for p in (site.root / "metadata").iterdir()}
    assert {
        "1.root.json",
        f"{state.targets['targets'].signed.version}.targets.json",
        f"{done.snapshot_version}.snapshot.json",
        f"{done.role_version}.stream-stable.json",
        "timestamp.json",
    } <= metadata
    # the release list and the manifest, as signed
    assert pub.releases(state, "stable").releases == [release.entry(done.manifest)]
    manifest_info = role.targets[f"{d}/manifest.json"]
    assert done.manifest_sha256 == manifest_info.hashes["sha256"]
    manifest = layout.Manifest.model_validate_json(on_disk(site, manifest_info).read_bytes())
    assert manifest == done.manifest
    assert (manifest.name, manifest.version, manifest.stream) == ("node", "20261123.1", "stable")
    assert manifest.build_id == tested.build_id and manifest.tests.passed
    assert manifest.image_sha256 == tested.image.artifact.sha256
    # install.ks: valid kickstart, the content-addressed image URL, the root pinned
    ks = on_disk(site, role.targets[f"{d}/install.ks"]).read_text()
    validate(ks)
    image_url = f"{BASE}/targets/{layout.hashed_path(image_path, manifest.image_sha256)}"
    assert f"liveimg --url={image_url} --checksum={manifest.image_sha256}" in ks
    root_b64 = re.search(r"<<'ROOT'\n(.*?)\nROOT\n", ks, re.S)
    assert root_b64 is not None
    assert base64.b64decode(root_b64.group(1)) == pinned(site)
    # which build the image is from, in the target's "custom" field (TUF's place for it)
    assert role.targets[image_path].custom["imgline"]["build_id"] == tested.build_id


def test_the_same_build_twice_is_one_release(site: Site, tmp_path: Path) -> None:
    tested, image = make_tested(tmp_path, "1", size=SIZE)
    first = site.publisher().publish(tested, image)
    before = tree(site.root)
    again = site.publisher().publish(tested, image)
    assert not again.new
    assert (again.manifest, again.manifest_sha256) == (first.manifest, first.manifest_sha256)
    assert (again.role_version, again.snapshot_version, again.timestamp_version) == (
        first.role_version,
        first.snapshot_version,
        first.timestamp_version,
    )
    assert tree(site.root) == before  # no new metadata version, no new file
    assert listed(site.publisher()) == ["1"]


@pytest.mark.parametrize(("keep", "left"), [(3, ["2", "1"]), (1, ["2"])], ids=["listed", "dropped"])
def test_a_version_is_never_reused(site: Site, tmp_path: Path, keep: int, left: list[str]) -> None:
    pub = site.publisher(keep=keep)
    for version in ("1", "2"):
        pub.publish(*make_tested(tmp_path, version, size=SIZE))
    assert listed(pub) == left
    before = tree(site.root, "metadata")
    with pytest.raises(PublisherError, match="never reused"):
        pub.publish(*make_tested(tmp_path, "1", build=2, size=SIZE))
    assert tree(site.root, "metadata") == before
    assert listed(pub) == left


def test_a_redelivery_of_a_dropped_release_is_retired(site: Site, tmp_path: Path) -> None:
    pub = site.publisher(keep=1)
    first = make_tested(tmp_path, "1", size=SIZE)
    pub.publish(*first)
    pub.publish(*make_tested(tmp_path, "2", size=SIZE))
    with pytest.raises(RetiredError, match="retention dropped it"):
        pub.publish(*first)
    assert listed(pub) == ["2"]


@pytest.mark.parametrize("trigger", ["refresh", "publish"])
def test_retention_drops_from_the_list_then_deletes_when_expired(
    site: Site, tmp_path: Path, trigger: str
) -> None:
    pub = site.publisher(keep=2, keep_per_stream={"lts": 3})
    kept = {"stable": ["4", "3"], "lts": ["4.lts", "3.lts", "2.lts"]}
    files: dict[str, set[Path]] = {}
    for n in range(1, 5):
        for stream, version in (("stable", f"{n}"), ("lts", f"{n}.lts")):
            done = pub.publish(*make_tested(tmp_path, version, stream=stream, size=SIZE))
            files[version] = role_files(site, stream, release_paths(done.manifest))
    dropped = set().union(*(files[v] for v in ("1", "2", "1.lts")))
    for stream, versions_ in kept.items():
        assert listed(pub, stream) == versions_
        index = role_files(site, stream, [f"{stream}/releases.json"])
        assert role_files(site, stream) - index == set().union(*(files[v] for v in versions_))
    # a host that read an earlier list may still be downloading: the files stay a while
    assert all(f.exists() for f in dropped)
    assert len(versions(site.root, "stream-stable")) == 4
    site.clock.advance(timedelta(days=8))
    if trigger == "refresh":
        assert pub.refresh()
    else:
        pub.publish(*make_tested(tmp_path, "1", name="appliance", stream="edge", size=SIZE))
    assert not any(f.exists() for f in dropped)
    state = site.tuf().load()
    for stream, versions_ in kept.items():  # what the role lists, all of it and nothing else
        assert listed(pub, stream) == versions_
        left = {p for p in (site.root / "targets" / stream).rglob("*") if p.is_file()}
        assert left == role_files(site, stream)
        role = f"stream-{stream}"
        assert versions(site.root, role) == [state.targets[role].signed.version]
    snapshot = state.snapshot.signed.version
    assert versions(site.root, "snapshot") == [snapshot - 1, snapshot]  # the last one waits


@pytest.mark.parametrize(
    ("case", "error", "match"),
    [
        ("failed", ReleaseError, "did not pass its tests"),
        ("rewritten", IntegrityError, "not the one tested: .*corrupt or was replaced"),
        ("truncated", IntegrityError, "not the one tested: .*truncated"),
    ],
)
def test_a_refused_image_leaves_the_repository_as_it_was(
    site: Site, tmp_path: Path, case: str, error: type[Exception], match: str
) -> None:
    pub = site.publisher()
    pub.publish(*make_tested(tmp_path, "1", size=SIZE))
    tested, image = make_tested(tmp_path, "2", passed=case != "failed", size=SIZE)
    if case == "rewritten":
        image.write_bytes(os.urandom(SIZE))
    elif case == "truncated":
        image.write_bytes(image.read_bytes()[:-1])
    before = tree(site.root)
    with pytest.raises(PublisherError, match=match) as info:
        pub.publish(tested, image)
    assert type(info.value) is error
    assert tree(site.root) == before
    assert listed(pub) == ["1"]


@pytest.mark.parametrize("step", STEPS)
def test_a_crash_at_any_step_is_finished_by_the_redelivery(
    site: Site, tmp_path: Path, step: str
) -> None:
    site.publisher().publish(*make_tested(tmp_path, "1", size=SIZE))
    tested, image = make_tested(tmp_path, "2", size=SIZE)
    with pytest.raises(Crash):
        site.publisher(crash=crash_at(step)).publish(tested, image)
    site.tuf().load()  # whatever happened, the repository verifies
    host = tmp_path / "host"
    seen = ["2", "1"] if step == "committed" else ["1"]
    assert host_sees(site, host, pinned(site)) == seen
    # what a writer killed mid-rename leaves: removed by the next publish
    (site.root / "targets/stable/.tmp-x.releases.json").write_bytes(b"partial")
    (site.root / "metadata/.tmp-9.snapshot.json-1-1").write_bytes(b"{")
    done = site.publisher().publish(tested, image)
    assert done.manifest.version == "2"
    assert listed(site.publisher()) == ["2", "1"]  # published exactly once
    assert host_sees(site, host, None) == ["2", "1"]
    assert not list(site.root.rglob(".tmp-*"))
    assert not site.publisher().publish(tested, image).new


@pytest.mark.parametrize("step", STEPS)
def test_what_a_crashed_publish_wrote_is_listed_or_removed_by_the_redelivery(
    site: Site, tmp_path: Path, step: str
) -> None:
    """The crashed attempt's manifest and release list differ from the redelivery's (they say
    when they were made): left alone, they would stay on disk forever, listed by nothing."""
    site.publisher().publish(*make_tested(tmp_path, "1", size=SIZE))
    tested, image = make_tested(tmp_path, "2", size=SIZE)
    with pytest.raises(Crash):
        site.publisher(crash=crash_at(step)).publish(tested, image)
    site.publisher().publish(tested, image)
    assert listed(site.publisher()) == ["2", "1"]
    assert unaccounted_targets(site.tuf()) == set()
    assert not (site.tuf().state_dir / "placing.jsonl").exists()


@pytest.mark.parametrize("step", STEPS[:2])
def test_a_crashed_publish_never_gets_listed_files_deleted(
    site: Site, tmp_path: Path, step: str
) -> None:
    """Nothing is redelivered after the crash; the garbage collection that runs a week later
    must not delete files the (unchanged) metadata still lists."""
    pub = site.publisher()
    pub.publish(*make_tested(tmp_path, "1", size=SIZE))
    with pytest.raises(Crash):
        site.publisher(crash=crash_at(step)).publish(*make_tested(tmp_path, "2", size=SIZE))
    site.clock.advance(timedelta(days=8))
    pub.refresh()
    missing = [f for f in role_files(site, "stable") if not f.exists()]
    assert missing == []
    assert listed(pub) == ["1"]


def test_sigkill_between_the_targets_and_the_commit(site: Site, tmp_path: Path) -> None:
    """A real crash: the publishing process is killed after the release's files are written
    and the role edited, before anything is signed."""
    site.publisher().publish(*make_tested(tmp_path, "1", size=SIZE))
    before = tree(site.root, "metadata")
    tested, image = make_tested(tmp_path, "2", size=SIZE)
    (tmp_path / "tested.json").write_text(tested.model_dump_json())
    script = textwrap.dedent("""
        import os, signal, sys
        from pathlib import Path
        sys.path.insert(0, sys.argv[1])
        from imgline.core.trust.keys import KeyDir
        from imgline.publisher.adapters.repo import Repository
        from imgline.schemas.payloads import ImageTested
        from tufrepo import BASE

        def crash(step):
            if step == "targets_placed":
                os.kill(os.getpid(), signal.SIGKILL)

        root, keys, tested, image = (Path(a) for a in sys.argv[2:])
        repo = Repository(root, KeyDir(keys), BASE, crash=crash)
        repo.publish(ImageTested.model_validate_json(tested.read_text()), image)
        sys.exit("not killed")
    """)
    args = [TESTS_DIR, site.root, site.keys.directory, tmp_path / "tested.json", image]
    proc = subprocess.run([sys.executable, "-c", script, *map(str, args)], check=False)
    assert proc.returncode == -signal.SIGKILL
    site.tuf().load()
    assert tree(site.root, "metadata") == before  # nothing was signed
    assert listed(site.publisher()) == ["1"]
    assert site.publisher().publish(tested, image).new
    assert listed(site.publisher()) == ["2", "1"]
    assert host_sees(site, tmp_path / "host", pinned(site)) == ["2", "1"]


def _edit_timestamp(site: Site) -> None:
    path = site.root / "metadata/timestamp.json"
    doc = json.loads(path.read_bytes())
    doc["signed"]["expires"] = "2099-01-01T00:00:00Z"  # the signature no longer fits
    path.write_text(json.dumps(doc))


def _edit_role(site: Site) -> None:
    path = site.root / f"metadata/{versions(site.root, 'stream-stable')[-1]}.stream-stable.json"
    path.write_bytes(path.read_bytes().replace(b'"version":', b'"version": ', 1))


def _edit_releases(site: Site) -> None:
    (path,) = role_files(site, "stable", ["stable/releases.json"])
    path.write_bytes(path.read_bytes().replace(b'"1"', b'"9"'))


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (_edit_timestamp, "does not verify"),
        (_edit_role, "does not verify"),
        (_edit_releases, "does not match its signed hash"),
    ],
    ids=["timestamp", "stream-role", "releases.json"],
)
def test_a_tampered_repository_is_not_signed_over(
    site: Site, tmp_path: Path, edit: Callable[[Site], None], match: str
) -> None:
    site.publisher().publish(*make_tested(tmp_path, "1", size=SIZE))
    edit(site)
    before = tree(site.root)
    with pytest.raises(PublisherError, match=match):
        site.publisher().publish(*make_tested(tmp_path, "2", size=SIZE))
    assert tree(site.root) == before


@pytest.mark.parametrize(
    ("after", "resigned"),
    [
        (timedelta(hours=1), []),
        (timedelta(hours=13), ["snapshot", "timestamp"]),
        (timedelta(days=46), ["stream-stable", "targets", "snapshot", "timestamp"]),
    ],
    ids=["1h", "13h", "46d"],
)
def test_refresh_re_signs_what_is_due(
    site: Site, tmp_path: Path, after: timedelta, resigned: list[str]
) -> None:
    def signed(state: State) -> dict[str, Signed]:
        top = {"timestamp": state.timestamp.signed, "snapshot": state.snapshot.signed}
        return top | {role: md.signed for role, md in state.targets.items()}

    pub = site.publisher()
    pub.publish(*make_tested(tmp_path, "1", size=SIZE))
    old = signed(site.tuf().load())
    site.clock.advance(after)
    assert pub.refresh() == resigned
    new = signed(site.tuf().load())
    assert set(new) == {"timestamp", "snapshot", "targets", "stream-stable"}
    for role, later in new.items():
        assert later.version == old[role].version + (role in resigned), role
        assert later.expires > site.clock.t, role
    assert listed(pub) == ["1"]
    assert host_sees(site, tmp_path / "host", pinned(site)) == ["1"]
