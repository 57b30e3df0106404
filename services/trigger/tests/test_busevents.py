"""Push messages from a forge's bus, read like the webhook's events: real shapes, worst values."""

from __future__ import annotations

import json
from typing import Any

import pytest
from forgemessages import (
    DISTGIT_TOPIC,
    END,
    FEDORA_PAGURE_TOPIC,
    MESSAGE_ID,
    PAGURE_TOPIC,
    REV,
    distgit_receive,
    encoded,
    fm_headers,
    pagure_project,
    pagure_receive,
)
from forgepayloads import AFTER, github_push
from hypothesis import given, settings
from hypothesis import strategies as st

from imgline.trigger.domain import busevents
from imgline.trigger.domain.forges import Push
from imgline.trigger.domain.rules import load_rules, requests
from imgline.trigger.errors import PayloadError

pytestmark = pytest.mark.unit

RULES = load_rules(
    """
[[rule]]
repository = "fedora-iot/node-os"
url = "https://pagure.io/fedora-iot/node-os.git"
branches = ["main"]
paths = ["kickstarts/**"]
name = "node"
kickstart_path = "kickstarts/node.ks"

[[rule]]
repository = "rpms/node-os"
forge = "pagure"
url = "https://src.fedoraproject.org/rpms/node-os.git"
branches = ["rawhide"]
paths = ["kickstarts/**"]
name = "node-rawhide"
kickstart_path = "kickstarts/node.ks"
"""
)


def pagure(body: dict[str, Any], topic: str = PAGURE_TOPIC) -> Push | None:
    headers = fm_headers("pagure.git.receive")
    return busevents.parse("pagure", topic, headers, encoded(body), MESSAGE_ID)


def distgit(body: dict[str, Any]) -> Push | None:
    return busevents.parse("distgit", DISTGIT_TOPIC, {}, encoded(body), MESSAGE_ID)


@pytest.mark.parametrize("topic", [PAGURE_TOPIC, FEDORA_PAGURE_TOPIC])
@pytest.mark.parametrize("branch", ["main", "refs/heads/main"])
def test_a_pagure_push_is_the_branch_at_its_end_commit(topic: str, branch: str) -> None:
    push = pagure(pagure_receive(branch=branch), topic)
    assert push is not None
    assert (push.forge, push.repository, push.branch, push.commit) == (
        "pagure",
        "fedora-iot/node-os",
        "main",
        END,
    )
    assert push.delivery == MESSAGE_ID


def test_a_pagure_push_names_no_files_so_path_rules_match() -> None:
    push = pagure(pagure_receive())
    assert push is not None and not push.paths_complete and not push.changed_paths
    [req] = requests(RULES, push)
    assert req.source.kind == "git"
    assert req.source.url == "https://pagure.io/fedora-iot/node-os.git"  # the rule's, always
    assert (req.source.ref, req.source.commit) == ("main", END)


def test_a_fork_is_named_as_pagure_names_it_and_matches_no_rule_of_its_parent() -> None:
    fork = pagure_project(
        fullname="forks/eve/fedora-iot/node-os", url_path="fork/eve/fedora-iot/node-os"
    )
    push = pagure(pagure_receive(repo=fork))
    assert push is not None and push.repository == "forks/eve/fedora-iot/node-os"
    assert requests(RULES, push) == []


@pytest.mark.parametrize("branch", ["refs/tags/v1.0", "refs/notes/commits"])
def test_tags_and_other_refs_build_nothing(branch: str) -> None:
    assert pagure(pagure_receive(branch=branch)) is None


def test_other_pagure_topics_build_nothing() -> None:
    body = {"agent": "jsmith", "repo": pagure_project(), "branch": "main", "rev": END}
    assert pagure(body, "io.pagure.prod.pagure.git.branch.creation") is None


def test_a_distgit_commit_is_a_push_of_that_commit_with_its_files() -> None:
    push = distgit(distgit_receive())
    assert push is not None
    assert (push.repository, push.branch, push.commit) == ("rpms/node-os", "rawhide", REV)
    assert push.paths_complete
    assert push.changed_paths == {"node-os.spec", "kickstarts/node.ks"}
    [req] = requests(RULES, push)
    assert req.name == "node-rawhide" and req.source.commit == REV


def test_a_distgit_commit_outside_the_paths_builds_nothing() -> None:
    stats = {"files": {"README.md": {"additions": 1, "deletions": 0, "lines": 1}}, "total": {}}
    push = distgit(distgit_receive(stats=stats))
    assert push is not None and requests(RULES, push) == []


def test_a_distgit_commit_without_stats_counts_as_touching_every_path() -> None:
    body = distgit_receive()
    del body["commit"]["stats"]
    push = distgit(body)
    assert push is not None and not push.paths_complete
    assert [r.name for r in requests(RULES, push)] == ["node-rawhide"]


def test_a_forwarded_webhook_is_read_as_the_webhook_reads_it() -> None:
    headers = {"X-GitHub-Event": "push", "X-GitHub-Delivery": "72d3162e-cc78"}
    push = busevents.parse("github", "forge.push", headers, encoded(github_push()), MESSAGE_ID)
    assert push is not None
    assert (push.forge, push.repository, push.commit, push.delivery) == (
        "github",
        "acme/node-os",
        AFTER,
        "72d3162e-cc78",
    )
    ping = {"X-GitHub-Event": b"ping"}
    assert busevents.parse("github", "forge.push", ping, b"{}", MESSAGE_ID) is None
    # a relay that kept no headers: a push is assumed, and the message id is the delivery
    push = busevents.parse("github", "forge.push", {}, encoded(github_push()), MESSAGE_ID)
    assert push is not None and push.delivery == MESSAGE_ID


WORST: list[tuple[str, dict[str, Any]]] = [
    ("option injection as the branch", pagure_receive(branch="--upload-pack=touch /tmp/x")),
    ("option injection as a ref", pagure_receive(branch="refs/heads/-x")),
    ("traversal in the branch", pagure_receive(branch="refs/heads/../../etc")),
    ("a space in the branch", pagure_receive(branch="main; rm -rf /")),
    ("a newline in the branch", pagure_receive(branch="main\nfake log line")),
    ("a trailing newline in the branch", pagure_receive(branch="main\n")),
    ("a trailing newline in the commit", pagure_receive(end_commit=END + "\n")),
    ("a trailing newline in the repository", pagure_receive(repo=pagure_project(fullname="a/b\n"))),
    ("an abbreviated commit", pagure_receive(end_commit=END[:12])),
    ("a ref name as the commit", pagure_receive(end_commit="HEAD")),
    ("an option as the commit", pagure_receive(end_commit="--output=/etc/passwd")),
    ("a number as the commit", pagure_receive(end_commit=12)),
    ("no end_commit", {k: v for k, v in pagure_receive().items() if k != "end_commit"}),
    ("no repo", {k: v for k, v in pagure_receive().items() if k != "repo"}),
    ("a string as the repo", pagure_receive(repo="fedora-iot/node-os")),
    ("an option as the repository", pagure_receive(repo=pagure_project(fullname="-oProxy=x"))),
    ("traversal in the repository", pagure_receive(repo=pagure_project(fullname="../etc"))),
    ("a huge repository name", pagure_receive(repo=pagure_project(fullname="a/" + "b" * 300))),
    ("a list as the branch", pagure_receive(branch=["main"])),
]


@pytest.mark.parametrize(("what", "body"), WORST, ids=[w for w, _ in WORST])
def test_the_worst_pagure_values_are_refused_with_a_reason(what: str, body: dict[str, Any]) -> None:
    with pytest.raises(PayloadError) as err:
        pagure(body)
    assert str(err.value), what


@pytest.mark.parametrize(
    "over",
    [
        {"rev": "--upload-pack=x"},
        {"branch": "-f"},
        {"repo": "../../../srv/git/secret"},
        {"namespace": "-rpms"},
        {"namespace": 7},
        {"stats": {"files": {"": {}}, "total": {}}},
    ],
)
def test_the_worst_distgit_values_are_refused(over: dict[str, Any]) -> None:
    with pytest.raises(PayloadError):
        distgit(distgit_receive(**over))


@pytest.mark.parametrize(
    "body", [b"", b"not json", b"\xff\xfe", b"[]", b"null", b'"main"', b"{}", b'{"commit": 1}']
)
@pytest.mark.parametrize("fmt", ["pagure", "distgit", "gitea"])
def test_bodies_that_are_no_push_message_are_refused(fmt: busevents.BusFormat, body: bytes) -> None:
    with pytest.raises(PayloadError):
        busevents.parse(fmt, "org.fedoraproject.prod.git.receive", {}, body, MESSAGE_ID)


@pytest.mark.parametrize(
    "message_id", [None, 7, "", "-x", "a b", "a\nb", "ok\n", "x" * 200, "ok-1\x00", b"bytes"]
)
def test_an_odd_message_id_is_left_out_of_the_request(message_id: object) -> None:
    headers = fm_headers("pagure.git.receive")
    push = busevents.parse("pagure", PAGURE_TOPIC, headers, encoded(pagure_receive()), message_id)
    assert push is not None and push.delivery is None
    [req] = requests(RULES, push)
    assert req.request_id == f"pagure-{END}-rule0"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    fmt=st.sampled_from(busevents.BUS_FORMATS),
    fields=st.dictionaries(
        st.sampled_from(["repo", "branch", "end_commit", "commit", "ref", "after", "repository"]),
        json_values,
    ),
    topic=st.sampled_from([PAGURE_TOPIC, DISTGIT_TOPIC, "x"]),
)
def test_any_json_is_a_push_or_none_or_a_payload_error(
    fmt: busevents.BusFormat, fields: dict[str, Any], topic: str
) -> None:
    body = json.dumps(fields).encode()
    try:
        push = busevents.parse(fmt, topic, {}, body, MESSAGE_ID)
    except PayloadError:
        return
    assert push is None or push.commit  # a Push made it through every check


@settings(max_examples=200, deadline=None)
@given(branch=st.text(min_size=1, max_size=60), fullname=st.text(min_size=1, max_size=60))
def test_no_branch_or_repository_reaches_a_request_unchecked(branch: str, fullname: str) -> None:
    body = pagure_receive(branch=branch, repo=pagure_project(fullname=fullname))
    try:
        push = pagure(body)
    except PayloadError:
        return
    if push is None:
        return
    assert not push.branch.startswith("-") and ".." not in push.branch
    assert not push.repository.startswith(("-", "/")) and ".." not in push.repository
    assert all(c.isascii() and c.isprintable() and c != " " for c in push.branch)
