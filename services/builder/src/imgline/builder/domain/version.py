"""Image versions: ``<YYYYMMDD>.<n>``, the n-th successful build of an image on that UTC day.

The file and release names read ``<name>-<version>`` (``node-20261123.2``), sortable as text
within a day and as (date, n) across days, like oVirt Node's NVRs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import date

# The ordering lives in core since the updater needs it too; re-exported for builder callers.
from imgline.core.versions import version_key

__all__ = ["next_version", "release_name", "version_key"]

_AUTO = re.compile(r"^(\d{8})\.(\d+)$")


def next_version(today: date, existing: Iterable[str]) -> str:
    """The next free automatic version for ``today`` given the versions already taken."""
    stamp = today.strftime("%Y%m%d")
    taken = [int(m.group(2)) for v in existing if (m := _AUTO.match(v)) and m.group(1) == stamp]
    return f"{stamp}.{max(taken, default=0) + 1}"


def release_name(name: str, version: str) -> str:
    """``<name>-<version>``: how files, LVs and log lines name one image."""
    return f"{name}-{version}"
