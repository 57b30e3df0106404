"""Which releases a stream keeps.

Retention only shortens the stream's signed list; the files of a dropped release stay until
no snapshot that lists them is still valid (the repository's garbage queue), so a host that
just read the list never finds its image gone.
"""

from __future__ import annotations

from imgline.core.trust.layout import Release


def keep_newest(releases: list[Release], keep: int) -> tuple[list[Release], list[Release]]:
    """(kept, dropped): the first ``keep`` releases of each image name, in the given order
    (newest first: publish order, not clock time, which may step back).

    Per name, because a stream may carry several images (node, appliance) and one busy image
    must not push the others out.
    """
    kept: list[Release] = []
    dropped: list[Release] = []
    per_name: dict[str, int] = {}
    for entry in releases:
        seen = per_name.get(entry.name, 0)
        (kept if seen < keep else dropped).append(entry)
        per_name[entry.name] = seen + 1
    return kept, dropped
