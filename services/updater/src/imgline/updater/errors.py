"""The updater's one error type: every message says what failed and what the admin can do."""

from __future__ import annotations

from imgline.core.errors import PermanentError


class UpdaterError(PermanentError):
    """An install, apply, rollback or health step failed; ``step`` names it for the report.

    The host still boots its previous default when this is raised during an apply. Permanent
    for this try: its failure event is ``host.upgrade.failed`` (or the health check's
    ``host.rolled_back``); the next check starts afresh.
    """

    def __init__(self, message: str, step: str = "") -> None:
        super().__init__(message)
        self.step = step
