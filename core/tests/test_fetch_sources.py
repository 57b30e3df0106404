"""Artefact URIs come from bus messages: only the configured store roots and URL prefixes are
read, whatever the URI tries."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgline.core.errors import PermanentError
from imgline.core.fetch import ArtifactSources, local_path, refusal

pytestmark = pytest.mark.unit

SOURCES = ArtifactSources.of([Path("/srv/store")], ["https://store.example/images"])


@pytest.mark.parametrize(
    "uri",
    [
        "https://store.example/images/node.img",
        "https://store.example/images/stable/node%20v2.img",
        "file:///srv/store/objects/ab/cd",
        "file://localhost/srv/store/x",
    ],
)
def test_allowed(uri: str) -> None:
    assert refusal(uri, SOURCES) is None


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("https://store.example/imagesX/node.img", "not under an allowed URL prefix"),
        ("https://store.example.evil/images/node.img", "not under an allowed URL prefix"),
        ("https://evil.example/?https://store.example/images/", "not under an allowed URL prefix"),
        ("https://store.example@evil.example/images/n", "carries credentials"),
        ("https://u:p@store.example/images/n", "carries credentials"),
        ("https://store.example/images/../secret", "climbs out"),
        ("https://store.example/images/%2e%2e/secret", "climbs out"),
        ("https://store.example/images/..%2Fsecret", "climbs out"),
        ("https://store.example/images\\..\\secret", "climbs out"),
        ("https://store.example/images/n#frag", "fragment"),
        ("http://store.example/images/node.img", "not under an allowed URL prefix"),
        ("file://otherhost/srv/store/x", "another host"),
        ("ftp://store.example/images/n", "unsupported scheme"),
        ("/srv/store/x", "unsupported scheme"),
        ("gopher://x", "unsupported scheme"),
        ("", "unsupported scheme"),
    ],
)
def test_refused(uri: str, why: str) -> None:
    reason = refusal(uri, SOURCES)
    assert reason is not None and why in reason


def test_no_roots_means_no_local_files() -> None:
    reason = refusal("file:///srv/store/x", ArtifactSources.of([], ["https://a.example/"]))
    assert reason is not None and "reads no local files" in reason


def test_files_must_resolve_inside_a_root(tmp_path: Path) -> None:
    root = tmp_path / "store"
    (root / "objects").mkdir(parents=True)
    inside = root / "objects" / "img"
    inside.write_bytes(b"x")
    secret = tmp_path / "secret"
    secret.write_bytes(b"s")
    (root / "link").symlink_to(secret)
    sources = ArtifactSources.of([root])
    work = tmp_path / "work"
    assert local_path(inside.as_uri(), work, sources) == inside.resolve()
    for uri, why in [
        (secret.as_uri(), "outside the artifact store"),
        ((root / "link").as_uri(), "outside the artifact store"),
        (f"file://{root}/objects/../../secret", "outside the artifact store"),
        ((root / "nope").as_uri(), "does not exist"),
        ((root / "objects").as_uri(), "not a regular file"),
    ]:
        with pytest.raises(PermanentError, match=why):
            local_path(uri, work, sources)
