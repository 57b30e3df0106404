"""deploy/nginx/imgline-repo.conf under a real nginx: the headers the reference server sends,
Range, the stream symlink, hidden dot-paths. Only ``listen`` and ``root`` are changed."""

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
    gen = root / "streams" / ".stable.gen-00000001"
    gen.mkdir(parents=True)
    (gen / "index.json").write_bytes(b'{"generation": 1}\n')
    (root / "streams" / "stable").symlink_to(gen.name)
    release = root / "images" / "node" / "1"
    release.mkdir(parents=True)
    (release / "node-1.squashfs.img").write_bytes(bytes(range(256)) * 4096)
    (release / "install.ks").write_text("text\n")
    (root / "images" / "node" / ".tmp-2-123").mkdir()
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


def get(port: int, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers=headers or {})
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp


def test_nginx_serves_the_repository_like_the_reference_server(nginx: tuple[Path, int]) -> None:
    _root, port = nginx
    index = get(port, "/streams/stable/index.json")
    assert index.status == 200
    assert index.getheader("Cache-Control") == "no-cache"
    assert index.getheader("Content-Type", "").startswith("application/json")
    image = get(port, "/images/node/1/node-1.squashfs.img", {"Range": "bytes=256-511"})
    assert image.status == 206
    assert image.getheader("Content-Range") == f"bytes 256-511/{256 * 4096}"
    assert image.getheader("Cache-Control") == "public, max-age=31536000, immutable"
    assert image.getheader("Content-Type") == "application/octet-stream"
    ks = get(port, "/images/node/1/install.ks")
    assert ks.getheader("Content-Type", "").startswith("text/plain")
    for hidden in ("/streams/.stable.gen-00000001/index.json", "/images/node/.tmp-2-123/"):
        assert get(port, hidden).status == 404, hidden
    assert get(port, "/images/node/").status in (403, 404)  # no listings
