"""The updater's one error type: every message says what failed and what the admin can do."""

from __future__ import annotations

from imgline.core.errors import ImglineError


class UpdaterError(ImglineError):
    """An install, apply, rollback or health step failed; ``step`` names it for the report.

    The host still boots its previous default when this is raised during an apply.
    """

    def __init__(self, message: str, step: str = "") -> None:
        super().__init__(message)
        self.step = step
