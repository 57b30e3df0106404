"""The trigger's one error family."""

from __future__ import annotations

from imgline.core.errors import ConfigError, PermanentError


class TriggerError(PermanentError):
    """A push event that cannot be used: the text says what was wrong with it. A base only."""


class SignatureError(TriggerError):
    """The event is not signed with the forge's secret (HTTP 401): nothing is emitted."""


class PayloadError(TriggerError):
    """The event is signed but not a push event imgline can read (HTTP 400)."""


class RulesError(ConfigError):
    """The rules file cannot be used: the message names the file, the rule and the field."""
