"""Repository naming and expiry policy (pure): hostile names never become paths or patterns."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from tuf.api.metadata import DelegatedRole

from imgline.core.trust import layout
from imgline.core.trust.errors import TrustError

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def test_release_paths_start_with_their_stream() -> None:
    assert layout.stream_role("stable") == "stream-stable"
    assert layout.stream_of_role("stream-stable") == "stable"
    assert layout.stream_of_role("targets") is None
    assert layout.image_target("stable", "node", "20261201.1") == (
        "stable/node/20261201.1/node-20261201.1.squashfs.img"
    )
    assert layout.manifest_target("beta", "node", "1") == "beta/node/1/manifest.json"
    assert layout.install_ks_target("beta", "node", "1") == "beta/node/1/install.ks"
    assert layout.releases_target("beta") == "beta/releases.json"


@pytest.mark.parametrize(
    "bad",
    ["", "..", "../etc", "a/b", "-rf", ".hidden", "UPPER", "st*", "st?", "[s]", "a b", "x" * 65],
)
def test_hostile_stream_and_image_names_are_refused(bad: str) -> None:
    for call in (
        lambda: layout.stream_role(bad),
        lambda: layout.releases_target(bad),
        lambda: layout.image_target(bad, "node", "1"),
        lambda: layout.image_target("stable", bad, "1"),
    ):
        with pytest.raises(TrustError, match="not a valid"):
            call()


@pytest.mark.parametrize("bad", ["", "../1", "1/2", "-1", ".1", "1 2", "v" * 65])
def test_hostile_versions_are_refused(bad: str) -> None:
    with pytest.raises(TrustError, match="not a valid version"):
        layout.image_target("stable", "node", bad)


def test_a_streams_delegation_matches_only_its_own_paths() -> None:
    role = DelegatedRole("stream-stable", [], 1, True, layout.stream_paths("stable"))
    assert role.is_delegated_path("stable/releases.json")
    assert role.is_delegated_path("stable/node/1/node-1.squashfs.img")
    for other in (
        "beta/releases.json",
        "beta/node/1/node-1.squashfs.img",
        "stable/node/1/x/deeper",
        "stable.gen-1/node/1/x",
        "stablex/releases.json",
    ):
        assert not role.is_delegated_path(other), other


def test_hashed_path_prefixes_the_file_name() -> None:
    sha = "ab" * 32
    assert layout.hashed_path("stable/node/1/install.ks", sha) == f"stable/node/1/{sha}.install.ks"
    assert layout.hashed_path("x.json", sha) == f"{sha}.x.json"
    with pytest.raises(TrustError):
        layout.hashed_path("x", "../../etc")


def test_metadata_file_names() -> None:
    assert layout.metadata_file("timestamp", None) == "timestamp.json"
    assert layout.metadata_file("stream-stable", 7) == "7.stream-stable.json"


@pytest.mark.parametrize(
    ("role", "lifetime"),
    [
        ("root", timedelta(days=365)),
        ("targets", timedelta(days=90)),
        ("stream-stable", timedelta(days=90)),
        ("snapshot", timedelta(days=7)),
        ("timestamp", timedelta(days=1)),
    ],
)
def test_default_lifetimes(role: str, lifetime: timedelta) -> None:
    assert layout.Expiry().lifetime(role) == lifetime


@pytest.mark.parametrize(
    ("left", "due"),
    [
        (timedelta(hours=23), False),
        (timedelta(hours=12, seconds=1), False),
        (timedelta(hours=12), True),
        (timedelta(0), True),
        (timedelta(hours=-5), True),
    ],
)
def test_re_signed_once_half_the_life_is_gone(left: timedelta, due: bool) -> None:
    assert layout.due(NOW + left, NOW, timedelta(days=1)) is due


def test_expiry_is_configurable_and_strict() -> None:
    e = layout.Expiry.model_validate({"timestamp": "PT6H", "snapshot": 86400})
    assert e.timestamp == timedelta(hours=6) and e.snapshot == timedelta(days=1)
    with pytest.raises(ValueError, match="greater than"):
        layout.Expiry.model_validate({"timestamp": 0})
    with pytest.raises(ValueError, match="Extra inputs"):
        layout.Expiry.model_validate({"timestmap": "PT6H"})
