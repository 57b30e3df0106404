"""The publisher's HTTP server over a real repository directory and real sockets.

What hosts and anaconda rely on: ranged reads anywhere in a multi-GB image (a sparse 6 GiB file,
so offsets past 4 GiB are exercised without writing 6 GiB), an interrupted download resumed to
the same bytes, validators and 304, the cache split between images/ and streams/, and nothing
outside the published files ever served.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest

from imgline.publisher.http import RepositoryServer, make_server

pytestmark = pytest.mark.image

GIB = 1 << 30
MIB = 1 << 20

BIG_SIZE = 6 * GIB
BIG_MARKS = {
    0: b"<start of image>",
    4096: b"<second page>",
    4 * GIB - 7: b"<across 4 GiB>",  # straddles 2**32
    4 * GIB + 1000: b"<past 4 GiB>",
    BIG_SIZE - 9: b"<the end>",
}
BIG = "/images/big/1/big-1.squashfs.img"
NODE = "/images/node/20261123.1/node-20261123.1.squashfs.img"
INDEX = "/streams/stable/index.json"
KS = "/images/node/20261123.1/install.ks"
SECRET = b"outside the repository"


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
    node_sha256: str
    node_size: int


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    base = tmp_path_factory.mktemp("http")
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)

    root = base / "repo"
    stream = root / "streams" / "stable"
    release = root / "images" / "node" / "20261123.1"
    stream.mkdir(parents=True)
    release.mkdir(parents=True)
    (stream / "index.json").write_text('{"stream": "stable"}\n', encoding="utf-8")
    (stream / "index.json.sig").write_text('{"sig": "x"}\n', encoding="utf-8")
    (release / "manifest.json").write_text('{"name": "node"}\n', encoding="utf-8")
    (release / "manifest.json.sig").write_text('{"sig": "y"}\n', encoding="utf-8")
    (release / "install.ks").write_text("liveimg --url=http://x/\n", encoding="utf-8")
    node = os.urandom(64 * MIB + 12345)
    (release / "node-20261123.1.squashfs.img").write_bytes(node)

    big = root / "images" / "big" / "1" / "big-1.squashfs.img"
    big.parent.mkdir(parents=True)
    with big.open("wb") as f:
        f.truncate(BIG_SIZE)
        for offset, mark in BIG_MARKS.items():
            os.pwrite(f.fileno(), mark, offset)

    # what must never be served
    (root / ".tmp-abc").write_bytes(b"half-written")
    (stream / ".tmp-index.json").write_bytes(b"half-written")
    (root / "images" / "node" / ".tmp-2").mkdir()
    (root / "images" / "node" / ".tmp-2" / "part.img").write_bytes(b"half-written")
    links = root / "images" / "links"
    links.mkdir()
    (links / "escape.img").symlink_to(outside / "secret.txt")
    (links / "relative-escape.img").symlink_to(Path("..", "..", "..", "outside", "secret.txt"))
    (links / "outdir").symlink_to(outside)
    (links / "hidden.img").symlink_to(root / ".tmp-abc")
    (links / "loop").symlink_to(links / "loop")
    os.mkfifo(links / "pipe")
    # links that stay inside are followed
    (links / "latest.img").symlink_to(release / "install.ks")
    (links / "index.json").symlink_to(stream / "index.json")
    return Repo(root, hashlib.sha256(node).hexdigest(), len(node))


@pytest.fixture
def server(repo: Repo) -> Iterator[RepositoryServer]:
    srv = make_server(repo.root)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.01})
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)
        assert not thread.is_alive()


@dataclass(frozen=True)
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def connect(server: RepositoryServer) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)


def ask(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
) -> Reply:
    conn.request(method, path, headers=headers or {})
    with closing(conn.getresponse()) as resp:
        return Reply(resp.status, resp.headers, resp.read())


def fetch(
    server: RepositoryServer, path: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> Reply:
    with closing(connect(server)) as conn:
        return ask(conn, method, path, headers)


def test_binds_a_free_port(server: RepositoryServer, repo: Repo) -> None:
    assert server.port > 0
    assert server.url == f"http://127.0.0.1:{server.port}/"
    assert server.root == repo.root.resolve()


def test_root_must_be_a_directory(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError, match="missing"):
        make_server(tmp_path / "missing")


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (0, len(BIG_MARKS[0]) - 1),
        (4090, 4200),
        (4 * GIB - 7, 4 * GIB + 6),
        (4 * GIB - 100, 4 * GIB + 1100),
        (4 * GIB + 1000, 4 * GIB + 1010),
        (5 * GIB, 5 * GIB + 63),  # a hole: zeros
        (BIG_SIZE - 9, BIG_SIZE - 1),
    ],
)
def test_ranges_across_a_6_gib_file(server: RepositoryServer, start: int, end: int) -> None:
    reply = fetch(server, BIG, {"Range": f"bytes={start}-{end}"})
    assert reply.status == 206
    assert reply.headers["Content-Range"] == f"bytes {start}-{end}/{BIG_SIZE}"
    assert reply.headers["Content-Length"] == str(end - start + 1)
    assert reply.body == big_bytes(start, end)


@pytest.mark.parametrize(
    ("range_header", "start"),
    [
        ("bytes=-9", BIG_SIZE - 9),
        (f"bytes={BIG_SIZE - 40}-", BIG_SIZE - 40),
        (f"bytes={BIG_SIZE - 9}-{BIG_SIZE + 5000}", BIG_SIZE - 9),  # end clamped
    ],
)
def test_open_and_suffix_ranges_end_at_the_end(
    server: RepositoryServer, range_header: str, start: int
) -> None:
    reply = fetch(server, BIG, {"Range": range_header})
    assert reply.status == 206
    assert reply.headers["Content-Range"] == f"bytes {start}-{BIG_SIZE - 1}/{BIG_SIZE}"
    assert reply.body == big_bytes(start, BIG_SIZE - 1)
    assert reply.body.endswith(b"<the end>")


def test_range_past_the_end_is_416(server: RepositoryServer) -> None:
    for header in (f"bytes={BIG_SIZE}-", f"bytes={BIG_SIZE + 1}-{BIG_SIZE + 9}", "bytes=-0"):
        reply = fetch(server, BIG, {"Range": header})
        assert reply.status == 416, header
        assert reply.headers["Content-Range"] == f"bytes */{BIG_SIZE}"


def test_head_has_the_headers_and_no_body(server: RepositoryServer) -> None:
    with closing(connect(server)) as conn:
        head = ask(conn, "HEAD", BIG, {"Range": "bytes=0-9"})  # HEAD has no ranges
        # the connection is reused: a stray body would be read as the next status line
        after = ask(conn, "GET", INDEX)
    assert head.status == 200
    assert head.body == b""
    assert head.headers["Content-Length"] == str(BIG_SIZE)
    assert head.headers["Content-Range"] is None
    assert head.headers["Accept-Ranges"] == "bytes"
    assert head.headers["Content-Type"] == "application/octet-stream"
    assert head.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert re.fullmatch(r'"[0-9a-f]+-[0-9a-f]+-[0-9a-f]+"', head.headers["ETag"])
    assert head.headers["Last-Modified"].endswith(" GMT")
    assert (after.status, after.body) == (200, b'{"stream": "stable"}\n')


def wait_for_lines(caplog: pytest.LogCaptureFixture, count: int) -> list[str]:
    """The server's request lines, once ``count`` of them are there (they trail the reply)."""
    deadline = time.monotonic() + 5
    while True:
        lines = [r.getMessage() for r in caplog.records if r.name == "imgline.publisher.http"]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.01)


def read_hashing(resp: http.client.HTTPResponse, digest: hashlib._Hash, limit: int) -> int:
    got = 0
    while got < limit:
        chunk = resp.read(min(MIB, limit - got))
        if not chunk:
            break
        digest.update(chunk)
        got += len(chunk)
    return got


@pytest.mark.parametrize("use_sendfile", [True, False], ids=["sendfile", "read-write"])
def test_interrupted_download_resumes_to_the_same_bytes(
    server: RepositoryServer,
    repo: Repo,
    use_sendfile: bool,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.INFO, logger="imgline.publisher.http")
    server.use_sendfile = use_sendfile
    whole = hashlib.sha256()
    with closing(connect(server)) as conn:
        conn.request("GET", NODE)
        with closing(conn.getresponse()) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Length"] == str(repo.node_size)
            assert read_hashing(resp, whole, repo.node_size) == repo.node_size
    assert whole.hexdigest() == repo.node_sha256

    # a client that stops half way and hangs up, as a host losing its network would
    half = repo.node_size // 2
    resumed = hashlib.sha256()
    with closing(connect(server)) as conn:
        conn.request("GET", NODE)
        with closing(conn.getresponse()) as resp:
            etag = resp.headers["ETag"]
            assert read_hashing(resp, resumed, half) == half

    with closing(connect(server)) as conn:
        conn.request("GET", NODE, headers={"Range": f"bytes={half}-", "If-Range": etag})
        with closing(conn.getresponse()) as resp:
            assert resp.status == 206
            rest = repo.node_size - half
            last = repo.node_size - 1
            assert resp.headers["Content-Range"] == f"bytes {half}-{last}/{repo.node_size}"
            assert resp.headers["Content-Length"] == str(rest)
            assert read_hashing(resp, resumed, rest) == rest
            assert resp.read() == b""
    assert resumed.hexdigest() == repo.node_sha256

    # the hang-up is one quiet log line with the bytes that got out, no traceback
    # (its line may come after the resumed request's: the server notices when it next writes)
    lines = wait_for_lines(caplog, 3)
    assert f"GET {NODE} 200 {repo.node_size}" in lines
    assert f"GET {NODE} 206 {repo.node_size - half}" in lines
    cut = [line for line in lines if line.startswith(f"GET {NODE} 200 ")]
    assert len(lines) == 3 and len(cut) == 2, lines
    assert min(int(line.rsplit(" ", 1)[1]) for line in cut) < repo.node_size
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "Traceback" not in capsys.readouterr().err


def test_if_none_match_gets_304(server: RepositoryServer) -> None:
    first = fetch(server, INDEX)
    etag = first.headers["ETag"]
    with closing(connect(server)) as conn:
        again = ask(conn, "GET", INDEX, {"If-None-Match": etag})
        weak = ask(conn, "GET", INDEX, {"If-None-Match": f'"nope", W/{etag}'})
        star = ask(conn, "HEAD", INDEX, {"If-None-Match": "*"})
        other = ask(conn, "GET", INDEX, {"If-None-Match": '"nope"'})
        by_date = ask(conn, "GET", INDEX, {"If-Modified-Since": first.headers["Last-Modified"]})
    for reply in (again, weak, star, by_date):
        assert reply.status == 304
        assert reply.body == b""
        assert reply.headers["ETag"] == etag
        assert reply.headers["Cache-Control"] == "no-cache"
    assert (other.status, other.body) == (200, first.body)


def test_if_range(server: RepositoryServer) -> None:
    whole = fetch(server, KS)
    etag, modified = whole.headers["ETag"], whole.headers["Last-Modified"]
    ranged = {"Range": "bytes=0-6"}
    stale = fetch(server, KS, {**ranged, "If-Range": '"stale"'})
    assert (stale.status, stale.body) == (200, whole.body)
    assert stale.headers["Content-Range"] is None
    weak = fetch(server, KS, {**ranged, "If-Range": f"W/{etag}"})
    assert weak.status == 200
    stale_unsatisfiable = fetch(server, KS, {"Range": "bytes=999-", "If-Range": '"stale"'})
    assert (stale_unsatisfiable.status, stale_unsatisfiable.body) == (200, whole.body)
    for validator in (etag, modified):
        fresh = fetch(server, KS, {**ranged, "If-Range": validator})
        assert (fresh.status, fresh.body) == (206, b"liveimg")


def test_multiple_ranges_get_the_whole_file(server: RepositoryServer) -> None:
    reply = fetch(server, KS, {"Range": "bytes=0-1,4-5"})
    assert reply.status == 200
    assert reply.body == b"liveimg --url=http://x/\n"


@pytest.mark.parametrize(
    ("path", "content_type", "cache"),
    [
        (INDEX, "application/json", "no-cache"),
        (INDEX + ".sig", "application/json", "no-cache"),
        ("/images/node/20261123.1/manifest.json", "application/json", "immutable"),
        ("/images/node/20261123.1/manifest.json.sig", "application/json", "immutable"),
        (KS, "text/plain; charset=utf-8", "immutable"),
        (NODE, "application/octet-stream", "immutable"),
        ("/images/links/latest.img", "application/octet-stream", "immutable"),
        # a link from images/ to an index must not make the index immutable
        ("/images/links/index.json", "application/json", "no-cache"),
    ],
)
def test_content_type_and_cache_policy(
    server: RepositoryServer, path: str, content_type: str, cache: str
) -> None:
    reply = fetch(server, path, method="HEAD")
    assert reply.status == 200
    assert reply.headers["Content-Type"] == content_type
    expected = "public, max-age=31536000, immutable" if cache == "immutable" else "no-cache"
    assert reply.headers["Cache-Control"] == expected


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/images",
        "/images/node/20261123.1",
        "/images/node/20261123.1/",
        "/images/node/20261123.1/missing.img",
        INDEX + "/x",  # through a file
        "/.tmp-abc",
        "/streams/stable/.tmp-index.json",
        "/images/node/.tmp-2/part.img",
        "/images/node/%2etmp-2/part.img",
        "/../outside/secret.txt",
        "/images/../../outside/secret.txt",
        "/%2e%2e/outside/secret.txt",
        "/%2E%2E/%2E%2E/outside/secret.txt",
        "/images/..%2F..%2F..%2Foutside%2Fsecret.txt",
        "//etc/passwd",
        "/%2Fetc%2Fpasswd",
        "http://localhost/../outside/secret.txt",
        "/images/links/escape.img",
        "/images/links/relative-escape.img",
        "/images/links/outdir/secret.txt",
        "/images/links/hidden.img",
        "/images/links/loop",
        "/images/links/pipe",
    ],
)
def test_refused_paths_are_404(server: RepositoryServer, path: str) -> None:
    reply = fetch(server, path)
    assert reply.status == 404, path
    assert SECRET not in reply.body
    assert b"half-written" not in reply.body
    assert reply.headers["Content-Type"] == "text/plain; charset=utf-8"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_are_405(server: RepositoryServer, method: str) -> None:
    reply = fetch(server, INDEX, method=method)
    assert reply.status == 405
    assert reply.headers["Allow"] == "GET, HEAD"


def test_unknown_method_is_501(server: RepositoryServer) -> None:
    assert fetch(server, INDEX, method="BREW").status == 501


def test_one_log_line_per_request(
    server: RepositoryServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="imgline.publisher.http"):
        fetch(server, INDEX)
        fetch(server, "/images/%1b[31mred")
        fetch(server, BIG, {"Range": "bytes=0-9"})
        # the line is written once the response is out, so the client may read it first
        lines = wait_for_lines(caplog, 3)
    assert lines == [
        f"GET {INDEX} 200 21",
        "GET /images/%1b[31mred 404 10",
        f"GET {BIG} 206 10",
    ]


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
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stderr is not None
    stderr = proc.stderr

    def pump() -> None:
        for line in stderr:
            lines.put(line.rstrip("\n"))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        first = lines.get(timeout=10)
        match = re.fullmatch(r"serving .* at http://127\.0\.0\.1:(\d+)/", first)
        assert match, first
        with closing(http.client.HTTPConnection("127.0.0.1", int(match[1]), timeout=5)) as conn:
            assert ask(conn, "GET", INDEX).status == 200
        proc.send_signal(signum)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(5)
        stderr.close()
    rest = []
    while not lines.empty():
        rest.append(lines.get())
    assert f"{signum.name} received, stopping" in rest
    assert any(line.startswith("stopped serving ") for line in rest)


def test_stream_index_is_served_through_its_generation_symlink(tmp_path: Path) -> None:
    """The publisher switches ``streams/<s>`` between ``streams/.<s>.gen-<n>`` directories;
    the index is reachable through the link only, never by the generation's own name."""
    root = tmp_path / "repo"
    gen = root / "streams" / ".stable.gen-00000002"
    gen.mkdir(parents=True)
    (gen / "index.json").write_bytes(b'{"generation": 2}\n')
    (root / "streams" / "stable").symlink_to(gen.name)
    server = make_server(root)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("GET", "/streams/stable/index.json")
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, b'{"generation": 2}\n')
        assert resp.getheader("Cache-Control") == "no-cache"
        conn.request("GET", "/streams/.stable.gen-00000002/index.json")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 404
        conn.close()
    finally:
        server.shutdown()
        server.server_close()
