"""Fault drills of imgline-builder, a real process building examples/node.ks (mmdebstrap from
the package-root cache, dracut, mksquashfs) on a private broker of its own:

1. the builder is killed with SIGKILL in the middle of its mmdebstrap run, and a new builder
   process is started on the same queue, store and work directory;
2. while that new builder builds, the broker is stopped and started again.

One build serves both drills (a warm build costs about 20 s here, the suite's budget is
tight): the module fixture runs the story once and records what it saw, each test checks the
outcome of its drill. What recovery does on its own is tests/image/test_builder_recovery.py;
the consumer's reconnect with a stand-in handler is tests/broker/test_bus.py.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
import pytest
from bushelpers import descendants, mounts_under, queue_depth, service_process, take_all, wait_for
from nodeimage import APT_CACHE, BUILD_USER, NODE_KS, ROOT_CACHE, scratch

from imgline.builder.handlers import BUILDS
from imgline.core import runner
from imgline.core.artifacts import LocalArtifactStore
from imgline.core.broker import PrivateBroker
from imgline.core.fsutil import remove_tree
from imgline.schemas import payloads as p
from imgline.schemas.messages import BuildRequestedV1

pytestmark = pytest.mark.image

BUILD_TIMEOUT = 900.0
WATCH = "drill-builder-events"


def log_says(path: Path, text: str, since: float) -> bool:
    """``path`` was written after ``since`` and holds ``text``."""
    try:
        return path.stat().st_mtime >= since and text in path.read_text(errors="replace")
    except OSError:
        return False


@dataclass
class Story:
    """What the drill saw, for the tests to check."""

    build_id: str
    store: LocalArtifactStore
    work_dir: Path
    base: Path
    killed_mid_build: bool = False  # the first builder died with a build dir and no record
    killed_rc: int | None = None
    started_by_killed: list[int] = field(default_factory=list)
    left_running_after_recovery: list[int] = field(default_factory=list)
    build_dir_left_by_kill: bool = False
    broker_down_mid_build: bool = False  # no build record when the broker went, builder alive
    builder_survived_restart: bool = False
    events: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    queue_left: int = -1
    second_rc: int | None = None


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Story]:
    base = scratch("drill-builder-")  # the build user's namespace reaches it
    tmp = tmp_path_factory.mktemp("drill-builder")
    req = p.BuildRequested(
        request_id="drill-builder",
        source=p.InlineSource(kickstart=NODE_KS.read_text(encoding="utf-8")),
        name="node",
        stream="stable",
    )
    s = Story(req.build_id, LocalArtifactStore(base / "store"), base / "work", base)
    config = {
        "store_dir": str(s.store.root),
        "work_dir": str(s.work_dir),
        "cache_dir": str(APT_CACHE),
        "root_cache_dir": str(ROOT_CACHE),
        "build_user": BUILD_USER,
    }
    build_dir, build_log = s.work_dir / s.build_id, s.work_dir / s.build_id / "build.log"
    try:
        with (
            PrivateBroker() as broker,
            service_process(
                "builder",
                broker.url,
                tmp,
                consumes=("build.requested",),
                emits=(),
                consumer_config=config,
                settings={"reconnect_max_seconds": 2},
            ) as svc,
        ):
            # a durable queue for the events: the helper's own one dies with the broker
            conn = pika.BlockingConnection(pika.URLParameters(broker.url))
            ch = conn.channel()
            ch.queue_declare(WATCH, durable=True, arguments={"x-queue-type": "quorum"})
            for topic in ("image.built", "build.failed"):
                ch.queue_bind(WATCH, svc.exchange, f"imgline.{topic}")
            conn.close()
            queue = f"{svc.exchange}.builder"

            # drill 2: SIGKILL in the middle of mmdebstrap
            t0 = time.time()
            svc.publish(BuildRequestedV1.from_payload(req))
            wait_for(lambda: log_says(build_log, "mmdebstrap --mode", t0), 300, "mmdebstrap")
            time.sleep(3)  # well into its work
            s.started_by_killed = descendants(svc.proc.pid)
            s.killed_mid_build = (
                svc.proc.poll() is None and s.store.read_record(BUILDS, s.build_id) is None
            )
            svc.kill()
            s.killed_rc = svc.proc.returncode
            s.build_dir_left_by_kill = build_dir.is_dir()

            t1 = time.time()
            svc.start_again()
            # drill 1: the new builder recovered, took the redelivered request and builds it
            wait_for(lambda: log_says(build_log, "mmdebstrap --mode", t1), 300, "the rebuild")
            s.left_running_after_recovery = [
                pid for pid in s.started_by_killed if runner.is_running(pid)
            ]
            time.sleep(2)
            s.broker_down_mid_build = (
                svc.proc.poll() is None and s.store.read_record(BUILDS, s.build_id) is None
            )
            broker.restart()
            wait_for(lambda: queue_depth(broker.url, WATCH) > 0, BUILD_TIMEOUT, "image.built")
            s.builder_survived_restart = svc.proc.poll() is None
            # the redelivery of the request in hand during the restart has been dealt with
            # once the queue is empty again and the builder is back on it; SIGTERM then lets
            # the message in hand finish before the process exits
            wait_for(lambda: _consumed(broker.url, queue), 120, "the builder back on its queue")
            svc.proc.send_signal(signal.SIGTERM)
            s.second_rc = svc.proc.wait(120)
            s.queue_left = queue_depth(broker.url, queue)
            s.events = [json.loads(body) for _, body in take_all(broker.url, WATCH)]
            s.dead_letters = [h for h, _ in take_all(broker.url, svc.dlq)]
        yield s
    finally:
        remove_tree(base)


def _consumed(url: str, queue: str) -> bool:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        frame = conn.channel().queue_declare(queue, passive=True).method
        return frame.message_count == 0 and frame.consumer_count >= 1
    finally:
        conn.close()


def image_builts(s: Story) -> list[p.ImageBuilt]:
    return [p.ImageBuilt.model_validate(e) for e in s.events if "artifact" in e]


def test_builder_killed_mid_build_builds_the_request_once_after_restart(story: Story) -> None:
    """Expected: the builder dies in the middle of its build (SIGKILL, its work directory
    left behind); the new builder process clears what it left (nothing it started still
    runs), gets the redelivered request and builds it once: one image.built for the request,
    one version claimed for the build, one image in the store that verifies; no work
    directory, store temp file or mount is left at the end; nothing is dead-lettered."""
    s = story
    assert s.killed_mid_build and s.killed_rc == -signal.SIGKILL
    assert s.build_dir_left_by_kill, "the kill came after the build's work directory went"
    assert s.started_by_killed, "the killed builder had no command running"
    assert s.left_running_after_recovery == []
    built = image_builts(s)
    assert len(built) == 1, s.events
    (image,) = built
    assert (image.build_id, image.request_id) == (s.build_id, "drill-builder")
    versions = s.store.list_records("versions.node")
    assert versions == [image.version]
    assert s.store.read_record("versions.node", image.version) == s.build_id.encode()
    assert [f.name for f in (s.store.root / "sha256").iterdir()] == [image.artifact.sha256]
    assert s.store.verify(image.artifact.sha256)
    assert not [d for d in s.work_dir.iterdir() if not d.name.startswith(".")]
    assert not list((s.store.root / "tmp").iterdir())
    assert mounts_under(s.base) == []
    assert s.dead_letters == []


def test_broker_restarted_mid_build_announces_the_build_once(story: Story) -> None:
    """Expected: the broker stops and starts while the builder builds (no build record yet);
    the builder process rides it out, finishes the build and its image.built reaches the
    restarted broker; the request it held during the restart is not built again: exactly one
    image.built, for the one version claimed; the builder's queue ends empty, nothing is
    dead-lettered, and the builder stops cleanly afterwards."""
    s = story
    assert s.broker_down_mid_build, "the build was over before the broker went down"
    assert s.builder_survived_restart
    built = image_builts(s)
    assert [b.build_id for b in built] == [s.build_id], s.events
    assert s.store.list_records(BUILDS) == [s.build_id]
    assert s.store.list_records("versions.node") == [built[0].version]
    assert s.queue_left == 0
    assert s.dead_letters == []
    assert s.second_rc == 0
