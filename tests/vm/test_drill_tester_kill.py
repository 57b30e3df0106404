"""Fault drill: imgline-tester killed with SIGKILL while it boots the node image in qemu, then
started again on the same queue, store and work directory.

The updater's drills (its apply killed with SIGKILL after each journaled step and resumed,
through ``IMGLINE_UPDATER_CRASH_AFTER``) are in tests/vm/test_updater_vm.py; the builder's and
the publisher's are tests/image/test_drill_builder.py and
tests/broker/test_drill_publisher_kill.py.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from bushelpers import descendants, mounts_under, service_process, wait_for

from imgline.core import runner, verdicts
from imgline.core.artifacts import LocalArtifactStore
from imgline.schemas import payloads as p
from imgline.schemas.messages import ImageBuiltV1, ImageTestedV1

pytestmark = pytest.mark.vm

REPO = Path(__file__).resolve().parents[2]
PLAN = REPO / "examples" / "test-plan.toml"
NodeImage = tuple[p.ImageBuilt, LocalArtifactStore]


def qemu_below(pid: int) -> list[int]:
    """The qemu processes started below ``pid``."""
    found = []
    for child in descendants(pid):
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(arg.startswith(b"qemu-system") or b"/qemu-system" in arg for arg in argv[:4]):
            found.append(child)
    return found


def test_tester_killed_mid_boot_tests_the_image_once_after_restart(
    amqp_url: str, tmp_path: Path, node_image: NodeImage
) -> None:
    """Expected: the tester dies while qemu boots the image, and its qemu dies with it (no
    orphan guest, before or after the restart); the new tester process gets the redelivered
    image.built, tests the image from the start and sends one image.tested, passed, with one
    verdict stored for the bytes; nothing is dead-lettered and no work directory or mount is
    left behind."""
    cached, cache = node_image
    # a store of its own: a verdict in the cached store would be replayed instead of booting
    store = LocalArtifactStore(tmp_path / "store")
    art = store.put_file(cache.path_for(cached.artifact.sha256))
    built = cached.model_copy(
        update={"artifact": cached.artifact.model_copy(update={"uri": art.uri})}
    )
    work = tmp_path / "work"
    config = {
        "store_dir": str(store.root),
        "work_dir": str(work),
        "plan_file": str(PLAN),
    }
    with service_process(
        "tester",
        amqp_url,
        tmp_path,
        consumes=("image.built",),
        emits=("image.tested",),
        consumer_config=config,
    ) as svc:
        svc.publish(ImageBuiltV1.from_payload(built))
        wait_for(lambda: bool(qemu_below(svc.proc.pid)), 600, "qemu to start")
        time.sleep(5)  # the guest is booting (TCG: it takes a minute or more to come up)
        guests = qemu_below(svc.proc.pid)
        assert guests, "qemu ended before the kill"
        svc.kill()
        wait_for(lambda: not any(map(runner.is_running, guests)), 30, "qemu to die with it")
        assert verdicts.read(store, built.build_id, built.artifact.sha256) is None

        svc.start_again()
        event = svc.wait_event(1200)
        assert not any(map(runner.is_running, guests))
        svc.proc.send_signal(signal.SIGTERM)
        assert svc.proc.wait(120) == 0
        assert svc.channel.basic_get(svc.watch, auto_ack=True)[0] is None  # no second one
        assert svc.channel.basic_get(svc.dlq, auto_ack=True)[0] is None

    tested = ImageTestedV1(body=event, topic="x").payload
    assert tested.build_id == built.build_id
    assert tested.passed, [r for r in tested.results if r.status != "passed"]
    stored = verdicts.read(store, built.build_id, built.artifact.sha256)
    assert stored is not None
    assert stored.model_dump(exclude={"emitted_at"}) == tested.model_dump(exclude={"emitted_at"})
    assert not [d for d in work.iterdir() if not d.name.startswith(".")]
    assert mounts_under(tmp_path) == []
    assert qemu_below(os.getpid()) == []
