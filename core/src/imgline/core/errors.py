"""The one error family of imgline-core; services derive theirs from these.

Handlers raise ``TransientError`` for what may pass (retry, bounded by the delivery limit) and
``PermanentError`` for what never will (dead-letter at once, with the reason).
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


class ConfigError(ImglineError):
    """The configuration file or an ``IMGLINE_*`` variable is wrong: fix the named key."""


class BrokerError(ImglineError):
    """RabbitMQ could not be started, reached or used: the text names the command or URL."""


class UnroutableError(BrokerError, TransientError):
    """The broker returned an event no queue is bound for: nothing was delivered. Transient,
    since the topology may be declared meanwhile (a service starting, definitions imported)."""


class AccessRefusedError(BrokerError, PermanentError):
    """The broker refused this user the operation (a topic it does not own, a queue it may not
    touch). Permanent: retrying with the same user cannot help; the permissions or the code
    are wrong (docs/security.md)."""
