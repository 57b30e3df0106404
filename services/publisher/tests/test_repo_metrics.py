"""The repository's expiry series: what Prometheus reads, and what it reads from a repository
that no longer verifies."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from imgline.core import cli
from imgline.core.trust.keys import KeyDir
from imgline.core.trust.repository import TufRepository
from imgline.publisher.repometrics import RepositoryCollector

pytestmark = pytest.mark.unit


def test_every_role_has_its_expiry_and_a_broken_repository_says_so(tmp_path: Path) -> None:
    repo_dir, keys, root_keys = tmp_path / "repo", tmp_path / "keys", tmp_path / "root-keys"
    for d in (keys, root_keys):
        d.mkdir()
    argv = ["repo", "init", str(repo_dir), "--keys", str(keys), "--root-keys", str(root_keys)]
    assert cli.main(argv) == 0
    repo = TufRepository(repo_dir, KeyDir(keys))
    registry = CollectorRegistry()
    registry.register(RepositoryCollector(repo.load))
    state = repo.load()
    expiry = registry.get_sample_value(
        "imgline_repository_metadata_expires_timestamp_seconds", {"role": "timestamp"}
    )
    assert expiry == state.timestamp.signed.expires.timestamp()
    for role in ("root", "snapshot", "targets"):
        assert (
            registry.get_sample_value("imgline_repository_metadata_version", {"role": role}) == 1.0
        )
    assert registry.get_sample_value("imgline_repository_readable") == 1.0
    (repo_dir / "metadata" / "timestamp.json").write_text("{}", encoding="utf-8")
    assert registry.get_sample_value("imgline_repository_readable") == 0.0
    assert (
        registry.get_sample_value(
            "imgline_repository_metadata_expires_timestamp_seconds", {"role": "timestamp"}
        )
        is None
    )
