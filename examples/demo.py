"""``make demo``: the pipeline as far as it exists, on embedded defaults.

A private RabbitMQ node, the builder and tester services, a local artefact store under
.cache/demo/, and a "vendor repository" (a git repo made here holding examples/node.ks, as a
push would leave it):
1. build.requested for examples/node.ks  → the builder makes a real liveimg → image.built
2. the tester checks it (integrity, content per examples/test-plan.toml, a live boot in qemu)
   → image.tested with every check and a JUnit report
3. the publisher signs it into the repository (.cache/demo/repo, served over HTTP on loopback)
   → image.published; the demo then verifies it over HTTP as a host would
4. build.requested with a broken kickstart → build.failed naming the kickstart line
5. a message that breaks the contract     → the dead-letter queue, with the reason
Needs root (mmdebstrap builds in root mode). First run: several minutes (packages download into
.cache/apt/, reused afterwards; the boot runs under TCG).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pika

from imgline.builder.__main__ import build_consumer
from imgline.core import logs
from imgline.core import repository as repo
from imgline.core.broker import broker_url
from imgline.core.bus import Consumer, Publisher, topology
from imgline.core.bus.consumer import REASON_HEADER
from imgline.core.config import BusSettings
from imgline.core.errors import ImglineError
from imgline.core.gitutil import commit_files
from imgline.core.signing import SigningKey, generate_key, load_signing_key
from imgline.publisher import http
from imgline.publisher.__main__ import build_consumer as build_publisher
from imgline.schemas import payloads as p
from imgline.schemas.messages import BuildRequestedV1
from imgline.tester.__main__ import build_consumer as build_tester

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache"
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


def show_tests(ch: Any, watch: str) -> bool:
    log.info("2) the tester checks it; the live boot under TCG takes a minute or two")
    _topic, event = wait_event(ch, watch, 1800)
    for result in event["results"]:
        log.info(
            "   %-20s %-7s %6.1fs  %s",
            result["name"],
            result["status"],
            result["duration_seconds"],
            result["detail"][:100],
        )
    log.info("   image.tested: passed=%s, report %s", event["passed"], event["report_url"])
    return bool(event["passed"])


def show_published(ch: Any, watch: str, base_url: str, key: SigningKey) -> None:
    log.info("3) the publisher signs it into the repository served at %s", base_url)
    _topic, event = wait_event(ch, watch, 300)
    log.info("   image.published: %s (key %s)", event["manifest_url"], event["key_id"])
    trusted = {key.key_id: key.public_key}
    index_url = repo.join_url(base_url, repo.index_path(event["stream"]))
    index = repo.verify_index(fetch(index_url), fetch(index_url + ".sig"), trusted, event["stream"])
    manifest = repo.verify_manifest(
        fetch(event["manifest_url"]), fetch(event["manifest_url"] + ".sig"), trusted
    )
    log.info(
        "   verified over HTTP like a host: index generation %d lists %s; manifest of %s-%s "
        "(commit %s, %d checks passed); install.ks at %s",
        index.generation,
        ", ".join(f"{e.name}-{e.version}" for e in index.releases),
        manifest.name,
        manifest.version,
        (manifest.source_commit or "?")[:12],
        manifest.tests.checks - len(manifest.tests.skipped),
        repo.join_url(base_url, repo.install_ks_path(manifest.name, manifest.version)),
    )


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as resp:  # noqa: S310 - our loopback server
        data: bytes = resp.read()
    return data


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


def start_repository(
    settings: BusSettings,
) -> tuple[ThreadingHTTPServer, str, SigningKey, BusSettings]:
    """The repository, fresh each run (its URLs name this run's port), served on loopback."""
    repo_dir = CACHE / "demo" / "repo"
    shutil.rmtree(repo_dir, ignore_errors=True)
    repo_dir.mkdir(parents=True)
    server = http.make_server(repo_dir, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    base_url = f"http://127.0.0.1:{server.server_address[1]}"
    key_file = CACHE / "demo" / "signing.key"
    key = load_signing_key(key_file) if key_file.exists() else generate_key(key_file)
    publisher_settings = settings.model_copy(
        update={
            "service": "publisher",
            "consumer_config": {
                "repo_dir": str(repo_dir),
                "work_dir": str(CACHE / "demo" / "publisher-work"),
                "base_url": base_url,
                "signing_key": str(key_file),
            },
        }
    )
    return server, base_url, key, publisher_settings


def start_services(
    ch: Any, wiring: list[tuple[BusSettings, Callable[[BusSettings], Consumer], str]]
) -> tuple[list[Consumer], list[threading.Thread]]:
    """Each service in a thread of this process, its queue declared before anything is sent."""
    services, threads = [], []
    for settings, build, topic in wiring:
        topology.declare(ch, topology.service_topology(settings, (topic,)))
        services.append(build(settings))
        threads.append(threading.Thread(target=services[-1].run, name=settings.service))
        threads[-1].daemon = True
        threads[-1].start()
    for svc in services:
        svc.ready.wait(30)
    return services, threads


def run() -> int:
    if os.geteuid() != 0:
        log.error("the demo builds an image with mmdebstrap in root mode: run it as root")
        return 2
    with broker_url() as url, tempfile.TemporaryDirectory(prefix="imgline-demo-") as tmp:
        store = str(CACHE / "demo" / "store")
        settings = BusSettings(
            service="builder",
            amqp_url=url,
            consumer_config={
                "store_dir": store,
                "work_dir": str(CACHE / "demo" / "work"),
                "cache_dir": str(CACHE / "apt" / "bookworm-amd64"),
            },
        )
        plan = str(REPO / "examples" / "test-plan.toml")
        tester_config = {"store_dir": store, "work_dir": str(CACHE / "demo" / "tester-work")}
        tester_settings = settings.model_copy(
            update={"service": "tester", "consumer_config": {**tester_config, "plan_file": plan}}
        )
        conn = pika.BlockingConnection(pika.URLParameters(url))
        ch = conn.channel()
        server, base_url, key, publisher_settings = start_repository(settings)
        services, threads = start_services(
            ch,
            [
                (settings, build_consumer, "build.requested"),
                (tester_settings, build_tester, "image.built"),
                (publisher_settings, build_publisher, "image.tested"),
            ],
        )
        # bound before anything is published (the exchange exists once the services' do)
        watch = ch.queue_declare("", exclusive=True).method.queue
        for topic in ("image.built", "build.failed", "image.tested", "image.published"):
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
        with Publisher(settings, url) as pub:
            pub.publish(BuildRequestedV1.from_payload(good))
            log.info("1) published build.requested for node (build_id %s)", good.build_id[:12])
            started = time.monotonic()
            topic, event = wait_event(ch, watch, 1800)
            if not topic.endswith("image.built"):
                log.error("the build failed: %s", json.dumps(event, indent=2))
                return 1
            art = event["artifact"]
            log.info(
                "   image.built after %.0fs: node-%s, %.1f MiB, sha256 %s…",
                time.monotonic() - started,
                event["version"],
                art["size"] / 2**20,
                art["sha256"][:16],
            )
            log.info("   image: %s", art["uri"])
            log.info("   build log: %s", event["log_url"])

            if not show_tests(ch, watch):
                log.error("the image failed its tests: it is not published")
                return 1
            show_published(ch, watch, base_url, key)

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
        server.shutdown()
        for svc in services:
            svc.stop()
        for thread in threads:
            thread.join(60)
        conn.close()
        log.info(
            "demo done: an image built, tested, signed and published; a bad kickstart "
            "reported; a bad message kept aside"
        )
    return 0


def main() -> int:
    logs.configure("INFO")
    try:
        return run()
    except ImglineError as exc:
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
