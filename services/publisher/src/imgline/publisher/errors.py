"""The publisher's error types."""

from __future__ import annotations

from imgline.core.errors import ImglineError


class PublisherError(ImglineError):
    """Publishing cannot go on: the message says what is wrong with the release or repository."""


class IntegrityError(PublisherError):
    """The image's bytes are not the ones that were tested: it is rejected, never published.
    Rebuild or re-test it; do not retry."""


class RetiredError(PublisherError):
    """A redelivered release was published long ago and has since left its stream: there is
    nothing to publish or announce again; acknowledge the message."""
