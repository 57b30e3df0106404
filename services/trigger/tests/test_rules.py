"""Rules: which pushes build what, with the commit pinned, and a push delivered twice once."""

from __future__ import annotations

import pytest

from imgline.trigger.domain.forges import Push
from imgline.trigger.domain.rules import Seen, applies, load_rules, matches, requests
from imgline.trigger.errors import RulesError

pytestmark = pytest.mark.unit

AFTER = "9f1c4b2e8d7a6c5b4a3f2e1d0c9b8a7f6e5d4c3b"

RULES = """
[[rule]]
repository = "acme/node-os"
url = "https://git.example.com/acme/node-os.git"
branches = ["main", "release/*"]
paths = ["kickstarts/node.ks", "kickstarts/node/**"]
name = "node"
kickstart_path = "kickstarts/node.ks"

[[rule]]
repository = "acme/*"
forge = "gitlab"
url = "ssh://git@gitlab.example.com/acme/appliance.git"
name = "appliance"
stream = "testing"
kickstart_path = "appliance.ks"
backend = "livemedia-creator"
"""


def push(**over: object) -> Push:
    fields: dict[str, object] = {
        "forge": "gitea",
        "repository": "acme/node-os",
        "branch": "main",
        "commit": AFTER,
        "changed_paths": frozenset({"kickstarts/node/chrony.ks"}),
        "delivery": "d-1",
    }
    return Push.model_validate(fields | over)


def test_globs_stay_in_a_segment_unless_doubled() -> None:
    assert matches("release/*", "release/2.1")
    assert not matches("release/*", "release/2.1/hotfix")
    assert matches("kickstarts/**", "kickstarts/a/b/c.ks")
    assert matches("**/*.ks", "node.ks") and matches("**/*.ks", "a/b/node.ks")
    assert not matches("main", "main2") and not matches("acme/*", "acme/x/y")
    assert matches("v?.ks", "v1.ks") and not matches("v?.ks", "v10.ks")


def test_a_push_gives_one_pinned_request_per_rule_that_applies() -> None:
    rules = load_rules(RULES)
    [req] = requests(rules, push())
    assert req.source.kind == "git"
    assert req.source.url == "https://git.example.com/acme/node-os.git"  # from the rule
    assert (req.source.ref, req.source.commit) == ("main", AFTER)
    assert (req.name, req.stream, req.backend) == ("node", "main", "mmdebstrap")
    gitlab = requests(rules, push(forge="gitlab", repository="acme/node-os"))
    assert [r.name for r in gitlab] == ["node", "appliance"]
    assert gitlab[1].backend == "livemedia-creator" and gitlab[1].stream == "testing"


def test_branches_and_paths_decide() -> None:
    rule = load_rules(RULES).rule[0]
    assert applies(rule, push(branch="release/2.1"))
    assert not applies(rule, push(branch="feature/x"))
    assert not applies(rule, push(changed_paths=frozenset({"README.md"})))
    assert not applies(rule, push(repository="other/node-os"))
    # the forge left commits out: every path counts, so no needed build is missed
    assert applies(rule, push(changed_paths=frozenset({"README.md"}), paths_complete=False))


def test_a_redelivered_push_is_the_same_build_and_requested_once() -> None:
    rules = load_rules(RULES)
    first = requests(rules, push(delivery="d-1"))
    again = requests(rules, push(delivery="d-2"))  # the forge's "redeliver" has a new id
    assert [r.build_id for r in first] == [r.build_id for r in again]
    now = [0.0]
    seen = Seen(size=100, seconds=3600, clock=lambda: now[0])
    assert seen.first(first[0].build_id)
    assert not seen.first(again[0].build_id)
    now[0] = 7200  # long after: a rebuild request is let through (the builder replays it)
    assert seen.first(again[0].build_id)
    newer = requests(rules, push(commit="a" * 40))
    assert newer[0].build_id != first[0].build_id


def test_seen_is_bounded() -> None:
    seen = Seen(size=2, seconds=3600, clock=lambda: 0.0)
    assert seen.first("a") and seen.first("b") and seen.first("c")
    assert seen.first("a")  # pushed out by c


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("[[rule]]\nrepository = 'a/b'\n", r"\[rule\.0\.url\] Field required"),
        (
            "[[rule]]\nrepository='a/b'\nurl='u'\nname='Bad Name'\nkickstart_path='k'\n",
            r"\[rule\.0\.name\]",
        ),
        (
            "[[rule]]\nrepository='a/b'\nurl='u'\nname='n'\nkickstart_path='k'\nforge='svn'\n",
            r"\[rule\.0\.forge\]",
        ),
        (
            "[[rule]]\nrepository='a/b'\nurl='u'\nname='n'\nkickstart_path='k'\nbranchez=['x']\n",
            "branchez",
        ),
        ("[[rule]\n", "not valid TOML"),
    ],
)
def test_a_bad_rules_file_names_the_rule_and_field(text: str, said: str) -> None:
    with pytest.raises(RulesError, match=rf"^rules\.toml: .*{said}"):
        load_rules(text, "rules.toml")
