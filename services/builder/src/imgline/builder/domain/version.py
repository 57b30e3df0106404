"""Image versions: ``<YYYYMMDD>.<n>``, the n-th successful build of an image on that UTC day.

The file and release names read ``<name>-<version>`` (``node-20261123.2``), sortable as text
within a day and as (date, n) across days, like oVirt Node's NVRs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import date

_AUTO = re.compile(r"^(\d{8})\.(\d+)$")


def next_version(today: date, existing: Iterable[str]) -> str:
    """The next free automatic version for ``today`` given the versions already taken."""
    stamp = today.strftime("%Y%m%d")
    taken = [int(m.group(2)) for v in existing if (m := _AUTO.match(v)) and m.group(1) == stamp]
    return f"{stamp}.{max(taken, default=0) + 1}"


def release_name(name: str, version: str) -> str:
    """``<name>-<version>``: how files, LVs and log lines name one image."""
    return f"{name}-{version}"


def version_key(version: str) -> tuple[int, int] | tuple[int, str]:
    """Sort key: automatic versions by (date, n); pinned versions after them, by text."""
    m = _AUTO.match(version)
    if m:
        return (int(m.group(1)), int(m.group(2)))
    return (99999999, version)
