"""The agent's wiring that needs neither a repository nor a broker: when checks run (start,
hints, the pull timer, coalescing), how reports are flushed, and the per-host queue."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import pytest

from imgline.core.bus.topology import BROKER_LIMIT_MARGIN
from imgline.core.config import BusSettings
from imgline.core.errors import ConfigError
from imgline.core.trust.client import RepositoryClient
from imgline.core.trust.layout import Manifest
from imgline.updater import agent
from imgline.updater.agent import AgentService, Triggers, agent_settings, agent_topology
from imgline.updater.domain.policy import HostView
from imgline.updater.settings import HostConfig

pytestmark = pytest.mark.unit

LONG = 3600.0


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


class Recorder:
    """A check and a flush that log what ran; the check can be held open or made to fail."""

    def __init__(self, flush_results: list[bool] | None = None) -> None:
        self.events: list[str] = []
        self.hold = threading.Event()
        self.hold.set()
        self.in_check = threading.Event()
        self.fail_checks = 0
        self.flush_results = list(flush_results or [])

    def check(self, reason: str) -> None:
        self.events.append(f"check:{reason}")
        self.in_check.set()
        self.hold.wait(5)
        self.in_check.clear()
        if self.fail_checks:
            self.fail_checks -= 1
            raise RuntimeError("metadata server on fire")

    def flush(self) -> bool:
        self.events.append("flush")
        return self.flush_results.pop(0) if self.flush_results else True

    def checks(self) -> list[str]:
        return [e for e in self.events if e.startswith("check:")]


@contextmanager
def looping(triggers: Triggers) -> Iterator[threading.Thread]:
    thread = threading.Thread(target=triggers.run, daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        triggers.stop()
        thread.join(5)
        assert not thread.is_alive(), "the trigger loop did not stop"


def test_start_flushes_checks_and_flushes_again() -> None:
    rec = Recorder()
    with looping(Triggers(rec.check, rec.flush, LONG)):
        wait_for(lambda: len(rec.events) >= 3, "the start check")
        time.sleep(0.02)
    assert rec.events == ["flush", "check:start", "flush"]


def test_a_hint_when_idle_checks_at_once() -> None:
    rec = Recorder()
    triggers = Triggers(rec.check, rec.flush, LONG, first=None)
    with looping(triggers):
        wait_for(lambda: rec.events == ["flush"], "the start flush")
        triggers.hint("message")
        wait_for(lambda: rec.checks() == ["check:message"], "the hinted check")


def test_hints_during_a_check_collapse_into_one_more_check() -> None:
    rec = Recorder()
    rec.hold.clear()
    triggers = Triggers(rec.check, rec.flush, LONG)
    with looping(triggers):
        assert rec.in_check.wait(5)
        for _ in range(5):
            triggers.hint("message")
        rec.hold.set()
        wait_for(lambda: len(rec.checks()) == 2, "the check after the hints")
        time.sleep(0.05)
    assert rec.checks() == ["check:start", "check:message"]


def test_the_timer_checks_again_after_each_interval() -> None:
    rec = Recorder()
    with looping(Triggers(rec.check, rec.flush, 0.01)):
        wait_for(lambda: len(rec.checks()) >= 4, "timer checks")
    assert rec.checks()[:4] == ["check:start", "check:timer", "check:timer", "check:timer"]
    # each check is followed by a flush
    assert rec.events[:4] == ["flush", "check:start", "flush", "check:timer"]


def test_a_failing_check_is_logged_and_the_next_trigger_checks_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rec = Recorder()
    rec.fail_checks = 1
    triggers = Triggers(rec.check, rec.flush, LONG)
    with looping(triggers) as thread:
        wait_for(lambda: "check (start) failed" in caplog.text, "the logged failure")
        triggers.hint("message")
        wait_for(lambda: len(rec.checks()) == 2, "the check after the failure")
        assert thread.is_alive()
    assert "metadata server on fire" in caplog.text


def test_reports_left_behind_are_flushed_again_without_a_check() -> None:
    rec = Recorder(flush_results=[False, False, False, True])
    with looping(Triggers(rec.check, rec.flush, LONG, flush_retry=0.01)):
        wait_for(lambda: rec.events.count("flush") >= 4, "flush retries")
        time.sleep(0.05)  # nothing left: no more flushes
    assert rec.checks() == ["check:start"]
    assert rec.events.count("flush") == 4


def test_a_crashing_flush_does_not_stop_the_loop() -> None:
    rec = Recorder()
    calls = []

    def flush() -> bool:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("disk gone")
        return True

    with looping(Triggers(rec.check, flush, LONG, flush_retry=0.01)):
        wait_for(lambda: len(calls) >= 2 and rec.checks() == ["check:start"], "the loop going on")


def test_stop_ends_the_loop_after_the_check_in_hand() -> None:
    rec = Recorder()
    rec.hold.clear()
    triggers = Triggers(rec.check, rec.flush, LONG)
    thread = threading.Thread(target=triggers.run, daemon=True)
    thread.start()
    assert rec.in_check.wait(5)
    triggers.stop()
    triggers.hint("message")
    time.sleep(0.02)
    assert thread.is_alive()  # the check in hand finishes first
    rec.hold.set()
    thread.join(5)
    assert not thread.is_alive()
    assert rec.checks() == ["check:start"]


# --- the per-host queue ---------------------------------------------------------------------


def bus(**kw: object) -> BusSettings:
    return BusSettings.model_validate({"service": "updater", **kw})


def test_each_host_has_its_own_queue() -> None:
    s = agent_settings(bus(exchange="fleet"), "web-1")
    assert s.service == "updater"
    assert s.queue_name == "fleet.updater.web-1"
    assert agent_settings(bus(queue="imgline.updater.h1"), "h1").queue_name == "imgline.updater.h1"


def test_a_queue_shared_by_hosts_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"leave 'queue' out.*imgline\.updater\.h1"):
        agent_settings(bus(queue="imgline.updater"), "h1")


def test_the_queue_is_durable_quorum_bound_to_the_hosts_stream_only() -> None:
    topo = agent_topology(bus(delivery_limit=3), HostConfig(stream="beta"), "h1")
    queue = next(q for q in topo.queues if q.name == "imgline.updater.h1")
    assert queue.arguments == {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": "imgline.dlx",
        "x-delivery-limit": 3 + BROKER_LIMIT_MARGIN,
    }
    bound = {(b.exchange, b.routing_key) for b in topo.bindings if b.queue == queue.name}
    assert bound == {
        ("imgline", "imgline.image.published.beta"),
        ("imgline.retry", "imgline.updater.h1"),
    }


def unreachable_client(tmp: Path) -> RepositoryClient:
    return RepositoryClient.for_base_url("http://127.0.0.1:9", tmp / "tuf", root=b"{}")


class NoHost:
    def view(self, now: datetime) -> HostView:
        raise AssertionError("not used")

    def apply(self, image: Path, manifest: Manifest) -> str:
        raise AssertionError("not used")

    def reboot(self) -> None:
        raise AssertionError("not used")


def test_the_consumer_declares_what_agent_topology_says(tmp_path: Path) -> None:
    config = HostConfig(stream="beta", state_dir=tmp_path)
    settings = bus(amqp_url="amqp://127.0.0.1:9/")
    service = AgentService(
        settings, config, NoHost(), host_id="h1", client=unreachable_client(tmp_path)
    )
    assert service.consumer.topology() == agent_topology(settings, config, "h1")
    assert service.outbox.dir == tmp_path / "outbox"
    assert service.triggers.interval == config.refresh_interval_seconds


def test_the_agent_needs_a_broker(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a broker: set amqp_url"):
        AgentService(
            bus(),
            HostConfig(state_dir=tmp_path),
            NoHost(),
            host_id="h1",
        )


def test_run_without_a_pinned_root_exits_2_with_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = HostConfig(host_id="h1", state_dir=tmp_path)
    code = agent.run(bus(amqp_url="amqp://127.0.0.1:9/"), config, NoHost())
    assert code == 2
    assert "pin the repository's root first" in capsys.readouterr().err
