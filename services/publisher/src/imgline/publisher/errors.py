"""The publisher's one error type."""

from __future__ import annotations

from imgline.core.errors import ImglineError


class PublisherError(ImglineError):
    """Publishing cannot go on: the message says what is wrong with the release or repository."""
