"""Fault drill: the publisher stopped for longer than its timestamp lives.

The timestamp is the repository's freshness proof: short-lived on purpose, so that a frozen
mirror cannot keep hosts on old metadata, and re-signed by the running publisher before half
its life is gone. Here it lives ``LIFETIME`` seconds. The real publisher process keeps it fresh
while it runs; once it is stopped past the expiry, a host's updater agent (the real agent and
its TUF client; only the host's disks are the recording FakeHost) must refuse the metadata,
apply nothing, report nothing false and keep running; when the publisher starts again it
re-signs the timestamp before consuming anything, and hosts see and apply releases again,
each exactly once.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from bushelpers import ServiceProcess, service_process, wait_for
from fakehost import FakeHost
from tufrepo import client, make_tested, publisher_config

from imgline.core import verdicts
from imgline.core.artifacts import LocalArtifactStore
from imgline.core.trust.errors import TrustError
from imgline.core.trust.repository import TufRepository
from imgline.schemas import payloads as p
from imgline.schemas.messages import ImagePublishedV1, ImageTestedV1
from imgline.schemas.payloads import utcnow
from imgline.updater.agent import make_agent, outbox_of
from imgline.updater.settings import HostConfig

pytestmark = pytest.mark.broker

LIFETIME = 3  # seconds the timestamp is signed for
BOOTED = "20261204.1"


def release(tmp: Path, store: LocalArtifactStore, version: str) -> p.ImageTested:
    """An image in the store with the tester's passing verdict."""
    tested, image = make_tested(tmp, version, size=1 << 20)
    art = store.put_file(image, move=True)
    ref = tested.image.model_copy(
        update={"artifact": p.Artifact(uri=art.uri, sha256=art.sha256, size=art.size)}
    )
    tested = tested.model_copy(update={"image": ref})
    verdicts.write(store, tested)
    return tested


def boot_into_pending(host: FakeHost) -> None:
    """The reboot the agent asks for after an apply: the host comes up on the new layer."""
    host.running, host.pending = host.pending, None


def timestamp(repo: TufRepository) -> tuple[int, datetime]:
    """The version and expiry of the timestamp on the publisher's disk."""
    signed = repo.load().timestamp.signed
    return signed.version, signed.expires


def test_hosts_refuse_an_expired_timestamp_until_the_publisher_is_back(
    amqp_url: str, tmp_path: Path, repo: TufRepository, served: str
) -> None:
    """Expected: (1) while the publisher runs, its timer re-signs the timestamp before it
    expires and the host applies the release; (2) with the publisher stopped past the expiry,
    the host's check is skipped with a reason naming the expired timestamp, nothing is applied
    or reported, and a host with no earlier metadata refuses it too (TrustError "expired");
    (3) the publisher, started again, re-signs the timestamp at start: the host reads the
    repository again without anything published, and the next release is applied once."""
    store = LocalArtifactStore(tmp_path / "store")
    r1, r2 = release(tmp_path, store, "20261205.1"), release(tmp_path, store, "20261205.2")
    config = publisher_config(
        repo,
        store.root,
        tmp_path / "work",
        served,
        expiry={"timestamp": LIFETIME},
        refresh_interval_seconds=0.5,
    )
    host_config = HostConfig(
        host_id="drill-host",
        stream="stable",
        repository_url=served,
        state_dir=tmp_path / "host",
        refresh_interval_seconds=3600,
    )
    pinned = host_config.tuf_dir / "metadata"
    pinned.mkdir(parents=True)
    (pinned / "root.json").write_bytes(repo.root_bytes())  # what install.ks leaves
    host = FakeHost(BOOTED, on_reboot=boot_into_pending)
    agent = make_agent(host_config, host, "drill-host", None, utcnow)

    def publisher() -> AbstractContextManager[ServiceProcess]:
        return service_process(
            "publisher",
            amqp_url,
            tmp_path,
            consumes=("image.tested",),
            emits=(ImagePublishedV1.binding(),),
            consumer_config=config,
        )

    # (1) the running publisher keeps the timestamp fresh
    with publisher() as svc:
        svc.publish(ImageTestedV1.from_payload(r1))
        assert svc.wait_event(60)["version"] == r1.image.version
        first_version, first_expiry = timestamp(repo)
        assert first_expiry - datetime.now(UTC) <= timedelta(seconds=LIFETIME)
        wait_for(
            lambda: timestamp(repo)[1] > first_expiry + timedelta(seconds=LIFETIME / 2),
            30,
            "the refresh timer to re-sign the timestamp past its first expiry",
        )
        applied = agent.check("drill")
        assert applied.action == "apply", applied
        assert host.applied == [(r1.image.version, r1.image.artifact.sha256)]
    stopped_version, expires = timestamp(repo)
    assert stopped_version > first_version

    # (2) stopped for longer than the timestamp lives
    left = (expires - datetime.now(UTC)).total_seconds()
    time.sleep(max(0.0, left) + 1.5)
    outbox_before = outbox_of(host_config).pending()
    refused = agent.check("drill")
    assert refused.action == "skip"
    assert refused.reason.startswith("repository not readable: ")
    assert "expired" in refused.reason
    assert host.applied == [(r1.image.version, r1.image.artifact.sha256)]
    assert outbox_of(host_config).pending() == outbox_before  # no report made up
    with pytest.raises(TrustError) as fresh_host:
        client(served, tmp_path / "new-host", repo.root_bytes()).latest("stable", "node")
    assert fresh_host.value.reason == "expired"
    assert timestamp(repo)[0] == stopped_version  # nothing re-signed it meanwhile

    # (3) the publisher is back: the timestamp is re-signed before anything is consumed
    with publisher() as svc:
        wait_for(
            lambda: timestamp(repo)[0] > stopped_version, 60, "the timestamp re-signed at start"
        )
        latest = client(served, tmp_path / "new-host", repo.root_bytes()).latest("stable", "node")
        assert latest is not None and latest.version == r1.image.version
        again = agent.check("drill")
        assert again.action == "skip" and "repository not readable" not in again.reason, again
        svc.publish(ImageTestedV1.from_payload(r2))
        assert svc.wait_event(60)["version"] == r2.image.version
        second = agent.check("drill")
        assert second.action == "apply", second
    assert host.applied == [
        (r1.image.version, r1.image.artifact.sha256),
        (r2.image.version, r2.image.artifact.sha256),
    ]
