"""Push events as GitHub, GitLab, Gitea and Forgejo send them: signatures checked before
anything is read, and the push read the same way from each forge's own shape."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest

from imgline.trigger.domain import forges
from imgline.trigger.domain.forges import Forge
from imgline.trigger.errors import PayloadError, SignatureError

pytestmark = pytest.mark.unit

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


@pytest.mark.parametrize("forge", forges.FORGES)
def test_a_signed_push_is_read_the_same_from_every_forge(forge: Forge) -> None:
    headers, body = signed(forge, PAYLOADS[forge]())
    found, event = forges.detect(headers)
    assert found == forge
    forges.verify(forge, headers, body, SECRET)
    push = forges.parse(forge, event, headers, body)
    assert push is not None
    assert push.branch == "main" and push.commit == AFTER
    assert push.changed_paths == {"kickstarts/node/chrony.ks", "kickstarts/node.ks"}
    assert push.paths_complete
    assert push.delivery
    assert push.repository == ("acme/platform/node-os" if forge == "gitlab" else "acme/node-os")


@pytest.mark.parametrize("forge", forges.FORGES)
@pytest.mark.parametrize("how", ["wrong-secret", "missing", "body-changed", "no-secret-here"])
def test_an_unsigned_or_tampered_event_is_refused(forge: Forge, how: str) -> None:
    headers, body = signed(forge, PAYLOADS[forge](), "other" if how == "wrong-secret" else SECRET)
    if how == "missing":
        headers = {k: v for k, v in headers.items() if "Signature" not in k and "Token" not in k}
    if how == "body-changed":
        body = body.replace(b"acme/node-os", b"evil/node-os").replace(b"main", b"mainx")
        if forge == "gitlab":  # a token signs no body: only a wrong token fails
            headers["X-Gitlab-Token"] = "guess"
    with pytest.raises(SignatureError):
        forges.verify(forge, headers, body, "" if how == "no-secret-here" else SECRET)


@pytest.mark.parametrize(
    ("forge", "payload"),
    [
        ("github", github_push(ref="refs/tags/v1.0")),
        ("github", github_push(deleted=True, after="0" * 40)),
        ("gitlab", gitlab_push(after="0" * 40, checkout_sha=None)),
        ("gitea", gitea_push(ref="refs/tags/v1.0")),
    ],
)
def test_tags_and_deleted_branches_build_nothing(forge: Forge, payload: dict[str, Any]) -> None:
    headers, body = signed(forge, payload)
    assert forges.parse(forge, forges.detect(headers)[1], headers, body) is None


def test_a_ping_builds_nothing() -> None:
    headers, body = signed("github", {"zen": "Keep it logically awesome.", "hook_id": 1})
    headers["X-GitHub-Event"] = "ping"
    assert forges.parse("github", "ping", headers, body) is None


def test_gitlab_lists_at_most_twenty_commits_so_paths_are_incomplete() -> None:
    headers, body = signed("gitlab", gitlab_push(total_commits_count=57))
    push = forges.parse("gitlab", "Push Hook", headers, body)
    assert push is not None and not push.paths_complete


@pytest.mark.parametrize(
    "branch",
    [
        "--upload-pack=touch /tmp/pwned",
        "-x",
        "a..b",
        "a b",
        "a\nb",
        "x/",
        "a;rm -rf /",
        "é" * 3,
        "",
    ],
)
def test_hostile_branch_names_are_refused(branch: str) -> None:
    headers, body = signed("github", github_push(ref=f"refs/heads/{branch}"))
    with pytest.raises(PayloadError):
        forges.parse("github", "push", headers, body)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b"\xff\xfe",
        json.dumps({"ref": "refs/heads/main"}).encode(),
        json.dumps(github_push(after="$(reboot)")).encode(),
        json.dumps(github_push(repository={})).encode(),
        json.dumps(github_push(commits=[{"added": "a-string"}])).encode(),
    ],
)
def test_malformed_push_events_say_what_is_wrong(body: bytes) -> None:
    with pytest.raises(PayloadError):
        forges.parse("github", "push", {"X-GitHub-Event": "push"}, body)


def test_a_request_from_no_forge_is_refused() -> None:
    with pytest.raises(PayloadError, match="not a webhook"):
        forges.detect({"Content-Type": "application/json"})
