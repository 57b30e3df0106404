"""The one error type of the trust package."""

from __future__ import annotations

from typing import Literal

from imgline.core.errors import ImglineError, PermanentError, TransientError

Reason = Literal[
    "invalid",  # malformed metadata or a broken repository on disk
    "unsigned",  # not signed by a threshold of trusted keys (tampered, revoked key)
    "rollback",  # older than what the host already trusts
    "expired",  # past its expiry: a frozen mirror or a stopped publisher
    "tampered",  # bytes that do not match the signed length or hash
    "too_large",  # more bytes than the signed length or the configured bound
    "slow",  # a server that trickles bytes
    "unavailable",  # cannot be reached, or answers with an HTTP error
    "not_found",  # no such stream, release or target in the signed metadata
    "wrong_stream",  # a target or manifest that belongs to another stream
    "no_space",  # not enough free space for a download
]


#: The reasons that may pass by waiting; every other one is a verdict on the bytes.
TRANSIENT_REASONS: frozenset[Reason] = frozenset({"unavailable", "slow", "no_space"})


class TrustError(ImglineError):
    """Metadata, a key or a target could not be made, loaded or verified.

    The message names the role, key or target and why; ``reason`` says which kind of failure
    it is, so a caller can count them and decide: verification failures are never worth a
    blind retry (re-fetch from a good mirror, or fix the repository), ``unavailable`` and
    ``slow`` may pass. ``TrustError(message, reason)`` therefore makes a
    ``TrustUnavailableError`` (transient) or a ``VerificationError`` (permanent), chosen by the
    reason, so the one error model holds without every raise having to choose.
    """

    def __new__(cls, message: str = "", reason: Reason = "invalid") -> TrustError:
        kind: type[TrustError] = cls
        if cls is TrustError:
            kind = TrustUnavailableError if reason in TRANSIENT_REASONS else VerificationError
        return super().__new__(kind, message, reason)

    def __init__(self, message: str = "", reason: Reason = "invalid") -> None:
        super().__init__(message)
        self.reason: Reason = reason


class VerificationError(TrustError, PermanentError):
    """The bytes or the metadata are not what a threshold of trusted keys signed (or are
    missing from it): the same input fails the same way."""


class TrustUnavailableError(TrustError, TransientError):
    """The repository could not be read in time, or there is no room for the download."""
