"""Crash injection for the fault drills: a service killed with SIGKILL at a named step.

A drill starts a real service process with ``IMGLINE_<SERVICE>_CRASH_AT=<step>`` in its
environment; the service hands ``crash_hook(...)`` to the code that has steps, which calls it
between them. The process then dies at exactly that point, as under the OOM killer or a power
cut: SIGKILL, so no ``finally``, handler or atexit runs. Without the variable the hook does
nothing, and no deployment sets it (the updater's ``IMGLINE_UPDATER_CRASH_AFTER`` is the same
idea, per apply step).
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

Crash = Callable[[str], None]


def crash_hook(
    variable: str,
    environ: Mapping[str, str] | None = None,
    kill: Callable[[int, int], None] = os.kill,
) -> Crash:
    """A hook that SIGKILLs this process when called with the step ``variable`` names."""
    wanted = (os.environ if environ is None else environ).get(variable)

    def crash(step: str) -> None:
        if wanted is not None and step == wanted:
            log.warning("%s=%s: killing this process with SIGKILL (a fault drill)", variable, step)
            for handler in logging.getLogger().handlers:
                handler.flush()
            kill(os.getpid(), signal.SIGKILL)

    return crash
