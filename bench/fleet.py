"""Fleet scale: 1,000 real updater agents against one broker and one repository.

Every simulated host is a real ``AgentService`` (its own durable queue and bus connection, its
own TUF client and trusted-metadata directory, its own outbox) whose host adapter records what
it would apply instead of making LVM layers; its "reboot" runs the health check at once, which
passes unless the bench has marked the release bad (then the host rolls back and says so, as a
failed health check would). The hosts are spread over a few worker processes (2 cores and the
GIL: see --workers). The publisher runs as its own process (``imgline-publisher``, with the
rollout controller), the repository is served over loopback HTTP by the publisher's server in
its own process, which counts requests and body bytes.

Printed, in one run:
1. baseline: a plain pika fleet (one connection and one durable quorum queue per host, as
   each agent has, same broker, same processes) receiving one message published to all; the
   time until every host has it;
2. publish -> seen: ``image.published`` of a new release until each host's TUF client has
   verified metadata listing it (p50/p99/max over all hosts; target p99 < 2 s), and the time
   until each agent got its hint (the bus part), with the ratio to the baseline; the
   repository's requests and bytes per host for that refresh; the broker's memory (RSS of
   the node) with the fleet connected;
3. waves: the release starts at 1% of hosts; the controller opens 10%, 50% and 100% as each
   wave reports healthy; hosts are hinted again when a wave opens (the bench does what their
   pull timer would do later). When a round of checks takes longer than ``--soak``, the next
   wave may open during it, and a line then counts the hosts of more than one wave;
4. a rollback storm: a bad release, first wave 1%; its hosts roll back, the controller pauses
   it with a signed change, the fleet is hinted, and the run counts the hosts it spared.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pika

from imgline.core import verdicts
from imgline.core.artifacts import LocalArtifactStore
from imgline.core.broker import PrivateBroker
from imgline.core.bus import topology
from imgline.core.config import BusSettings
from imgline.core.trust.client import RepositoryClient
from imgline.core.trust.keys import KeyDir
from imgline.core.trust.layout import Manifest, Release
from imgline.core.trust.repository import TufRepository
from imgline.publisher import http
from imgline.schemas import payloads as p
from imgline.schemas.messages import ImagePublishedV1, ImageTestedV1
from imgline.updater.agent import AgentService
from imgline.updater.domain.policy import HostView
from imgline.updater.outbox import Outbox
from imgline.updater.settings import HostConfig

TARGET_P99 = 2.0
WAVES = [0.01, 0.1, 0.5, 1.0]
STREAM, NAME = "stable", "node"
BASE_VERSION = "20261201.1"
GOOD, BAD = "20261202.1", "20261203.1"
EXCHANGE = "imgline"


# --- the broker -------------------------------------------------------------------------------

#: Where Debian keeps the node's own start script (``rabbitmq-server`` on PATH wraps it in
#: ``su``, whose PAM limits give the node 1024 file handles: too few for a connection and a
#: quorum queue per host, a thousand times over).
NODE_SCRIPT = "/usr/lib/rabbitmq/bin/rabbitmq-server"


class FleetBroker(PrivateBroker):
    """The private node, started as user ``rabbitmq`` without PAM, so that it keeps this
    process's file-handle limit (a production node gets its own from its systemd unit,
    LimitNOFILE). Anywhere else than as root with Debian's layout, the plain private node."""

    def start(self) -> FleetBroker:
        if os.geteuid() != 0 or not Path(NODE_SCRIPT).exists() or shutil.which("setpriv") is None:
            super().start()
            return self
        self._prepare()
        with (self.base_dir / "server.out").open("ab") as out:
            self._proc = subprocess.Popen(
                ["setpriv", "--reuid=rabbitmq", "--regid=rabbitmq", "--init-groups", NODE_SCRIPT],  # noqa: S607
                env={**self._env(), "HOME": str(self.base_dir)},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.base_dir,
            )
        self._wait_ready()
        return self


# --- the simulated host -----------------------------------------------------------------------


class NoopHost:
    """The ``Host`` of one simulated machine: applying records the release; the reboot runs
    the health check at once (fails for releases the bench marked bad) and leaves the report
    in the agent's outbox, as the boot-time health check does on a real host."""

    def __init__(self, host_id: str, events: Any, bad: set[str]) -> None:
        self.host_id = host_id
        self.events = events
        self.bad = bad
        self.running: str | None = BASE_VERSION
        self.pending: str | None = None
        self.bad_versions: set[str] = set()
        self.outbox: Outbox | None = None

    def view(self, now: datetime) -> HostView:
        return HostView(self.running, self.pending, frozenset(self.bad_versions), False, now)

    def apply(self, image: Path, manifest: Manifest) -> str:
        self.pending = manifest.version
        self.events.put(("applied", self.host_id, manifest.version, time.time()))
        return f"{manifest.name}-{manifest.version}+1"

    def reboot(self) -> None:
        version, previous = self.pending, self.running
        assert version is not None and self.outbox is not None
        self.pending = None
        base: dict[str, Any] = {
            "host_id": self.host_id,
            "name": NAME,
            "stream": STREAM,
            "from_version": previous,
            "to_version": version,
            "duration_seconds": 0.0,
        }
        if version in self.bad:
            self.bad_versions.add(version)
            self.outbox.put(p.HostRolledBack(**base, step="health", error="bench: marked bad"))
            self.events.put(("rolled_back", self.host_id, version, time.time()))
        else:
            self.running = version
            self.outbox.put(p.HostUpgraded(**base, layer=f"{NAME}-{version}+1"))


class SeeingClient(RepositoryClient):
    """The real TUF client; it notes when a verified manifest of a release reaches the agent."""

    host_id = ""
    events: Any = None

    def manifest(self, stream: str, release: Release) -> Manifest:
        found = super().manifest(stream, release)
        self.events.put(("seen", self.host_id, found.version, time.time()))
        return found


class BenchAgent(AgentService):
    """The real agent service; it notes when the hint arrives."""

    events: Any = None

    def on_published(self, msg: ImagePublishedV1) -> None:
        self.events.put(("hint", self.agent.host_id, msg.payload.version, time.time()))
        super().on_published(msg)


# --- worker processes -------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerPlan:
    hosts: list[str]
    amqp_url: str  # the updater's user
    admin_url: str
    repository_url: str
    state_dir: Path
    root: bytes


def _raw_fleet(plan: WorkerPlan, events: Any, stop: threading.Event, tag: str) -> None:
    """Baseline: one plain pika connection, quorum queue and consumer per host. Connections are
    opened one after the other (a thousand handshakes at once time out), then each is driven
    by a thread of its own, as each agent's consumer is."""

    def consume(host: str, conn: pika.BlockingConnection) -> None:
        ch = conn.channel()
        name = f"bench.raw.{tag}.{host}"
        # the same kind of queue as each agent's: durable, quorum
        ch.queue_declare(name, durable=True, arguments={"x-queue-type": "quorum"})
        ch.queue_bind(name, EXCHANGE, f"bench.raw.{tag}")

        def on_msg(chan: Any, method: Any, _props: Any, _body: bytes) -> None:
            events.put(("raw", host, "", time.time()))
            chan.basic_ack(method.delivery_tag)

        ch.basic_consume(name, on_msg)
        events.put(("raw_ready", host, "", time.time()))
        while not stop.is_set():
            conn.process_data_events(time_limit=0.2)
        ch.queue_delete(name)
        conn.close()

    threads = []
    for host in plan.hosts:
        conn = pika.BlockingConnection(pika.URLParameters(plan.admin_url))
        thread = threading.Thread(target=consume, args=(host, conn), daemon=True)
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()


def worker(plan: WorkerPlan, commands: Connection, events: Any) -> None:
    """Run ``plan.hosts`` as a baseline fleet, then as agents, as the parent says."""
    logging.basicConfig(level=logging.ERROR)
    for noisy in ("pika", "imgline", "tuf", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    bad: set[str] = set()
    services: list[BenchAgent] = []
    threads: list[threading.Thread] = []
    while True:
        command, arg = commands.recv()
        if command == "raw":
            stop = threading.Event()
            raw = threading.Thread(target=_raw_fleet, args=(plan, events, stop, arg), daemon=True)
            raw.start()
        elif command == "raw_stop":
            stop.set()
            raw.join(60)
            events.put(("raw_stopped", "", "", time.time()))
        elif command == "agents":
            bus = BusSettings(service="updater", amqp_url=plan.amqp_url, exchange=EXCHANGE)
            for host_id in plan.hosts:
                service = _agent(plan, host_id, bus, events, bad)
                services.append(service)
                thread = threading.Thread(target=service.run, daemon=True)
                thread.start()
                threads.append(thread)
                service.consumer.ready.wait(120)
                events.put(("ready", host_id, "", time.time()))
        elif command == "bad":
            bad.add(arg)
        elif command == "stop":
            for service in services:
                service.stop()
            for thread in threads:
                thread.join(30)
            events.put(("stopped", "", "", time.time()))
            return


def _agent(
    plan: WorkerPlan, host_id: str, bus: BusSettings, events: Any, bad: set[str]
) -> BenchAgent:
    config = HostConfig(
        host_id=host_id,
        name=NAME,
        stream=STREAM,
        repository_url=plan.repository_url,
        state_dir=plan.state_dir / host_id,
        refresh_interval_seconds=3600,  # hints, not the timer, drive this run
    )
    client = SeeingClient.for_base_url(plan.repository_url, config.tuf_dir, root=plan.root)
    client.host_id, client.events = host_id, events
    host = NoopHost(host_id, events, bad)
    BenchAgent.events = events
    service = BenchAgent(bus, config, host, host_id=host_id, client=client)
    host.outbox = service.outbox
    return service


# --- the repository's server, counting ------------------------------------------------------


class _Counter(logging.Handler):
    """Counts the access log's requests and body bytes (``<client> <method> <path> <status>
    <length> <seconds>``)."""

    def __init__(self) -> None:
        super().__init__()
        self.requests = 0
        self.bytes = 0

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args
        if isinstance(args, tuple) and len(args) == 6:
            self.requests += 1
            length = str(args[4])
            self.bytes += int(length) if length.isdigit() else 0


def serve(root: Path, control: Connection) -> None:
    counter = _Counter()
    access = logging.getLogger("imgline.publisher.http")
    access.setLevel(logging.INFO)
    access.propagate = False
    access.addHandler(counter)
    with http.running(root) as server:
        control.send(server.url)
        while control.recv() == "stats":
            control.send((counter.requests, counter.bytes))


# --- the parent -------------------------------------------------------------------------------


@dataclass
class Fleet:
    """The parent's view: workers, their events, and the repository."""

    events: Any
    pipes: list[Connection]
    hosts: list[str]
    log: dict[str, dict[tuple[str, str], float]] = field(default_factory=lambda: defaultdict(dict))
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def send(self, command: str, arg: str = "") -> None:
        for pipe in self.pipes:
            pipe.send((command, arg))

    def pump(self, until: Any, timeout: float, what: str) -> None:
        """Take events until ``until()`` holds; raise after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not until():
            try:
                kind, host, version, at = self.events.get(timeout=0.2)
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise SystemExit(f"fleet bench: timed out waiting for {what}") from None
                continue
            self.counts[kind] += 1
            self.log[kind].setdefault((host, version), at)

    def round(self, timeout: float) -> None:
        """Wait until every host has checked once more (each check verifies one manifest),
        then for the applies and reports that follow."""
        target = self.counts["seen"] + len(self.hosts)
        self.pump(lambda: self.counts["seen"] >= target, timeout, "every host to check again")
        self.settle(quiet=1.0, timeout=timeout)

    def settle(self, quiet: float = 1.5, timeout: float = 60.0) -> None:
        """Take events until none has come for ``quiet`` seconds."""
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while time.monotonic() - last < quiet and time.monotonic() < deadline:
            try:
                kind, host, version, at = self.events.get(timeout=0.2)
            except queue.Empty:
                continue
            last = time.monotonic()
            self.counts[kind] += 1
            self.log[kind].setdefault((host, version), at)

    def hosts_with(self, kind: str, version: str) -> set[str]:
        return {h for (h, v) in self.log[kind] if v == version}

    def latencies(self, kind: str, version: str, since: float) -> list[float]:
        return sorted(at - since for (_h, v), at in self.log[kind].items() if v == version)


def p99(values: list[float]) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def percentiles(values: list[float]) -> str:
    if not values:
        return "none"
    p50, top = statistics.median(values), max(values)
    return f"p50 {p50 * 1000:6.0f} ms  p99 {p99(values) * 1000:6.0f} ms  max {top * 1000:6.0f} ms"


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU time the processes have used so far."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def broker_rss(broker: PrivateBroker) -> int:
    """Resident memory of the broker node (beam.smp), from its pid file."""
    pid = (broker.base_dir / "rabbitmq.pid").read_text().strip()
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def make_release(tmp: Path, store: LocalArtifactStore, version: str, size: int) -> p.ImageTested:
    image = tmp / f"{NAME}-{version}.img"
    image.write_bytes(os.urandom(size))
    stored = store.put_file(image)
    ref = p.ImageRef(
        build_id=uuid.uuid5(uuid.NAMESPACE_URL, version).hex * 2,
        name=NAME,
        version=version,
        stream=STREAM,
        artifact=p.Artifact(uri=stored.uri, sha256=stored.sha256, size=stored.size),
    )
    results = [
        p.TestResult(name="content.image_json", status="passed", duration_seconds=0.1),
        p.TestResult(name="boot.live", status="passed", duration_seconds=1.0),
    ]
    tested = p.ImageTested(build_id=ref.build_id, image=ref, passed=True, results=results)
    verdicts.write(store, tested)
    return tested


@contextmanager
def publisher_process(
    broker: PrivateBroker, tmp: Path, repo: TufRepository, base_url: str, soak: float
) -> Iterator[Any]:
    config = tmp / "publisher.toml"
    rollout = {
        "waves": WAVES,
        "pause_share": 0.3,
        "min_reports": 3,
        "soak_seconds": soak,
        "tick_seconds": 0.5,
    }
    body = {
        "store_dir": str(tmp / "store"),
        "repo_dir": str(repo.root_dir),
        "keys_dir": str(repo.keys.directory),
        "work_dir": str(tmp / "publisher-work"),
        "base_url": base_url,
    }
    config.write_text(
        'service = "publisher"\n[consumer_config]\n'
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in body.items())
        + "[consumer_config.rollout]\n"
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in rollout.items())
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "imgline.publisher",
            "--config",
            str(config),
            "--log-level",
            "WARNING",
        ],
        env=dict(os.environ, IMGLINE_AMQP_URL=broker.url_for("publisher")),
    )
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(60)


class Observer:
    """The repository as a host sees it (its own TUF client), and a watch on the bus."""

    def __init__(self, broker: PrivateBroker, base_url: str, state: Path, root: bytes) -> None:
        self.client = RepositoryClient.for_base_url(base_url, state, root=root)
        self.conn = pika.BlockingConnection(pika.URLParameters(broker.url))
        self.ch = self.conn.channel()
        self.ch.confirm_delivery()
        self.watch = self.ch.queue_declare("", exclusive=True).method.queue
        self.ch.queue_bind(self.watch, EXCHANGE, f"imgline.{ImagePublishedV1.binding()}")
        self.announced: dict[str, Any] = {}

    def wait_consumer(self, queue_name: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                ok = self.ch.queue_declare(queue_name, passive=True).method
            except pika.exceptions.ChannelClosedByBroker:
                self.ch = self.conn.channel()
                self.ch.confirm_delivery()
                ok = None
            if ok is not None and ok.consumer_count > 0:
                return
            self.conn.sleep(0.2)
        raise SystemExit(f"fleet bench: nothing consumes {queue_name} after {timeout}s")

    def publish(self, msg: Any) -> None:
        self.ch.basic_publish(EXCHANGE, msg.topic, msg._encoded_body, msg._properties)

    def wait_published(self, version: str, timeout: float = 120) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            method, props, body = self.ch.basic_get(self.watch, auto_ack=True)
            if method is None:
                self.conn.sleep(0.005)
                continue
            event = json.loads(body)
            self.announced[event["version"]] = (method.routing_key, body, props)
            if event["version"] == version:
                return time.time()
        raise SystemExit(f"fleet bench: {version} was not published in {timeout}s")

    def hint_again(self, version: str) -> None:
        """Send the release's announcement again: a hint, as the pull timer would be later."""
        key, body, props = self.announced[version]
        self.ch.basic_publish(EXCHANGE, key, body, props)

    def rollout(self, version: str) -> tuple[float, bool, str | None]:
        self.client.refresh()
        found = self.client.rollouts(STREAM).of(NAME, version)
        if found is None:
            return 1.0, False, None
        return found.share, found.paused, found.reason


def main() -> int:  # noqa: PLR0915 - one run, in order, printed as it goes
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--image-bytes", type=int, default=64 * 1024)
    ap.add_argument("--soak", type=float, default=2.0, help="seconds each wave runs at least")
    ap.add_argument("--wait", type=float, default=120.0, help="longest wait for a wave or pause")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("pika", "imgline", "tuf", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    started = time.monotonic()
    ctx = mp.get_context("spawn")
    with ExitStack() as stack:
        tmp_name = stack.enter_context(tempfile.TemporaryDirectory(prefix="imgline-fleet-"))
        broker = stack.enter_context(FleetBroker())
        tmp = Path(tmp_name)
        repo = TufRepository.init(tmp / "repo", KeyDir(tmp / "keys"), KeyDir(tmp / "root-keys"))
        root = repo.root_bytes()
        with closing(pika.BlockingConnection(pika.URLParameters(broker.url))) as conn:
            topology.declare(conn.channel(), topology.shared_topology(BusSettings(service="bench")))
        server_end, ours = ctx.Pipe()
        server = ctx.Process(target=serve, args=(repo.root_dir, server_end), daemon=True)
        server.start()
        stack.callback(server.terminate)
        base_url = ours.recv().rstrip("/")

        def stats() -> tuple[int, int]:
            ours.send("stats")
            got: tuple[int, int] = ours.recv()
            return got

        store = LocalArtifactStore(tmp / "store")
        hosts = [f"host-{i:04d}" for i in range(args.hosts)]
        events = ctx.Queue()
        pipes, procs = [], []
        for w in range(args.workers):
            mine = hosts[w :: args.workers]
            plan = WorkerPlan(
                mine, broker.url_for("updater"), broker.url, base_url, tmp / "hosts", root
            )
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(target=worker, args=(plan, child_end, events), daemon=True)
            proc.start()
            stack.callback(proc.terminate)  # on the way out, whatever happened
            pipes.append(parent_end)
            procs.append(proc)
        fleet = Fleet(events, pipes, hosts)
        # the bench's own look at the repository goes through a server that is not counted
        own_server = stack.enter_context(http.running(repo.root_dir))
        observer = Observer(broker, own_server.url, tmp / "observer", root)
        print(
            f"fleet: {args.hosts} hosts in {args.workers} worker processes, {os.cpu_count()} CPUs"
        )

        # 1. baseline: plain pika consumers, one connection and queue per host
        tag = uuid.uuid4().hex[:6]
        fleet.send("raw", tag)
        fleet.pump(lambda: fleet.counts["raw_ready"] >= args.hosts, 300, "the raw fleet")
        t0 = time.time()
        observer.ch.basic_publish(EXCHANGE, f"bench.raw.{tag}", b"{}")
        fleet.pump(lambda: fleet.counts["raw"] >= args.hosts, 60, "the raw message")
        raw = fleet.latencies("raw", "", t0)
        fleet.send("raw_stop")
        fleet.pump(lambda: fleet.counts["raw_stopped"] >= args.workers, 120, "raw fleet stop")
        print(f"baseline, plain pika fleet: publish -> every host has it: {percentiles(raw)}")

        # 2. the agents; publish -> seen
        rss_idle = broker_rss(broker)
        fleet.send("agents")
        fleet.pump(lambda: fleet.counts["ready"] >= args.hosts, 600, "the agents to start")
        fleet.settle()
        rss_fleet = broker_rss(broker)
        print(
            f"agents started in {time.monotonic() - started:.0f}s since the run began; "
            f"broker memory (RSS): {rss_idle / 2**20:.0f} MiB before the fleet, "
            f"{rss_fleet / 2**20:.0f} MiB with {args.hosts} agents connected "
            f"({(rss_fleet - rss_idle) / args.hosts / 1024:.0f} KiB per host)"
        )
        with publisher_process(broker, tmp, repo, base_url, args.soak) as publisher:
            observer.wait_consumer("imgline.publisher")
            fleet.send("bad", BAD)
            beam = int((broker.base_dir / "rabbitmq.pid").read_text().strip())
            parts = {
                "agents": [proc.pid for proc in procs if proc.pid],
                "repository server": [server.pid] if server.pid else [],
                "broker": [beam],
                "publisher": [publisher.pid],
            }
            cpu0 = {name: cpu_seconds(pids) for name, pids in parts.items()}
            req0, bytes0 = stats()
            observer.publish(
                ImageTestedV1.from_payload(make_release(tmp, store, GOOD, args.image_bytes))
            )
            t_pub = observer.wait_published(GOOD)
            fleet.pump(
                lambda: len(fleet.hosts_with("seen", GOOD)) >= args.hosts,
                120,
                "every host to see it",
            )
            seen = fleet.latencies("seen", GOOD, t_pub)
            hint = fleet.latencies("hint", GOOD, t_pub)
            cpu = {name: cpu_seconds(pids) - cpu0[name] for name, pids in parts.items()}
            fleet.settle()
            req1, bytes1 = stats()
            first = fleet.hosts_with("applied", GOOD)
            print(f"publish -> hint received:        {percentiles(hint)}")
            print(f"publish -> verified (seen):      {percentiles(seen)}")
            verdict = "OK" if p99(seen) < TARGET_P99 else "MISSED"
            print(
                f"  seen p99 {p99(seen):.2f} s (target < {TARGET_P99:.0f} s) {verdict}; "
                f"ratio to the plain pika fleet: hint p99 {p99(hint) / p99(raw):.1f}x, "
                f"seen p99 {p99(seen) / p99(raw):.1f}x"
            )
            print(
                "  CPU used until every host had seen it, per host: "
                + ", ".join(f"{k} {v / args.hosts * 1000:.1f} ms" for k, v in cpu.items())
                + f" ({sum(cpu.values()):.0f} s in all, on {os.cpu_count()} CPUs)"
            )
            print(
                f"repository per host for that release: {(req1 - req0) / args.hosts:.1f} "
                f"requests, {(bytes1 - bytes0) / args.hosts / 1024:.1f} KiB (image "
                f"{args.image_bytes // 1024} KiB, fetched only by the {len(first)} hosts of "
                f"wave 1)"
            )

            # 3. waves
            print(f"waves of {GOOD} ({', '.join(f'{w:.0%}' for w in WAVES)}):")
            print(f"  wave 1 open: {len(first)} hosts took it")
            share = WAVES[0]
            while share < 1.0:
                t_wave = time.monotonic()
                while (got := observer.rollout(GOOD))[
                    0
                ] <= share and time.monotonic() - t_wave < args.wait:
                    time.sleep(0.2)
                if got[0] <= share:
                    print(f"  the next wave did not open within {args.wait:.0f} s")
                    break
                share = got[0]
                observer.hint_again(GOOD)
                fleet.round(args.wait * 2)
                took = fleet.hosts_with("applied", GOOD)
                print(
                    f"  opened {share:.0%} after {time.monotonic() - t_wave:.1f}s: "
                    f"{len(took)} hosts have it"
                )

            # 4. the rollback storm
            req2, bytes2 = stats()
            observer.publish(
                ImageTestedV1.from_payload(make_release(tmp, store, BAD, args.image_bytes))
            )
            t_bad = observer.wait_published(BAD)
            fleet.round(args.wait * 2)  # every host looked at it once
            deadline = time.monotonic() + args.wait
            while not (state := observer.rollout(BAD))[1] and time.monotonic() < deadline:
                fleet.settle(quiet=0.3, timeout=1)
            t_paused = time.time()
            took_bad = fleet.hosts_with("applied", BAD)
            rolled = fleet.hosts_with("rolled_back", BAD)
            observer.hint_again(BAD)  # the whole fleet looks again, now at the paused release
            fleet.round(args.wait * 2)
            after_pause = fleet.hosts_with("applied", BAD) - took_bad
            print(f"rollback storm: {BAD} marked bad, first wave {WAVES[0]:.0%}:")
            print(
                f"  {len(took_bad)} hosts took it, {len(rolled)} rolled back; "
                + (
                    f"paused {t_paused - t_bad:.1f}s after publishing: {state[2]}"
                    if state[1]
                    else f"NOT paused within {args.wait:.0f} s"
                )
            )
            print(
                f"  hosts spared (never took it): {args.hosts - len(took_bad)} of {args.hosts}; "
                f"after the pause every host checked again, and {len(after_pause)} took it"
            )
            req3, bytes3 = stats()
            print(
                f"repository per host over the waves and the storm: "
                f"{(req3 - req1) / args.hosts:.1f} requests, "
                f"{(bytes3 - bytes1) / args.hosts / 1024:.1f} KiB"
            )
            print(f"broker memory (RSS) at the end: {broker_rss(broker) / 2**20:.0f} MiB")
            del req2, bytes2
        fleet.send("stop")
        fleet.pump(lambda: fleet.counts["stopped"] >= args.workers, 120, "the workers to stop")
        for proc in procs:
            proc.join(30)
        ours.send("quit")
        server.join(30)
    print(f"total run time {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
