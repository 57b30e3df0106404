"""Push events shaped like each forge's documented format, signed the way it signs them."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from imgline.trigger.domain.forges import Forge

SECRET = "s3cret"
AFTER = "9f1c4b2e8d7a6c5b4a3f2e1d0c9b8a7f6e5d4c3b"
BEFORE = "1d2c3b4a5f6e7d8c9b0a1f2e3d4c5b6a7f8e9d0c"


def github_push(**over: Any) -> dict[str, Any]:
    """Shaped like GitHub's documented ``push`` event (fields imgline reads, and some others)."""
    return {
        "ref": "refs/heads/main",
        "before": BEFORE,
        "after": AFTER,
        "created": False,
        "deleted": False,
        "forced": False,
        "compare": "https://github.com/acme/node-os/compare/1d2c3b4a5f6e...9f1c4b2e8d7a",
        "repository": {
            "id": 123456,
            "name": "node-os",
            "full_name": "acme/node-os",
            "private": True,
            "clone_url": "https://github.com/acme/node-os.git",
            "ssh_url": "git@github.com:acme/node-os.git",
            "default_branch": "main",
        },
        "pusher": {"name": "octocat", "email": "octocat@example.com"},
        "commits": [
            {
                "id": AFTER,
                "message": "node: add chrony",
                "added": ["kickstarts/node/chrony.ks"],
                "removed": [],
                "modified": ["kickstarts/node.ks"],
            }
        ],
        "head_commit": {"id": AFTER},
        **over,
    }


def gitlab_push(**over: Any) -> dict[str, Any]:
    """Shaped like GitLab's documented ``Push Hook``."""
    return {
        "object_kind": "push",
        "event_name": "push",
        "before": BEFORE,
        "after": AFTER,
        "ref": "refs/heads/main",
        "ref_protected": True,
        "checkout_sha": AFTER,
        "user_username": "jsmith",
        "project_id": 15,
        "project": {
            "id": 15,
            "name": "node-os",
            "path_with_namespace": "acme/platform/node-os",
            "git_http_url": "https://gitlab.example.com/acme/platform/node-os.git",
            "git_ssh_url": "git@gitlab.example.com:acme/platform/node-os.git",
            "default_branch": "main",
        },
        "commits": [
            {
                "id": AFTER,
                "message": "node: add chrony",
                "added": ["kickstarts/node/chrony.ks"],
                "modified": ["kickstarts/node.ks"],
                "removed": [],
            }
        ],
        "total_commits_count": 1,
        "repository": {"name": "node-os", "homepage": "https://gitlab.example.com/acme/node-os"},
        **over,
    }


def gitea_push(**over: Any) -> dict[str, Any]:
    """Shaped like Gitea's (and Forgejo's) documented ``push`` event."""
    return {
        "ref": "refs/heads/main",
        "before": BEFORE,
        "after": AFTER,
        "compare_url": "https://git.example.com/acme/node-os/compare/1d2c3b4a...9f1c4b2e",
        "commits": [
            {
                "id": AFTER,
                "message": "node: add chrony\n",
                "added": ["kickstarts/node/chrony.ks"],
                "removed": [],
                "modified": ["kickstarts/node.ks"],
            }
        ],
        "total_commits": 1,
        "head_commit": {"id": AFTER},
        "repository": {
            "id": 1,
            "name": "node-os",
            "full_name": "acme/node-os",
            "clone_url": "https://git.example.com/acme/node-os.git",
            "ssh_url": "git@git.example.com:acme/node-os.git",
            "default_branch": "main",
        },
        "pusher": {"login": "jsmith"},
        **over,
    }


def signed(
    forge: Forge, payload: dict[str, Any], secret: str = SECRET
) -> tuple[dict[str, str], bytes]:
    """Headers and body as ``forge`` would send them for ``payload``."""
    body = json.dumps(payload).encode()
    mac = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    headers = {
        "github": {
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
            "X-Hub-Signature-256": f"sha256={mac}",
        },
        "gitlab": {
            "X-Gitlab-Event": "Push Hook",
            "X-Gitlab-Token": secret,
            "X-Gitlab-Event-UUID": "13792a34-cac6-4fda-95a8-c58e00a3954e",
        },
        "gitea": {
            "X-Gitea-Event": "push",
            "X-Gitea-Delivery": "f6266f16-1bf3-46a5-9ea4-602e06ead473",
            "X-Gitea-Signature": mac,
        },
        "forgejo": {
            "X-Forgejo-Event": "push",
            "X-Gitea-Event": "push",
            "X-Forgejo-Delivery": "f6266f16-1bf3-46a5-9ea4-602e06ead474",
            "X-Forgejo-Signature": mac,
            "X-Gitea-Signature": mac,
        },
    }[forge]
    return {"Content-Type": "application/json", **headers}, body


PAYLOADS = {
    "github": github_push,
    "gitlab": gitlab_push,
    "gitea": gitea_push,
    "forgejo": gitea_push,
}
