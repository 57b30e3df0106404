"""Fixtures of the vm tier: the real node image (built once, cached under .cache/images/)."""

from __future__ import annotations

from pathlib import Path

import pytest
from nodeimage import node_image as build_node_image

from imgline.core.artifacts import LocalArtifactStore
from imgline.schemas import payloads as p


@pytest.fixture(scope="session")
def node_image() -> tuple[p.ImageBuilt, LocalArtifactStore]:
    return build_node_image()


@pytest.fixture(scope="session")
def node_liveimg(node_image: tuple[p.ImageBuilt, LocalArtifactStore]) -> Path:
    """The node image's liveimg (squashfs) file: what tests/vmguest.py boots and installs."""
    built, store = node_image
    return store.path_for(built.artifact.sha256)
