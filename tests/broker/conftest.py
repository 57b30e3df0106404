"""Fixtures of the broker tests that publish: a signed repository and its HTTP server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from imgline.core.trust.keys import KeyDir
from imgline.core.trust.repository import TufRepository
from imgline.publisher import http


@pytest.fixture
def repo(tmp_path: Path) -> TufRepository:
    """A new repository, as `imgline repo init` makes it before the publisher starts."""
    return TufRepository.init(
        tmp_path / "repo", KeyDir(tmp_path / "keys"), KeyDir(tmp_path / "root-keys")
    )


@pytest.fixture
def served(repo: TufRepository) -> Iterator[str]:
    with http.running(repo.root_dir) as server:
        yield server.url
