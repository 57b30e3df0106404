"""One change to a host at a time: the agent's apply, a manual ``apply``/``rollback``/``gc``,
and the boot-time health check all rewrite the same LVM layers, boot entries and state file.

The lock is core's per-key file lock (``imgline.core.bus.stage.exclusive``, the one the
pipeline stages use), under ``<state_dir>/.locks/host.lock``. The kernel drops it when its
holder dies, so a crash never leaves a host locked.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from imgline.core.bus.stage import LOCKS, exclusive
from imgline.updater.settings import HostConfig

KEY = "host"
#: How long the boot-time health check waits for an apply in hand (it must not give up: it
#: blesses or rolls back this boot).
HEALTH_WAIT_SECONDS = 900.0


def changing(config: HostConfig, *, wait_seconds: float = 0.0) -> AbstractContextManager[None]:
    """Hold the host's lock; ``TransientError`` if another process holds it past the wait."""
    return exclusive(config.state_dir / LOCKS, KEY, wait_seconds=wait_seconds)
