"""Ordering of image versions, shared by the builder (which names them) and the updater (which
must never move a host backwards).

Automatic versions read ``<YYYYMMDD>.<n>``: the n-th build of an image on that UTC day. Pinned
versions are free-form strings an admin chose; they sort after every automatic one, by text,
so pinning a release is never silently overtaken by the next nightly build.
"""

from __future__ import annotations

import re

_AUTO = re.compile(r"^([0-9]{8})\.([0-9]+)$")

VersionKey = tuple[int, int, int, str]


def version_key(version: str) -> VersionKey:
    """Sort key: automatic versions by (date, n) as numbers, pinned versions after them by text.

    The leading 0/1 keeps the two kinds apart so any two keys compare without a type error.
    """
    m = _AUTO.match(version)
    if m:
        return (0, int(m.group(1)), int(m.group(2)), "")
    return (1, 0, 0, version)


def is_newer(candidate: str, running: str | None) -> bool:
    """Whether ``candidate`` sorts after ``running``; anything is newer than nothing installed."""
    if running is None:
        return True
    return version_key(candidate) > version_key(running)
