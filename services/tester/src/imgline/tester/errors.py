"""The tester's one error type."""

from __future__ import annotations

from imgline.core.errors import ConfigError


class PlanError(ConfigError):
    """The test plan cannot be used: the message names the file, the table and the field.

    A ``ConfigError`` because a bad plan is the operator's to fix; no image is tested with it.
    """
