"""deploy/systemd/imgline-builder.service runs the builder as the build user that `make deps`
creates, and keeps what an unshare-mode build needs: the setuid newuidmap (no
NoNewPrivileges) and new user, mount and PID namespaces (no RestrictNamespaces, PrivateUsers)."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import pytest

from imgline.builder.settings import BuilderConfig

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[3]


def test_the_unit_runs_the_builder_as_the_build_user_with_namespaces_allowed() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(REPO / "deploy" / "systemd" / "imgline-builder.service")
    service = unit["Service"]
    made = re.search(
        r"ensure-build-user\.sh\" (\S+)", (REPO / "scripts" / "ensure-deps.sh").read_text()
    )
    assert made is not None
    assert service["User"] == service["Group"] == made.group(1)
    for forbidden in (
        "NoNewPrivileges",
        "RestrictNamespaces",
        "PrivateUsers",
        "CapabilityBoundingSet",
    ):
        assert forbidden not in service, forbidden
    # the directories of the builder's default configuration belong to that user
    defaults = BuilderConfig()
    state = {f"/var/lib/{d}" for d in service["StateDirectory"].split()}
    cache = {f"/var/cache/{d}" for d in service["CacheDirectory"].split()}
    assert state == {str(defaults.store_dir), str(defaults.work_dir)}
    assert cache == {str(defaults.cache_dir), str(defaults.root_cache_dir)}
