"""The publisher's error types: each is either about the release (permanent: the image is
rejected with the text) or about the repository (transient: retried, then dead-lettered so
the release can be replayed once an operator has restored the repository)."""

from __future__ import annotations

from imgline.core.errors import ConfigError, ImglineError, PermanentError, TransientError


class PublisherError(ImglineError):
    """Base of the publisher's errors; only its subclasses are raised."""


class ReleaseError(PublisherError, PermanentError):
    """This release cannot be published (it did not pass, its version was used by another
    build, its install.ks is not valid): it is rejected with this text."""


class IntegrityError(ReleaseError):
    """The image's bytes are not the ones that were tested: it is rejected, never published.
    Rebuild or re-test it; do not retry."""


class RetiredError(ReleaseError):
    """A redelivered release was published long ago and has since left its stream: there is
    nothing to publish or announce again; acknowledge the message."""


class RepositoryError(PublisherError, TransientError):
    """The repository on disk does not verify or cannot be signed: nothing is published until
    it is restored. Transient, so the release waits (retried, then dead-lettered for replay)
    instead of being rejected for the repository's fault."""


class RepositoryConfigError(PublisherError, ConfigError):
    """The publisher's configuration cannot work (no repository, a retention of zero)."""
