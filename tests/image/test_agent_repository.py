"""The updater agent against a real signed repository served over loopback, with a fake host.

The repository is written by the publisher and served by a small file server that honours
Range and can cut a download off half-way. The host is a fake that records what it was asked
to apply; everything between (TUF client, policy, downloads, reports) is the real thing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fakehost import FakeHost, forged, sha256_of
from tufrepo import Site, client, make_site, make_tested, sync_mirror

from imgline.core.config import BusSettings
from imgline.schemas import payloads as p
from imgline.schemas.messages import HostUpgradeFailedV1
from imgline.updater import hostlock
from imgline.updater.agent import Agent, AgentService, PullAgent, outbox_of
from imgline.updater.errors import UpdaterError
from imgline.updater.settings import HostConfig, Policy

pytestmark = pytest.mark.image

V1, V2, V3 = "20261123.1", "20261124.1", "20261125.1"
NOW = datetime(2026, 11, 25, 3, 0, tzinfo=UTC)
SIZE = 512 * 1024


class _Handler(SimpleHTTPRequestHandler):
    """Files of the mirror; images honour ``Range`` and the first one may be cut short."""

    server: RangeMirror

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        path = Path(self.translate_path(self.path))
        if not path.name.endswith(".img") or not path.is_file():
            super().do_GET()
            return
        data = path.read_bytes()
        wanted = self.headers.get("Range")
        self.server.ranges.append(wanted)
        start = int(wanted.removeprefix("bytes=").removesuffix("-")) if wanted else 0
        body = data[start:]
        self.send_response(206 if wanted else 200)
        if wanted:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut, self.server.cut_after = self.server.cut_after, None
        if cut is not None:  # a host losing its network half-way
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


class RangeMirror(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, directory: Path) -> None:
        self.paths: list[str] = []
        self.ranges: list[str | None] = []
        self.cut_after: int | None = None
        super().__init__(("127.0.0.1", 0), partial(_Handler, directory=str(directory)))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"


@dataclass
class Repo:
    """A publisher's repository and the mirror hosts read it from."""

    tmp: Path
    site: Site
    mirror_dir: Path
    server: RangeMirror
    images: dict[str, str] = field(default_factory=dict)  # version -> sha256

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def pinned_root(self) -> bytes:
        return (self.site.root / "metadata" / "1.root.json").read_bytes()

    def publish(self, *versions: str, stream: str = "stable") -> None:
        pub = self.site.publisher()
        for version in versions:
            tested, image = make_tested(self.tmp, version, stream=stream, size=SIZE)
            pub.publish(tested, image)
            self.images[version] = tested.image.artifact.sha256
        sync_mirror(self.site.root, self.mirror_dir)

    def image_files(self, version: str) -> list[Path]:
        return list(self.mirror_dir.glob(f"targets/*/*/{version}/*.img"))


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repo]:
    site = make_site(tmp_path)
    mirror_dir = tmp_path / "mirror"
    shutil.copytree(site.root, mirror_dir, ignore=shutil.ignore_patterns(".state"))
    server = RangeMirror(mirror_dir)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield Repo(tmp_path, site, mirror_dir, server)
    finally:
        server.shutdown()
        server.server_close()


def host_config(repo: Repo, policy: Policy = "auto", stream: str = "stable") -> HostConfig:
    return HostConfig(
        host_id="h1",
        stream=stream,
        repository_url=repo.url,
        state_dir=repo.tmp / "host",
        policy=policy,
    )


def make_agent(repo: Repo, host: FakeHost, policy: Policy = "auto") -> Agent:
    config = host_config(repo, policy)
    tuf = client(repo.url, config.tuf_dir, repo.pinned_root)
    return Agent(config, "h1", tuf, host, outbox_of(config), clock=lambda: NOW)


def downloads(agent: Agent) -> list[str]:
    return sorted(p.name for p in agent.downloads.iterdir()) if agent.downloads.is_dir() else []


def reports(agent: Agent) -> list[p.HostUpgradeFailed]:
    out: list[p.HostUpgradeFailed] = []
    for path in agent.outbox.pending():
        entry = json.loads(path.read_text())
        assert entry["topic"] == "host.upgrade.failed"
        out.append(p.HostUpgradeFailed.model_validate(entry["body"]))
    return out


def test_policy_auto_applies_the_newest_release_and_reboots(repo: Repo) -> None:
    repo.publish(V1, V2, V3)
    host = FakeHost(running=V1)
    agent = make_agent(repo, host)
    verdict = agent.check("timer")
    assert (verdict.action, verdict.reboot) == ("apply", True)
    assert host.applied == [(V3, repo.images[V3])]  # the newest, its signed bytes
    assert host.reboots == 1
    assert downloads(agent) == []  # the image is gone once applied
    assert agent.outbox.pending() == []  # host.upgraded comes from the health check


def test_the_reboot_waits_for_the_reboot_lock(repo: Repo) -> None:
    repo.publish(V1, V2)
    host = FakeHost(running=V1, locked=True)
    verdict = make_agent(repo, host).check("timer")
    assert (verdict.action, verdict.reboot) == ("apply", False)
    assert [v for v, _ in host.applied] == [V2]
    assert host.reboots == 0


def test_a_host_another_command_is_changing_is_left_to_the_next_check(repo: Repo) -> None:
    """A manual ``imgline-updater apply`` or ``rollback`` holds the host's lock: the agent
    does not apply over it, and applies at its next check once the lock is free."""
    repo.publish(V1, V2)
    host = FakeHost(running=V1)
    agent = make_agent(repo, host)
    with hostlock.changing(agent.config):
        verdict = agent.check("message")
    assert verdict.action == "skip" and verdict.reason.startswith("host busy")
    assert (host.views, host.applied, downloads(agent)) == (0, [], [])
    assert agent.check("timer").action == "apply"
    assert [v for v, _ in host.applied] == [V2]


def test_download_only_downloads_and_does_not_apply(repo: Repo) -> None:
    repo.publish(V1, V2)
    host = FakeHost(running=V1)
    agent = make_agent(repo, host, "download-only")
    assert agent.check("timer").action == "download"
    (name,) = downloads(agent)
    assert sha256_of(agent.downloads / name) == repo.images[V2]
    assert host.applied == [] and host.reboots == 0
    # the next check keeps the verified image instead of fetching it again
    before = agent.client.bytes_received
    assert agent.check("timer").action == "download"
    assert agent.client.bytes_received - before < SIZE
    assert downloads(agent) == [name]
    # a newer release replaces it: one image on disk at a time
    repo.publish(V3)
    agent.check("message")
    (newer,) = downloads(agent)
    assert V3 in newer and sha256_of(agent.downloads / newer) == repo.images[V3]


def test_disabled_does_nothing(repo: Repo) -> None:
    repo.publish(V1, V2)
    host = FakeHost(running=V1)
    agent = make_agent(repo, host, "disabled")
    verdict = agent.check("message")
    assert verdict.action == "skip" and "disabled" in verdict.reason
    assert downloads(agent) == []
    assert repo.server.ranges == []  # no image was even requested
    assert host.applied == [] and host.reboots == 0


def test_an_older_release_than_the_running_one_is_never_applied(repo: Repo) -> None:
    repo.publish(V1)
    host = FakeHost(running=V2)
    agent = make_agent(repo, host)
    verdict = agent.check("timer")
    assert verdict.action == "skip" and "older release is never applied" in verdict.reason
    assert downloads(agent) == [] and host.applied == []


def test_a_rolled_back_version_is_not_applied_again(repo: Repo) -> None:
    repo.publish(V1, V2)
    host = FakeHost(running=V1, bad=frozenset({V2}))
    agent = make_agent(repo, host)
    verdict = agent.check("timer")
    assert verdict.action == "skip" and "rolled back" in verdict.reason
    assert downloads(agent) == [] and host.applied == []


def test_an_empty_stream_offers_nothing(repo: Repo) -> None:
    repo.publish(V1, stream="beta")
    host = FakeHost(running=None)
    verdict = make_agent(repo, host).check("start")
    assert verdict.action == "skip" and "no release of node" in verdict.reason
    assert host.applied == []


def test_a_forged_message_changes_nothing(repo: Repo) -> None:
    repo.publish(V1)
    host = FakeHost(running=V1)
    config = host_config(repo)
    bus = BusSettings(service="updater", amqp_url="amqp://127.0.0.1:9/")  # never connected
    service = AgentService(
        bus,
        config,
        host,
        host_id="h1",
        client=client(repo.url, config.tuf_dir, repo.pinned_root),
        clock=lambda: NOW,
    )
    worker = threading.Thread(target=service.triggers.run, daemon=True)
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while host.views < 1:  # the start check
            assert time.monotonic() < deadline
            time.sleep(0.01)
        service.on_published(forged("20991231.1", SIZE))
        while host.views < 2:  # the message made the agent look, and only look
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        service.triggers.stop()
        worker.join(10)
    assert host.applied == [] and host.reboots == 0
    assert downloads(service.agent) == []
    assert service.outbox.pending() == []
    assert not [path for path in repo.server.paths if "20991231" in path]


def test_an_apply_failure_is_reported_with_its_step(repo: Repo) -> None:
    repo.publish(V1, V2)
    failure = UpdaterError("mkfs.ext4 failed: thin pool full; extend the pool", "copy")
    host = FakeHost(running=V1, fail=failure)
    agent = make_agent(repo, host)
    assert agent.check("message").action == "apply"
    (report,) = reports(agent)
    assert (report.host_id, report.name, report.stream) == ("h1", "node", "stable")
    assert (report.from_version, report.to_version) == (V1, V2)
    assert report.step == "copy"
    assert report.error == "mkfs.ext4 failed: thin pool full; extend the pool"
    assert report.duration_seconds >= 0
    assert host.reboots == 0
    # the host's own series say so until the report is sent
    metric = agent.metrics.registry.get_sample_value
    assert metric("imgline_host_apply_failures_total", {"step": "copy"}) == 1
    assert metric("imgline_host_checks_total", {"action": "apply"}) == 1
    assert metric("imgline_host_reports_pending") == 1
    running = {"host_id": "h1", "name": "node", "stream": "stable", "version": V1}
    assert metric("imgline_host_version_info", running) == 1
    # it goes out as host.upgrade.failed when the bus is there
    sent: list[Any] = []
    assert agent.outbox.flush(sent.append, "imgline") == 1
    assert metric("imgline_host_reports_pending") == 0
    assert [type(m) for m in sent] == [HostUpgradeFailedV1]
    assert sent[0].topic == "imgline.host.upgrade.failed"


def test_a_tampered_image_is_refused_and_reported_as_a_download_failure(repo: Repo) -> None:
    repo.publish(V1, V2)
    for image in repo.image_files(V2):
        image.write_bytes(b"\0" * image.stat().st_size)
    host = FakeHost(running=V1)
    agent = make_agent(repo, host)
    agent.check("message")
    assert host.applied == []
    (report,) = reports(agent)
    assert report.step == "download"
    assert "(tampered)" in report.error and "does not match the length or hash" in report.error
    assert downloads(agent) == []  # wrong bytes are never kept to resume from


def test_a_download_cut_off_resumes_at_the_next_check(repo: Repo) -> None:
    repo.publish(V1, V2)
    host = FakeHost(running=V1)
    agent = make_agent(repo, host)
    repo.server.cut_after = SIZE // 2
    agent.check("message")
    assert host.applied == []
    (report,) = reports(agent)
    assert report.step == "download" and "(unavailable)" in report.error
    (part,) = agent.downloads.glob("*.part")
    have = part.stat().st_size
    assert 0 < have < SIZE
    agent.check("timer")
    assert host.applied == [(V2, repo.images[V2])]
    assert repo.server.ranges == [None, f"bytes={have}-"]


def test_an_unreadable_repository_is_logged_and_checked_again_later(
    repo: Repo, caplog: pytest.LogCaptureFixture
) -> None:
    repo.publish(V1, V2)
    host = FakeHost(running=V1)
    agent = make_agent(repo, host)
    metadata = repo.mirror_dir / "metadata"
    metadata.rename(repo.mirror_dir / "metadata.off")
    verdict = agent.check("timer")
    assert verdict.action == "skip" and verdict.reason.startswith("repository not readable")
    assert "trying again at the next message or timer" in caplog.text
    assert host.views == 0 and agent.outbox.pending() == []  # nothing to report: no attempt
    (repo.mirror_dir / "metadata.off").rename(metadata)
    assert agent.check("timer").action == "apply"
    assert [v for v, _ in host.applied] == [V2]


def test_without_a_broker_the_agent_pulls_applies_and_stops_on_sigterm(repo: Repo) -> None:
    """A host with no amqp_url: the timer is its only trigger, a failure report waits in the
    outbox, and SIGTERM ends the loop the way systemd stops the service."""
    repo.publish(V1, V2)
    host = FakeHost(running=V1)
    config = host_config(repo).model_copy(update={"refresh_interval_seconds": 0.2})
    pull = PullAgent(
        config,
        host,
        host_id="h1",
        client=client(repo.url, config.tuf_dir, repo.pinned_root),
        clock=lambda: NOW,
    )
    cut = {"done": False}

    def publish_broken_then_terminate() -> None:
        deadline = time.monotonic() + 20
        while not host.applied:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        host.running = V2
        repo.publish(V3)
        for image in repo.image_files(V3):  # the mirror serves bytes that were never signed
            image.write_bytes(b"\0" * SIZE)
        while not pull.agent.outbox.pending():  # the next timer check finds and refuses it
            assert time.monotonic() < deadline
            time.sleep(0.01)
        cut["done"] = True
        os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    killer = threading.Thread(target=publish_broken_then_terminate, daemon=True)
    killer.start()
    pull.run()  # the main thread, as in `imgline-updater run`: returns on SIGTERM
    killer.join(5)
    assert cut["done"]
    assert host.applied == [(V2, repo.images[V2])] and host.reboots == 1
    (failed,) = reports(pull.agent)
    assert failed.to_version == V3 and failed.step == "download"
    assert signal.getsignal(signal.SIGTERM) is before  # the previous handler is back
