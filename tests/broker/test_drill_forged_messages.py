"""Fault drill: forged messages of every topic, sent with the ``fedora-messaging`` CLI as an
operator (or an intruder with one stolen password) would, at real service processes.

Two lines of defence, each with its expected outcome in the tables below:

* who may send: the broker's topic permissions let each topic come only from its owner's
  account (docs/security.md, "The bus"); any other user's publish is refused by the broker
  and reaches nobody;
* what is believed: a consumer checks a message against what it can verify itself (the bytes
  in the artifact store, the tester's stored verdict, the message schema), so a forgery sent
  with the owner's rights still does not get an image tested, signed or recorded.

Content forgeries are sent with the administrator's rights on the service's own exchange:
passing the first line takes the rightful owner's credentials, which is exactly the case the
second line is for. ``image.published`` forgeries at the hosts, which trust only the signed
repository, are drilled in test_updater_agent.py (a forged announcement changes nothing).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest
from bushelpers import ServiceProcess, service_process, take_all, wait_for
from fedora_messaging import message as fm_message
from tufrepo import publisher_config

from imgline.core import verdicts
from imgline.core.artifacts import LocalArtifactStore
from imgline.core.broker import PrivateBroker
from imgline.core.bus.consumer import REASON_HEADER
from imgline.core.trust.repository import TufRepository
from imgline.schemas import messages as m
from imgline.schemas import payloads as p

pytestmark = pytest.mark.broker

EXAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "examples"
CLI = Path(sys.executable).with_name("fedora-messaging")
USERS = ("trigger", "builder", "tester", "publisher", "updater", "ledger")

#: Expected outcome of the permission drill: the one account each topic may come from (the
#: ledger sends nothing). Written out, not derived from access.ROLES, so that a change to the
#: roles that lets a second account announce a topic fails here.
OWNER: dict[str, str] = {
    "build.requested": "trigger",
    "build.failed": "builder",
    "image.built": "builder",
    "image.tested": "tester",
    "image.rejected": "publisher",
    "image.published": "publisher",
    "host.upgraded": "updater",
    "host.upgrade.failed": "updater",
    "host.rolled_back": "updater",
}
#: The CLI forgery tried for each topic: the account whose theft would do the most harm with it.
FORGER: dict[str, str] = {
    "build.requested": "updater",  # a compromised host making the builders work
    "build.failed": "tester",
    "image.built": "trigger",  # an image nobody built, handed to the tester
    "image.tested": "builder",  # a builder vouching for its own image
    "image.rejected": "tester",
    "image.published": "tester",  # hosts told of a release the publisher never signed
    "host.upgraded": "ledger",
    "host.upgrade.failed": "publisher",
    "host.rolled_back": "trigger",
}


def example(cls: type[m.ImglineMessage[Any]]) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((EXAMPLES / f"{m.entry_point_name(cls)}.json").read_text())
    return body


def routing_key(cls: type[m.ImglineMessage[Any]]) -> str:
    """The key a real sender uses: a release is announced on its stream's key."""
    if cls is m.ImagePublishedV1:
        return "imgline.image.published.stable"
    return f"imgline.{cls.topic_suffix}"


def cli_publish(
    tmp: Path, url: str, exchange: str, lines: list[str], name: str
) -> subprocess.CompletedProcess[str]:
    """``fedora-messaging --conf <conf> publish <file>``: one CLI run sending ``lines``
    (serialised messages, as ``fedora_messaging.message.dumps`` writes them)."""
    conf = tmp / f"{name}.toml"
    conf.write_text(f"amqp_url = {json.dumps(url)}\npublish_exchange = {json.dumps(exchange)}\n")
    conf.chmod(0o600)
    file = tmp / f"{name}.jsonl"
    file.write_text("".join(lines))
    return subprocess.run(
        [str(CLI), "--conf", str(conf), "publish", str(file)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def serialised(msg: fm_message.Message) -> str:
    return fm_message.dumps(msg)


# --- line 1: the broker refuses every topic from every account but its owner's --------------


@pytest.fixture(scope="module")
def broker() -> Any:
    """A node of its own with one user per service and the committed permissions."""
    with PrivateBroker() as node:
        yield node


def test_every_topic_is_refused_from_every_account_but_its_owner(
    broker: PrivateBroker, tmp_path: Path
) -> None:
    """Expected: the CLI run of each FORGER row exits with EREMOTEIO after the broker's
    ACCESS_REFUSED naming the topic and the user, and what it sent reaches nobody; the same
    user's own topics, sent with the CLI just before, do go through, each exactly once. The
    rest of the matrix (every topic from every other account) is sent over AMQP directly, as
    the CLI does but without a process per try: all refused."""
    take_all(broker.url, "imgline.events")
    messages = {
        cls.topic_suffix: cls(body=example(cls), topic=routing_key(cls)) for cls in m.ALL_MESSAGES
    }
    # one CLI run per FORGER row; a user's first run sends its own topics before the forgery,
    # so the same runs show the CLI and the account working for what the user does own
    runs: list[tuple[str, list[str], str]] = []
    for topic, user in FORGER.items():
        own = [] if any(r[0] == user for r in runs) else [t for t, o in OWNER.items() if o == user]
        runs.append((user, own, topic))
    assert {t for _, own, _ in runs for t in own} == set(OWNER)  # every topic also gets through

    def run(n: int) -> subprocess.CompletedProcess[str]:
        user, own, forged = runs[n]
        lines = [serialised(messages[t]) for t in (*own, forged)]
        return cli_publish(tmp_path, broker.url_for(user), "imgline", lines, f"run{n}")

    with ThreadPoolExecutor(2) as pool:
        done = list(pool.map(run, range(len(runs))))
    for (user, own, forged), result in zip(runs, done, strict=True):
        output = result.stdout + result.stderr
        assert result.returncode == errno.EREMOTEIO, f"{user} could send {forged}: {output}"
        assert f"topic 'imgline.{forged}" in output
        assert f"refused for user '{user}'" in output
        assert "ACCESS_REFUSED" in output
        assert output.count("Publishing message with topic") == len(own) + 1, output
    for user in USERS:
        others = [msg for topic, msg in messages.items() if OWNER[topic] != user]
        assert refused_all(broker.url_for(user), others) == [], f"{user} sent another's topic"
    arrived = take_all(broker.url, "imgline.events")
    for queue in ("imgline.builder", "imgline.tester", "imgline.publisher"):
        take_all(broker.url, queue)  # the owners' copies, routed on: not this drill's business
    got = sorted(
        (h["fedora_messaging_schema"], json.dumps(json.loads(b), sort_keys=True))
        for h, b in arrived
    )
    assert got == sorted(
        (m.entry_point_name(type(msg)), json.dumps(msg.body, sort_keys=True))
        for msg in messages.values()
    )


def refused_all(url: str, msgs: Sequence[fm_message.Message]) -> list[str]:
    """The topics of ``msgs`` the broker let ``url``'s user publish on the pipeline exchange
    (confirmed publishes, as the CLI makes; a refusal closes the channel, so one each)."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    accepted = []
    try:
        for msg in msgs:
            channel = conn.channel()
            channel.confirm_delivery()
            try:
                channel.basic_publish("imgline", msg.topic, msg._encoded_body, msg._properties)
            except pika.exceptions.ChannelClosedByBroker as exc:
                assert exc.reply_code == 403, exc
                continue
            accepted.append(msg.topic)
            channel.close()
    finally:
        conn.close()
    return accepted


# --- line 2: what a consumer believes --------------------------------------------------------


@dataclass(frozen=True)
class Forgery:
    """One forged message and what the consuming service must answer."""

    what: str
    message: fm_message.Message
    expect: str  # "image.tested failed: <check>" | "image.rejected: <text>" | "dead-letter: <text>"


def stored_image(store: LocalArtifactStore, build_id: str, version: str) -> p.ImageRef:
    art = store.put_bytes(os.urandom(1 << 20))
    return p.ImageRef(
        build_id=build_id,
        name="node",
        version=version,
        stream="stable",
        artifact=p.Artifact(uri=art.uri, sha256=art.sha256, size=art.size),
        source_commit="1" * 40,
    )


def built(ref: p.ImageRef) -> fm_message.Message:
    payload = p.ImageBuilt(
        build_id=ref.build_id,
        request_id="req-forged",
        name=ref.name,
        version=ref.version,
        stream=ref.stream,
        artifact=ref.artifact,
        source_commit=ref.source_commit,
        kickstart_sha256="0" * 64,
        backend="mmdebstrap",
        duration_seconds=1.0,
    )
    return m.ImageBuiltV1.from_payload(payload)


def build_id(n: int) -> str:
    return hashlib.sha256(f"forged-{n}".encode()).hexdigest()


def forgeries_for_the_tester(store: LocalArtifactStore) -> list[Forgery]:
    outside = stored_image(store, build_id(1), "20261201.1")
    outside = outside.model_copy(
        update={"artifact": outside.artifact.model_copy(update={"uri": "file:///etc/passwd"})}
    )
    swapped = stored_image(store, build_id(2), "20261201.2")
    other = store.put_bytes(os.urandom(swapped.artifact.size))
    # announces a digest that exists, at the address of other bytes of the same size
    swapped = swapped.model_copy(
        update={"artifact": swapped.artifact.model_copy(update={"uri": other.uri})}
    )
    return [
        Forgery(
            "image.built naming a file outside the artifact store",
            built(outside),
            "image.tested failed: tester.error: is outside the artifact store",
        ),
        Forgery(
            "image.built whose digest is not that of the bytes it points at",
            built(swapped),
            "image.tested failed: integrity.sha256",
        ),
    ]


def test_the_tester_believes_only_the_bytes(amqp_url: str, tmp_path: Path) -> None:
    """Expected, per row: an ``image.tested`` with ``passed=false`` naming the check that caught
    the forgery; no passing verdict is stored for it, so the publisher can never sign it."""
    store = LocalArtifactStore(tmp_path / "store")
    rows = forgeries_for_the_tester(store)
    config = {"store_dir": str(store.root), "work_dir": str(tmp_path / "work")}
    with service_process(
        "tester",
        amqp_url,
        tmp_path,
        consumes=("image.built",),
        emits=("image.tested",),
        consumer_config=config,
    ) as svc:
        answers = [sent_and_answered(tmp_path, amqp_url, svc, row, i) for i, row in enumerate(rows)]
    for row, answer in zip(rows, answers, strict=True):
        tested = m.ImageTestedV1(body=answer, topic="x").payload
        kind, _, expected = row.expect.partition(": ")
        assert kind == "image.tested failed", row.what
        check, _, text = expected.partition(": ")
        assert not tested.passed, row.what
        [caught] = [r for r in tested.results if r.name == check]
        assert caught.status in ("failed", "error"), row.what
        assert text in caught.detail, (row.what, caught.detail)
        stored = verdicts.read(store, tested.build_id, tested.image.artifact.sha256)
        assert stored is None or not stored.passed, row.what


def test_the_publisher_believes_only_the_stored_verdict(
    amqp_url: str, tmp_path: Path, repo: TufRepository, served: str
) -> None:
    """Expected, per row: ``image.rejected`` with the reason, and the repository unchanged
    (same signed versions, no file of the release under targets/)."""
    store = LocalArtifactStore(tmp_path / "store")
    failed_ref = stored_image(store, build_id(3), "20261201.3")
    results = [
        p.TestResult(name="integrity.sha256", status="passed", duration_seconds=0.1),
        p.TestResult(name="boot.live", status="failed", duration_seconds=9, detail="no login"),
    ]
    failed = p.ImageTested(
        build_id=failed_ref.build_id, image=failed_ref, passed=False, results=results
    )
    verdicts.write(store, failed)  # what the tester said
    claims = [r.model_copy(update={"status": "passed", "detail": ""}) for r in results]
    overclaimed = failed.model_copy(update={"passed": True, "results": claims})
    never_tested_ref = stored_image(store, build_id(4), "20261201.4")
    never_tested = p.ImageTested(
        build_id=never_tested_ref.build_id, image=never_tested_ref, passed=True, results=claims
    )
    rows = [
        Forgery(
            "image.tested claiming a pass for an image the tester failed",
            m.ImageTestedV1.from_payload(overclaimed),
            "image.rejected: boot.live: no login",
        ),
        Forgery(
            "image.tested for an image the tester never saw",
            m.ImageTestedV1.from_payload(never_tested),
            "image.rejected: the tester stored no verdict",
        ),
    ]
    before = repo.load()
    config = publisher_config(repo, store.root, tmp_path / "work", served)
    with service_process(
        "publisher",
        amqp_url,
        tmp_path,
        consumes=("image.tested",),
        emits=(m.ImagePublishedV1.binding(), "image.rejected"),
        consumer_config=config,
    ) as svc:
        answers = [sent_and_answered(tmp_path, amqp_url, svc, row, i) for i, row in enumerate(rows)]
    for row, answer in zip(rows, answers, strict=True):
        kind, _, text = row.expect.partition(": ")
        assert kind == "image.rejected", row.what
        rejected = m.ImageRejectedV1(body=answer, topic="x").payload
        assert text in rejected.reason, (row.what, rejected.reason)
    after = repo.load()
    assert after.snapshot.signed.version == before.snapshot.signed.version
    assert not (repo.targets_dir / "stable").exists()


def test_malformed_bodies_of_every_topic_are_dead_lettered(amqp_url: str, tmp_path: Path) -> None:
    """Expected: a body that is no imgline message (sent under the generic schema, so the CLI
    does not check it) on every topic's key is dead-lettered by the ledger, which consumes every
    topic, with a reason naming the message; nothing is recorded. (A body under an imgline
    schema it breaks cannot even be sent: the CLI validates before publishing.)"""
    forged = [
        fm_message.Message(
            body={"build_id": "../../etc", "passed": "yes", "versions": [None]},
            topic=routing_key(cls),
        )
        for cls in m.ALL_MESSAGES
    ]
    db = tmp_path / "ledger.sqlite3"
    with service_process(
        "ledger",
        amqp_url,
        tmp_path,
        consumes=tuple(cls.binding() for cls in m.ALL_MESSAGES),
        emits=(),
        consumer_config={"db_path": str(db)},
    ) as svc:
        run = cli_publish(
            tmp_path, amqp_url, svc.exchange, [serialised(x) for x in forged], "malformed"
        )
        assert run.returncode == 0, run.stdout + run.stderr
        dead: list[tuple[dict[str, Any], bytes]] = []

        def all_dead() -> bool:
            dead.extend(take_all(amqp_url, svc.dlq))
            return len(dead) >= len(forged)

        wait_for(all_dead, 60, "every malformed message dead-lettered")
        assert svc.proc.poll() is None  # still serving
    assert sorted(h["fedora_messaging_schema"] for h, _ in dead) == ["base.message"] * len(forged)
    for headers, _ in dead:
        assert str(headers[REASON_HEADER]).startswith("invalid message: no handler")
    assert sorted(json.loads(body)["build_id"] for _, body in dead) == ["../../etc"] * len(forged)
    with sqlite3.connect(db) as recorded:  # the ledger's own table: nothing went in
        assert recorded.execute("SELECT COUNT(*) FROM events").fetchone() == (0,)


def sent_and_answered(
    tmp: Path, url: str, svc: ServiceProcess, row: Forgery, n: int
) -> dict[str, Any]:
    """Send ``row`` with the CLI to the service's exchange; the one event it answers with."""
    run = cli_publish(tmp, url, svc.exchange, [serialised(row.message)], f"forgery{n}")
    assert run.returncode == 0, run.stdout + run.stderr
    return svc.wait_event(60)
