"""Errors of the builder; each says what the person who sent the build should fix."""

from __future__ import annotations

from imgline.core.errors import ImglineError, PermanentError, TransientError


class BuilderError(ImglineError):
    """Base of the builder's errors."""


class KickstartError(PermanentError, BuilderError):
    """The kickstart is wrong: fix the named line and push again."""

    def __init__(self, message: str, line: int | None = None, path: str | None = None) -> None:
        where = f"{path or 'kickstart'}:{line}: " if line else (f"{path}: " if path else "")
        super().__init__(f"{where}{message}")
        self.line = line
        self.path = path
        self.detail = message


class SourceError(PermanentError, BuilderError):
    """The git repository, ref or kickstart path in the request cannot be used: fix the request."""


class SourceUnavailableError(TransientError, BuilderError):
    """The git server did not answer; the build is retried."""


class BackendError(PermanentError, BuilderError):
    """The build backend failed on this kickstart (a package that does not exist, a failing %post
    script): the build log beside the artefact has the details; ``line`` points at the kickstart
    line to fix when one is to blame."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


class BackendTransientError(TransientError, BuilderError):
    """The backend failed for a reason that may pass (the package mirror did not answer)."""


class BackendUnavailableError(PermanentError, BuilderError):
    """The requested backend cannot run on this builder host (e.g. livemedia-creator off Fedora/EL):
    send the build to a builder that has it, or choose another backend."""
