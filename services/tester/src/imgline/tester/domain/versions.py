"""Package version ordering, the way the image's own package manager orders them.

The tester reads the package database inside the image (dpkg's status file or the rpm
database) and checks the minimum versions the TOML test plan asks for ("openssl at least
3.0.11-1~deb12u2"). A plain string or tuple comparison gets ``~rc`` releases, epochs and
Debian's ``+b1`` rebuilds wrong, so both orderings are written out here: dpkg's for Debian
images, rpmvercmp's for Fedora-family ones.

Both functions return -1, 0 or 1, like ``cmp``.
"""

from __future__ import annotations

import re

__all__ = ["VersionError", "compare_deb", "compare_rpm"]


class VersionError(ValueError):
    """A version string that the package manager would refuse."""


def _sign(n: int) -> int:
    return (n > 0) - (n < 0)


# --- Debian (dpkg) ---------------------------------------------------------------------------

_DEB_CHARS = re.compile(r"[A-Za-z0-9.+~:-]*")
_DEB_PARTS = re.compile(r"(\D*)(\d*)")
_DEB_MAX_EPOCH = 2**31 - 1  # dpkg keeps the epoch in a C int


def _split_epoch(kind: str, version: str, chars: re.Pattern[str], allowed: str) -> tuple[int, str]:
    """Check the characters and split ``[epoch:]rest`` (dpkg and rpm agree on this part)."""
    if not version:
        raise VersionError(f"{kind} version is empty")
    if not chars.fullmatch(version):
        raise VersionError(f"{kind} version {version!r} has characters outside {allowed}")
    epoch_text, colon, rest = version.partition(":")
    if not colon:
        return 0, version
    if not epoch_text.isdigit():
        raise VersionError(f"{kind} version {version!r}: epoch {epoch_text!r} is not a number")
    return int(epoch_text), rest


def _parse_deb(version: str) -> tuple[int, str, str]:
    """Split ``[epoch:]upstream[-revision]``; the revision follows the last hyphen."""
    epoch, rest = _split_epoch("Debian", version, _DEB_CHARS, "[A-Za-z0-9.+~:-]")
    if epoch > _DEB_MAX_EPOCH:
        raise VersionError(f"Debian version {version!r}: epoch is too big")
    upstream, hyphen, revision = rest.rpartition("-")
    if not hyphen:
        upstream, revision = rest, ""
    elif not revision:
        raise VersionError(f"Debian version {version!r}: revision after '-' is empty")
    if not upstream:
        raise VersionError(f"Debian version {version!r}: upstream version is empty")
    if ":" in revision:
        raise VersionError(f"Debian version {version!r}: revision {revision!r} contains ':'")
    # dpkg only warns when upstream does not start with a digit; so do we (by accepting it).
    return epoch, upstream, revision


def _deb_order(text: str, i: int) -> int:
    """dpkg's weight of ``text[i]``: ``~`` < end of string < letters < other characters."""
    if i >= len(text):
        return 0
    c = text[i]
    if c == "~":
        return -1
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def _deb_fragment_cmp(a: str, b: str) -> int:
    """Compare an upstream version or a revision: non-digit runs, then numbers, alternately."""
    parts_a = [m.groups() for m in _DEB_PARTS.finditer(a) if m.group()]
    parts_b = [m.groups() for m in _DEB_PARTS.finditer(b) if m.group()]
    for k in range(max(len(parts_a), len(parts_b))):
        text_a, digits_a = parts_a[k] if k < len(parts_a) else ("", "")
        text_b, digits_b = parts_b[k] if k < len(parts_b) else ("", "")
        for i in range(max(len(text_a), len(text_b))):
            diff = _deb_order(text_a, i) - _deb_order(text_b, i)
            if diff:
                return _sign(diff)
        diff = int(digits_a or "0") - int(digits_b or "0")
        if diff:
            return _sign(diff)
    return 0


def compare_deb(a: str, b: str) -> int:
    """Order two Debian versions as ``dpkg --compare-versions`` does."""
    epoch_a, upstream_a, revision_a = _parse_deb(a)
    epoch_b, upstream_b, revision_b = _parse_deb(b)
    return (
        _sign(epoch_a - epoch_b)
        or _deb_fragment_cmp(upstream_a, upstream_b)
        or _deb_fragment_cmp(revision_a, revision_b)
    )


# --- RPM (rpmvercmp) -------------------------------------------------------------------------

# Characters rpmbuild allows in Version and Release, plus the epoch and release separators.
_RPM_CHARS = re.compile(r"[A-Za-z0-9._+~^:-]*")
# Tokens rpmvercmp looks at; every other allowed character only separates segments.
_RPM_TOKENS = re.compile(r"[0-9]+|[A-Za-z]+|[~^]")


def _parse_rpm(version: str) -> tuple[int, str, str | None]:
    """Split ``[epoch:]version[-release]``; the release follows the last hyphen."""
    epoch, rest = _split_epoch("RPM", version, _RPM_CHARS, "[A-Za-z0-9._+~^:-]")
    if ":" in rest:
        raise VersionError(f"RPM version {version!r} has more than one ':'")
    ver, hyphen, release = rest.rpartition("-")
    if not hyphen:
        return epoch, rest, None
    if not ver or not release:
        raise VersionError(f"RPM version {version!r}: empty version or release around '-'")
    return epoch, ver, release


def _rpm_segment_cmp(x: str, y: str) -> int:
    """Compare two alphanumeric segments; a number is newer than letters."""
    x_num, y_num = x.isdigit(), y.isdigit()
    if x_num != y_num:
        return 1 if x_num else -1
    if x_num:
        return _sign(int(x) - int(y))
    return (x > y) - (x < y)


def _rpm_token_cmp(x: str | None, y: str | None) -> int:
    """Compare the tokens at one position; ``None`` is the end of the string."""
    if x == y:
        return 0
    if x == "~" or y == "~":
        # A tilde sorts before anything, the end of the string included.
        return -1 if x == "~" else 1
    if x == "^" or y == "^":
        # A caret sorts after the end of the string but before any further segment.
        if x is None or y is None:
            return -1 if x is None else 1
        return 1 if y == "^" else -1
    if x is None or y is None:
        # The longer string wins once everything before agrees.
        return -1 if x is None else 1
    return _rpm_segment_cmp(x, y)


def _rpmvercmp(a: str, b: str) -> int:
    """rpm's comparison of one version or release string (no epoch, no ``-``)."""
    tokens_a = _RPM_TOKENS.findall(a)
    tokens_b = _RPM_TOKENS.findall(b)
    for k in range(max(len(tokens_a), len(tokens_b))):
        x = tokens_a[k] if k < len(tokens_a) else None
        y = tokens_b[k] if k < len(tokens_b) else None
        diff = _rpm_token_cmp(x, y)
        if diff:
            return diff
    return 0


def compare_rpm(a: str, b: str) -> int:
    """Order two RPM ``[epoch:]version[-release]`` strings as rpm does.

    The epoch defaults to 0. When either side has no release, releases are not compared, so
    ``1.0`` equals ``1.0-5``: that is how rpm reads a requirement on a version alone.
    """
    epoch_a, version_a, release_a = _parse_rpm(a)
    epoch_b, version_b, release_b = _parse_rpm(b)
    result = _sign(epoch_a - epoch_b) or _rpmvercmp(version_a, version_b)
    if result or release_a is None or release_b is None:
        return result
    return _rpmvercmp(release_a, release_b)
