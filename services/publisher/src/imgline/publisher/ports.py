"""What the publisher's handler needs from the outside, as Protocols: the unit tests give it
fakes, the service gives it the TUF repository and the artifact store."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from imgline.publisher.adapters.repo import Published
from imgline.schemas import payloads as p


class Releases(Protocol):
    """The signed repository, as far as publishing one release goes."""

    def publish(self, tested: p.ImageTested, image_file: Path) -> Published:
        """Sign ``image_file`` into its stream; idempotent per release. Raises
        ``IntegrityError`` when the bytes are not the tested ones, ``RetiredError`` when the
        release has left its stream, other ``ReleaseError``s (permanent) and
        ``RepositoryError`` (transient)."""
        ...

    def announce(self, build_id: str, done: Published) -> p.ImagePublished:
        """The ``image.published`` payload for a release."""
        ...


class Verdicts(Protocol):
    """The tester's stored verdicts, and the stored images by digest."""

    def verdict(self, build_id: str, sha256: str) -> p.ImageTested | None: ...

    def image(self, sha256: str) -> Path | None:
        """The stored image with this digest, if the store has it."""
        ...
