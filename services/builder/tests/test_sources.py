"""What a request's git source may name, checked before git sees it: the worst values a
publisher of ``build.requested`` could send (docs/security.md, "Builds")."""

from __future__ import annotations

import pytest

from imgline.builder.adapters.sources import check_git_source, pick_commit, transport
from imgline.builder.errors import SourceError
from imgline.schemas.payloads import GitSource

pytestmark = pytest.mark.unit

DEFAULT = ("https", "ssh", "git")


def source(url: str = "https://git.example/os.git", **kw: str) -> GitSource:
    return GitSource(url=url, kickstart_path=kw.pop("kickstart_path", "node.ks"), **kw)


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("https://git.example/os.git", "https"),
        ("HTTPS://git.example/os.git", "https"),
        ("ssh://git@git.example/os.git", "ssh"),
        ("git@git.example:vendor/os.git", "ssh"),
        ("git.example:os.git", "ssh"),
        ("git://git.example/os.git", "git"),
        ("file:///srv/git/os.git", "file"),
        ("/srv/git/os.git", "file"),
        ("./os.git", "file"),
        ("ext::sh -c touch% /tmp/pwned", "ext"),
        ("fd::17", "fd"),
        ("x-evil://git.example/", "x-evil"),
    ],
)
def test_the_transport_is_what_git_would_use(url: str, kind: str) -> None:
    assert transport(url) == kind


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"ref": "--upload-pack=touch /tmp/pwned"}, "ref '--upload-pack=touch /tmp/pwned' starts"),
        ({"ref": "-h"}, "starts with '-'"),
        ({"ref": "main\n--upload-pack=x"}, "space or a control character"),
        ({"ref": "ma in"}, "space or a control character"),
        ({"url": "-uhttps://x"}, "url '-uhttps://x' starts with '-'"),
        ({"url": "--upload-pack=touch%20/tmp/pwned"}, "starts with '-'"),
        ({"kickstart_path": "-rf"}, "kickstart_path '-rf' starts"),
        ({"url": "ext::sh -c touch% /tmp/pwned"}, "space or a control character"),
        ({"url": "ext::sh"}, "uses the 'ext' transport"),
        ({"url": "fd::17"}, "uses the 'fd' transport"),
        ({"url": "file:///srv/git/os.git"}, "uses the 'file' transport"),
        ({"url": "/srv/git/os.git"}, "uses the 'file' transport"),
        ({"url": "http://git.example/os.git"}, "fetches only over git, https, ssh"),
    ],
)
def test_a_source_git_could_misread_is_refused(fields: dict[str, str], problem: str) -> None:
    with pytest.raises(SourceError) as refused:
        check_git_source(source(**fields), DEFAULT)
    assert problem in str(refused.value)


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"url": "git@git.example:vendor/os.git", "ref": "release/2026.12"},
        {"url": "git://git.example/os.git", "ref": "v1.2-rc1"},
        {"url": "https://git.example/os.git", "ref": "refs/heads/main", "commit": "0a1b2c3"},
    ],
)
def test_ordinary_sources_pass(fields: dict[str, str]) -> None:
    check_git_source(source(**fields), DEFAULT)


def test_local_repositories_only_when_the_config_allows_file() -> None:
    check_git_source(source("file:///srv/git/os.git"), (*DEFAULT, "file"))
    check_git_source(source("/srv/git/os.git"), ("file",))
    with pytest.raises(SourceError, match="fetches only over file"):
        check_git_source(source(), ("file",))


A, B, C, T = "a" * 40, "b" * 40, "c" * 40, "d" * 40
LISTING = f"""{A}\tHEAD
{A}\trefs/heads/main
{B}\trefs/heads/feature/main
{C}\trefs/heads/v2
{T}\trefs/tags/v2
{B}\trefs/tags/v2^{{}}
{C}\trefs/tags/light
warning: redirecting to https://git.example/os.git/
"""


@pytest.mark.parametrize(
    ("ref", "commit"),
    [
        ("HEAD", A),
        ("main", A),  # not feature/main, whose name only ends the same
        ("refs/heads/main", A),
        ("feature/main", B),
        ("v2", B),  # a tag before a branch of the same name, as git looks them up; peeled
        ("refs/heads/v2", C),
        ("light", C),  # a lightweight tag is the commit itself
        ("nope", None),
        ("ain", None),
    ],
)
def test_a_ref_is_the_commit_git_would_fetch_for_it(ref: str, commit: str | None) -> None:
    assert pick_commit(LISTING, ref) == commit
