"""Downloads of artefacts over HTTP from a hostile server on loopback: more bytes than
announced, a redirect elsewhere, a server that trickles, a 404 and a 503."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from imgline.core.errors import PermanentError, TransientError
from imgline.core.fetch import ArtifactSources, local_path

pytestmark = pytest.mark.image

BODY = b"i" * 300_000


class Hostile(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/images/ok.img":
            self._send(200, BODY)
        elif self.path == "/images/redirect.img":
            self.send_response(302)
            self.send_header("Location", "http://127.0.0.1:9/elsewhere")
            self.end_headers()
        elif self.path == "/images/slow.img":
            self.send_response(200)
            self.end_headers()
            for _ in range(40):
                self.wfile.write(b"x" * 1024)
                self.wfile.flush()
                time.sleep(0.05)
        elif self.path == "/images/busy.img":
            self._send(503, b"busy")
        else:
            self._send(404, b"no")

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def base() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/images/"
    finally:
        server.shutdown()
        server.server_close()


def test_download_within_the_announced_size(base: str, tmp_path: Path) -> None:
    got = local_path(base + "ok.img", tmp_path, ArtifactSources.of([], [base]), size=len(BODY))
    assert got.read_bytes() == BODY


def test_more_bytes_than_announced_are_refused(base: str, tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match="more than the announced 1000 bytes"):
        local_path(base + "ok.img", tmp_path, ArtifactSources.of([], [base]), size=1000)
    assert list(tmp_path.iterdir()) == []  # no partial file left


def test_redirects_are_not_followed(base: str, tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match=r"redirect to http://127\.0\.0\.1:9/elsewhere"):
        local_path(base + "redirect.img", tmp_path, ArtifactSources.of([], [base]))


def test_a_trickling_server_meets_the_deadline(base: str, tmp_path: Path) -> None:
    sources = ArtifactSources.of([], [base])
    with pytest.raises(TransientError, match="did not finish in time") as gave_up:
        local_path(base + "slow.img", tmp_path, sources, deadline_seconds=0.5)
    so_far = int(str(gave_up.value).split("(")[-1].split()[0])
    assert so_far < 40 * 1024  # it stopped before the server was done
    assert list(tmp_path.iterdir()) == []


def test_http_errors_are_classified(base: str, tmp_path: Path) -> None:
    sources = ArtifactSources.of([], [base])
    with pytest.raises(PermanentError, match="HTTP 404"):
        local_path(base + "gone.img", tmp_path, sources)
    with pytest.raises(TransientError, match="HTTP 503"):
        local_path(base + "busy.img", tmp_path, sources)
