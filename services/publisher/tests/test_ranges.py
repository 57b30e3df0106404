"""HTTP serving decisions by table: byte ranges, validators, cache and content headers, paths."""

from __future__ import annotations

import pytest

from imgline.publisher.domain.ranges import (
    IMMUTABLE,
    NO_CACHE,
    ByteRange,
    RangeResult,
    Unsatisfiable,
    WholeFile,
    cache_control,
    content_type,
    http_date,
    if_range_allows,
    make_etag,
    not_modified,
    parse_range,
    request_path_parts,
)

pytestmark = pytest.mark.unit

GIB = 1 << 30


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        # absent, other units, garbage: ignored, whole file
        (None, 100, WholeFile("absent")),
        ("items=0-5", 100, WholeFile("unit")),
        ("bytes 0-5", 100, WholeFile("invalid")),
        ("bytes", 100, WholeFile("invalid")),
        ("bytes=", 100, WholeFile("invalid")),
        ("bytes=,", 100, WholeFile("invalid")),
        ("bytes=-", 100, WholeFile("invalid")),
        ("bytes=abc", 100, WholeFile("invalid")),
        ("bytes=5-a", 100, WholeFile("invalid")),
        ("bytes=1-2-3", 100, WholeFile("invalid")),
        ("bytes=+1-2", 100, WholeFile("invalid")),
        ("bytes=0x10-", 100, WholeFile("invalid")),
        ("bytes=\u0661-2", 100, WholeFile("invalid")),  # int() would take Arabic-Indic digits
        ("bytes=5-4", 100, WholeFile("invalid")),  # last before first: invalid, not 416
        ("", 100, WholeFile("invalid")),
        # several ranges: whole file with 200
        ("bytes=0-1,5-6", 100, WholeFile("multiple")),
        ("bytes=0-1, -5", 100, WholeFile("multiple")),
        ("bytes=0-1,junk", 100, WholeFile("invalid")),
        # one range
        ("bytes=0-0", 100, ByteRange(0, 0, 100)),
        ("bytes=0-99", 100, ByteRange(0, 99, 100)),
        ("bytes=10-19", 100, ByteRange(10, 19, 100)),
        ("bytes=99-99", 100, ByteRange(99, 99, 100)),
        ("bytes=50-", 100, ByteRange(50, 99, 100)),
        ("bytes=0-", 100, ByteRange(0, 99, 100)),
        ("bytes=90-1000", 100, ByteRange(90, 99, 100)),  # end clamped
        ("bytes=-1", 100, ByteRange(99, 99, 100)),
        ("bytes=-10", 100, ByteRange(90, 99, 100)),
        ("bytes=-100", 100, ByteRange(0, 99, 100)),
        ("bytes=-5000", 100, ByteRange(0, 99, 100)),  # suffix longer than the file: all of it
        # tolerance: whitespace, case, leading zeros, empty list elements
        ("  bytes = 10 - 19  ", 100, ByteRange(10, 19, 100)),
        ("BYTES=10-19", 100, ByteRange(10, 19, 100)),
        ("bytes=\t-10", 100, ByteRange(90, 99, 100)),
        ("bytes=010-019", 100, ByteRange(10, 19, 100)),
        ("bytes=10-19, ,", 100, ByteRange(10, 19, 100)),
        # unsatisfiable
        ("bytes=100-", 100, Unsatisfiable(100)),
        ("bytes=100-200", 100, Unsatisfiable(100)),
        ("bytes=-0", 100, Unsatisfiable(100)),
        ("bytes=-000", 100, Unsatisfiable(100)),
        ("bytes=0-", 0, Unsatisfiable(0)),
        ("bytes=0-0", 0, Unsatisfiable(0)),
        ("bytes=-0", 0, Unsatisfiable(0)),
        ("bytes=-5", 0, WholeFile("empty")),
        # multi-GB files, and numbers no file can reach
        ("bytes=4294967290-4294967299", 6 * GIB, ByteRange(4294967290, 4294967299, 6 * GIB)),
        ("bytes=-16", 6 * GIB, ByteRange(6 * GIB - 16, 6 * GIB - 1, 6 * GIB)),
        ("bytes=6442450944-", 6 * GIB, Unsatisfiable(6 * GIB)),
        ("bytes=0-" + "9" * 5000, 100, ByteRange(0, 99, 100)),
        ("bytes=" + "9" * 5000 + "-", 100, Unsatisfiable(100)),
        ("bytes=-" + "9" * 5000, 100, ByteRange(0, 99, 100)),
        ("bytes=" + "0" * 5000 + "7-8", 100, ByteRange(7, 8, 100)),
    ],
)
def test_parse_range(header: str | None, size: int, expected: RangeResult) -> None:
    assert parse_range(header, size) == expected


def test_range_headers() -> None:
    byte_range = ByteRange(10, 19, 100)
    assert byte_range.length == 10
    assert byte_range.content_range == "bytes 10-19/100"
    assert ByteRange(0, 0, 1).length == 1
    assert Unsatisfiable(100).content_range == "bytes */100"


@pytest.mark.parametrize(("start", "end", "size"), [(-1, 0, 10), (5, 4, 10), (0, 10, 10)])
def test_byte_range_rejects_impossible_values(start: int, end: int, size: int) -> None:
    with pytest.raises(ValueError, match="outside"):
        ByteRange(start, end, size)


def test_negative_size_is_an_error() -> None:
    with pytest.raises(ValueError, match="negative"):
        parse_range("bytes=0-1", -1)


ETAG = make_etag(size=100, mtime_ns=1_700_000_000_123_456_789, inode=42)
DATE = http_date(1_700_000_000.5)


def test_validators() -> None:
    assert ETAG == f'"2a-{1_700_000_000_123_456_789:x}-64"'  # strong: inode-mtime_ns-size
    assert make_etag(100, 1, 42) != make_etag(100, 1, 43)  # a rename gives a new inode
    assert DATE == "Tue, 14 Nov 2023 22:13:20 GMT"


@pytest.mark.parametrize(
    ("if_range", "allowed"),
    [
        (None, True),
        (ETAG, True),
        (f"  {ETAG} ", True),
        ('"stale"', False),
        (f"W/{ETAG}", False),  # weak tags never match If-Range
        (DATE, True),
        ("Tue, 14 Nov 2023 22:13:21 GMT", False),
        ("Tuesday, 14-Nov-23 22:13:20 GMT", False),  # same instant, not the same string
        ("", False),
        ("garbage", False),
    ],
)
def test_if_range(if_range: str | None, allowed: bool) -> None:
    assert if_range_allows(if_range, ETAG, DATE) is allowed


MTIME = 1_700_000_000.5


@pytest.mark.parametrize(
    ("if_none_match", "if_modified_since", "expected"),
    [
        (None, None, False),
        (ETAG, None, True),
        (f"W/{ETAG}", None, True),  # weak comparison
        ('"a", ' + ETAG, None, True),
        ('"a,b", "c"', None, False),  # a comma inside a tag does not split it
        ("*", None, True),
        ('"other"', None, False),
        ("garbage", None, False),
        ('"other"', DATE, False),  # If-None-Match present: If-Modified-Since is not looked at
        (None, DATE, True),
        (None, "Tue, 14 Nov 2023 22:13:19 GMT", False),
        (None, "Wed, 15 Nov 2023 00:00:00 GMT", True),
        (None, "Tue, 14 Nov 2023 22:13:20 -0000", True),
        (None, "not a date", False),
        (None, "", False),
    ],
)
def test_not_modified(
    if_none_match: str | None, if_modified_since: str | None, expected: bool
) -> None:
    assert not_modified(if_none_match, if_modified_since, ETAG, MTIME) is expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("streams/stable/index.json", "application/json"),
        ("streams/stable/index.json.sig", "application/json"),
        ("images/node/20261123.1/manifest.json.sig", "application/json"),
        ("images/node/20261123.1/install.ks", "text/plain; charset=utf-8"),
        ("images/node/20261123.1/node-20261123.1.squashfs.img", "application/octet-stream"),
        ("images/node/20261123.1/root.squashfs", "application/octet-stream"),
        ("INDEX.JSON", "application/json"),
        ("README", "application/octet-stream"),
        ("notes.txt", "application/octet-stream"),
    ],
)
def test_content_type(path: str, expected: str) -> None:
    assert content_type(path) == expected


@pytest.mark.parametrize(
    ("relpath", "expected"),
    [
        ("images/node/20261123.1/node-20261123.1.squashfs.img", IMMUTABLE),
        ("/images/node/20261123.1/manifest.json", IMMUTABLE),
        ("images/node/20261123.1/install.ks", IMMUTABLE),
        ("streams/stable/index.json", NO_CACHE),
        ("streams/stable/index.json.sig", NO_CACHE),
        ("images", NO_CACHE),
        ("imagesx/node/1/a.img", NO_CACHE),
        ("other/images/a.img", NO_CACHE),
        ("robots.txt", NO_CACHE),
        ("", NO_CACHE),
    ],
)
def test_cache_control(relpath: str, expected: str) -> None:
    assert cache_control(relpath) == expected
    assert IMMUTABLE == "public, max-age=31536000, immutable"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/streams/stable/index.json", ("streams", "stable", "index.json")),
        ("/streams/stable/index.json?x=1#frag", ("streams", "stable", "index.json")),
        ("/images/a%20b/c.img", ("images", "a b", "c.img")),
        ("/images/%E2%82%AC.img", ("images", "\u20ac.img")),
        ("/images/%252e%252e/x", ("images", "%2e%2e", "x")),  # decoded once only
        ("http://repo.example.org/streams/s/index.json", ("streams", "s", "index.json")),
        ("/", None),
        ("", None),
        ("*", None),
        ("images/x", None),
        ("/images/", None),
        ("/images//x", None),
        ("//etc/passwd", None),
        ("/../etc/passwd", None),
        ("/images/../../etc/passwd", None),
        ("/images/./x", None),
        ("/%2e%2e/etc/passwd", None),
        ("/%2E%2E/etc/passwd", None),
        ("/images/%2e%2e%2f%2e%2e/etc/passwd", None),
        ("/images/..%2Fetc", None),
        ("/images%2F..%2F..%2Fetc%2Fpasswd", None),
        ("/%2Fetc/passwd", None),
        ("/images/..%5C..%5Cx", None),
        ("/.git/config", None),
        ("/images/node/.tmp-1234", None),
        ("/streams/stable/.index.json.tmp", None),
        ("/images/a%00.img", None),
        ("/images/a%1b[31m", None),
        ("/images/%ff.img", None),  # not UTF-8
        ("http://repo.example.org//etc/passwd", None),
    ],
)
def test_request_path_parts(target: str, expected: tuple[str, ...] | None) -> None:
    assert request_path_parts(target) == expected
