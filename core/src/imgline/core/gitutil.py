"""Making a small git repository: how the demo and the tests stand in for a vendor's push."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

AUTHOR = {
    "GIT_AUTHOR_NAME": "imgline",
    "GIT_AUTHOR_EMAIL": "imgline@localhost",
    "GIT_COMMITTER_NAME": "imgline",
    "GIT_COMMITTER_EMAIL": "imgline@localhost",
}


def git(repo: Path, *args: str) -> str:
    """Run git in ``repo`` with a fixed identity; return its stripped stdout."""
    result = subprocess.run(  # noqa: S603
        ["git", "-C", str(repo), *args],  # noqa: S607
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **AUTHOR},
    )
    return result.stdout.strip()


def commit_files(repo: Path, files: Mapping[str, str | bytes], message: str = "update") -> str:
    """Write ``files`` (path in repo → content) into ``repo`` (created on first use), commit them
    on branch ``main`` and return the commit id."""
    if not (repo / ".git").exists():
        repo.mkdir(parents=True, exist_ok=True)
        git(repo, "init", "-q", "-b", "main")
    for rel, content in files.items():
        target = repo / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content, encoding="utf-8")
    git(repo, "add", "--all")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")
