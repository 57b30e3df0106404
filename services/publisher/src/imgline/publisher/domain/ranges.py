"""What to answer to a GET for a file of the repository, decided without touching a socket.

Hosts and anaconda (``liveimg --url=``) fetch multi-GB images over HTTP and resume a broken
download with ``Range``; caches in between must keep images forever but re-check the stream
indexes on every use. Every such decision (which bytes, which status, which validators and cache
headers, which request paths are acceptable at all) is a pure function here, so it can be tested
by table; ``imgline.publisher.http`` only does the file and socket work.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC
from email.utils import formatdate, parsedate_to_datetime
from pathlib import PurePath, PurePosixPath
from typing import Literal
from urllib.parse import unquote, urlsplit

IMMUTABLE = "public, max-age=31536000, immutable"
"""``images/`` never changes once published: caches may keep it for a year without asking."""

NO_CACHE = "no-cache"
"""Stream indexes are replaced on each publish: caches may store them but must revalidate."""

OCTET_STREAM = "application/octet-stream"

_CONTENT_TYPES = {
    ".json": "application/json",
    # our signatures are small JSON documents, not raw (PGP/CMS) signature blobs
    ".sig": "application/json",
    ".ks": "text/plain; charset=utf-8",
    ".img": OCTET_STREAM,
    ".squashfs": OCTET_STREAM,
}

_SPEC = re.compile(r"(?P<first>[0-9]*)\s*-\s*(?P<last>[0-9]*)", re.ASCII)
_ENTITY_TAG = re.compile(r'(?:W/)?"[^"]*"')
# More digits than any file can have bytes. Bounding the conversion keeps a header of thousands
# of digits from tripping int()'s digit limit (a ValueError) or costing quadratic time.
_MAX_DIGITS = 20
_HUGE = 10**_MAX_DIGITS

WholeReason = Literal["absent", "unit", "invalid", "multiple", "empty", "if-range"]


@dataclass(frozen=True, slots=True)
class WholeFile:
    """Answer 200 with the whole file: the ``Range`` header is absent or is to be ignored.

    ``reason`` says why, for logs and tests: ``absent``; ``unit`` (not ``bytes``); ``invalid``
    (RFC 9110 section 14.2 says to ignore a header that does not parse); ``multiple`` (several
    ranges, see ``parse_range``); ``empty`` (a suffix of a zero-length file is all of it, and
    206 cannot express zero bytes); ``if-range`` (the client's validator is stale).
    """

    reason: WholeReason


@dataclass(frozen=True, slots=True)
class ByteRange:
    """Answer 206 with bytes ``start``..``end`` (inclusive, as in ``Content-Range``)."""

    start: int
    end: int
    size: int

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.end < self.size:
            raise ValueError(f"byte range {self.start}-{self.end} outside a {self.size}-byte file")

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    @property
    def content_range(self) -> str:
        return f"bytes {self.start}-{self.end}/{self.size}"


@dataclass(frozen=True, slots=True)
class Unsatisfiable:
    """Answer 416: the range lies wholly past the end (e.g. a resume of a shorter, newer file)."""

    size: int

    @property
    def content_range(self) -> str:
        return f"bytes */{self.size}"


RangeResult = WholeFile | ByteRange | Unsatisfiable


def _number(digits: str) -> int:
    significant = digits.lstrip("0")
    return _HUGE if len(significant) > _MAX_DIGITS else int(significant or "0")


_Spec = tuple[int | None, int]  # (first, last) or (None, suffix length); last may be _HUGE


def _specs(range_set: str) -> list[_Spec] | None:
    """The range-specs of a ``bytes`` range-set, or ``None`` if any of them does not parse."""
    # RFC 9110 section 5.6.1.2: recipients accept and ignore empty list elements ("0-1, ,")
    specs: list[_Spec] = []
    for text in filter(None, (spec.strip() for spec in range_set.split(","))):
        match = _SPEC.fullmatch(text)
        if match is None or not (match["first"] or match["last"]):
            return None
        first = _number(match["first"]) if match["first"] else None
        last = _number(match["last"]) if match["last"] else _HUGE
        if first is not None and last < first:
            return None
        specs.append((first, last))
    return specs or None


def _select(spec: _Spec, size: int) -> RangeResult:
    first, last = spec
    if first is None:  # suffix range: the last `last` bytes
        if last == 0:
            return Unsatisfiable(size)
        if size == 0:
            return WholeFile("empty")
        return ByteRange(max(0, size - last), size - 1, size)
    if first >= size:
        return Unsatisfiable(size)
    return ByteRange(first, min(last, size - 1), size)


def parse_range(header: str | None, size: int) -> RangeResult:
    """Decide what a ``Range`` header asks of a ``size``-byte file (RFC 9110 section 14).

    Accepts ``bytes=a-b``, ``bytes=a-`` and ``bytes=-n``, with whitespace anywhere around the
    tokens and the unit in any case. A last position past the end is clamped; a suffix longer
    than the file means the whole file, as 206. A header that does not parse, or names another
    unit, is ignored rather than refused, as the RFC requires.

    Several ranges get the whole file with 200, which the RFC allows (a server may ignore
    ``Range``): nothing that fetches images asks for more than one range, and a
    ``multipart/byteranges`` body would be code that no client of ours exercises.
    """
    if size < 0:
        raise ValueError(f"file size must not be negative, got {size}")
    if header is None:
        return WholeFile("absent")
    unit, equals, range_set = header.partition("=")
    if equals and unit.strip().lower() != "bytes":
        return WholeFile("unit")
    specs = _specs(range_set) if equals else None
    if specs is None:
        return WholeFile("invalid")
    if len(specs) > 1:
        return WholeFile("multiple")
    return _select(specs[0], size)


def if_range_allows(if_range: str | None, etag: str, last_modified: str) -> bool:
    """Whether ``Range`` may be honoured given ``If-Range`` (RFC 9110 section 13.1.5).

    A resumed download must not splice bytes of a newer file onto an older one, so the
    validator has to match exactly: an entity tag by strong comparison (a weak tag never
    matches), a date by being the very ``Last-Modified`` string we send. A date is only as good
    as one-second resolution; images never change and indexes are too small to be resumed, so
    that is acceptable here. Without ``If-Range`` the range is always allowed.
    """
    if if_range is None:
        return True
    validator = if_range.strip()
    if validator.startswith(('"', "W/")):
        return not validator.startswith("W/") and not etag.startswith("W/") and validator == etag
    return validator == last_modified


def _opaque(tag: str) -> str:
    return tag.removeprefix("W/")


def not_modified(
    if_none_match: str | None, if_modified_since: str | None, etag: str, mtime: float
) -> bool:
    """Whether a GET or HEAD should get 304 (RFC 9110 sections 13.1.2, 13.1.3 and 13.2.2).

    ``If-None-Match`` uses weak comparison (any tag in the list, ``W/`` or not, or ``*``) and,
    when present, ``If-Modified-Since`` is not looked at. A date that does not parse is ignored.
    """
    if if_none_match is not None:
        tags = if_none_match.strip()
        if tags == "*":
            return True
        return any(_opaque(tag) == _opaque(etag) for tag in _ENTITY_TAG.findall(tags))
    if if_modified_since is None:
        return False
    try:
        since = parsedate_to_datetime(if_modified_since.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return False
    if since.tzinfo is None:  # "-0000" parses naive; HTTP dates are GMT
        since = since.replace(tzinfo=UTC)
    # Last-Modified is sent in whole seconds, so that is what the client can echo back
    return math.floor(mtime) <= since.timestamp()


def make_etag(size: int, mtime_ns: int, inode: int) -> str:
    """A strong entity tag for a file on disk.

    Publishing replaces an index by rename, which gives it a new inode even when size and
    mtime happen to match the old one, so all three together tell versions apart.
    """
    return f'"{inode:x}-{mtime_ns:x}-{size:x}"'


def http_date(timestamp: float) -> str:
    """``Last-Modified`` form (IMF-fixdate), e.g. ``Mon, 23 Nov 2026 10:00:00 GMT``."""
    return formatdate(timestamp, usegmt=True)


def content_type(path: str | PurePath) -> str:
    """The ``Content-Type`` for a repository file, by its name; unknown names are opaque bytes."""
    suffix = PurePosixPath(str(path)).suffix.lower()
    return _CONTENT_TYPES.get(suffix, OCTET_STREAM)


def cache_control(relpath: str | PurePath) -> str:
    """``Cache-Control`` for a path relative to the repository root.

    Only files under ``images/`` are immutable; everything else (stream indexes and their
    signatures above all) must be revalidated, because a stale index would hide a release or
    keep a withdrawn one alive.
    """
    parts = PurePosixPath(str(relpath).lstrip("/")).parts
    return IMMUTABLE if len(parts) > 1 and parts[0] == "images" else NO_CACHE


def request_path_parts(target: str) -> tuple[str, ...] | None:
    """The path components a request target names, or ``None`` if it must not be served.

    Each ``/``-separated segment is percent-decoded on its own, so ``%2F`` cannot smuggle in a
    separator, and a decoded segment is refused when it is empty (``//``, the root, a trailing
    ``/``), starts with a dot (``.``, ``..``, ``%2e%2e``, dot-files and the publisher's
    ``.tmp-*`` files while they are written), or holds ``/``, ``\\`` or a control character. The
    query string is ignored; an absolute-form target (``http://host/path``) is taken by its path.
    """
    path = target
    if path[:7].lower() == "http://" or path[:8].lower() == "https://":
        path = urlsplit(path).path
    path = path.partition("?")[0].partition("#")[0]
    if not path.startswith("/"):
        return None
    parts: list[str] = []
    for segment in path[1:].split("/"):
        try:
            name = unquote(segment, errors="strict")
        except UnicodeDecodeError:
            return None
        if not name or name.startswith(".") or "/" in name or "\\" in name:
            return None
        if not name.isprintable():
            return None
        parts.append(name)
    return tuple(parts)
