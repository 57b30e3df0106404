"""A host for the updater agent's tests: it records what it is asked to apply instead of
making LVM layers, and its view of itself is whatever the test sets."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from imgline.core.trust.layout import Manifest
from imgline.schemas import payloads as p
from imgline.schemas.messages import ImagePublishedV1
from imgline.updater.domain.policy import HostView
from imgline.updater.errors import UpdaterError


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class FakeHost:
    """Implements ``imgline.updater.agent.Host``."""

    def __init__(
        self,
        running: str | None,
        *,
        bad: frozenset[str] = frozenset(),
        locked: bool = False,
        fail: UpdaterError | None = None,
        on_reboot: Callable[[FakeHost], None] | None = None,
    ) -> None:
        self.running = running
        self.pending: str | None = None
        self.bad = bad
        self.locked = locked
        self.fail = fail
        self.on_reboot = on_reboot
        self.views = 0
        self.applied: list[tuple[str, str]] = []  # (version, sha256 of the file handed over)
        self.reboots = 0

    def view(self, now: datetime) -> HostView:
        self.views += 1
        return HostView(self.running, self.pending, self.bad, self.locked, now)

    def apply(self, image: Path, manifest: Manifest) -> str:
        if self.fail is not None:
            raise self.fail
        self.applied.append((manifest.version, sha256_of(image)))
        self.pending = manifest.version
        return f"{manifest.name}-{manifest.version}+1"

    def reboot(self) -> None:
        self.reboots += 1
        if self.on_reboot is not None:
            self.on_reboot(self)


def forged(version: str, size: int = 1) -> ImagePublishedV1:
    """What an attacker on the bus could send: well-formed, pointing at a release (and bytes)
    that the signed repository does not have."""
    sha = "e" * 64
    d = f"stable/node/{version}"
    event = p.ImagePublished(
        build_id=sha,
        name="node",
        version=version,
        stream="stable",
        manifest_url=f"http://evil.test/{d}/manifest.json",
        manifest_sha256=sha,
        image_url=f"http://evil.test/{d}/node.img",
        image_sha256=sha,
        image_size=size,
        key_id="0123456789abcdef",
        repository_url="http://evil.test/",
        targets=p.PublishedTargets(
            image=f"{d}/node.img", manifest=f"{d}/manifest.json", install_ks=f"{d}/install.ks"
        ),
        role="stream-stable",
        role_version=99,
        snapshot_version=99,
        timestamp_version=99,
    )
    return ImagePublishedV1.from_payload(event)  # type: ignore[return-value]
