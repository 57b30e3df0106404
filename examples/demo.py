"""``make demo``: the pipeline as far as it exists, on embedded defaults.

A private RabbitMQ node, the builder, tester, publisher and ledger services (each serving its
metrics), a private Prometheus scraping them with deploy/prometheus's alert rules, a local
artefact store under .cache/demo/, and a "vendor repository" (a git repo made here holding
examples/node.ks, as a push would leave it):
1. ``imgline build request --follow`` for examples/node.ks, with the CLI's live view of the
   stages → the builder makes a real liveimg → image.built
2. the tester checks it (integrity, content per examples/test-plan.toml, a live boot in qemu)
   → image.tested with every check and a JUnit report
3. the publisher signs it into a TUF repository (.cache/demo/repo, served over HTTP on loopback)
   → image.published; the demo then verifies it over HTTP with the client hosts use (python-tuf
   ngclient, pinned to the repository's root) and downloads the image and install.ks
4. build.requested with a broken kickstart → build.failed naming the kickstart line
5. a message that breaks the contract     → the dead-letter queue, with the reason
6. a test host VM: ``imgline-updater install`` puts the release before this one on a disk
   (GRUB, LVM thin layers); booted, its agent finds the new release in the signed repository,
   applies it as a new layer, reboots into it, passes its health check and reports
   host.upgraded on the bus
7. ``imgline status`` traces the build from its request to that host, and Prometheus shows the
   fleet's versions through the ledger
Needs root: the builder runs its builds as the unprivileged user imgline-build (made by
``make deps``), in that user's namespace, and switches to it from root. First run: several
minutes (packages download into .cache/apt/, reused afterwards; the guests run under TCG).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pika

from imgline.builder.__main__ import build_consumer
from imgline.core import cli as imgline_cli
from imgline.core import logs
from imgline.core.broker import BrokerAccess, broker_access
from imgline.core.bus import Consumer, Publisher, topology
from imgline.core.bus.access import ROLE_BY_USER
from imgline.core.bus.consumer import REASON_HEADER
from imgline.core.config import BusSettings
from imgline.core.errors import AccessRefusedError, ImglineError
from imgline.core.gitutil import commit_files
from imgline.core.ledger.store import Ledger
from imgline.core.prometheus import PrivatePrometheus
from imgline.core.trust.client import RepositoryClient
from imgline.core.trust.keys import KeyDir
from imgline.core.trust.repository import TufRepository
from imgline.core.userns import BuildUser
from imgline.ledger.__main__ import build_consumer as build_ledger
from imgline.publisher import http
from imgline.publisher.__main__ import build_consumer as build_publisher
from imgline.schemas import payloads as p
from imgline.schemas.messages import BuildRequestedV1, ImagePublishedV1
from imgline.tester.__main__ import build_consumer as build_tester

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache"
BUILD_USER = "imgline-build"
log = logging.getLogger("imgline.demo")

BROKEN_KS = """lang en_US.UTF-8
timezone --utc Etc/UTC
part / --size=2048 --fstype=ext4
rootpw --lokc
%packages
python3
%end
"""


def vendor_repo(where: Path) -> tuple[str, str]:
    """A git repository with examples/node.ks committed: (file URL, commit)."""
    node_ks = (REPO / "examples" / "node.ks").read_text(encoding="utf-8")
    commit = commit_files(where, {"examples/node.ks": node_ks}, "node image")
    return f"file://{where}", commit


def wait_event(ch: Any, queue: str, timeout: float) -> tuple[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        method, _props, body = ch.basic_get(queue, auto_ack=True)
        if method is not None:
            return method.routing_key, json.loads(body)
        ch.connection.sleep(1)
    raise TimeoutError(f"no event on {queue} within {timeout:.0f}s")


def show_built(code: int, ch: Any, watch: str) -> bool:
    """What the CLI's exit code and the builder's event say of the build."""
    if code != 0:
        log.error("the build did not end published (imgline exited %d)", code)
        return False
    topic, event = wait_event(ch, watch, 60)
    if not topic.endswith("image.built"):
        log.error("the build failed: %s", json.dumps(event, indent=2))
        return False
    art = event["artifact"]
    log.info(
        "   image.built: node-%s of commit %s (build_id %s) in %.0fs, %.1f MiB, sha256 %s…",
        event["version"],
        str(event["source_commit"])[:12],
        event["build_id"][:12],
        event["duration_seconds"],
        art["size"] / 2**20,
        art["sha256"][:16],
    )
    log.info("   image: %s", art["uri"])
    log.info("   build log: %s", event["log_url"])
    return True


def show_tests(ch: Any, watch: str) -> bool:
    log.info(
        "2) the tester checks it; the live boot under TCG takes a few minutes: up (marker), "
        "healthy (units, failed units, disk, inside the guest), reachable (its HTTP answer)"
    )
    _topic, event = wait_event(ch, watch, 1800)
    for result in event["results"]:
        detail = result["detail"].splitlines()[0] if result["detail"] else ""
        log.info(
            "   %-36s %-7s %6.1fs  %s",
            result["name"],
            result["status"],
            result["duration_seconds"],
            detail[:100],
        )
    log.info("   image.tested: passed=%s, report %s", event["passed"], event["report_url"])
    return bool(event["passed"])


def show_published(ch: Any, watch: str, base_url: str, root: bytes) -> Published:
    log.info("3) the publisher signs it into the TUF repository served at %s", base_url)
    _topic, event = wait_event(ch, watch, 300)
    log.info(
        "   image.published: %s-%s in %s (%s v%s, snapshot v%s, timestamp v%s)",
        event["name"],
        event["version"],
        event["stream"],
        event["role"],
        event["role_version"],
        event["snapshot_version"],
        event["timestamp_version"],
    )
    host = CACHE / "demo" / "host"
    shutil.rmtree(host, ignore_errors=True)
    client = RepositoryClient.for_base_url(base_url, host / "tuf", root=root)
    manifest = client.latest(event["stream"], event["name"])
    if manifest is None or manifest.version != event["version"]:
        raise ImglineError(f"the signed repository does not list {event['version']} as latest")
    started = time.monotonic()
    image = client.download(manifest.image, host / "image.squashfs.img")
    install_ks = client.download(manifest.install_ks, host / "install.ks")
    log.info(
        "   verified like a host (TUF client, pinned root): %s-%s from commit %s, %d checks "
        "passed; image (%.1f MiB) and install.ks downloaded and checked in %.1fs: %s",
        manifest.name,
        manifest.version,
        (manifest.source_commit or "?")[:12],
        manifest.tests.checks - len(manifest.tests.skipped),
        image.stat().st_size / 2**20,
        time.monotonic() - started,
        install_ks,
    )
    return Published(manifest.version, image, manifest.image_sha256)


@dataclass(frozen=True)
class Published:
    """The release the demo published, as the TUF client downloaded and verified it."""

    version: str
    image: Path
    sha256: str


def show_host(
    broker: BrokerAccess, exchange: str, repo_port: int, *, root: bytes, new: Published
) -> None:
    """Install a test host with the release before the published one; watch it upgrade."""
    sys.path.insert(0, str(REPO / "tests"))
    from hostimages import Recipe, derive  # noqa: PLC0415 - test-host helpers, demo only
    from hostlab import Services, config_toml, helper, install_script  # noqa: PLC0415
    from vmguest import blank_disk, start_disk  # noqa: PLC0415

    # the host starts on "the release before": the same image labelled <day>.0, older than
    # every automatic version of that day
    previous = derive(new.image, new.sha256, Recipe(version=new.version.split(".")[0] + ".0"))
    host = CACHE / "demo" / "host"
    host.mkdir(parents=True, exist_ok=True)
    (host / "root.json").write_bytes(root)
    amqp_url = broker.admin_url  # the demo's own looks at the bus
    # the host logs in as the updater: it may report host.* events and nothing else
    (host / "updater.toml").write_text(
        config_toml(amqp_url=broker.url_for("updater"), exchange=exchange)
    )
    disk = blank_disk(host / "disk.img", 6144)
    log.info(
        "7) a test host: installing %s-%s (the release before) on %s",
        previous.name,
        previous.version,
        disk,
    )
    started = time.monotonic()
    files = {
        "image.img": previous.image,
        "root.json": host / "root.json",
        "updater.toml": host / "updater.toml",
    }
    helper(new.image, install_script(previous, "grub"), disk, files, workdir=host / "install")
    log.info(
        "   installed in %.0fs (VG imgline, thin pool, base + layer, GRUB)",
        time.monotonic() - started,
    )
    # a named queue, not an exclusive one: the VM runs for minutes without this process
    # servicing a connection, so each look at the bus uses a fresh one
    reports = "imgline.demo.host-reports"
    with closing(pika.BlockingConnection(pika.URLParameters(amqp_url))) as conn:
        ch = conn.channel()
        ch.queue_declare(reports, arguments={"x-expires": 3_600_000})
        ch.queue_purge(reports)
        ch.queue_bind(reports, exchange, "imgline.host.#")
    services = Services(repo_port, urlparse(amqp_url).port or 5672)
    console = host / "console.log"
    with start_disk(disk, firmware="bios", net=services.net(), console_log=console) as vm:
        for what, marker in (
            (f"booted {previous.version}", f"IMGLINE-PAYLOAD-READY {previous.version}"),
            (f"applied and rebooted into {new.version}", f"IMGLINE-PAYLOAD-READY {new.version}"),
            ("health check passed", f"IMGLINE-HEALTH host.upgraded {new.version}"),
        ):
            seen = vm.wait_for(marker, 900)
            if seen is None:
                raise ImglineError(f"the test host did not get to '{marker}': see {console}")
            log.info("   %s at %.0fs", what, seen.seconds)
        # the agent sends the report from its outbox once it has the bus
        with closing(pika.BlockingConnection(pika.URLParameters(amqp_url))) as conn:
            topic, event = wait_event(conn.channel(), reports, 300)
    log.info(
        "   %s: host %s %s -> %s (layer %s)",
        topic,
        event["host_id"],
        event["from_version"],
        event["to_version"],
        event["layer"],
    )
    log.info("   host console: %s", console)


def show_forgery_refused(broker: BrokerAccess, settings: BusSettings) -> None:
    """The trigger's user announcing a tested image: the broker's topic permissions refuse it,
    so whoever holds that password still cannot get an image signed."""
    forged = settings.routing_key("image.tested")
    try:
        with Publisher(settings, broker.url_for("trigger"), attempts=1) as pub:
            pub.publish_raw(settings.exchange, forged, b"{}", pika.BasicProperties())
    except AccessRefusedError as exc:
        log.info("6) the trigger's user sent %s: refused by the broker (%s)", forged, exc)
        return
    log.warning(
        "6) %s from the trigger's user was accepted: this broker's users are not "
        "imgline's (IMGLINE_AMQP_URL), so it does not check who publishes what",
        forged,
    )


def show_dead_letter(ch: Any, queue: str) -> None:
    deadline = time.monotonic() + 30
    reason = None
    while reason is None and time.monotonic() < deadline:
        method, props, _ = ch.basic_get(queue, auto_ack=True)
        if method is not None and props is not None:
            reason = (props.headers or {}).get(REASON_HEADER)
        else:
            ch.connection.sleep(0.5)
    log.info("   dead-lettered to %s: %s", queue, reason)


@contextmanager
def start_repository(settings: BusSettings) -> Iterator[tuple[str, bytes, BusSettings]]:
    """A TUF repository, fresh each run (its URLs name this run's port), served on loopback.
    Root keys go to their own directory, as they would to offline media."""
    demo = CACHE / "demo"
    for old in ("repo", "keys", "root-keys"):
        shutil.rmtree(demo / old, ignore_errors=True)
    repo = TufRepository.init(demo / "repo", KeyDir(demo / "keys"), KeyDir(demo / "root-keys"))
    with http.running(demo / "repo", "127.0.0.1", 0) as server:
        base_url = server.url.rstrip("/")
        publisher_settings = settings.model_copy(
            update={
                "service": "publisher",
                "consumer_config": {
                    "repo_dir": str(demo / "repo"),
                    "store_dir": settings.consumer_config["store_dir"],
                    "keys_dir": str(demo / "keys"),
                    "work_dir": str(demo / "publisher-work"),
                    "base_url": base_url,
                },
            }
        )
        yield base_url, repo.root_bytes(), publisher_settings


def start_services(
    ch: Any, wiring: list[tuple[BusSettings, Callable[[BusSettings], Consumer]]]
) -> dict[str, tuple[Consumer, threading.Thread, int]]:
    """Each service in a thread of this process, its queue declared before anything is sent,
    its metrics served on a free port. The shared topology (exchanges, dead letters, audit
    queue) is the same for all: declared once, as the administrator does (a broker given by
    IMGLINE_AMQP_URL may lack it)."""
    running: dict[str, tuple[Consumer, threading.Thread, int]] = {}
    topology.declare(ch, topology.shared_topology(wiring[0][0]))
    for settings, build in wiring:
        topics = ROLE_BY_USER[settings.service].consumes
        topology.declare(ch, topology.service_topology(settings, topics))
        svc = build(settings)
        thread = threading.Thread(target=svc.run, name=settings.service, daemon=True)
        thread.start()
        running[settings.service] = (svc, thread, svc.metrics.serve(0))
    for svc, _thread, _port in running.values():
        svc.ready.wait(30)
    return running


def fresh_ledger(settings: BusSettings, broker: BrokerAccess) -> tuple[Path, BusSettings]:
    """The ledger's file (this run's history only) and its service's settings."""
    db = CACHE / "demo" / "ledger.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    return db, settings.model_copy(
        update={
            "service": "ledger",
            "amqp_url": broker.url_for("ledger"),
            "consumer_config": {"db_path": str(db)},
        }
    )


def stop_services(running: dict[str, tuple[Consumer, threading.Thread, int]], *names: str) -> None:
    for name in names:
        svc, thread, _port = running.pop(name)
        svc.stop()
        thread.join(60)


def start_prometheus(ports: dict[str, int]) -> PrivatePrometheus:
    """A private Prometheus scraping the demo's services every 2 s, with deploy's alert rules."""
    where = CACHE / "demo" / "prometheus"
    shutil.rmtree(where, ignore_errors=True)
    config = {
        "global": {"scrape_interval": "2s", "evaluation_interval": "2s"},
        "rule_files": [str(REPO / "deploy" / "prometheus" / "rules" / "imgline.yml")],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
            for job, port in ports.items()
        ],
    }
    prom = PrivatePrometheus(config, where).start()
    for job, port in ports.items():
        log.info("   %-9s metrics: http://127.0.0.1:%d/metrics", job, port)
    log.info(
        "   Prometheus (deploy/prometheus/rules loaded): %s/graph, alerts at %s/alerts; the "
        "Grafana dashboard to import is deploy/grafana/dashboards/imgline.json",
        prom.url,
        prom.url,
    )
    return prom


def follow_with_the_cli(settings: BusSettings, trigger_url: str, git_url: str, db: Path) -> int:
    """``imgline build request … --follow``: what an operator types, with its live view."""
    config = CACHE / "demo" / "cli.toml"
    config.write_text(f'amqp_url = "{trigger_url}"\nexchange = "{settings.exchange}"\n')
    argv = [
        "build", "request", "--name", "node", "--stream", "stable", "--git", git_url,
        "--ref", "main", "--path", "examples/node.ks", "--config", str(config),
        "--follow", "--ledger", str(db), "--timeout", "3600",
    ]  # fmt: skip
    log.info("1) $ imgline %s", " ".join(argv))
    sys.stdout.flush()
    code = imgline_cli.main(argv)
    sys.stdout.flush()
    return code


def show_trace(db: Path, build_id: str, prom: PrivatePrometheus) -> None:
    """The build traced to the host that runs it (``imgline status``), and the fleet as
    Prometheus sees it through the ledger."""
    deadline = time.monotonic() + 60
    reader = Ledger(db, readonly=True)
    while time.monotonic() < deadline and not reader.hosts_now():
        time.sleep(1)
    log.info("8) $ imgline status %s --ledger %s", build_id[:12], db)
    sys.stdout.flush()
    imgline_cli.main(["status", build_id[:12], "--ledger", str(db)])
    sys.stdout.flush()
    expr = "imgline_fleet_hosts_by_version"
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline + 30 and not found:
        found = prom.query(expr)
        time.sleep(1)
    for series in found:
        m = series["metric"]
        log.info(
            "   Prometheus: %s{name=%s,stream=%s,version=%s} = %s",
            expr,
            m.get("name"),
            m.get("stream"),
            m.get("version"),
            series["value"][1],
        )


def ready_to_build() -> bool:
    """Root, a build user, and a path to .cache/ it may take (else say what is missing)."""
    if os.geteuid() != 0:
        log.error(
            "run the demo as root: its builder switches to the unprivileged build user "
            "imgline-build for each build (scripts/ensure-build-user.sh makes it)"
        )
        return False
    # the build user's namespace works under .cache/: let it through the directories above
    # the checkout (a checkout under /root or a 0700 home), for its two ids only
    CACHE.mkdir(exist_ok=True)
    BuildUser.lookup(BUILD_USER).reach(CACHE)
    return True


def run() -> int:
    if not ready_to_build():
        return 2
    with (
        broker_access() as broker,
        tempfile.TemporaryDirectory(prefix="imgline-demo-") as tmp,
        ExitStack() as stack,
    ):
        store = str(CACHE / "demo" / "store")
        url = broker.admin_url
        settings = BusSettings(
            service="builder",
            amqp_url=broker.url_for("builder"),
            consumer_config={
                "store_dir": store,
                "work_dir": str(CACHE / "demo" / "work"),
                "cache_dir": str(CACHE / "apt" / "bookworm-amd64"),
                "root_cache_dir": str(CACHE / "roots"),
                "build_user": BUILD_USER,  # unshare mode: scripts run as root of its namespace
                "git_schemes": ["file"],  # the demo's vendor repository is on this machine
            },
        )
        plan = str(REPO / "examples" / "test-plan.toml")
        tester_config = {"store_dir": store, "work_dir": str(CACHE / "demo" / "tester-work")}
        tester_settings = settings.model_copy(
            update={
                "service": "tester",
                "amqp_url": broker.url_for("tester"),
                "consumer_config": {**tester_config, "plan_file": plan},
            }
        )
        conn = pika.BlockingConnection(pika.URLParameters(url))
        ch = conn.channel()
        base_url, root, publisher_settings = stack.enter_context(start_repository(settings))
        publisher_settings = publisher_settings.model_copy(
            update={"amqp_url": broker.url_for("publisher")}
        )
        ledger_db, ledger_settings = fresh_ledger(settings, broker)
        running = start_services(
            ch,
            [
                (settings, build_consumer),
                (tester_settings, build_tester),
                (publisher_settings, build_publisher),
                (ledger_settings, build_ledger),
            ],
        )
        log.info("0) builder, tester, publisher and ledger running; where to see them:")
        prom = start_prometheus({name: port for name, (_svc, _t, port) in running.items()})
        stack.callback(prom.stop)
        # bound before anything is published (the exchange exists once the services' do)
        watch = ch.queue_declare("", exclusive=True).method.queue
        for topic in ("image.built", "build.failed", "image.tested", ImagePublishedV1.binding()):
            ch.queue_bind(watch, settings.exchange, settings.routing_key(topic))

        url_git, commit = vendor_repo(Path(tmp) / "vendor")
        log.info("vendor repository %s at %s holds examples/node.ks", url_git, commit[:12])
        good = p.BuildRequested(
            request_id="demo-push-1",
            source=p.GitSource(url=url_git, ref="main", kickstart_path="examples/node.ks"),
            name="node",
            stream="stable",
            requested_by="make-demo",
        )
        bad = p.BuildRequested(
            request_id="demo-broken-1",
            source=p.InlineSource(kickstart=BROKEN_KS),
            name="broken",
            requested_by="make-demo",
        )
        code = follow_with_the_cli(settings, broker.url_for("trigger"), url_git, ledger_db)
        if not show_built(code, ch, watch):
            return 1
        # a git push's trigger: the one user that may ask for builds
        with Publisher(settings, broker.url_for("trigger")) as pub:
            if not show_tests(ch, watch):
                log.error("the image failed its tests: it is not published")
                return 1
            published = show_published(ch, watch, base_url, root)

            pub.publish(BuildRequestedV1.from_payload(bad))
            log.info("4) published build.requested with a broken kickstart (rootpw --lokc)")
            topic, event = wait_event(ch, watch, 120)
            log.info(
                "   %s: stage=%s kickstart_line=%s error=%s",
                topic,
                event["stage"],
                event["kickstart_line"],
                event["error"],
            )

            body = {**good.model_dump(mode="json"), "stream": "Not A Stream"}
            wrong = BuildRequestedV1(body=body, topic=settings.routing_key("build.requested"))
            pub.publish_raw(settings.exchange, wrong.topic, wrong._encoded_body, wrong._properties)
            log.info("5) published a build.requested that breaks the contract")
        show_dead_letter(ch, settings.dead_letter_queue)
        show_forgery_refused(broker, settings)
        stop_services(running, "builder", "tester", "publisher")  # the ledger hears the host
        conn.close()
        repo_port = urlparse(base_url).port or 80
        show_host(broker, settings.exchange, repo_port, root=root, new=published)
        show_trace(ledger_db, good.build_id, prom)
        stop_services(running, "ledger")
        log.info(
            "demo done: an image built, tested, signed and published; a bad kickstart "
            "reported; a bad message kept aside; a host upgraded itself to the new release; "
            "the ledger traced it all and Prometheus counted it"
        )
    return 0


def main() -> int:
    logs.configure("INFO")
    # SIGTERM unwinds like Ctrl-C: the private broker and Prometheus are stopped on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return run()
    except ImglineError as exc:
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
