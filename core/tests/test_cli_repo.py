"""``imgline repo``: the key ceremonies leave a repository that verifies (here and with
python-tuf's own checks), and every refusal exits 2 with a message that says what to do."""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, Root, Targets

from imgline.core import cli
from imgline.core.trust import layout
from imgline.core.trust.keys import KeyDir
from imgline.core.trust.repository import TufRepository

pytestmark = pytest.mark.unit


@dataclass(frozen=True)
class Paths:
    repo: Path
    keys: Path
    root_keys: Path

    @property
    def metadata(self) -> Path:
        return self.repo / "metadata"

    def run(self, *argv: str, root_keys: bool = False) -> int:
        extra = ["--root-keys", str(self.root_keys)] if root_keys else []
        return cli.main([*argv, "--keys", str(self.keys), *extra])

    def init(self, *extra: str) -> int:
        return self.run("repo", "init", str(self.repo), *extra, root_keys=True)

    def repository(self) -> TufRepository:
        return TufRepository(self.repo, KeyDir(self.keys))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def key_files(directory: Path, suffix: str = ".key") -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.endswith(suffix))


def root_md(paths: Paths, version: int) -> Metadata[Root]:
    md: Metadata[Any] = Metadata.from_file(str(paths.metadata / f"{version}.root.json"))
    assert isinstance(md.signed, Root)
    return md


def make_stream(paths: Paths, stream: str = "stable") -> None:
    repo = paths.repository()
    with repo.locked():
        state = repo.load()
        changed: dict[str, Targets] = {}
        repo.ensure_stream(state, stream, changed)
        repo.commit(state, changed)


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    return Paths(tmp_path / "repo", tmp_path / "keys", tmp_path / "offline")


@pytest.fixture
def repo(paths: Paths, capsys: pytest.CaptureFixture[str]) -> Paths:
    assert paths.init() == 0
    capsys.readouterr()
    return paths


def refused(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    assert captured.out == ""
    last = captured.err.splitlines()[-1]  # after any log lines
    assert last.startswith("imgline: ")
    return last


# --- init ------------------------------------------------------------------------------------


def test_init_creates_metadata_and_private_keys(
    paths: Paths, capsys: pytest.CaptureFixture[str]
) -> None:
    assert paths.init() == 0
    out = capsys.readouterr().out
    for name in ("1.root.json", "1.targets.json", "1.snapshot.json", "timestamp.json"):
        assert (paths.metadata / name).is_file(), name
    assert not (paths.metadata / "2.root.json").exists()
    (root_key,) = key_files(paths.root_keys / "root")
    assert not (paths.keys / "root").exists()  # the root key is only with the offline ones
    for role in ("targets", "snapshot", "timestamp"):
        (key,) = key_files(paths.keys / role)
        assert mode(key) == 0o600
        assert mode(key.parent) == 0o700
    assert mode(root_key) == 0o600
    assert mode(paths.keys) == 0o700 and mode(paths.root_keys) == 0o700
    # says where the root keys are, to move them offline, and what hosts pin
    assert str(paths.root_keys / "root") in out and "OFFLINE" in out
    assert f"hosts pin: {paths.metadata / '1.root.json'}" in out
    keyid = root_key.name.removesuffix(".key")
    assert keyid[:16] in out and keyid not in out
    state = paths.repository().load()
    assert state.root.signed.roles["root"].keyids == [keyid]
    assert state.streams() == []


def test_init_with_several_root_keys(paths: Paths, capsys: pytest.CaptureFixture[str]) -> None:
    assert paths.init("--root-threshold", "2", "--root-key-count", "3") == 0
    root = paths.repository().load().root
    assert root.signed.roles["root"].threshold == 2
    assert len(root.signed.roles["root"].keyids) == 3
    assert len(root.signatures) == 3
    assert len(key_files(paths.root_keys / "root")) == 3


def test_init_threshold_above_key_count_exits_2(
    paths: Paths, capsys: pytest.CaptureFixture[str]
) -> None:
    assert paths.init("--root-threshold", "2") == 2
    assert "root threshold of 2 needs at least that many root keys" in refused(capsys)
    assert not paths.metadata.exists()


def test_init_twice_exits_2(repo: Paths, capsys: pytest.CaptureFixture[str]) -> None:
    before = sorted(p.name for p in repo.metadata.iterdir())
    roots = key_files(repo.root_keys / "root")
    assert repo.init() == 2
    err = refused(capsys)
    assert "already holds a repository" in err and str(repo.repo) in err
    assert sorted(p.name for p in repo.metadata.iterdir()) == before
    assert key_files(repo.root_keys / "root") == roots  # no new root key either


def test_init_refuses_one_directory_for_online_and_root_keys(
    paths: Paths, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["repo", "init", str(paths.repo), "--keys", str(paths.keys)]
    assert cli.main([*args, "--root-keys", str(paths.keys)]) == 2
    assert "must be different directories" in refused(capsys)
    assert not paths.repo.exists() and not paths.keys.exists()


def test_init_needs_root_keys(paths: Paths, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["repo", "init", str(paths.repo), "--keys", str(paths.keys)])
    assert info.value.code == 2
    assert "--root-keys" in capsys.readouterr().err


# --- add-key ---------------------------------------------------------------------------------


def test_add_key_to_a_stream_role_needs_no_root_keys(
    repo: Paths, capsys: pytest.CaptureFixture[str]
) -> None:
    make_stream(repo)
    (first,) = key_files(repo.keys / "stream-stable")
    assert repo.run("repo", "add-key", str(repo.repo), "stream-stable", "--threshold", "2") == 0
    out = capsys.readouterr().out
    files = key_files(repo.keys / "stream-stable")
    assert len(files) == 2 and first in files
    (new,) = [f for f in files if f != first]
    new_id = new.name.removesuffix(".key")
    assert f"added key {new_id[:16]}" in out and "threshold 2" in out
    assert mode(new) == 0o600
    state = repo.repository().load()  # verifies every role, the stream role with both keys
    assert state.root.signed.version == 1  # the root does not name stream keys
    assert not (repo.metadata / "2.root.json").exists()
    delegations = state.top.delegations
    assert delegations is not None and delegations.roles is not None
    spec = delegations.roles["stream-stable"]
    assert spec.threshold == 2
    assert sorted(spec.keyids) == sorted([first.name.removesuffix(".key"), new_id])
    assert len(state.targets["stream-stable"].signatures) == 2


def test_add_key_to_timestamp_without_root_keys_exits_2(
    repo: Paths, capsys: pytest.CaptureFixture[str]
) -> None:
    before = key_files(repo.keys / "timestamp")
    assert repo.run("repo", "add-key", str(repo.repo), "timestamp") == 2
    assert "--root-keys" in refused(capsys)
    assert key_files(repo.keys / "timestamp") == before  # no stray key made
    assert not (repo.metadata / "2.root.json").exists()


def test_add_key_to_timestamp_with_root_keys(
    repo: Paths, capsys: pytest.CaptureFixture[str]
) -> None:
    assert repo.run("repo", "add-key", str(repo.repo), "timestamp", root_keys=True) == 0
    out = capsys.readouterr().out
    assert f"wrote root version 2 ({repo.metadata / '2.root.json'})" in out
    state = repo.repository().load()
    assert len(state.root.signed.roles["timestamp"].keyids) == 2
    assert len(state.timestamp.signatures) == 2


def test_add_key_to_an_unknown_role_exits_2(
    repo: Paths, capsys: pytest.CaptureFixture[str]
) -> None:
    assert repo.run("repo", "add-key", str(repo.repo), "stream-nope") == 2
    assert "no role 'stream-nope'" in refused(capsys)
    assert not (repo.keys / "stream-nope").exists()


def test_missing_key_directory_exits_2(repo: Paths, capsys: pytest.CaptureFixture[str]) -> None:
    absent = repo.keys.parent / "typo"
    assert cli.main(["repo", "add-key", str(repo.repo), "stream-x", "--keys", str(absent)]) == 2
    assert f"--keys {absent}: no such directory" in refused(capsys)
    assert not absent.exists()


def test_missing_root_key_directory_exits_2(
    repo: Paths, capsys: pytest.CaptureFixture[str]
) -> None:
    absent = repo.keys.parent / "not-mounted"
    args = ["repo", "add-key", str(repo.repo), "root", "--keys", str(repo.keys)]
    assert cli.main([*args, "--root-keys", str(absent)]) == 2
    assert "mount the offline root keys" in refused(capsys)
    assert not absent.exists()


# --- rotate ----------------------------------------------------------------------------------


def test_rotate_timestamp(repo: Paths, capsys: pytest.CaptureFixture[str]) -> None:
    (old,) = key_files(repo.keys / "timestamp")
    old_id = old.name.removesuffix(".key")
    assert repo.run("repo", "rotate", str(repo.repo), "timestamp", root_keys=True) == 0
    out = capsys.readouterr().out
    (new,) = key_files(repo.keys / "timestamp")
    new_id = new.name.removesuffix(".key")
    assert new_id != old_id
    assert not old.exists()
    assert old.with_name(old.name + ".revoked").exists()
    assert f"added key {new_id[:16]}" in out and f"no longer trust key {old_id[:16]}" in out
    assert "wrote root version 2" in out
    state = repo.repository().load()  # the chain and every role verify
    assert state.root.signed.version == 2
    assert state.root.signed.roles["timestamp"].keyids == [new_id]
    assert list(state.timestamp.signatures) == [new_id]
    # python-tuf itself: root 2 is signed as root 1 requires, and names the new key
    old_root, new_root = root_md(repo, 1), root_md(repo, 2)
    old_root.signed.verify_delegate("root", new_root.signed_bytes, new_root.signatures)
    new_root.signed.verify_delegate("root", new_root.signed_bytes, new_root.signatures)
    assert new_root.signed.roles["timestamp"].keyids == [new_id]
    assert old_id not in new_root.signed.keys


def test_rotate_timestamp_without_root_keys_exits_2(
    repo: Paths, capsys: pytest.CaptureFixture[str]
) -> None:
    before = key_files(repo.keys / "timestamp")
    assert repo.run("repo", "rotate", str(repo.repo), "timestamp") == 2
    assert "pass --root-keys" in refused(capsys)
    assert key_files(repo.keys / "timestamp") == before


def test_rotate_root_is_signed_by_old_and_new_keys(
    repo: Paths, capsys: pytest.CaptureFixture[str]
) -> None:
    (old,) = key_files(repo.root_keys / "root")
    old_id = old.name.removesuffix(".key")
    assert repo.run("repo", "rotate", str(repo.repo), "root", root_keys=True) == 0
    out = capsys.readouterr().out
    (new,) = key_files(repo.root_keys / "root")
    new_id = new.name.removesuffix(".key")
    assert old.with_name(old.name + ".revoked").exists()
    assert not (repo.keys / "root").exists()  # new root keys are made with the offline ones
    assert "OFFLINE" in out and str(repo.root_keys / "root") in out
    assert repo.repository().load().root.signed.version == 2
    old_root, new_root = root_md(repo, 1), root_md(repo, 2)
    assert set(new_root.signatures) == {old_id, new_id}
    assert new_root.signed.roles["root"].keyids == [new_id]
    old_root.signed.verify_delegate("root", new_root.signed_bytes, new_root.signatures)
    new_root.signed.verify_delegate("root", new_root.signed_bytes, new_root.signatures)
    # each signature is needed: without the old key's, a host trusting root 1 refuses it
    only_new = {new_id: new_root.signatures[new_id]}
    with pytest.raises(UnsignedMetadataError):
        old_root.signed.verify_delegate("root", new_root.signed_bytes, only_new)
    only_old = {old_id: new_root.signatures[old_id]}
    with pytest.raises(UnsignedMetadataError):
        new_root.signed.verify_delegate("root", new_root.signed_bytes, only_old)


def test_rotate_a_stream_role(repo: Paths, capsys: pytest.CaptureFixture[str]) -> None:
    make_stream(repo)
    (old,) = key_files(repo.keys / "stream-stable")
    assert repo.run("repo", "rotate", str(repo.repo), "stream-stable") == 0
    capsys.readouterr()
    (new,) = key_files(repo.keys / "stream-stable")
    assert new != old and old.with_name(old.name + ".revoked").exists()
    state = repo.repository().load()
    assert state.root.signed.version == 1
    assert list(state.targets["stream-stable"].signatures) == [new.name.removesuffix(".key")]


# --- revoke ----------------------------------------------------------------------------------


def test_revoke_below_threshold_exits_2(repo: Paths, capsys: pytest.CaptureFixture[str]) -> None:
    (key,) = key_files(repo.keys / "timestamp")
    keyid = key.name.removesuffix(".key")
    assert repo.run("repo", "revoke", str(repo.repo), "timestamp", keyid[:16], root_keys=True) == 2
    assert "would keep 0 key(s) for a threshold of 1" in refused(capsys)
    assert key.exists()
    assert not (repo.metadata / "2.root.json").exists()


def test_revoke_unknown_key_exits_2(repo: Paths, capsys: pytest.CaptureFixture[str]) -> None:
    (key,) = key_files(repo.keys / "timestamp")
    args = ("repo", "revoke", str(repo.repo), "timestamp", "0123456789abcdef")
    assert repo.run(*args, root_keys=True) == 2
    err = refused(capsys)
    assert "'0123456789abcdef' names 0 key(s) of timestamp" in err
    assert key.name[:16] in err  # lists the keys it could have meant


def test_revoke_a_stream_key(repo: Paths, capsys: pytest.CaptureFixture[str]) -> None:
    make_stream(repo)
    assert repo.run("repo", "add-key", str(repo.repo), "stream-stable") == 0
    capsys.readouterr()
    first, second = key_files(repo.keys / "stream-stable")
    gone = first.name.removesuffix(".key")
    assert repo.run("repo", "revoke", str(repo.repo), "stream-stable", gone[:8]) == 0
    out = capsys.readouterr().out
    assert f"no longer trust key {gone[:16]}" in out and ".revoked" in out
    assert key_files(repo.keys / "stream-stable") == [second]
    state = repo.repository().load()
    delegations = state.top.delegations
    assert delegations is not None and delegations.roles is not None
    assert delegations.roles["stream-stable"].keyids == [second.name.removesuffix(".key")]
    assert gone not in state.targets["stream-stable"].signatures


# --- resign-root -----------------------------------------------------------------------------


def test_resign_root(repo: Paths, capsys: pytest.CaptureFixture[str]) -> None:
    assert repo.run("repo", "resign-root", str(repo.repo), root_keys=True) == 0
    out = capsys.readouterr().out
    assert f"wrote root version 2 ({repo.metadata / '2.root.json'})" in out
    old_root, new_root = root_md(repo, 1), root_md(repo, 2)
    old_root.signed.verify_delegate("root", new_root.signed_bytes, new_root.signatures)
    assert new_root.signed.roles == old_root.signed.roles
    assert new_root.signed.expires >= old_root.signed.expires
    assert repo.repository().load().root.signed.version == 2


def test_resign_root_without_the_root_keys_exits_2(
    repo: Paths, capsys: pytest.CaptureFixture[str]
) -> None:
    elsewhere = repo.keys.parent / "wrong"
    elsewhere.mkdir()
    args = ["repo", "resign-root", str(repo.repo), "--keys", str(repo.keys)]
    assert cli.main([*args, "--root-keys", str(elsewhere)]) == 2
    assert "needs 1 signature(s) by the previous root keys" in refused(capsys)
    assert not (repo.metadata / "2.root.json").exists()


# --- refresh ---------------------------------------------------------------------------------


def test_refresh_with_nothing_due(repo: Paths, capsys: pytest.CaptureFixture[str]) -> None:
    before = sorted(p.name for p in repo.metadata.iterdir())
    assert repo.run("repo", "refresh", str(repo.repo)) == 0
    assert capsys.readouterr().out == "nothing due\n"
    assert sorted(p.name for p in repo.metadata.iterdir()) == before


def test_refresh_force_re_signs(repo: Paths, capsys: pytest.CaptureFixture[str]) -> None:
    make_stream(repo)
    before = repo.repository().load()
    assert repo.run("repo", "refresh", str(repo.repo), "--force") == 0
    assert capsys.readouterr().out == "re-signed stream-stable, targets, snapshot, timestamp\n"
    after = repo.repository().load()
    assert after.timestamp.signed.version == before.timestamp.signed.version + 1
    assert after.snapshot.signed.version == before.snapshot.signed.version + 1
    for role in ("targets", "stream-stable"):
        assert after.targets[role].signed.version == before.targets[role].signed.version + 1


def test_refresh_re_signs_the_timestamp_past_half_its_life(
    repo: Paths, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    class Later(TufRepository):
        def __init__(self, root_dir: Path, keys: KeyDir) -> None:
            later = layout.now() + timedelta(hours=13)
            super().__init__(root_dir, keys, clock=lambda: later)

    monkeypatch.setattr(cli, "TufRepository", Later)
    assert repo.run("repo", "refresh", str(repo.repo)) == 0
    assert capsys.readouterr().out == "re-signed snapshot, timestamp\n"
    assert repo.repository().load().timestamp.signed.version == 2


# --- show ------------------------------------------------------------------------------------


def test_show_prints_each_role(repo: Paths, capsys: pytest.CaptureFixture[str]) -> None:
    make_stream(repo)
    assert repo.run("repo", "show", str(repo.repo)) == 0
    out = capsys.readouterr().out
    (ts_key,) = key_files(repo.keys / "timestamp")
    for role in ("root", "targets", "snapshot", "timestamp", "stream-stable"):
        assert re.search(rf"^  {role} +version \d+ +expires \S+Z +threshold 1 +keys ", out, re.M)
    ts_id = ts_key.name.removesuffix(".key")
    assert f"keys {ts_id[:16]}\n" in out and ts_id not in out
    assert "streams: stable" in out
    assert "EXPIRED" not in out


def test_show_json(repo: Paths, capsys: pytest.CaptureFixture[str]) -> None:
    make_stream(repo)
    assert repo.run("repo", "show", str(repo.repo), "--json") == 0
    info = json.loads(capsys.readouterr().out)
    state = repo.repository().load()
    assert info["repository"] == str(repo.repo)
    assert info["root_version"] == 1
    assert info["streams"] == ["stable"]
    assert list(info["roles"]) == ["root", "targets", "snapshot", "timestamp", "stream-stable"]
    ts = info["roles"]["timestamp"]
    assert ts["version"] == state.timestamp.signed.version
    assert ts["threshold"] == 1
    assert ts["keyids"] == state.root.signed.roles["timestamp"].keyids
    datetime.fromisoformat(ts["expires"].replace("Z", "+00:00"))
    (stream_key,) = key_files(repo.keys / "stream-stable")
    assert info["roles"]["stream-stable"]["keyids"] == [stream_key.name.removesuffix(".key")]


def test_show_without_a_repository_exits_2(
    paths: Paths, capsys: pytest.CaptureFixture[str]
) -> None:
    paths.keys.mkdir()
    assert paths.run("repo", "show", str(paths.repo)) == 2
    assert "imgline repo init" in refused(capsys)


def test_show_refuses_a_tampered_repository(
    repo: Paths, capsys: pytest.CaptureFixture[str]
) -> None:
    path = repo.metadata / "1.targets.json"
    data = json.loads(path.read_bytes())
    data["signed"]["expires"] = "2099-01-01T00:00:00Z"
    path.write_text(json.dumps(data))
    assert repo.run("repo", "show", str(repo.repo)) == 2
    assert "1.targets.json" in refused(capsys)


# --- the command line ------------------------------------------------------------------------


def test_repo_needs_a_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["repo"])
    assert info.value.code == 2


def test_the_old_keys_command_is_gone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["keys", "generate", str(tmp_path / "k.pem")])
    assert info.value.code == 2
    assert not (tmp_path / "k.pem").exists()
    assert not hasattr(cli, "signing")
    assert os.listdir(tmp_path) == []
