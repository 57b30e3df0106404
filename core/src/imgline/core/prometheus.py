"""A private Prometheus for the demo and the tests, started as a child process like the broker:
its own data directory, a free loopback port, a configuration written from a dict.

It is the real server (Debian's ``prometheus`` package), so what it scrapes from the services
and how it evaluates deploy/prometheus/rules is what a deployed one would do.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from imgline.core.broker import free_port
from imgline.core.errors import ConfigError
from imgline.core.runner import die_with_service

INSTALL_HINT = (
    "install it with 'apt-get install prometheus' (Debian) "
    "or 'dnf install golang-github-prometheus' (Fedora)"
)


class PrivatePrometheus:
    """``prometheus`` with ``config`` (the prometheus.yml structure; rule file paths absolute)
    in ``base_dir`` (a fresh temp dir by default). ``url`` is its HTTP API and UI."""

    def __init__(self, config: dict[str, Any], base_dir: Path | None = None) -> None:
        self.config = config
        self.base_dir = base_dir
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> PrivatePrometheus:
        binary = shutil.which("prometheus")
        if binary is None:
            raise ConfigError(f"prometheus is not installed: {INSTALL_HINT}")
        if self.base_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="imgline-prometheus-")
            self.base_dir = Path(self._tmp.name)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        config = self.base_dir / "prometheus.yml"
        config.write_text(json.dumps(self.config, indent=2), encoding="utf-8")  # JSON is YAML
        self.port = free_port()
        log = (self.base_dir / "prometheus.log").open("ab")
        self._proc = subprocess.Popen(  # noqa: S603 - fixed binary, our own arguments
            [
                # dies with its parent: an orphan would keep writing the data directory that
                # the next run clears and reuses
                *die_with_service(),
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.base_dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1d",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ConfigError(
                    f"prometheus exited with {self._proc.returncode}: see "
                    f"{self.base_dir / 'prometheus.log'}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as answer:  # noqa: S310 - loopback
                    if answer.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise ConfigError(f"prometheus did not get ready in {timeout:.0f}s")

    def api(self, path: str, **params: str) -> Any:
        """``/api/v1/<path>``'s ``data``; raises when Prometheus answers with an error."""
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as answer:  # noqa: S310 - loopback
                doc = json.load(answer)
        except OSError as exc:
            raise ConfigError(
                f"prometheus at {self.url} did not answer ({exc}): see "
                f"{self.base_dir / 'prometheus.log' if self.base_dir else 'its log'}"
            ) from exc
        if doc.get("status") != "success":
            raise ConfigError(f"prometheus refused {path}: {doc}")
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector of ``expr`` now."""
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
        self._proc = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
            self.base_dir = None

    def __enter__(self) -> PrivatePrometheus:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
