"""The one error family of imgline-core; services derive theirs from these.

Every error imgline raises is either ``TransientError`` (what may pass: retried, bounded by the
delivery limit) or ``PermanentError`` (what never will for this input: the stage's failure
event). A few bases (``BrokerError`` here, a service's own error type) only group their
subclasses and are never raised themselves; a test holds every package to that
(docs/architecture.md, "Errors and idempotency").
"""

from __future__ import annotations


class ImglineError(Exception):
    """Base of every error imgline raises on purpose; the message says what to do about it."""


class TransientError(ImglineError):
    """Worth another try (a remote that was down, a lock held): the message is redelivered until
    the delivery limit, then dead-lettered. Raise it when waiting could fix the problem."""


class PermanentError(ImglineError):
    """Never going to work for this message (bad input, a contract violation): the message is
    dead-lettered at once with this text as the reason. Publish any ``*.failed`` event first."""


class RetriesExhaustedError(PermanentError):
    """A transient error on the last try a message has: the stage answers with its failure
    event (naming ``cause``), so a request never ends in silence."""

    def __init__(self, attempts: int, cause: TransientError) -> None:
        super().__init__(f"gave up after {attempts} attempts: {cause}")
        self.attempts = attempts
        self.cause = cause


class ConfigError(TransientError):
    """The configuration file or an ``IMGLINE_*`` variable is wrong: fix the named key.

    Transient, because the input is not at fault: a message that meets it is retried and then
    dead-lettered, to be replayed once an operator fixed the setting, never answered with a
    failure event that would blame the build or the image."""


class BrokerError(ImglineError):
    """RabbitMQ could not be started, reached or used: the text names the command or URL.
    A base only; raise one of its subclasses."""


class BrokerUnavailableError(BrokerError, TransientError):
    """The broker could not be started or reached, or did not confirm a publish."""


class UnroutableError(BrokerError, TransientError):
    """The broker returned an event no queue is bound for: nothing was delivered. Transient,
    since the topology may be declared meanwhile (a service starting, definitions imported)."""


class AccessRefusedError(BrokerError, PermanentError):
    """The broker refused this user the operation (a topic it does not own, a queue it may not
    touch). Permanent: retrying with the same user cannot help; the permissions or the code
    are wrong (docs/security.md)."""
