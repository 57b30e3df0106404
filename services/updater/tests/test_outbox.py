"""The outbox: reports survive a down bus, go out in order, and a bad file blocks nothing."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fedora_messaging import message as fm_message

from imgline.core.errors import BrokerUnavailableError
from imgline.schemas import messages as m
from imgline.schemas import payloads as p
from imgline.updater.outbox import Outbox

pytestmark = pytest.mark.unit

AT = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)


def failed(to: str, step: str = "download") -> p.HostUpgradeFailed:
    return p.HostUpgradeFailed(
        host_id="h1",
        name="node",
        stream="stable",
        from_version="1",
        to_version=to,
        duration_seconds=1.5,
        step=step,
        error="boom",
        emitted_at=AT,
    )


def upgraded(to: str) -> p.HostUpgraded:
    return p.HostUpgraded(
        host_id="h1",
        name="node",
        stream="stable",
        from_version="1",
        to_version=to,
        duration_seconds=3.0,
        layer=f"node-{to}+1",
        emitted_at=AT,
    )


class Bus:
    """Records what was sent; fails the sends it is told to."""

    def __init__(self, fail_at: set[int] | None = None) -> None:
        self.sent: list[m.ImglineMessage[Any]] = []
        self.calls = 0
        self.fail_at = fail_at or set()

    def __call__(self, msg: fm_message.Message) -> None:
        self.calls += 1
        if self.calls in self.fail_at:
            raise BrokerUnavailableError("could not publish: connection refused")
        # what a consumer would decode from the wire
        wire = fm_message.get_message(msg.topic, msg._properties, msg._encoded_body)
        assert isinstance(wire, m.ImglineMessage)
        self.sent.append(wire)


def test_put_writes_one_durable_file_per_report_named_in_order(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox")
    paths = [box.put(failed(str(v))) for v in range(1, 12)]
    assert paths == sorted(paths, key=lambda path: path.name)
    assert box.pending() == paths
    assert paths[0].name == "000000000001-host.upgrade.failed.json"
    assert paths[10].name == "000000000011-host.upgrade.failed.json"  # 11 sorts after 2
    assert not list(box.dir.glob(".tmp-*"))
    entry = json.loads(paths[0].read_text())
    assert entry["topic"] == "host.upgrade.failed"
    assert p.HostUpgradeFailed.model_validate(entry["body"]) == failed("1")


def test_put_refuses_what_is_not_a_host_report(tmp_path: Path) -> None:
    bare = p.HostEvent(host_id="h1", name="node", stream="s", to_version="2", duration_seconds=0)
    with pytest.raises(TypeError, match="HostEvent is not a host report"):
        Outbox(tmp_path).put(bare)
    assert not list(tmp_path.iterdir())


def test_flush_sends_in_order_with_the_prefix_and_deletes_what_was_sent(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    box.put(failed("2", step="apply"))
    box.put(upgraded("3"))
    bus = Bus()
    assert box.flush(bus, "acme") == 2
    assert [msg.topic for msg in bus.sent] == ["acme.host.upgrade.failed", "acme.host.upgraded"]
    assert [type(msg) for msg in bus.sent] == [m.HostUpgradeFailedV1, m.HostUpgradedV1]
    assert [msg.payload for msg in bus.sent] == [failed("2", step="apply"), upgraded("3")]
    assert box.pending() == []
    assert box.flush(bus, "acme") == 0


def test_failing_send_stops_the_flush_and_keeps_the_rest_for_later(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    box = Outbox(tmp_path)
    for v in ("2", "3", "4"):
        box.put(failed(v))
    bus = Bus(fail_at={2})
    assert box.flush(bus, "imgline") == 1
    assert [msg.payload.to_version for msg in bus.sent] == ["2"]
    assert [path.name[:12] for path in box.pending()] == ["000000000002", "000000000003"]
    assert "could not send report 000000000002-host.upgrade.failed.json" in caplog.text
    assert "it and 1 more stay in" in caplog.text
    first_try = bus.calls
    assert box.flush(bus, "imgline") == 2
    assert bus.calls == first_try + 2
    assert [msg.payload.to_version for msg in bus.sent] == ["2", "3", "4"]
    assert box.pending() == []


def test_a_resent_report_keeps_its_message_id(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    box.put(failed("2"))
    ids: list[str] = []

    def refuse(msg: fm_message.Message) -> None:
        ids.append(msg.id)
        raise BrokerUnavailableError("down")

    box.flush(refuse, "imgline")
    bus = Bus()
    box.flush(bus, "imgline")
    assert [msg.id for msg in bus.sent] == ids


@pytest.mark.parametrize(
    ("name", "content", "why"),
    [
        ("000000000001-host.upgraded.json", b"{not json", "not an outbox entry"),
        (
            "000000000001-host.upgraded.json",
            json.dumps({"topic": "image.published", "message_id": "x", "body": {}}).encode(),
            "'image.published' is not a host report topic",
        ),
        (
            "000000000001-host.upgraded.json",
            json.dumps(
                {"topic": "host.upgraded", "message_id": "x", "body": {"layer": ""}}
            ).encode(),
            "invalid host.upgraded: ",
        ),
        ("notes.json", b"{}", "its name is not <sequence>-<topic>.json"),
    ],
)
def test_a_corrupt_file_is_set_aside_and_blocks_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str, content: bytes, why: str
) -> None:
    box = Outbox(tmp_path)
    (tmp_path / name).write_bytes(content)
    box.put(upgraded("3"))
    bus = Bus()
    with caplog.at_level(logging.ERROR, logger="imgline.updater.outbox"):
        assert box.flush(bus, "imgline") == 1
    assert [msg.payload for msg in bus.sent] == [upgraded("3")]
    assert (tmp_path / "bad" / name).read_bytes() == content
    assert box.pending() == []
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert why in record.getMessage()
    assert f"moved to {tmp_path / 'bad' / name}" in record.getMessage()


def test_a_second_bad_file_of_the_same_name_does_not_replace_the_first(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    for content in (b"first", b"second"):
        (tmp_path / "000000000001-host.upgraded.json").write_bytes(content)
        box.flush(Bus(), "imgline")
    assert sorted(path.read_bytes() for path in (tmp_path / "bad").iterdir()) == [
        b"first",
        b"second",
    ]


def test_concurrent_puts_never_share_a_name(tmp_path: Path) -> None:
    box = Outbox(tmp_path)

    def put_some(worker: int) -> None:
        for n in range(10):
            box.put(failed(f"{worker}.{n}"))

    threads = [threading.Thread(target=put_some, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pending = box.pending()
    assert len(pending) == 60
    assert [path.name[:12] for path in pending] == [f"{n:012d}" for n in range(1, 61)]
    # each worker's reports are in the order it wrote them
    bus = Bus()
    box.flush(bus, "imgline")
    versions = [msg.payload.to_version for msg in bus.sent]
    for w in range(6):
        assert [v for v in versions if v.startswith(f"{w}.")] == [f"{w}.{n}" for n in range(10)]


def test_only_one_process_flushes_at_a_time(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    box.put(upgraded("3"))
    with (tmp_path / ".flush.lock").open("a") as other:
        fcntl.flock(other.fileno(), fcntl.LOCK_EX)
        assert box.flush(Bus(), "imgline") == 0
        assert len(box.pending()) == 1
    assert box.flush(Bus(), "imgline") == 1


def test_flush_of_a_missing_outbox_sends_nothing(tmp_path: Path) -> None:
    assert Outbox(tmp_path / "none").flush(Bus(), "imgline") == 0
    assert not (tmp_path / "none").exists()


def test_flush_removes_only_stale_temporary_files(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    stale, fresh = tmp_path / ".tmp-crashed", tmp_path / ".tmp-being-written"
    stale.write_bytes(b"{")
    fresh.write_bytes(b"{")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    box.flush(Bus(), "imgline")
    assert not stale.exists()
    assert fresh.exists()
