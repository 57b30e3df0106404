"""Fault drill: a disk that fills up, under the real service processes on a private broker.

The repository and the artifact store each live on a small tmpfs of their own, filled with a
file as a runaway log would fill it, then freed as an operator would. What a user is owed:

* nothing lost: a write refused for want of space is a transient failure; the message is
  retried, and succeeds on the first try after space is back; if space never comes back in
  time, the stage's failure event names the full disk (a request never ends in silence), and
  the same message sent again once space is back succeeds;
* nothing duplicated: exactly one event per success, and a release signed once;
* nothing half-done: no partial file left anywhere, and a repository that did not fit is
  exactly as it was (hosts verify it from their pinned root and still download old releases).

Root is needed for the mounts (image tier). The failed attempts are observed as an operator
would, on the service's /metrics: ``imgline_handler_seconds_count`` grows when a try returns,
before the back-off; the space is freed during that back-off.
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from bushelpers import ServiceProcess, service_process, wait_for
from fedora_messaging import message as fm_message
from prometheus_client.parser import text_string_to_metric_families
from sampleimages import Images
from tufrepo import client, make_tested, publisher_config

from imgline.core import verdicts
from imgline.core.artifacts import LocalArtifactStore
from imgline.core.broker import free_port
from imgline.core.trust.keys import KeyDir
from imgline.core.trust.repository import TufRepository
from imgline.publisher import http
from imgline.schemas import payloads as p
from imgline.schemas.messages import ImageBuiltV1, ImagePublishedV1, ImageRejectedV1, ImageTestedV1

pytestmark = pytest.mark.image

RETRY_DELAY = 2.0  # seconds of back-off after a first failed try: the window to free space in
LIMIT = 3


@pytest.fixture(autouse=True)
def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("mounting a small tmpfs needs root: run the image tier as root (make test)")


@contextmanager
def small_fs(where: Path, mib: int) -> Iterator[Path]:
    """A tmpfs of ``mib`` MiB mounted at ``where`` for the block."""
    where.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={mib}m,mode=0755", "tmpfs", str(where)],
        check=True,
    )
    try:
        yield where
    finally:
        subprocess.run(["umount", "--lazy", str(where)], check=False)


def fill(fs: Path, leave: int = 0) -> Path:
    """Write a filler file until ``leave`` bytes are free (0: until the disk refuses)."""
    filler = fs / "filler"
    with filler.open("ab", buffering=0) as out:
        try:
            while True:
                st = os.statvfs(fs)
                free = st.f_bavail * st.f_frsize
                if leave and free <= leave:
                    break
                out.write(b"\0" * min(1 << 20, max(free - leave, 4096)))
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


def scrape(port: int, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples with ``labels`` on the service's /metrics."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as answer:
        text = answer.read().decode()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def tries_returned(port: int) -> float:
    try:
        return scrape(port, "imgline_handler_seconds_count")
    except OSError:
        return -1.0  # not serving /metrics yet


def pending(svc: ServiceProcess) -> tuple[int, int]:
    """Events not yet taken, and dead letters: (0, 0) when nothing extra was emitted."""
    watch = svc.channel.queue_declare(svc.watch, passive=True).method.message_count
    dead = svc.channel.queue_declare(svc.dlq, passive=True).method.message_count
    return int(watch), int(dead)


def fail_once_then_free(svc: ServiceProcess, port: int, filler: Path, send: Any) -> None:
    """Send with the disk full, wait until the first try has returned (a failure: no event),
    then free the space during its back-off."""
    wait_for(lambda: tries_returned(port) >= 0, 60, "the service's /metrics")
    before = tries_returned(port)
    send()
    wait_for(lambda: tries_returned(port) > before, 60, "the first try to return")
    assert pending(svc) == (0, 0), "the try did not fail on the full disk"
    filler.unlink()


def no_leftovers(root: Path) -> list[Path]:
    """Temporary files of interrupted writes under ``root`` (the filler aside)."""
    return [
        f
        for f in root.rglob("*")
        if f.is_file() and (f.name.startswith((".tmp-", "put-", "rec-", "claim-")))
    ]


# --- the repository --------------------------------------------------------------------------


def release(tmp: Path, store: LocalArtifactStore, version: str, size: int) -> p.ImageTested:
    """A tested image in the store with the tester's passing verdict, as the tester leaves it."""
    tested, image = make_tested(tmp, version, size=size)
    art = store.put_file(image, move=True)
    ref = tested.image.model_copy(
        update={"artifact": p.Artifact(uri=art.uri, sha256=art.sha256, size=art.size)}
    )
    tested = tested.model_copy(update={"image": ref})
    verdicts.write(store, tested)
    return tested


def served_files(repo_root: Path) -> dict[str, str]:
    """What hosts can fetch: every file under metadata/ and targets/, by content."""
    return {
        f.relative_to(repo_root).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()
        for sub in ("metadata", "targets")
        for f in (repo_root / sub).rglob("*")
        if f.is_file()
    }


def test_a_full_repository_disk_delays_a_release_and_changes_nothing(
    amqp_url: str, tmp_path: Path
) -> None:
    """Expected: (1) a release sent while the repository's disk is full fails its first try,
    and is published exactly once by the retry after space is freed; (2) a release that never
    fits is retried ``LIMIT`` times and then rejected with a reason naming the repository's
    full file system; the repository is then exactly as before (same served files, no partial
    copy of the image), and a host verifies it and still downloads the earlier releases; sent
    again once space is back, the release is published once, and a redelivery re-announces
    it without signing anything new."""
    store = LocalArtifactStore(tmp_path / "store")  # another file system: the image is copied
    r1, r2 = (release(tmp_path, store, f"20261205.{n}", 1 << 20) for n in (1, 2))
    r3 = release(tmp_path, store, "20261205.3", 3 << 20)
    port = free_port()
    with ExitStack() as stack:
        fs = stack.enter_context(small_fs(tmp_path / "repofs", 16))
        repo = TufRepository.init(
            fs / "repo", KeyDir(tmp_path / "keys"), KeyDir(tmp_path / "root-keys")
        )
        pinned = repo.root_bytes()
        server = stack.enter_context(http.running(repo.root_dir))
        config = publisher_config(repo, store.root, tmp_path / "work", server.url)
        with service_process(
            "publisher",
            amqp_url,
            tmp_path,
            consumes=("image.tested",),
            emits=(ImagePublishedV1.binding(), "image.rejected"),
            consumer_config=config,
            settings={
                "delivery_limit": LIMIT,
                "retry_delay_seconds": RETRY_DELAY,
                "metrics_port": port,
            },
        ) as svc:
            svc.publish(ImageTestedV1.from_payload(r1))
            first = ImagePublishedV1(body=svc.wait_event(60), topic="x").payload
            assert first.version == r1.image.version

            # (1) the disk is full when the release arrives, and freed during the back-off
            filler = fill(fs)
            fail_once_then_free(
                svc, port, filler, lambda: svc.publish(ImageTestedV1.from_payload(r2))
            )
            second = ImagePublishedV1(body=svc.wait_event(60), topic="x").payload
            assert second.version == r2.image.version
            assert scrape(port, "imgline_messages_failed_total", kind="transient") == 1

            # (2) the release does not fit, and space is not freed in time
            before = served_files(repo.root_dir)
            filler = fill(fs, leave=512 << 10)
            svc.publish(ImageTestedV1.from_payload(r3))
            rejected = ImageRejectedV1(body=svc.wait_event(60), topic="x").payload
            assert rejected.build_id == r3.build_id
            assert f"gave up after {LIMIT} attempts" in rejected.reason
            assert "no space left on the repository's file system" in rejected.reason
            assert served_files(repo.root_dir) == before
            assert no_leftovers(repo.root_dir) == []
            host = client(server.url, tmp_path / "host", pinned)
            assert [r.version for r in host.releases("stable").releases] == [
                r2.image.version,
                r1.image.version,
            ]
            for old in (r1, r2):
                got = host.download(
                    f"stable/node/{old.image.version}/node-{old.image.version}.squashfs.img",
                    tmp_path / f"{old.image.version}.img",
                )
                assert hashlib.sha256(got.read_bytes()).hexdigest() == old.image.artifact.sha256

            # space is back: the same release, sent again, is published once
            filler.unlink()
            svc.publish(ImageTestedV1.from_payload(r3))
            third = ImagePublishedV1(body=svc.wait_event(60), topic="x").payload
            svc.publish(ImageTestedV1.from_payload(r3))  # a redelivery
            again = ImagePublishedV1(body=svc.wait_event(60), topic="x").payload
            assert pending(svc) == (0, 0)
        assert third.version == r3.image.version
        assert again.model_dump(exclude={"emitted_at"}) == third.model_dump(exclude={"emitted_at"})
        assert (first.role_version, second.role_version, third.role_version) == (1, 2, 3)
        latest = client(server.url, tmp_path / "host2", pinned).latest("stable", "node")
        assert latest is not None and latest.build_id == r3.build_id
        assert no_leftovers(repo.root_dir) == []


# --- the artifact store ----------------------------------------------------------------------

PLAN = """
[defaults]
packages = ["systemd", "python3 >= 3.11"]
services = ["ssh"]
[defaults.boot]
enabled = false
"""


def built(ref: p.ImageRef) -> fm_message.Message:
    return ImageBuiltV1.from_payload(
        p.ImageBuilt(
            **ref.model_dump(),
            request_id="drill",
            kickstart_sha256="ab" * 32,
            backend="mmdebstrap",
            duration_seconds=1.0,
        )
    )


def test_a_full_artifact_store_delays_a_verdict_and_loses_nothing(
    amqp_url: str, tmp_path: Path
) -> None:
    """Expected, with the tester writing its report and verdict into a full store: (1) freed
    during the back-off, the retry stores them and exactly one passing ``image.tested`` is
    sent; (2) never freed, the last try ends in a failed ``image.tested`` whose
    ``tester.error`` says the store is full, and no verdict is stored for it (it is about the
    store, not the image); sent again once space is back, the image is tested and passes.
    Never a partial file in the store, never a dead letter."""
    images = Images(tmp_path / "images")
    versions = ("20261205.1", "20261205.2")
    refs = [images.build(version=v).model_copy(update={"version": v}) for v in versions]
    plan = tmp_path / "plan.toml"
    plan.write_text(PLAN)
    port = free_port()
    with small_fs(tmp_path / "storefs", 64) as fs:
        store = LocalArtifactStore(fs / "store")
        stored = []
        for ref in refs:  # the images as the builder leaves them, in the store
            art = store.put_file(Path(ref.artifact.uri.removeprefix("file://")))
            stored.append(
                ref.model_copy(
                    update={"artifact": ref.artifact.model_copy(update={"uri": art.uri})}
                )
            )
        config = {
            "store_dir": str(store.root),
            "work_dir": str(tmp_path / "work"),
            "plan_file": str(plan),
        }
        with service_process(
            "tester",
            amqp_url,
            tmp_path,
            consumes=("image.built",),
            emits=("image.tested",),
            consumer_config=config,
            settings={
                "delivery_limit": 2,
                "retry_delay_seconds": RETRY_DELAY,
                "metrics_port": port,
            },
        ) as svc:
            # (1) full when the image arrives, freed during the back-off
            filler = fill(fs)
            fail_once_then_free(svc, port, filler, lambda: svc.publish(built(stored[0])))
            first = ImageTestedV1(body=svc.wait_event(120), topic="x").payload
            assert scrape(port, "imgline_messages_failed_total", kind="transient") == 1

            # (2) full on every try
            filler = fill(fs)
            svc.publish(built(stored[1]))
            gave_up = ImageTestedV1(body=svc.wait_event(120), topic="x").payload
            no_verdict = verdicts.read(store, gave_up.build_id, gave_up.image.artifact.sha256)
            filler.unlink()
            svc.publish(built(stored[1]))
            second = ImageTestedV1(body=svc.wait_event(120), topic="x").payload
            assert pending(svc) == (0, 0)
        check_verdicts(first, gave_up, second)
        assert no_verdict is None
        assert verdicts.read(store, first.build_id, first.image.artifact.sha256) == first
        assert verdicts.read(store, second.build_id, second.image.artifact.sha256) == second
        assert no_leftovers(store.root) == []
        assert not any((store.root / "tmp").iterdir())


def check_verdicts(first: p.ImageTested, gave_up: p.ImageTested, second: p.ImageTested) -> None:
    """The three verdicts say what the docstring expects."""
    assert first.passed, first.results
    assert not gave_up.passed
    [error] = gave_up.results
    assert error.name == "tester.error"
    assert "gave up after 2 attempts" in error.detail
    assert "no space left in the artifact store" in error.detail
    assert second.passed, second.results
    assert second.image == gave_up.image
