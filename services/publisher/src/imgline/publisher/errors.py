"""The publisher's error types: each is either about the release (permanent: the image is
rejected with the text) or about the repository (transient: retried, and only on the last try
rejected, so the release can be sent again once an operator has restored the repository)."""

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
    """The repository on disk does not verify, cannot be signed, or its disk is full: nothing
    is published until it is restored. Transient, so the release waits through the retries
    instead of being rejected at once for the repository's fault; only on the last try does
    it end in ``image.rejected`` ("gave up after N attempts: ..."), and the same
    ``image.tested`` sent again once the repository is restored is published."""


class RepositoryConfigError(PublisherError, ConfigError):
    """The publisher's configuration cannot work (no repository, a retention of zero)."""
