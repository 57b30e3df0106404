"""The updater agent on a private broker with the real publisher: a release signed into the
repository and announced as ``image.published.stable`` reaches the stable host's own queue,
which applies it from the signed repository; the host's reports wait in its outbox until the
bus has them; a host on another stream never hears of it; a forged announcement changes
nothing."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from bushelpers import ServiceProcess, queue_depth, service_process, wait_for
from fakehost import FakeHost, forged
from tufrepo import make_tested, publisher_config

from imgline.core import verdicts
from imgline.core.artifacts import LocalArtifactStore
from imgline.core.bus import topology
from imgline.core.config import BusSettings
from imgline.core.trust.repository import TufRepository
from imgline.schemas import payloads as p
from imgline.schemas.messages import ImagePublishedV1, ImageTestedV1
from imgline.updater.agent import AgentService, agent_topology, outbox_of
from imgline.updater.outbox import Outbox
from imgline.updater.settings import HostConfig

pytestmark = pytest.mark.broker

BOOTED, NEW, BETA = "20261122.1", "20261123.1", "20261124.1"


@pytest.fixture
def publisher(
    amqp_url: str, tmp_path: Path, repo: TufRepository, served: str
) -> Iterator[ServiceProcess]:
    """imgline-publisher as its own process, as deployed; its events land on ``svc.watch``."""
    config = publisher_config(repo, tmp_path / "store", tmp_path / "work", served)
    with service_process(
        "publisher",
        amqp_url,
        tmp_path,
        consumes=("image.tested",),
        emits=(ImagePublishedV1.binding(),),
        consumer_config=config,
    ) as svc:
        yield svc


def release_with_verdict(tmp: Path, version: str, **kw: Any) -> p.ImageTested:
    """An image and its verdict in the publisher's store, as the builder and tester leave them."""
    tested, image = make_tested(tmp, version, **kw)
    store = LocalArtifactStore(tmp / "store")
    store.put_file(image)
    verdicts.write(store, tested)
    return tested


def agent_bus(svc: ServiceProcess, amqp_url: str) -> BusSettings:
    return BusSettings(
        service="updater",
        amqp_url=amqp_url,
        exchange=svc.exchange,
        dead_letter_exchange=f"{svc.exchange}.dlx",
        dead_letter_queue=f"{svc.exchange}.dead-letter",
        shutdown_grace_seconds=10,
        reconnect_max_seconds=2,
    )


@contextmanager
def running_agent(service: AgentService) -> Iterator[None]:
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    try:
        assert service.consumer.ready.wait(30), "the agent did not attach to its queue"
        yield
    finally:
        service.stop()
        thread.join(30)
    assert not thread.is_alive(), "the agent did not stop"


def host_config(tmp: Path, served: str, stream: str) -> HostConfig:
    host_id = f"{stream}-{uuid.uuid4().hex[:8]}"
    return HostConfig(
        host_id=host_id,
        stream=stream,
        repository_url=served,
        state_dir=tmp / host_id,
        refresh_interval_seconds=3600,  # only the message can make it look again
    )


def pin_root(config: HostConfig, repo: TufRepository) -> None:
    """What install.ks does: the repository's root, trusted on first use."""
    metadata = config.tuf_dir / "metadata"
    metadata.mkdir(parents=True)
    (metadata / "root.json").write_bytes(repo.root_bytes())


def upgraded(config: HostConfig, from_version: str | None, to_version: str) -> p.HostUpgraded:
    assert config.host_id is not None
    return p.HostUpgraded(
        host_id=config.host_id,
        name=config.name,
        stream=config.stream,
        from_version=from_version,
        to_version=to_version,
        duration_seconds=42.0,
        layer=f"node-{to_version}+1",
    )


def take(ch: Any, queue: str) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    while True:
        method, _props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append((method.routing_key, json.loads(body)))


def test_a_published_release_is_applied_by_its_streams_hosts_only(
    amqp_url: str, tmp_path: Path, repo: TufRepository, served: str, publisher: ServiceProcess
) -> None:
    svc = publisher
    stable = host_config(tmp_path, served, "stable")
    beta = host_config(tmp_path, served, "beta")
    assert stable.host_id is not None and beta.host_id is not None
    pin_root(stable, repo)
    # the health check of the last boot ran before the network was up: its report waited
    outbox_of(stable).put(upgraded(stable, None, BOOTED))

    def health_check_after_reboot(host: FakeHost) -> None:
        assert host.pending is not None
        Outbox(stable.state_dir / "outbox").put(upgraded(stable, BOOTED, host.pending))

    host = FakeHost(BOOTED, on_reboot=health_check_after_reboot)
    bus = agent_bus(svc, amqp_url)
    ch = svc.conn.channel()
    reports = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(reports, svc.exchange, bus.routing_key("host.#"))
    beta_queue = f"{svc.exchange}.updater.{beta.host_id}"
    topology.declare(ch, agent_topology(bus, beta, beta.host_id))  # a beta host, offline

    service = AgentService(bus, stable, host, host_id=stable.host_id)
    with running_agent(service):
        wait_for(lambda: host.views >= 1, what="the agent's start check")
        assert host.applied == []  # nothing published yet

        tested = release_with_verdict(tmp_path, NEW, stream="stable", size=2 << 20)
        svc.publish(ImageTestedV1.from_payload(tested))
        announced = svc.wait_event(60)
        assert (announced["version"], announced["stream"]) == (NEW, "stable")
        wait_for(lambda: len(host.applied) == 1, timeout=60, what="the release applied")
        assert host.applied == [(NEW, tested.image.artifact.sha256)]
        assert host.reboots == 1

        got: list[tuple[str, dict[str, Any]]] = []

        def two_reports() -> bool:
            got.extend(take(ch, reports))
            return len(got) >= 2

        wait_for(two_reports, what="two reports on the bus")
        assert [(key, body["from_version"], body["to_version"]) for key, body in got] == [
            ("imgline.host.upgraded", None, BOOTED),  # flushed at start
            ("imgline.host.upgraded", BOOTED, NEW),  # flushed after the check
        ]
        assert outbox_of(stable).pending() == []
        assert queue_depth(amqp_url, beta_queue) == 0  # stable is not beta's business

        # a forged announcement only makes the agent look at the signed repository
        views = host.views
        svc.publish(forged("20991231.1"))
        assert svc.wait_event(10)["version"] == "20991231.1"  # (the watch queue saw it too)
        wait_for(lambda: host.views > views, what="the check the forged message caused")
        assert host.applied == [(NEW, tested.image.artifact.sha256)]
        assert host.reboots == 1

    # a beta release does reach the beta host's queue: the binding is not merely empty
    beta_tested = release_with_verdict(tmp_path, BETA, stream="beta", size=1 << 20)
    svc.publish(ImageTestedV1.from_payload(beta_tested))
    assert svc.wait_event(60)["stream"] == "beta"
    wait_for(lambda: queue_depth(amqp_url, beta_queue) == 1, what="the beta hint")
    method, _props, body = ch.basic_get(beta_queue, auto_ack=True)
    assert method is not None and method.routing_key == "imgline.image.published.beta"
    assert body is not None and json.loads(body)["stream"] == "beta"
    ch.queue_delete(beta_queue)
    consumed = service.consumer.metrics.registry.get_sample_value(
        "imgline_messages_consumed_total",
        {"service": "updater", "topic": "imgline.image.published.stable"},
    )
    assert consumed == 2  # the release and the forgery, nothing of beta
