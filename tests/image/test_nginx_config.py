"""deploy/nginx/imgline-repo.conf under a real nginx: the headers the reference server sends,
Range, only metadata/ and targets/ served, hidden dot-paths. Only ``listen`` and ``root`` are
changed."""

from __future__ import annotations

import http.client
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.image

CONF = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "imgline-repo.conf"
IMMUTABLE = "public, max-age=31536000, immutable"
IMAGE = "/targets/stable/node/1/" + "a" * 64 + ".node-1.squashfs.img"
KS = "/targets/stable/node/1/" + "b" * 64 + ".install.ks"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    assert Path(binary).exists(), "nginx is not installed: make test installs nginx-light"
    root = tmp_path / "repo"
    (root / "metadata").mkdir(parents=True)
    (root / "metadata" / "timestamp.json").write_bytes(b'{"signed": {"version": 1}}\n')
    (root / "metadata" / "1.root.json").write_bytes(b'{"signed": {"version": 1}}\n')
    release = root / "targets" / "stable" / "node" / "1"
    release.mkdir(parents=True)
    (release / IMAGE.rsplit("/", 1)[1]).write_bytes(bytes(range(256)) * 4096)
    (release / KS.rsplit("/", 1)[1]).write_text("text\n")
    (root / "targets" / "stable" / "node" / ".tmp-x").write_bytes(b"half-written")
    (root / ".state").mkdir()
    (root / ".state" / "ledger").write_bytes(b"private")
    (root / "other.json").write_bytes(b"private")
    port = free_port()
    site = CONF.read_text()
    site = re.sub(r"^\s*listen \[::\]:80;\n", "", site, flags=re.MULTILINE)
    site = re.sub(r"listen 80;", f"listen 127.0.0.1:{port};", site)
    site = re.sub(r"^(\s*root)\s+[^;]+;", rf"\1 {root};", site, flags=re.MULTILINE)
    (tmp_path / "site.conf").write_text(site)
    main = tmp_path / "nginx.conf"
    main.write_text(
        # workers as root: pytest's temp directories are private to root
        f"user root;\nworker_processes 1;\npid {tmp_path}/nginx.pid;\n"
        f"error_log {tmp_path}/error.log;\n"
        "daemon off;\nevents {}\n"
        f"http {{\ninclude /etc/nginx/mime.types;\naccess_log off;\n"
        f"client_body_temp_path {tmp_path}/body;\nproxy_temp_path {tmp_path}/proxy;\n"
        f"fastcgi_temp_path {tmp_path}/fcgi;\nuwsgi_temp_path {tmp_path}/uwsgi;\n"
        f"scgi_temp_path {tmp_path}/scgi;\ninclude {tmp_path}/site.conf;\n}}\n"
    )
    subprocess.run([binary, "-t", "-q", "-c", str(main)], check=True)
    proc = subprocess.Popen([binary, "-c", str(main)])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield root, port
    finally:
        proc.terminate()
        proc.wait(10)


def get(
    port: int, path: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path, headers=headers or {})
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp


def test_nginx_serves_the_repository_like_the_reference_server(nginx: tuple[Path, int]) -> None:
    _root, port = nginx
    timestamp = get(port, "/metadata/timestamp.json")
    assert timestamp.status == 200
    assert timestamp.getheader("Cache-Control") == "no-cache"
    assert timestamp.getheader("Content-Type") == "application/json"
    root_json = get(port, "/metadata/1.root.json", {"Accept-Encoding": "gzip"})
    assert root_json.getheader("Cache-Control") == IMMUTABLE
    assert root_json.getheader("Content-Encoding") is None
    etag = root_json.getheader("ETag", "")
    revalidated = get(port, "/metadata/1.root.json", {"If-None-Match": etag})
    assert (revalidated.status, revalidated.getheader("Cache-Control")) == (304, IMMUTABLE)

    image = get(port, IMAGE, {"Range": "bytes=256-511"})
    assert image.status == 206
    assert image.getheader("Content-Range") == f"bytes 256-511/{256 * 4096}"
    assert image.getheader("Cache-Control") == IMMUTABLE
    assert image.getheader("Content-Type") == "application/octet-stream"
    resumed = get(port, IMAGE, {"Range": "bytes=256-", "If-Range": image.getheader("ETag", "")})
    assert resumed.status == 206
    stale = get(port, IMAGE, {"Range": "bytes=256-", "If-Range": '"stale"'})
    assert stale.status == 200
    several = get(port, IMAGE, {"Range": "bytes=0-1,4-5"})
    assert several.status == 200  # max_ranges 1
    unsatisfiable = get(port, IMAGE, {"Range": f"bytes={256 * 4096}-"})
    assert unsatisfiable.status == 416
    assert unsatisfiable.getheader("Content-Range") == f"bytes */{256 * 4096}"
    # nginx decides 416 after the headers for 200 were added: both lists, no-cache wins
    assert "no-cache" in unsatisfiable.getheader("Cache-Control", "").split(", ")
    assert get(port, KS).getheader("Content-Type") == "text/plain; charset=utf-8"

    refused = (
        "/",
        "/metadata/",
        "/targets/stable/node/1",
        "/targets/stable/node/1/",
        "/targets/stable/node/.tmp-x",
        "/targets/stable/node/%2etmp-x",
        "/.state/ledger",
        "/other.json",
        "/metadata/missing.json",
        "/targets/missing.img",
    )
    for path in refused:
        reply = get(port, path)
        assert reply.status == 404, path
        assert reply.getheader("Cache-Control") == "no-cache", path

    for method in ("POST", "PUT", "DELETE", "OPTIONS"):
        reply = get(port, "/metadata/timestamp.json", method=method)
        assert reply.status == 405, method
        assert reply.getheader("Allow") == "GET, HEAD"
        assert reply.getheader("Cache-Control") == "no-cache"
