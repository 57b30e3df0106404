"""``imgline-trigger-hook``: a git ``post-receive`` hook for bare repositories on a plain git
server, which sends each pushed branch to the trigger as a signed Gitea-style push event.

git gives the hook ``<old> <new> <ref>`` lines on stdin. The changed paths come from git
itself (``git diff --name-only``; a new branch counts every file), so the trigger's path rules
work as with a forge. Configure the trigger's ``secret_files.gitea`` with the same secret.
deploy/git/post-receive is the hook to install.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_LINE = re.compile(r"^([0-9a-f]{40}|[0-9a-f]{64}) ([0-9a-f]{40}|[0-9a-f]{64}) (refs/\S+)$")


def _git(*args: str) -> bytes:
    return subprocess.run(["git", *args], check=True, capture_output=True).stdout  # noqa: S603,S607


def changed_paths(old: str, new: str) -> list[str]:
    """Paths that differ between ``old`` and ``new``; every path of ``new`` for a new branch."""
    if set(old) == {"0"}:
        out = _git("ls-tree", "-r", "-z", "--name-only", "--end-of-options", new)
    else:
        out = _git("diff", "--name-only", "-z", "--end-of-options", old, new)
    return [p.decode("utf-8", "replace") for p in out.split(b"\0") if p]


def event(repository: str, old: str, new: str, ref: str, paths: list[str]) -> dict[str, Any]:
    """A push event shaped like Gitea's, which the trigger reads."""
    return {
        "ref": ref,
        "before": old,
        "after": new,
        "repository": {"full_name": repository},
        "commits": [{"id": new, "added": [], "removed": [], "modified": paths}],
    }


def send(url: str, secret: str, payload: dict[str, Any]) -> tuple[int, str]:
    body = json.dumps(payload).encode()
    request = urllib.request.Request(  # noqa: S310 - the operator's trigger URL
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "X-Gitea-Event": "push",
            "X-Gitea-Delivery": str(uuid.uuid4()),
            "X-Gitea-Signature": hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
            return answer.status, answer.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="imgline-trigger-hook", description=__doc__)
    parser.add_argument(
        "--url", required=True, help="the trigger's webhook, e.g. http://host:8470/hooks"
    )
    parser.add_argument("--secret-file", type=Path, required=True)
    parser.add_argument(
        "--repository", help="the name rules match (default: the bare repository's directory)"
    )
    args = parser.parse_args(argv)
    secret = args.secret_file.read_text(encoding="utf-8").strip()
    repository = args.repository or Path(
        os.environ.get("GIT_DIR", ".")
    ).resolve().name.removesuffix(".git")
    failed = 0
    for line in sys.stdin:
        found = _LINE.match(line.strip())
        if not found:
            continue
        old, new, ref = found.groups()
        if not ref.startswith("refs/heads/") or set(new) == {"0"}:
            continue  # tags and deleted branches build nothing
        status, text = send(
            args.url, secret, event(repository, old, new, ref, changed_paths(old, new))
        )
        print(
            f"imgline: {ref.removeprefix('refs/heads/')} {new[:12]}: {status} {text.strip()[:300]}"
        )
        failed += status >= 300
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
