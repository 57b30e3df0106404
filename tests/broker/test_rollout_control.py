"""Staged rollouts end to end on a private broker: the real publisher process signs each new
release's first wave into the repository; a real agent with a real TUF client skips a release
outside its wave or paused, and takes it once its wave opens or the pause is lifted; the
publisher's rollout controller pauses a release whose first wave rolls back, counting each
host once, and opens the next wave of a healthy one."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from bushelpers import ServiceProcess, queue_depth, service_process, wait_for
from fakehost import FakeHost
from tufrepo import client, make_tested, publisher_config

from imgline.core import verdicts
from imgline.core.artifacts import LocalArtifactStore
from imgline.core.config import BusSettings
from imgline.core.trust.keys import KeyDir
from imgline.core.trust.repository import TufRepository
from imgline.core.trust.rollout import Rollout, RolloutTable, position, ppm
from imgline.publisher.adapters.repo import Repository
from imgline.schemas import payloads as p
from imgline.schemas.messages import (
    HostRolledBackV1,
    HostUpgradedV1,
    ImagePublishedV1,
    ImageTestedV1,
)
from imgline.updater.agent import AgentService
from imgline.updater.settings import HostConfig

pytestmark = pytest.mark.broker

OLD, NEW = "20261122.1", "20261123.1"


@contextmanager
def publisher_with(
    amqp_url: str, tmp: Path, repo: TufRepository, served: str, rollout: dict[str, Any]
) -> Iterator[ServiceProcess]:
    config = publisher_config(repo, tmp / "store", tmp / "work", served, rollout=rollout)
    with service_process(
        "publisher",
        amqp_url,
        tmp,
        consumes=("image.tested", "host.upgraded", "host.rolled_back"),
        emits=(ImagePublishedV1.binding(),),
        consumer_config=config,
    ) as svc:
        yield svc


def publish(svc: ServiceProcess, tmp: Path, version: str) -> None:
    """A tested release into the publisher's store and its image.tested on the bus."""
    tested, image = make_tested(tmp, version, size=1 << 20)
    store = LocalArtifactStore(tmp / "store")
    store.put_file(image)
    verdicts.write(store, tested)
    svc.publish(ImageTestedV1.from_payload(tested))
    assert svc.wait_event(60)["version"] == version


def hosts(where: str, count: int, below: float = 1.0, above: float = 0.0) -> list[str]:
    """``count`` host ids whose place in NEW's rollout is in [above, below)."""
    found = (f"{where}-{i}" for i in range(100_000))
    return [h for h in found if above <= position(h, "node", NEW) < below][:count]


def signed_table(served: str, repo: TufRepository, state: Path) -> RolloutTable:
    """The rollout table as a host sees it: refreshed and verified over HTTP."""
    host = client(served, state, root=repo.root_bytes() if not state.exists() else None)
    host.refresh()
    return host.rollouts("stable")


def operator(repo: TufRepository, served: str) -> Repository:
    """The repository as an operator's tool opens it (same directory and online keys)."""
    return Repository(repo.root_dir, KeyDir(repo.keys.directory), served)


def set_rollout(repo: Repository, *, share: float, paused: bool = False) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    repo.update_rollout(
        "stable",
        "node",
        NEW,
        lambda _current: Rollout(
            name="node",
            version=NEW,
            share_ppm=ppm(share),
            paused=paused,
            reason="paused by hand" if paused else None,
            changed=now,
        ),
    )


def test_an_agent_takes_a_release_only_inside_its_wave_and_not_while_paused(
    amqp_url: str, tmp_path: Path, repo: TufRepository, served: str
) -> None:
    host_id = hosts("agent", 1, above=0.2)[0]
    place = position(host_id, "node", NEW)
    rollout = {"waves": [place / 2, 1.0], "soak_seconds": 86400.0, "tick_seconds": 3600.0}
    with publisher_with(amqp_url, tmp_path, repo, served, rollout) as svc:
        config = HostConfig(
            host_id=host_id,
            repository_url=served,
            state_dir=tmp_path / host_id,
            refresh_interval_seconds=3600,
        )
        metadata = config.tuf_dir / "metadata"
        metadata.mkdir(parents=True)
        (metadata / "root.json").write_bytes(repo.root_bytes())
        host = FakeHost(OLD)
        bus = BusSettings(
            service="updater",
            amqp_url=amqp_url,
            exchange=svc.exchange,
            dead_letter_exchange=f"{svc.exchange}.dlx",
            dead_letter_queue=f"{svc.exchange}.dead-letter",
            shutdown_grace_seconds=10,
        )
        service = AgentService(bus, config, host, host_id=host_id)
        thread = threading.Thread(target=service.run, daemon=True)
        thread.start()
        try:
            assert service.consumer.ready.wait(30)
            wait_for(lambda: host.views >= 1, what="the agent's start check")
            views = host.views
            publish(svc, tmp_path, NEW)  # the announcement is the agent's hint
            wait_for(lambda: host.views > views, what="the check the announcement caused")
            assert host.applied == []
            first = service.agent.check("test")
            assert first.action == "skip"
            assert f"open to {place / 2:.1%} of hosts so far" in first.reason

            by_hand = operator(repo, served)
            set_rollout(by_hand, share=1.0, paused=True)
            paused = service.agent.check("test")
            assert paused.action == "skip"
            assert paused.reason == f"{NEW} is paused by the publisher's rollout (paused by hand)"
            assert host.applied == []

            set_rollout(by_hand, share=1.0)
            taken = service.agent.check("test")
            assert taken.action == "apply"
            assert [v for v, _sha in host.applied] == [NEW]
        finally:
            service.stop()
            thread.join(30)
        assert not thread.is_alive()


def report(svc: ServiceProcess, host_id: str, outcome: str) -> None:
    base: dict[str, Any] = {
        "host_id": host_id,
        "name": "node",
        "stream": "stable",
        "from_version": OLD,
        "to_version": NEW,
        "duration_seconds": 30.0,
    }
    if outcome == "upgraded":
        svc.publish(HostUpgradedV1.from_payload(p.HostUpgraded(**base, layer="node-x+1")))
    else:
        event = p.HostRolledBack(**base, step="health", error="payload.service failed")
        svc.publish(HostRolledBackV1.from_payload(event))


def drained(amqp_url: str, svc: ServiceProcess) -> None:
    wait_for(
        lambda: queue_depth(amqp_url, f"{svc.exchange}.publisher") == 0,
        what="the publisher to take every report",
    )


def test_the_controller_pauses_a_release_its_first_wave_rolls_back(
    amqp_url: str, tmp_path: Path, repo: TufRepository, served: str
) -> None:
    rollout = {
        "waves": [0.5, 1.0],
        "pause_share": 0.5,
        "min_reports": 5,
        "soak_seconds": 86400.0,
        "tick_seconds": 3600.0,
    }
    state = tmp_path / "observer"
    with publisher_with(amqp_url, tmp_path, repo, served, rollout) as svc:
        publish(svc, tmp_path, NEW)
        start = signed_table(served, repo, state).of("node", NEW)
        assert start is not None and (start.share, start.paused) == (0.5, False)

        early = hosts("early", 5, below=0.5)
        late = hosts("late", 6, above=0.5)
        for h in late:  # the second wave is not open: reports of it never pause the first
            report(svc, h, "rolled_back")
        for _ in range(3):  # one host, said three times, counts once
            report(svc, early[0], "rolled_back")
        report(svc, early[1], "upgraded")
        report(svc, early[2], "upgraded")
        drained(amqp_url, svc)
        table = signed_table(served, repo, state).of("node", NEW)
        assert table is not None and not table.paused  # 1 of 3 reports: too few anyway

        report(svc, early[3], "rolled_back")
        report(svc, early[4], "rolled_back")  # 3 of 5 in wave 1: over half
        wait_for(
            lambda: signed_table(served, repo, state).paused("node", NEW),
            what="the signed pause",
        )
        paused = signed_table(served, repo, state).of("node", NEW)
        assert paused is not None and paused.share == 0.5
        assert paused.reason == (
            "3 of 5 reporting hosts of wave 1 (up to 50% of hosts) rolled back (60%, over the "
            "50% allowed)"
        )
        assert svc.proc.poll() is None


def test_the_controller_opens_the_next_wave_of_a_healthy_one(
    amqp_url: str, tmp_path: Path, repo: TufRepository, served: str
) -> None:
    rollout = {"waves": [0.3, 1.0], "min_reports": 2, "soak_seconds": 0.0, "tick_seconds": 1.0}
    state = tmp_path / "observer"
    with publisher_with(amqp_url, tmp_path, repo, served, rollout) as svc:
        publish(svc, tmp_path, NEW)
        first = signed_table(served, repo, state).of("node", NEW)
        assert first is not None and first.share == 0.3
        for h in hosts("early", 2, below=0.3):
            report(svc, h, "upgraded")

        def opened() -> bool:
            now = signed_table(served, repo, state).of("node", NEW)
            return now is not None and now.share == 1.0

        wait_for(opened, what="the second wave opened")
        final = signed_table(served, repo, state).of("node", NEW)
        assert final is not None and not final.paused
