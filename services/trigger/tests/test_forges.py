"""Push events as GitHub, GitLab, Gitea and Forgejo send them: signatures checked before
anything is read, and the push read the same way from each forge's own shape."""

from __future__ import annotations

import json
from typing import Any

import pytest
from forgepayloads import AFTER, PAYLOADS, SECRET, gitea_push, github_push, gitlab_push, signed

from imgline.trigger.domain import forges
from imgline.trigger.domain.forges import Forge
from imgline.trigger.errors import PayloadError, SignatureError

pytestmark = pytest.mark.unit


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
        "main\n",
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
        json.dumps(github_push(after=AFTER + "\n")).encode(),
        json.dumps(github_push(repository={"full_name": "-oProxyCommand=x"})).encode(),
        json.dumps(github_push(repository={"full_name": "acme/../../etc"})).encode(),
        json.dumps(github_push(commits=[{"added": "a-string"}])).encode(),
    ],
)
def test_malformed_push_events_say_what_is_wrong(body: bytes) -> None:
    with pytest.raises(PayloadError):
        forges.parse("github", "push", {"X-GitHub-Event": "push"}, body)


def test_a_request_from_no_forge_is_refused() -> None:
    with pytest.raises(PayloadError, match="not a webhook"):
        forges.detect({"Content-Type": "application/json"})
