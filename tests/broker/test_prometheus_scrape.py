"""A real Prometheus, with deploy/prometheus's scrape config and alert rules, scrapes every
service as it runs: the trigger, builder, tester, publisher and ledger as their own processes,
and a host's updater agent. Each gets one real input, and Prometheus finds every series that
docs/operations.md documents for it, with the values that input made."""

from __future__ import annotations

import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from bushelpers import ServiceProcess, post, service_process, wait_for
from fakehost import FakeHost
from tufrepo import publisher_config

from imgline.core.artifacts import LocalArtifactStore
from imgline.core.broker import free_port
from imgline.core.bus.access import ROLE_BY_USER
from imgline.core.bus.metrics import serve_metrics
from imgline.core.config import BusSettings
from imgline.core.prometheus import PrivatePrometheus
from imgline.core.trust.repository import TufRepository
from imgline.schemas import payloads as p
from imgline.schemas.messages import (
    BuildRequestedV1,
    HostRolledBackV1,
    HostUpgradedV1,
    ImageBuiltV1,
    ImagePublishedV1,
    ImageTestedV1,
)
from imgline.updater.agent import AgentService
from imgline.updater.settings import HostConfig

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
OPERATIONS = ROOT / "docs" / "operations.md"
SERVICES = ("trigger", "builder", "tester", "publisher", "ledger")


def documented() -> dict[str, set[str]]:
    """Series name → the jobs docs/operations.md says serve it."""
    out: dict[str, set[str]] = {}
    for name, served_by in re.findall(
        r"^\| `(imgline_[a-z_]+)` \|[^|]*\|[^|]*\| ([^|]+) \|$",
        OPERATIONS.read_text(encoding="utf-8"),
        flags=re.MULTILINE,
    ):
        who = served_by.split(":")[0].split(",")[0].strip()
        if who in ("every consumer", "every service that publishes"):
            jobs = {"builder", "tester", "publisher", "ledger", "updater"}
            if who == "every service that publishes":
                jobs = {"trigger", "builder", "tester", "publisher", "updater"}
        else:
            jobs = {who}
        out[name] = jobs
    return out


def scrape_config(ports: dict[str, int]) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with this test's ports and a one-second interval."""
    config: dict[str, Any] = yaml.safe_load((PROM / "prometheus.yml").read_text())
    assert {job["job_name"] for job in config["scrape_configs"]} == set(ports)
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(PROM / "rules" / "imgline.yml")]
    for job in config["scrape_configs"]:
        job.pop("file_sd_configs", None)
        job["static_configs"] = [{"targets": [f"127.0.0.1:{ports[job['job_name']]}"]}]
    return config


def listening(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
            return True
    except OSError:
        return False


@contextmanager
def agent(tmp: Path, repo: TufRepository, served: str, amqp_url: str, port: int) -> Iterator[None]:
    """A host's updater agent with a fake host (its LVM is the VM tier's), serving metrics."""
    config = HostConfig(
        host_id="host-a",
        stream="stable",
        repository_url=served,
        state_dir=tmp / "host-a",
        refresh_interval_seconds=3600,
    )
    (config.tuf_dir / "metadata").mkdir(parents=True)
    (config.tuf_dir / "metadata" / "root.json").write_bytes(repo.root_bytes())
    bus = BusSettings(service="updater", amqp_url=amqp_url, exchange=f"prom-{port}")
    import pika  # noqa: PLC0415

    from imgline.core.bus import topology  # noqa: PLC0415

    with pika.BlockingConnection(pika.URLParameters(amqp_url)) as conn:
        topology.declare(conn.channel(), topology.shared_topology(bus))
    service = AgentService(bus, config, FakeHost(running="20261101.1"), host_id="host-a")
    serve_metrics(service.consumer.metrics.registry, port)
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    try:
        assert service.consumer.ready.wait(30)
        yield
    finally:
        service.stop()
        thread.join(30)


def host_events(name: str, stream: str) -> list[p.Payload]:
    req = p.BuildRequested(
        request_id="prom-1", source=p.InlineSource(kickstart="lang C\n"), name=name, stream=stream
    )
    sha = "ab" * 32
    published = p.ImagePublished(
        build_id=req.build_id,
        name=name,
        version="2",
        stream=stream,
        manifest_url="http://r/m",
        manifest_sha256=sha,
        image_url="http://r/i",
        image_sha256=sha,
        image_size=1,
        key_id="0123456789abcdef",
    )
    common = {"name": name, "stream": stream, "from_version": "1", "to_version": "2"}
    return [
        req,
        published,
        p.HostUpgraded(host_id="h1", duration_seconds=1, layer="n-2+1", **common),
        p.HostRolledBack(host_id="h2", duration_seconds=1, step="health", error="x", **common),
    ]


def test_prometheus_scrapes_every_service_and_finds_the_documented_series(
    amqp_url: str, tmp_path: Path, repo: TufRepository, served: str
) -> None:
    ports = {job: free_port() for job in (*SERVICES, "updater")}
    hook_port = free_port()
    secret = tmp_path / "github.secret"
    secret.write_text("a-webhook-secret-of-some-length\n")
    rules = tmp_path / "rules.toml"
    rules.write_text(
        '[[rule]]\nrepository = "os/node"\nurl = "https://git.example.com/os/node.git"\n'
        'name = "node"\nkickstart_path = "n.ks"\n'
    )
    store = LocalArtifactStore(tmp_path / "store")
    configs: dict[str, dict[str, str]] = {
        "trigger": {
            "listen_port": str(hook_port),
            "rules_file": str(rules),
            "secret_files.github": str(secret),
        },
        "builder": {
            "store_dir": str(store.root),
            "work_dir": str(tmp_path / "build-work"),
            "cache_dir": str(tmp_path / "apt"),
            "build_mode": "root",
        },
        "tester": {"store_dir": str(store.root), "work_dir": str(tmp_path / "test-work")},
        "publisher": publisher_config(repo, store.root, tmp_path / "pub-work", served),
        "ledger": {"db_path": str(tmp_path / "ledger.sqlite3")},
    }
    consumes = {s: ROLE_BY_USER[s].consumes for s in SERVICES}
    with ExitStack() as stack:
        svc: dict[str, ServiceProcess] = {
            name: stack.enter_context(
                service_process(
                    name,
                    amqp_url,
                    tmp_path,
                    consumes=consumes[name],
                    emits=(),
                    consumer_config=configs[name],
                    settings={"metrics_port": ports[name]},
                )
            )
            for name in SERVICES
        }
        stack.enter_context(agent(tmp_path, repo, served, amqp_url, ports["updater"]))
        prom = stack.enter_context(PrivatePrometheus(scrape_config(ports), tmp_path / "prom"))

        # one real input each
        bad_ks = p.BuildRequested(
            request_id="prom-b", source=p.InlineSource(kickstart="rootpw --lokc\n"), name="node"
        )
        svc["builder"].publish(BuildRequestedV1.from_payload(bad_ks))
        junk = tmp_path / "junk.img"
        junk.write_bytes(b"not a squashfs" * 100)
        art = store.put_file(junk)
        built = p.ImageBuilt(
            build_id="cd" * 32,
            request_id="prom-t",
            name="node",
            version="1",
            stream="stable",
            artifact=p.Artifact(uri=art.uri, sha256=art.sha256, size=art.size),
            kickstart_sha256="ef" * 32,
            backend="mmdebstrap",
            duration_seconds=1,
        )
        svc["tester"].publish(ImageBuiltV1.from_payload(built))
        claimed = p.ImageTested(
            build_id=built.build_id,
            image=built.ref(),
            passed=False,
            results=[p.TestResult(name="boot.live", status="failed", duration_seconds=1)],
        )
        svc["publisher"].publish(ImageTestedV1.from_payload(claimed))
        classes = {
            p.BuildRequested: BuildRequestedV1,
            p.ImagePublished: ImagePublishedV1,
            p.HostUpgraded: HostUpgradedV1,
            p.HostRolledBack: HostRolledBackV1,
        }
        for event in host_events("node", "stable"):
            msg = classes[type(event)].from_payload(event)  # type: ignore[attr-defined]
            svc["ledger"].publish(msg)
        wait_for(lambda: listening(hook_port), what="the trigger's webhook")
        status = post(
            f"http://127.0.0.1:{hook_port}/hooks",
            b"{}",
            {"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + "0" * 64},
        )
        assert status == 401

        def value(expr: str) -> float | None:
            found = prom.query(expr)
            return float(found[0]["value"][1]) if found else None

        wanted = {
            'imgline_builds_total{job="builder",result="failed"}': 1,
            'imgline_images_tested_total{job="tester",verdict="failed"}': 1,
            'imgline_images_rejected_total{job="publisher",stream="stable"}': 1,
            'imgline_webhooks_total{job="trigger",forge="github"}': 1,
            'imgline_fleet_hosts{job="ledger",name="node",stream="stable"}': 2,
            'imgline_fleet_hosts_outdated{job="ledger",stream="stable"}': 1,
            'imgline_host_upgrades_total{job="ledger",result="rolled_back"}': 1,
            'imgline_host_version_info{job="updater",version="20261101.1"}': 1,
            'imgline_repository_readable{job="publisher"}': 1,
        }
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            got = {expr: value(expr) for expr in wanted}
            if got == wanted:
                break
            time.sleep(1)
        assert got == wanted
        for job in ports:
            assert value(f'up{{job="{job}"}}') == 1, f"{job} is not scraped"
        for job in SERVICES:
            if consumes[job]:
                assert value(f'imgline_consumer_connected{{job="{job}"}}') == 1

        # every documented series is exposed by the jobs the docs name
        for name, jobs in documented().items():
            for job in jobs:
                family = name.removesuffix("_total")
                meta = prom.api("targets/metadata", match_target=f'{{job="{job}"}}', metric=family)
                assert meta, f"{job} does not expose {name} (docs/operations.md says it does)"
        # and every imgline series Prometheus holds is documented
        names = prom.api("label/__name__/values")
        ours = {  # prometheus_client's *_created companions aside
            re.sub(r"_(bucket|count|sum)$", "", n)
            for n in names
            if n.startswith("imgline_") and not n.endswith("_created")
        }
        assert ours <= set(documented()), sorted(ours - set(documented()))
        # the alert rules load and are evaluated
        groups = prom.api("rules")["groups"]
        assert {g["name"] for g in groups} == {
            "imgline-pipeline",
            "imgline-repository",
            "imgline-fleet",
        }
        assert all(r["health"] == "ok" for g in groups for r in g["rules"])
