"""Reading a liveimg on the host: the squashfs is loop-mounted read-only and ``image.json`` is
read from the inner ext4 with debugfs, so nothing from the image runs before it is verified.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgline.core import liveimg
from imgline.core.errors import ImglineError
from imgline.updater.adapters.system import System
from imgline.updater.errors import UpdaterError

ROOTFS = Path("LiveOS/rootfs.img")


@dataclass(frozen=True)
class ImageInfo:
    """What an apply needs to know about an image before it touches a disk."""

    name: str
    version: str
    build_id: str
    rootfs_bytes: int
    kernel: str
    initrd: str
    kernel_args: str


@contextmanager
def rootfs(system: System, image: Path, step: str) -> Iterator[Path]:
    """``LiveOS/rootfs.img`` of ``image``, readable for the block."""
    with system.mounted(step, image, options="ro,loop,nodev,nosuid", fstype="squashfs") as sq:
        inner = sq / ROOTFS
        if not inner.is_file():
            raise UpdaterError(f"{image} is not a liveimg: it has no {ROOTFS}", step)
        yield inner


def inspect(system: System, image: Path) -> ImageInfo:
    """The image's own description (``/usr/lib/imgline/image.json``) and its root's size."""
    with rootfs(system, image, "verify") as inner:
        try:
            raw = liveimg.read_file(inner, "/" + liveimg.IMAGE_JSON.as_posix(), system.log)
            meta: dict[str, Any] = json.loads(raw)
        except (ImglineError, ValueError) as exc:
            raise UpdaterError(f"{image}: cannot read its image.json: {exc}", "verify") from exc
        size = inner.stat().st_size
    try:
        return ImageInfo(
            name=str(meta["name"]),
            version=str(meta["version"]),
            build_id=str(meta["build_id"]),
            rootfs_bytes=size,
            kernel=str(meta["kernel"]),
            initrd=str(meta["initrd"]),
            kernel_args=str(meta.get("kernel_args") or ""),
        )
    except KeyError as exc:
        raise UpdaterError(
            f"{image}: image.json lacks {exc}: the image was not built by imgline's builder",
            "verify",
        ) from exc
