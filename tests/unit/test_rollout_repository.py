"""Staged rollouts in the real repository: a new release starts at its first wave, a change is
one signed commit (and a change to the same state signs nothing), publishing keeps the other
releases' rollouts and retention drops those of releases that left; operators use
``imgline-publisher rollout``."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tufrepo import Site, make_site, make_tested

from imgline.core.trust.rollout import Rollout, ppm
from imgline.publisher.__main__ import main
from imgline.publisher.adapters.repo import Repository
from imgline.publisher.errors import ReleaseError

pytestmark = pytest.mark.unit

V1, V2, V3 = "20261201.1", "20261201.2", "20261201.3"


def first_percent(name: str, version: str, at: datetime) -> Rollout:
    return Rollout(name=name, version=version, share_ppm=ppm(0.01), changed=at)


def publisher(site: Site, keep: int = 3) -> Repository:
    return site.publisher(keep=keep, first_wave=first_percent)


def publish(repo: Repository, tmp: Path, version: str) -> None:
    tested, image = make_tested(tmp, version, size=4096)
    repo.publish(tested, image)


def pause(reason: str) -> Rollout:
    return Rollout(
        name="node",
        version=V1,
        share_ppm=ppm(0.01),
        paused=True,
        reason=reason,
        changed=datetime(2026, 12, 1, tzinfo=UTC),
    )


def test_a_rollout_change_is_one_signed_commit_and_a_repeat_signs_nothing(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    repo = publisher(site)
    publish(repo, tmp_path, V1)
    start = repo.rollouts("stable").of("node", V1)
    assert start is not None and (start.share, start.paused) == (0.01, False)
    before = repo.load()
    after = repo.update_rollout("stable", "node", V1, lambda _current: pause("bad"))
    assert after == pause("bad")
    state = repo.load()
    assert state.role("stream-stable").signed.version == (  # type: ignore[union-attr]
        before.role("stream-stable").signed.version + 1  # type: ignore[union-attr]
    )
    assert state.timestamp.signed.version == before.timestamp.signed.version + 1
    assert repo.rollouts("stable", state).of("node", V1) == pause("bad")
    # the same state again, or "no change": nothing is signed
    assert repo.update_rollout("stable", "node", V1, lambda _current: pause("bad")) == pause("bad")
    assert repo.update_rollout("stable", "node", V1, lambda current: current) == pause("bad")
    assert repo.load().timestamp.signed.version == state.timestamp.signed.version


def test_publishing_keeps_other_rollouts_and_retention_drops_theirs(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    repo = publisher(site, keep=2)
    publish(repo, tmp_path, V1)
    repo.update_rollout("stable", "node", V1, lambda _current: pause("bad"))
    publish(repo, tmp_path, V2)
    table = repo.rollouts("stable")
    assert table.of("node", V1) == pause("bad")
    v2 = table.of("node", V2)
    assert v2 is not None and v2.share == 0.01
    publish(repo, tmp_path, V3)  # keep=2: V1 leaves the stream, and its rollout with it
    assert [(r.version, r.paused) for r in repo.rollouts("stable").rollouts] == [
        (V2, False),
        (V3, False),
    ]


def test_without_staging_nothing_extra_is_signed(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    repo = site.publisher()
    publish(repo, tmp_path, V1)
    assert repo.rollouts("stable").rollouts == []
    role = repo.load().role("stream-stable")
    assert role is not None
    assert role.signed.targets["stable/releases.json"].unrecognized_fields == {}


def test_a_release_not_listed_has_no_rollout_to_change(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    repo = publisher(site)
    publish(repo, tmp_path, V1)
    with pytest.raises(ReleaseError, match=r"node-20261201\.9 is not listed in stream stable"):
        repo.update_rollout("stable", "node", "20261201.9", lambda _current: pause("x"))


def test_operators_pause_open_and_resume_by_hand(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = make_site(tmp_path)
    publish(publisher(site), tmp_path, V1)
    config = tmp_path / "publisher.toml"
    body = {"repo_dir": str(site.root), "keys_dir": str(site.keys.directory)}
    config.write_text(
        'service = "publisher"\n[consumer_config]\n'
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in body.items())
    )
    cli = ["rollout", "--config", str(config)]
    assert main([*cli, "pause", "stable", "node", V1, "--reason", "ticket 42"]) == 0
    assert capsys.readouterr().out == f"stable node {V1}: 1.0% of hosts, paused (ticket 42)\n"
    assert main([*cli, "open", "stable", "node", V1, "0.5"]) == 0
    assert capsys.readouterr().out == f"stable node {V1}: 50.0% of hosts, open\n"
    assert main([*cli, "pause", "stable", "node", V1, "--reason", "again"]) == 0
    assert main([*cli, "resume", "stable", "node", V1]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"stable node {V1}: 50.0% of hosts, open"
    assert main([*cli, "show"]) == 0
    assert capsys.readouterr().out.startswith(f"stable node {V1}: 50.0% of hosts, open, since ")
    assert main([*cli, "open", "stable", "node", V1, "1.5"]) == 2
    assert main([*cli, "resume", "stable", "node", "20261201.9"]) == 2
    assert "is not listed in stream stable" in capsys.readouterr().err
