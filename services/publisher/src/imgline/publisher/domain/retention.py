"""Which releases a stream keeps, and which image directories may go.

Retention only ever shortens the index; files are deleted only after the shortened index is
in place, and only when no stream's index lists them, so a host that just read an index never
finds its image gone.
"""

from __future__ import annotations

from collections.abc import Iterable

from imgline.core.repository import IndexEntry


def keep_newest(releases: list[IndexEntry], keep: int) -> tuple[list[IndexEntry], list[IndexEntry]]:
    """(kept, dropped): the first ``keep`` releases of each image name, in the given order
    (an index lists releases newest first: publish order, not clock time, which may step back).

    Per name, because a stream may carry several images (node, appliance) and one busy image
    must not push the others out.
    """
    kept: list[IndexEntry] = []
    dropped: list[IndexEntry] = []
    per_name: dict[str, int] = {}
    for entry in releases:
        seen = per_name.get(entry.name, 0)
        (kept if seen < keep else dropped).append(entry)
        per_name[entry.name] = seen + 1
    return kept, dropped


def unreferenced(
    on_disk: Iterable[tuple[str, str]], listed: Iterable[tuple[str, str]]
) -> list[tuple[str, str]]:
    """(name, version) directories that no index lists any more."""
    still = set(listed)
    return sorted(d for d in on_disk if d not in still)
