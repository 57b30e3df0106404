"""What a builder does when it starts: clear what a builder that was killed left behind.

A SIGKILL can come at any point of a build. Its commands die with it (``imgline.core.runner``),
but what those started, the build's work directory (with /proc and /dev still mounted in the
root tree), half-written store files and half-made package roots stay. The next start removes
them, except what another builder sharing the store is working on now: a work directory is
removed only under its build's lock, a temporary store file only once nobody has touched it for
an hour, and a half-made package root only when the process making it is gone.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from imgline.builder.adapters.mmdebstrap import AREA
from imgline.builder.adapters.rootcache import root_cache
from imgline.builder.settings import BuilderConfig
from imgline.core import runner
from imgline.core.artifacts import LocalArtifactStore
from imgline.core.bus.stage import LOCKS, exclusive
from imgline.core.errors import ImglineError, TransientError
from imgline.core.fsutil import remove_tree
from imgline.core.userns import BuildUser

log = logging.getLogger(__name__)

#: Work directories are named by build id; nothing else under ``work_dir`` is ever removed.
_BUILD_DIR = re.compile(r"^[0-9a-f]{64}$")
CHILDREN = ".children"
STALE_TMP_SECONDS = 3600.0


@dataclass
class Recovered:
    killed: list[int] = field(default_factory=list)
    work_dirs: list[Path] = field(default_factory=list)
    tmp_files: int = 0
    partial_roots: int = 0


def _empty_area(config: BuilderConfig, workdir: Path) -> None:
    """What an unshare-mode build left belongs to the build user's namespace: emptied from
    there (the builder may not remove it itself)."""
    area = workdir / AREA
    if config.build_mode != "unshare" or not area.is_dir():
        return
    try:
        BuildUser.lookup(config.build_user).empty(area)
    except (ImglineError, OSError) as exc:  # the removal below says what is left
        log.warning("could not empty %s as the build user: %s", area, exc)


def recover(config: BuilderConfig, store: LocalArtifactStore) -> Recovered:
    """Kill leftover commands, remove unlocked work directories and stale store temp files,
    then record this builder's commands for the next start."""
    children = config.work_dir / CHILDREN
    done = Recovered(killed=runner.reap_leftovers(children))
    runner.track_children(children)
    if config.work_dir.is_dir():
        for entry in sorted(config.work_dir.iterdir()):
            if not (_BUILD_DIR.match(entry.name) and entry.is_dir()):
                continue
            try:
                with exclusive(store.root / LOCKS, entry.name):
                    _empty_area(config, entry)
                    remove_tree(entry)  # unmounts what a killed chroot left mounted first
            except TransientError:
                continue  # another builder is on that build right now
            done.work_dirs.append(entry)
    done.tmp_files = store.clear_stale_tmp(STALE_TMP_SECONDS)
    done.partial_roots = root_cache(config).clear_partial()
    if done.killed or done.work_dirs or done.tmp_files or done.partial_roots:
        log.warning(
            "cleared what a stopped builder left: %d process(es), %d work dir(s), %d temp "
            "file(s), %d half-made package root(s)",
            len(done.killed),
            len(done.work_dirs),
            done.tmp_files,
            done.partial_roots,
        )
    return done
