"""Helpers for tests of the signed repository: tested releases, a repository with its keys,
and a mirror an attacker controls (a plain file server over a copy of the repository, which
can also trickle bytes or send endless data)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from imgline.core.trust import layout
from imgline.core.trust.client import ClientLimits, RepositoryClient
from imgline.core.trust.keys import KeyDir
from imgline.core.trust.repository import JOURNAL, TufRepository
from imgline.publisher.adapters.repo import Repository
from imgline.schemas import payloads as p

BASE = "http://repo.test:8090"


class Clock:
    """A clock the test moves: each call is one minute later than the one before."""

    def __init__(self, start: datetime | None = None) -> None:
        self.t = start or datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        self.t += timedelta(minutes=1)
        return self.t

    def advance(self, delta: timedelta) -> None:
        self.t += delta


def make_tested(
    tmp: Path,
    version: str,
    *,
    name: str = "node",
    stream: str = "stable",
    build: int | None = None,
    passed: bool = True,
    size: int = 3 << 20,
) -> tuple[p.ImageTested, Path]:
    """An image.tested body and its image file (random bytes)."""
    image = tmp / f"{name}-{stream}-{version}-{build}.img"
    image.write_bytes(os.urandom(size))
    data = image.read_bytes()
    ref = p.ImageRef(
        build_id=hashlib.sha256(f"{name}/{version}/{stream}/{build}".encode()).hexdigest(),
        name=name,
        version=version,
        stream=stream,
        artifact=p.Artifact(
            uri=image.as_uri(), sha256=hashlib.sha256(data).hexdigest(), size=len(data)
        ),
        source_commit="c0ffee" * 6 + "abcd",
    )
    results = [
        p.TestResult(name="content.image_json", status="passed", duration_seconds=0.1),
        p.TestResult(
            name="boot.live", status="passed" if passed else "failed", duration_seconds=1.0
        ),
    ]
    tested = p.ImageTested(
        build_id=ref.build_id,
        image=ref,
        passed=passed,
        results=results,
        report_url="file:///reports/x.xml",
    )
    return tested, image


@dataclass
class Site:
    """A repository with its online and offline keys, in one temp directory."""

    root: Path
    keys: KeyDir
    root_keys: KeyDir
    clock: Clock = field(default_factory=Clock)

    def tuf(self) -> TufRepository:
        return TufRepository(self.root, self.keys, clock=self.clock)

    def publisher(self, base_url: str = BASE, **kw: Any) -> Repository:
        return Repository(self.root, self.keys, base_url, clock=self.clock, **kw)


def make_site(tmp: Path, *, root_threshold: int = 1, root_key_count: int = 1) -> Site:
    clock = Clock()
    site = Site(tmp / "repo", KeyDir(tmp / "keys"), KeyDir(tmp / "root-keys"), clock)
    TufRepository.init(
        site.root,
        site.keys,
        site.root_keys,
        root_threshold=root_threshold,
        root_key_count=root_key_count,
        clock=clock,
    )
    return site


class _MirrorHandler(SimpleHTTPRequestHandler):
    """Serves the mirror's files; the server's ``trickle``/``endless`` sets make it hostile."""

    server: Mirror

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        name = self.path.lstrip("/")
        if any(name.endswith(s) for s in self.server.endless):
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            try:
                for _ in range(4096):  # bounded: 256 MiB at most, the client stops far sooner
                    self.wfile.write(b"\0" * 65536)
            except OSError:
                pass
            return
        if any(name.endswith(s) for s in self.server.trickle):
            path = Path(self.translate_path(self.path))
            data = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            deadline = time.monotonic() + 30
            try:
                for byte in data:
                    if time.monotonic() > deadline:
                        return
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.05)
            except OSError:
                pass
            return
        super().do_GET()


class Mirror(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.trickle: set[str] = set()
        self.endless: set[str] = set()
        super().__init__(("127.0.0.1", 0), partial(_MirrorHandler, directory=str(directory)))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"


@contextmanager
def mirror_of(site_root: Path, where: Path) -> Iterator[Mirror]:
    """A copy of the repository (without its private state) served over loopback."""
    shutil.copytree(site_root, where, ignore=shutil.ignore_patterns(".state"))
    server = Mirror(where)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def sync_mirror(site_root: Path, mirror: Path) -> None:
    """Copy what the publisher wrote since, as an rsync'ing mirror would."""
    shutil.copytree(site_root, mirror, ignore=shutil.ignore_patterns(".state"), dirs_exist_ok=True)


def client(
    url: str, state: Path, root: bytes | None = None, limits: ClientLimits | None = None
) -> RepositoryClient:
    return RepositoryClient.for_base_url(url, state, root=root, limits=limits)


def unaccounted_targets(repo: TufRepository) -> set[str]:
    """Target files (relative to the root) that no signed role lists and that are not queued
    for deletion: what an interrupted publish would leave behind for good."""
    state = repo.load()
    listed = {
        (repo.targets_dir / layout.hashed_path(path, info.hashes["sha256"]))
        .relative_to(repo.root_dir)
        .as_posix()
        for role in state.targets.values()
        for path, info in role.signed.targets.items()
    }
    journal = repo.state_dir / JOURNAL
    queued = (
        {json.loads(line)["path"] for line in journal.read_text().splitlines()}
        if journal.exists()
        else set()
    )
    on_disk = {f.relative_to(repo.root_dir).as_posix() for f in repo.targets_dir.rglob("*")}
    return {f for f in on_disk if (repo.root_dir / f).is_file()} - listed - queued


def publisher_config(
    repo: TufRepository, store_dir: Path, work_dir: Path, base_url: str, **more: Any
) -> dict[str, Any]:
    """imgline-publisher's ``[consumer_config]`` for ``repo`` (signed with its online keys),
    the artefact store at ``store_dir``, served at ``base_url``; ``more`` keys added."""
    return {
        "store_dir": str(store_dir),
        "repo_dir": str(repo.root_dir),
        "keys_dir": str(repo.keys.directory),
        "work_dir": str(work_dir),
        "base_url": base_url,
        **more,
    }
