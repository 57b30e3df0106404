"""The publisher's HTTP server over a fake TUF repository and real sockets.

What hosts and anaconda rely on: ranged reads anywhere in a multi-GB image (a sparse 6 GiB file,
so offsets past 4 GiB are exercised without writing 6 GiB), an interrupted download resumed to
the same bytes, validators and 304, timestamp.json revalidated while everything else is cached
forever, and nothing but metadata/ and targets/ ever served.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest

from imgline.publisher.http import RunningServer, running

pytestmark = pytest.mark.image

GIB = 1 << 30
MIB = 1 << 20
IMMUTABLE = "public, max-age=31536000, immutable"
SECRET = b"never served"

BIG_SIZE = 6 * GIB
BIG_MARKS = {0: b"<start>", 4 * GIB - 7: b"<across 4 GiB>", BIG_SIZE - 9: b"<the end>"}
BIG = "/targets/stable/big/1/" + "b" * 64 + ".big-1.squashfs.img"
NODE = "/targets/stable/node/1/" + "a" * 64 + ".node-1.squashfs.img"
KS = "/targets/stable/node/1/" + "c" * 64 + ".install.ks"
TIMESTAMP = "/metadata/timestamp.json"
ROOT_JSON = "/metadata/1.root.json"


def big_bytes(start: int, end: int) -> bytes:
    """What the sparse file holds at ``start``..``end`` (inclusive): zeros and the marks."""
    out = bytearray(end - start + 1)
    for offset, mark in BIG_MARKS.items():
        lo, hi = max(start, offset), min(end + 1, offset + len(mark))
        if lo < hi:
            out[lo - start : hi - start] = mark[lo - offset : hi - offset]
    return bytes(out)


@dataclass(frozen=True)
class Repo:
    root: Path
    node: bytes


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    base = tmp_path_factory.mktemp("http")
    (base / "outside.txt").write_bytes(SECRET)
    root = base / "repo"
    (root / "metadata").mkdir(parents=True)
    (root / TIMESTAMP[1:]).write_text('{"signed": {"_type": "timestamp"}}\n')
    (root / ROOT_JSON[1:]).write_text('{"signed": {"_type": "root"}}\n')
    (root / (ROOT_JSON[1:] + ".gz")).write_bytes(b"\x1f\x8bnot what was asked for")
    node = os.urandom(64 * MIB + 12345)  # more than socket buffers hold
    (root / NODE[1:]).parent.mkdir(parents=True)
    (root / NODE[1:]).write_bytes(node)
    (root / KS[1:]).write_text("liveimg --url=http://x/\n")
    (root / BIG[1:]).parent.mkdir(parents=True)
    with (root / BIG[1:]).open("wb") as f:
        f.truncate(BIG_SIZE)
        for offset, mark in BIG_MARKS.items():
            os.pwrite(f.fileno(), mark, offset)
    # what must never be served
    (root / ".state").mkdir()
    (root / ".state" / "ledger").write_bytes(SECRET)
    (root / "targets/stable/node/.tmp-x").write_bytes(SECRET)
    (root / "other.json").write_bytes(SECRET)
    (root / "targets/escape.img").symlink_to(base / "outside.txt")
    (root / "targets/relative-escape.img").symlink_to(Path("../../outside.txt"))
    (root / "targets/state.img").symlink_to(root / ".state" / "ledger")
    (root / "targets/loop").symlink_to("loop")
    os.mkfifo(root / "targets/pipe")
    # a link inside the root is followed; one to timestamp.json is not cacheable
    (root / "targets/latest.json").symlink_to(Path("../metadata/timestamp.json"))
    return Repo(root, node)


@pytest.fixture(scope="module")
def server(repo: Repo) -> Iterator[RunningServer]:
    with running(repo.root) as srv:
        yield srv


@dataclass(frozen=True)
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def ask(conn: http.client.HTTPConnection, method: str, path: str, **headers: str) -> Reply:
    conn.request(method, path, headers={k.replace("_", "-"): v for k, v in headers.items()})
    with closing(conn.getresponse()) as resp:
        return Reply(resp.status, resp.headers, resp.read())


def fetch(server: RunningServer, path: str, method: str = "GET", **headers: str) -> Reply:
    with closing(http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)) as conn:
        return ask(conn, method, path, **headers)


def test_root_must_be_a_directory(tmp_path: Path) -> None:
    (tmp_path / "file").touch()
    for root in (tmp_path / "missing", tmp_path / "file"):
        with pytest.raises(NotADirectoryError), running(root):
            pass


def test_ipv6_and_a_clean_stop(repo: Repo) -> None:
    with running(repo.root, host="::1") as srv:
        assert srv.url == f"http://[::1]:{srv.port}/"
        with closing(http.client.HTTPConnection("::1", srv.port, timeout=10)) as conn:
            assert ask(conn, "GET", TIMESTAMP).status == 200
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("::1", srv.port), timeout=5).close()


@pytest.mark.parametrize(
    ("path", "content_type", "cache"),
    [
        (TIMESTAMP, "application/json", "no-cache"),
        (ROOT_JSON, "application/json", IMMUTABLE),
        (NODE, "application/octet-stream", IMMUTABLE),
        (KS, "text/plain; charset=utf-8", IMMUTABLE),
        ("/targets/latest.json", "application/json", "no-cache"),
    ],
)
def test_content_type_and_cache_control(
    server: RunningServer, path: str, content_type: str, cache: str
) -> None:
    reply = fetch(server, path, "HEAD")
    assert reply.status == 200
    assert reply.body == b""
    assert reply.headers["Content-Type"] == content_type
    assert reply.headers["Cache-Control"] == cache
    assert reply.headers["Accept-Ranges"] == "bytes"


def test_no_compression(server: RunningServer, repo: Repo) -> None:
    # aiohttp would send the 1.root.json.gz sibling to a client accepting gzip
    reply = fetch(server, ROOT_JSON, Accept_Encoding="gzip, br")
    assert reply.body == (repo.root / ROOT_JSON[1:]).read_bytes()
    assert reply.headers["Content-Encoding"] is None


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-6", 0, 6),
        (f"bytes={4 * GIB - 100}-{4 * GIB + 100}", 4 * GIB - 100, 4 * GIB + 100),
        (f"bytes={5 * GIB}-{5 * GIB + 63}", 5 * GIB, 5 * GIB + 63),  # a hole: zeros
        ("bytes=-9", BIG_SIZE - 9, BIG_SIZE - 1),
        (f"bytes={BIG_SIZE - 40}-", BIG_SIZE - 40, BIG_SIZE - 1),
        (f"bytes={BIG_SIZE - 9}-{BIG_SIZE + 5000}", BIG_SIZE - 9, BIG_SIZE - 1),
    ],
)
def test_ranges_in_a_6_gib_file(server: RunningServer, header: str, start: int, end: int) -> None:
    reply = fetch(server, BIG, Range=header)
    assert reply.status == 206
    assert reply.headers["Content-Range"] == f"bytes {start}-{end}/{BIG_SIZE}"
    assert reply.headers["Content-Length"] == str(end - start + 1)
    assert reply.body == big_bytes(start, end)


def test_unsatisfiable_range_is_416(server: RunningServer) -> None:
    reply = fetch(server, BIG, Range=f"bytes={BIG_SIZE}-")
    assert reply.status == 416
    assert reply.headers["Content-Range"] == f"bytes */{BIG_SIZE}"
    assert reply.headers["Cache-Control"] == "no-cache"


def test_range_is_for_get_and_one_range_only(server: RunningServer) -> None:
    whole = fetch(server, KS)
    head = fetch(server, KS, "HEAD", Range="bytes=0-6")
    assert (head.status, head.headers["Content-Length"]) == (200, str(len(whole.body)))
    several = fetch(server, KS, Range="bytes=0-1,4-5")  # as nginx with max_ranges 1
    assert (several.status, several.body) == (200, whole.body)


def test_if_range(server: RunningServer) -> None:
    whole = fetch(server, KS)
    etag = whole.headers["ETag"]
    fresh = fetch(server, KS, Range="bytes=0-6", If_Range=etag)
    assert (fresh.status, fresh.body) == (206, b"liveimg")
    for stale in ('"stale"', f"W/{etag}"):  # If-Range compares strongly
        reply = fetch(server, KS, Range="bytes=0-6", If_Range=stale)
        assert (reply.status, reply.body) == (200, whole.body), stale
        assert reply.headers["Content-Range"] is None


def test_if_none_match_gets_304(server: RunningServer) -> None:
    for path, cache in ((TIMESTAMP, "no-cache"), (NODE, IMMUTABLE)):
        etag = fetch(server, path, "HEAD").headers["ETag"]
        assert re.fullmatch(r'"[0-9a-f]+-[0-9a-f]+"', etag)
        with closing(http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)) as conn:
            for validator in (etag, f'"nope", W/{etag}', "*"):
                reply = ask(conn, "GET", path, If_None_Match=validator)
                assert (reply.status, reply.body) == (304, b""), validator
                assert reply.headers["ETag"] == etag
                assert reply.headers["Cache-Control"] == cache
            assert ask(conn, "HEAD", path, If_None_Match='"nope"').status == 200


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_are_405(server: RunningServer, method: str) -> None:
    reply = fetch(server, TIMESTAMP, method)
    assert reply.status == 405
    assert reply.headers["Allow"] == "GET, HEAD"
    assert reply.headers["Cache-Control"] == "no-cache"


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/metadata",
        "/metadata/",
        "/targets/stable/node/1",
        "/targets/stable/node/1/",
        TIMESTAMP + "/x",
        "//metadata/timestamp.json",
        "/other.json",
        "/.state/ledger",
        "/metadata/../.state/ledger",
        "/metadata/%2e%2e/.state/ledger",
        "/%2e%2e/outside.txt",
        "/targets/%2E%2E/%2E%2E/outside.txt",
        "/targets/..%2F..%2Foutside.txt",
        "/targets/stable/node/.tmp-x",
        "/targets/stable/node/%2etmp-x",
        "/targets/escape.img",
        "/targets/relative-escape.img",
        "/targets/state.img",
        "/targets/loop",
        "/targets/pipe",
        "/targets/missing.img",
    ],
)
def test_refused_paths_are_404(server: RunningServer, path: str) -> None:
    reply = fetch(server, path)
    assert reply.status == 404, path
    assert SECRET not in reply.body
    assert reply.headers["Cache-Control"] == "no-cache"


def server_lines(caplog: pytest.LogCaptureFixture, count: int) -> list[str]:
    """The access log lines, once ``count`` are there (they may trail the reply)."""
    deadline = time.monotonic() + 5
    while True:
        lines = [r.getMessage() for r in caplog.records if r.name == "imgline.publisher.http"]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.01)


def test_interrupted_download_resumes_to_the_same_bytes(
    server: RunningServer, repo: Repo, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="imgline.publisher.http")
    size, half = len(repo.node), len(repo.node) // 2
    with closing(http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)) as conn:
        conn.request("GET", NODE)
        resp = conn.getresponse()
        etag = resp.headers["ETag"]
        first = resp.read(half)  # then hang up, as a host losing its network would
    reply = fetch(server, NODE, Range=f"bytes={half}-", If_Range=etag)
    assert reply.status == 206
    assert reply.headers["Content-Range"] == f"bytes {half}-{size - 1}/{size}"
    assert hashlib.sha256(first + reply.body).digest() == hashlib.sha256(repo.node).digest()
    lines = server_lines(caplog, 2)
    assert sorted(line.split()[1:5] for line in lines) == [
        ["GET", NODE, "200", "interrupted"],
        ["GET", NODE, "206", str(size - half)],
    ]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_one_log_line_per_request_that_a_path_cannot_forge(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fetch(server, TIMESTAMP)
    fetch(server, "/metadata/%0d%0aforged")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /targets/\xe2\x80\xa8x\x1b[31m HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.")
    lines = server_lines(caplog, 3)
    assert len(lines) == 3, lines
    assert re.fullmatch(rf"127\.0\.0\.1 GET {TIMESTAMP} 200 35 [\d.]+s", lines[0])
    assert lines[1].startswith("127.0.0.1 GET /metadata/%0d%0aforged 404 ")
    for record in caplog.records:
        assert not set(record.getMessage()) & {"\n", "\r", "\x1b", "\u2028"}, record
    assert not set(caplog.text) & {"\x1b", "\u2028"}  # nor aiohttp's own report of a 400


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_serve_forever_stops_on_signal(repo: Repo, signum: signal.Signals) -> None:
    code = (
        "import logging, sys\n"
        "from pathlib import Path\n"
        "from imgline.publisher.http import serve_forever\n"
        "logging.basicConfig(level=logging.INFO, format='%(message)s')\n"
        "serve_forever(Path(sys.argv[1]), port=0)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(repo.root)], stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        match = re.fullmatch(r"serving .* at http://127\.0\.0\.1:(\d+)/\n", first)
        assert match, first
        with closing(http.client.HTTPConnection("127.0.0.1", int(match[1]), timeout=5)) as conn:
            assert ask(conn, "GET", TIMESTAMP).status == 200
        proc.send_signal(signum)
        _, rest = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, rest
    assert f"{signum.name} received, stopping" in rest
    assert "stopped serving " in rest
    assert "Traceback" not in rest
