"""The one error type of the trust package."""

from __future__ import annotations

from typing import Literal

from imgline.core.errors import ImglineError

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


class TrustError(ImglineError):
    """Metadata, a key or a target could not be made, loaded or verified.

    The message names the role, key or target and why; ``reason`` says which kind of failure
    it is, so a caller can count them and decide: verification failures are never worth a
    blind retry (re-fetch from a good mirror, or fix the repository), ``unavailable`` and
    ``slow`` may pass.
    """

    def __init__(self, message: str, reason: Reason = "invalid") -> None:
        super().__init__(message)
        self.reason: Reason = reason
